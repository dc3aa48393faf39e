"""``/v1.0/lexicons``: each customer's pronunciation lexicons (:mod:`speakd.sessions.lexicons`).

``PUT /v1.0/lexicons/{name}`` makes one (201) or replaces its entries (200); ``GET`` and
``DELETE`` answer it as it is (was); ``GET /v1.0/lexicons`` lists the customer's, by name.
Another customer's lexicon of the same name is not found (404).
"""

from __future__ import annotations

from aiohttp import web

from speakd.api import schemas
from speakd.sessions.lexicons import Lexicons, parse_entries


async def put_response(lexicons: Lexicons, customer_id: str, name: str, body: bytes) -> web.Response:
    entries = parse_entries(schemas.parse_json_object(body, ("entries",)))
    lexicon, made = await lexicons.put(customer_id, name, entries)
    return web.json_response(lexicon, status=201 if made else 200)


async def get_response(lexicons: Lexicons, customer_id: str, name: str) -> web.Response:
    return web.json_response(await lexicons.get(customer_id, name))


async def delete_response(lexicons: Lexicons, customer_id: str, name: str) -> web.Response:
    lexicon = await lexicons.get(customer_id, name)
    await lexicons.delete(customer_id, name)
    return web.json_response(lexicon)


async def list_response(lexicons: Lexicons, customer_id: str) -> web.Response:
    return web.json_response({"result": await lexicons.list(customer_id)})
