"""``GET /v1.0/voices?provider=&language=``: what each configured provider offers.

The list comes from each provider's own list call (ElevenLabs ``GET /v1/voices``, Google
``ListVoices``, Polly ``DescribeVoices``), cached per provider and language, through the
service (:meth:`speakd.sessions.service.SpeakingService.voices`). With ``provider`` given, that
provider's failure or absence is the answer (400 not configured, 502 provider error); without
it, every configured provider is listed and one that fails is left out (and logged).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from speakd.languages import parse_language_tag
from speakd.providers import Voice


def _voice_json(voice: Voice) -> dict[str, object]:
    return {
        "provider": voice.provider,
        "voice_id": voice.voice_id,
        "name": voice.name,
        "languages": list(voice.languages),
        "gender": voice.gender,
    }


async def voices_response(service: Any, query: Mapping[str, str]) -> web.Response:
    provider = query.get("provider", "").strip()
    language = query.get("language", "").strip()
    if language:
        language = parse_language_tag(language)  # the same answer as on create
    voices = await service.voices(provider, language)
    return web.json_response({"result": [_voice_json(v) for v in voices]})
