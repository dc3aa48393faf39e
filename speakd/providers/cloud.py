"""What the cloud providers (aws, gcp, elevenlabs) share beyond the interface: the settings they
read alike (:class:`~speakd.providers.settings.CloudSettings`) and a :meth:`~CloudProvider.check`
that resolves the voice as a synthesis would."""

from __future__ import annotations

import abc
from typing import Any

from speakd.providers.base import Provider
from speakd.providers.settings import CloudSettings


class CloudProvider(Provider):
    def __init__(self, settings: CloudSettings) -> None:
        self.timeouts = settings.timeouts
        self.voice_cache_ttl = settings.voice_cache_ttl  # read by the VoiceCatalogue

    @abc.abstractmethod
    def _resolve(self, language: str, voice_id: str, model: str = "") -> tuple[Any, ...]:
        """What a request for ``language`` with ``voice_id`` (and ``model``) is synthesized with,
        or InvalidRequest (a 400) saying why it cannot be."""

    def _checked(self, language: str, voice_id: str, payload_type: str, model: str = "") -> tuple[Any, ...]:
        """:meth:`_resolve`, the payload type checked first."""
        self.check_payload_type(payload_type)
        return self._resolve(language, voice_id, model)

    def check(self, language: str, voice_id: str, payload_type: str = "text") -> None:
        self._checked(language, voice_id, payload_type)

    def voice_for(self, language: str, voice_id: str, model: str = "") -> str:
        return self._resolve(language, voice_id, model)[1]  # every provider's second: the voice
