"""``POST /v1.0/prompts``: render a text into the audio cache ahead of the says that speak it
(:class:`speakd.sessions.prompts.PromptRenderer`). 201 once it is there, 200 if it already was."""

from __future__ import annotations

from aiohttp import web

from speakd.api import schemas
from speakd.sessions.prompts import PromptRenderer


async def prompt_response(
    renderer: PromptRenderer, customer_id: str, body: bytes, default_provider: str
) -> web.Response:
    entry, made = await renderer.render(customer_id, schemas.parse_prompt(body, default_provider))
    return web.json_response(entry, status=201 if made else 200)
