"""Provider registry: builds the configured providers, each from its own module.

A provider's SDK is imported only inside its module, and a module is imported only when its
section is configured (Piper is on unless ``[piper] enabled = false``). A provider that is
not configured is remembered with the reason, so the API can answer 400 saying what to set.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from speakd.errors import ProviderNotConfigured
from speakd.providers.base import AudioChunk, AudioFormat, Provider, SynthesisRequest, Voice

__all__ = [
    "AudioChunk",
    "AudioFormat",
    "Provider",
    "ProviderRegistry",
    "SynthesisRequest",
    "Voice",
]

log = structlog.get_logger(__name__)

# provider name -> module under speakd.providers defining ``create(section: dict) -> Provider``.
# ``create`` raises ProviderNotConfigured with a message naming the missing keys.
MODULES = {
    "piper": "speakd.providers.piper",
    "elevenlabs": "speakd.providers.elevenlabs",
    "gcp": "speakd.providers.gcp",
    "aws": "speakd.providers.aws",
}


class ProviderRegistry:
    def __init__(self, providers: Mapping[str, Provider], unavailable: Mapping[str, str]) -> None:
        self._providers = dict(providers)
        self._unavailable = dict(unavailable)

    @classmethod
    def from_config(cls, sections: Mapping[str, Mapping[str, Any]]) -> ProviderRegistry:
        providers: dict[str, Provider] = {}
        unavailable: dict[str, str] = {}
        for name, module_name in MODULES.items():
            section = dict(sections.get(name, {}))
            enabled = section.pop("enabled", name == "piper" or name in sections)
            if isinstance(enabled, str):
                enabled = enabled.strip().lower() in ("1", "true", "yes", "on")
            if not enabled:
                unavailable[name] = (
                    f"provider '{name}' is not configured on this speakd: add a [{name}] section "
                    "to the config file (or SPEAKD_" + name.upper() + "_* variables)"
                )
                continue
            try:
                module = importlib.import_module(module_name)
                providers[name] = module.create(section)
            except ProviderNotConfigured as exc:
                unavailable[name] = exc.message
            except ImportError as exc:
                unavailable[name] = f"provider '{name}' cannot be loaded: {exc}"
            if name in unavailable:
                log.warning("provider_unavailable", provider=name, reason=unavailable[name])
        return cls(providers, unavailable)

    def get(self, name: str) -> Provider:
        try:
            return self._providers[name]
        except KeyError:
            reason = self._unavailable.get(name, f"provider '{name}' is not configured on this speakd")
            raise ProviderNotConfigured(reason) from None

    def wrap(self, wrapper: Callable[[Provider], Provider]) -> None:
        """Give sessions ``wrapper(provider)`` instead of each provider (e.g. to measure it)."""
        self._providers = {name: wrapper(provider) for name, provider in self._providers.items()}

    def names(self) -> list[str]:
        return sorted(self._providers)

    def __iter__(self):
        return iter(self._providers.values())

    async def start(self) -> None:
        for provider in self._providers.values():
            await provider.start()

    async def aclose(self) -> None:
        for provider in self._providers.values():
            await provider.aclose()
