"""Prompts rendered ahead (``POST /v1.0/prompts``): a text put into the audio cache before any
call says it, so an IVR's fixed prompts never wait for a provider.

A prompt is rendered as a say of a session would ask for it (the daemon's ``[media] codec``, the
voice and model its fields name, its text through the customer's lexicon it names), so the say
that later speaks it finds the same entry. Its synthesis yields to every live call's (a deadline
a minute off: speakd.providers.deadline_pool).
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from speakd.audio import Codec
from speakd.errors import Conflict, InvalidRequest, SpeakdError
from speakd.providers import ProviderRegistry
from speakd.providers.base import SynthesisRequest
from speakd.providers.cache import AudioCache
from speakd.sessions.lexicons import Lexicons
from speakd.sessions.requests import PromptRequest

log = structlog.get_logger(__name__)

CACHE_OFF = "cache_disabled"
# How far off a prompt's audio is needed, as Piper's pool schedules: after any call's.
BACKGROUND_S = 60.0


def _background() -> float:
    return time.monotonic() + BACKGROUND_S


class PromptRenderer:
    def __init__(self, providers: ProviderRegistry, cache: AudioCache | None, codec: Codec, lexicons: Lexicons) -> None:
        self.providers = providers
        self.cache = cache
        self.codec: Codec = codec
        self.lexicons = lexicons

    async def render(self, customer_id: str, req: PromptRequest) -> tuple[dict[str, Any], bool]:
        """The prompt's cache entry, rendered now unless it was there: (its description, made now)."""
        if self.cache is None:
            raise Conflict(
                "the audio cache is off on this speakd ([cache] enabled = false, or its directory "
                "cannot be used: the daemon log says why): prompts cannot be rendered ahead",
                reason=CACHE_OFF,
            )
        provider = self.providers.get(req.provider)  # ProviderNotConfigured: 400
        provider.check(req.language, req.voice_id, req.payload_type)
        text = req.text
        if req.lexicon:
            text = (
                await self.lexicons.rewrite(customer_id, req.lexicon, text, req.payload_type, "'lexicon'", "prompt")
            ).text
        request = SynthesisRequest(
            text=text,
            language=req.language,
            voice_id=req.voice_id,
            codec=self.codec,
            payload_type=req.payload_type,  # type: ignore[arg-type]
            model=req.model,
            deadline=_background,
        )
        try:
            entry, made = await self.cache.render(provider, request)
        except SpeakdError:
            raise
        except Exception as exc:  # the provider's own crash on this text (a say of it would fail with it)
            log.exception("prompt_render_crashed", provider=req.provider)
            raise InvalidRequest(
                f"provider '{req.provider}' cannot render this text: {type(exc).__name__}: {exc}"
            ) from exc
        return {
            "key": entry.key,
            "provider": req.provider,
            "voice_id": req.voice_id,
            "language": req.language,
            "payload_type": req.payload_type,
            "lexicon": req.lexicon,
            "bytes": entry.bytes,
            "duration_ms": entry.duration_ms,
        }, made
