"""Provider registry: builds the configured providers, each from its own module.

A provider's SDK is imported only inside its module, and a module is imported only when its
section is configured (Piper is on unless ``[piper] enabled = false``). A provider that is
not configured is remembered with the reason, so the API can answer 400 saying what to set.
Every provider is treated alike: a section with a bad value (``[piper] threads = "x"``,
``[aws] engine = "loud"``) leaves that provider unavailable, logged at start-up
(``provider_unavailable``, with the key to fix) and reported by ``speakd check-config``; the
daemon runs with the others.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import structlog

from speakd.errors import InvalidRequest, ProviderNotConfigured
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
    def from_config(
        cls, sections: Mapping[str, Mapping[str, Any]], *, log_unavailable: bool = True
    ) -> ProviderRegistry:
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
            except InvalidRequest as exc:  # ProviderNotConfigured, or a bad tag in its voices table
                unavailable[name] = exc.message if exc.message.startswith(f"{name}:") else f"{name}: {exc.message}"
            except ImportError as exc:
                unavailable[name] = f"provider '{name}' cannot be loaded: {exc}"
            except Exception as exc:  # whatever a section holds, one provider never stops the daemon
                unavailable[name] = f"{name}: the [{name}] section cannot be used: {type(exc).__name__}: {exc}"
            if name in unavailable and log_unavailable:
                log.warning("provider_unavailable", provider=name, reason=unavailable[name])
        return cls(providers, unavailable)

    def get(self, name: str) -> Provider:
        try:
            return self._providers[name]
        except KeyError:
            reason = self._unavailable.get(name, f"provider '{name}' is not configured on this speakd")
            raise ProviderNotConfigured(reason) from None

    @property
    def unavailable(self) -> dict[str, str]:
        """Provider name -> why it cannot be used (what to set or fix)."""
        return dict(self._unavailable)

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
