"""The voice catalogue: each provider's own voice list, cached, for ``GET /v1.0/voices``.

The registry owns one :class:`VoiceCatalogue` and clears it when a reload replaces a provider
(lists fetched with the old credentials are not served).
"""

from __future__ import annotations

import asyncio
import time

from speakd.languages import parse_language_tag
from speakd.providers.base import Provider, Voice

DEFAULT_VOICE_CACHE_TTL = 300.0


class VoiceCatalogue:
    """Voice lists per provider name and language, each kept for the provider's
    ``voice_cache_ttl`` attribute (else 300 s). Failures are not kept."""

    def __init__(self) -> None:
        self._lists: dict[tuple[str, str], tuple[float, list[Voice]]] = {}
        # One list call at a time per key: concurrent requests share its answer.
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def voices(self, provider: Provider, language: str | None = None, ttl: float | None = None) -> list[Voice]:
        """``provider.list_voices(language)``, from the catalogue when younger than ``ttl`` seconds."""
        if ttl is None:
            ttl = float(getattr(provider, "voice_cache_ttl", DEFAULT_VOICE_CACHE_TTL))
        key = (provider.name, parse_language_tag(language) if language else "")
        hit = self._lists.get(key)
        if hit is not None and time.monotonic() - hit[0] < ttl:
            return hit[1]
        async with self._locks.setdefault(key, asyncio.Lock()):
            hit = self._lists.get(key)
            if hit is not None and time.monotonic() - hit[0] < ttl:
                return hit[1]
            voices = await provider.list_voices(key[1] or None)
            self._lists[key] = (time.monotonic(), voices)
            return voices

    def clear(self) -> None:
        self._lists.clear()
