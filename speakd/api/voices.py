"""``GET /v1.0/voices?provider=&language=``: what each configured provider offers.

The list comes from each provider's own list call (ElevenLabs ``GET /v1/voices``, Google
``ListVoices``, Polly ``DescribeVoices``), cached per provider and language
(the registry's :class:`~speakd.providers.catalogue.VoiceCatalogue`). With ``provider`` given, that provider's
failure or absence is the answer (400 not configured, 502 provider error); without it, every
configured provider is listed and one that fails is left out (and logged).

Wire the route with ``app.router.add_get("/v1.0/voices", list_voices)`` and put the registry in
``app[PROVIDERS_KEY]``.
"""

from __future__ import annotations

import asyncio

import structlog
from aiohttp import web

from speakd.errors import InvalidRequest, ProviderError
from speakd.languages import language_matches, parse_language_tag
from speakd.providers import ProviderRegistry, Voice
from speakd.providers.peer_voices import PROVIDER_ALIASES

log = structlog.get_logger(__name__)

PROVIDERS_KEY = web.AppKey("providers", ProviderRegistry)


def _voice_json(voice: Voice) -> dict[str, object]:
    return {
        "provider": voice.provider,
        "voice_id": voice.voice_id,
        "name": voice.name,
        "languages": list(voice.languages),
        "gender": voice.gender,
    }


async def list_voices(request: web.Request) -> web.Response:
    registry = request.app[PROVIDERS_KEY]
    provider_arg = request.query.get("provider", "").strip()
    language = request.query.get("language", "").strip()
    if language:
        language = parse_language_tag(language)  # the same answer as on create
    if provider_arg:
        name = PROVIDER_ALIASES.get(provider_arg.lower(), provider_arg.lower())
        providers = [registry.get(name)]  # ProviderNotConfigured (400) says what to set
        voices = await registry.catalogue.voices(providers[0], language or None)
    else:
        providers = list(registry)
        results = await asyncio.gather(
            *(registry.catalogue.voices(p, language or None) for p in providers), return_exceptions=True
        )
        voices = []
        for provider, result in zip(providers, results, strict=True):
            if isinstance(result, ProviderError | InvalidRequest):
                log.warning("voices_list_failed", provider=provider.name, error=result.message)
                continue
            if isinstance(result, BaseException):
                raise result
            voices.extend(result)
    if language:
        # Providers filter too, but not all alike (bilingual voices, bare languages): be exact here.
        voices = [v for v in voices if language_matches(language, v.languages)]
    return web.json_response({"result": [_voice_json(v) for v in voices]})
