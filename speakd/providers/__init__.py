"""Provider registry: builds the configured providers, each from its own module.

A provider's SDK is imported only inside its module, and a module is imported only when its
section is configured (Piper is on unless ``[piper] enabled = false``). A provider that is
not configured is remembered with the reason, so the API can answer 400 saying what to set.
Every provider is treated alike: a section with a bad value (``[piper] threads = "x"``,
``[aws] engine = "loud"``) leaves that provider unavailable, logged at start-up
(``provider_unavailable``, with the key to fix) and reported by ``speakd check-config``; the
daemon runs with the others.

On a reload (SIGHUP) every cloud provider whose section changed is built anew and put in
its :class:`ProviderSlot`, the object sessions hold: says that start from then on, on new
sessions and on sessions already live, use the new one; a say already synthesizing finishes
on the old one, which is closed when its last stream ends. Piper is not rebuilt (its model
takes seconds and its memory twice while both exist): a changed ``[piper]`` needs a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import structlog

from speakd.config import ConfigError
from speakd.errors import InvalidRequest, ProviderError, ProviderNotConfigured
from speakd.languages import language_matches
from speakd.parsing import parse_bool
from speakd.provider_names import PROVIDER_NAMES
from speakd.providers.base import AudioChunk, DelegatingProvider, Provider, SynthesisRequest, Voice
from speakd.providers.catalogue import VoiceCatalogue
from speakd.providers.peer_voices import PROVIDER_ALIASES

__all__ = [
    "AudioChunk",
    "Provider",
    "ProviderRegistry",
    "ProviderSlot",
    "SynthesisRequest",
    "Voice",
]

log = structlog.get_logger(__name__)

# provider name -> module under speakd.providers defining ``create(section: dict) -> Provider``.
# ``create`` raises ProviderNotConfigured with a message naming the missing keys.
MODULES = {name: f"speakd.providers.{name}" for name in PROVIDER_NAMES}
# Sections a reload does not apply (why: see the module docstring).
RESTART_ONLY = frozenset({"piper"})


def _build(name: str, sections: Mapping[str, Mapping[str, Any]]) -> tuple[Provider | None, str, bool]:
    """(the provider or None, why not, whether it is off on purpose: no section / enabled = false)."""
    section = dict(sections.get(name, {}))
    enabled = section.pop("enabled", name == "piper" or name in sections)
    if isinstance(enabled, str):
        try:
            enabled = parse_bool(enabled)
        except ValueError:
            return None, f"{name}: 'enabled' must be true or false, not {enabled!r}", False
    if not enabled:
        reason = (
            f"provider '{name}' is not configured on this speakd: add a [{name}] section "
            "to the config file (or SPEAKD_" + name.upper() + "_* variables)"
        )
        return None, reason, True
    try:
        module = importlib.import_module(MODULES[name])
        return module.create(section), "", False
    except InvalidRequest as exc:  # ProviderNotConfigured, or a bad tag in its voices table
        return None, (exc.message if exc.message.startswith(f"{name}:") else f"{name}: {exc.message}"), False
    except ImportError as exc:
        return None, f"provider '{name}' cannot be loaded: {exc}", False
    except Exception as exc:  # whatever a section holds, one provider never stops the daemon
        return None, f"{name}: the [{name}] section cannot be used: {type(exc).__name__}: {exc}", False


class ProviderSlot(DelegatingProvider):
    """The provider under one name, as sessions and the API hold it; a reload replaces what is
    inside (:attr:`inner`)."""

    def __init__(self, provider: Provider, close_later: Callable[[Provider], None]) -> None:
        super().__init__(provider)
        self._close_later = close_later
        self._streams: dict[int, int] = {}  # id(provider) -> its syntheses/voice lists under way
        self._retired: dict[int, Provider] = {}

    def replace(self, provider: Provider) -> None:
        old, self.inner = self.inner, provider
        if self._streams.get(id(old), 0):
            self._retired[id(old)] = old  # closed when its last stream ends
        else:
            self._close_later(old)

    async def synthesize(self, request: SynthesisRequest) -> AsyncIterator[AudioChunk]:
        with self._held() as provider:  # this say stays on it to the end, whatever a reload does
            async with contextlib.aclosing(provider.synthesize(request)) as chunks:  # type: ignore[type-var]
                async for chunk in chunks:
                    yield chunk

    # open_text_stream is inherited: the stream stays on the provider it was opened with, like a say in flight.

    async def list_voices(self, language: str | None = None) -> list[Voice]:
        with self._held() as provider:
            return await provider.list_voices(language)

    @contextlib.contextmanager
    def _held(self) -> Iterator[Provider]:
        """The current provider, kept open (not closed by a reload) until the block ends."""
        provider = self.inner
        self._streams[id(provider)] = self._streams.get(id(provider), 0) + 1
        try:
            yield provider
        finally:
            left = self._streams[id(provider)] - 1
            if left:
                self._streams[id(provider)] = left
            else:
                del self._streams[id(provider)]
                retired = self._retired.pop(id(provider), None)
                if retired is not None:
                    self._close_later(retired)

    async def aclose(self) -> None:
        for provider in [self.inner, *self._retired.values()]:
            await provider.aclose()
        self._retired.clear()


class ProviderRegistry:
    def __init__(
        self,
        providers: Mapping[str, Provider],
        unavailable: Mapping[str, str],
        sections: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        # Every slot ever filled (sessions may hold one whose provider was since removed);
        # _providers: those new sessions may use.
        self._slots = {name: ProviderSlot(p, self._close_later) for name, p in providers.items()}
        self._providers: dict[str, Provider] = dict(self._slots)
        self._wrappers: list[Callable[[Provider], Provider]] = []  # wrap()'s, oldest (innermost) first
        self._unavailable = dict(unavailable)
        self._sections = {name: dict(section) for name, section in (sections or {}).items()}
        self._closing: set[asyncio.Task[None]] = set()
        self.catalogue = VoiceCatalogue()  # GET /v1.0/voices: the providers' lists, cached

    @classmethod
    def from_config(
        cls, sections: Mapping[str, Mapping[str, Any]], *, log_unavailable: bool = True
    ) -> ProviderRegistry:
        providers: dict[str, Provider] = {}
        unavailable: dict[str, str] = {}
        for name in MODULES:
            provider, reason, off = _build(name, sections)
            if provider is not None:
                providers[name] = provider
            else:
                unavailable[name] = reason
                if not off and log_unavailable:
                    log.warning("provider_unavailable", provider=name, reason=reason)
        return cls(providers, unavailable, sections)

    def get(self, name: str) -> Provider:
        try:
            return self._providers[name]
        except KeyError:
            reason = self._unavailable.get(name, f"provider '{name}' is not configured on this speakd")
            raise ProviderNotConfigured(reason) from None

    async def voices(self, provider: str, language: str) -> list[Voice]:
        """``GET /v1.0/voices``: the voices of ``provider`` (a name or an alias), or with
        ``provider`` "" of every configured provider, one that fails left out (and logged).
        ``language``: a parsed tag, or "" for every language."""
        if provider:
            name = PROVIDER_ALIASES.get(provider.lower(), provider.lower())
            voices = await self.catalogue.voices(self.get(name), language or None)  # ProviderNotConfigured: 400
        else:
            providers = list(self)
            results = await asyncio.gather(
                *(self.catalogue.voices(p, language or None) for p in providers), return_exceptions=True
            )
            voices = []
            for each, result in zip(providers, results, strict=True):
                if isinstance(result, ProviderError | InvalidRequest):
                    log.warning("voices_list_failed", provider=each.name, error=result.message)
                    continue
                if isinstance(result, BaseException):
                    raise result
                voices.extend(result)
        if language:
            # Providers filter too, but not all alike (bilingual voices, bare languages): be exact here.
            voices = [v for v in voices if language_matches(language, v.languages)]
        return voices

    @property
    def unavailable(self) -> dict[str, str]:
        """Provider name -> why it cannot be used (what to set or fix)."""
        return dict(self._unavailable)

    def wrap(self, wrapper: Callable[[Provider], Provider]) -> None:
        """Give sessions ``wrapper(provider)`` instead of each provider (e.g. to measure it), also
        for a provider a reload adds back."""
        self._wrappers.append(wrapper)
        self._providers = {name: wrapper(provider) for name, provider in self._providers.items()}

    def _wrapped(self, slot: ProviderSlot) -> Provider:
        provider: Provider = slot
        for wrapper in self._wrappers:
            provider = wrapper(provider)
        return provider

    def names(self) -> list[str]:
        return sorted(self._providers)

    def __iter__(self):
        return iter(self._providers.values())

    def changed_sections(self, sections: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """The provider sections that differ from the ones this registry was built from."""
        return [name for name in MODULES if dict(sections.get(name, {})) != self._sections.get(name, {})]

    async def reload(self, sections: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """Rebuild the providers whose section changed (not Piper: RESTART_ONLY) and put them in
        their slots; returns their names. All or nothing: a provider that works now and would
        not with its new section (a missing or misspelt key, a client that fails to start)
        raises ConfigError naming it, and nothing changes. Removing a section (or
        ``enabled = false``) takes the provider away from new sessions; live sessions on it
        keep it until they end."""
        changed = [name for name in self.changed_sections(sections) if name not in RESTART_ONLY]
        built: dict[str, Provider] = {}
        removed: dict[str, str] = {}
        errors: list[str] = []
        for name in changed:
            provider: Provider | None = None
            try:
                provider, reason, off = _build(name, sections)
                if provider is not None:
                    await provider.start()
            except Exception as exc:  # a provider's own validation or its client's start-up
                if provider is not None:
                    self._close_later(provider)
                provider, reason, off = None, f"{name}: {exc}", False
            if provider is not None:
                built[name] = provider
            elif name in self._providers and not off:
                errors.append(reason)
            else:
                removed[name] = reason
        if errors:
            for provider in built.values():
                self._close_later(provider)
            raise ConfigError("; ".join(errors))
        for name, provider in built.items():
            if name in self._slots:
                self._slots[name].replace(provider)  # its wrappers stay: they hold the slot
            else:
                self._slots[name] = ProviderSlot(provider, self._close_later)
            if name not in self._providers:
                self._providers[name] = self._wrapped(self._slots[name])
            self._unavailable.pop(name, None)
        for name, reason in removed.items():
            self._providers.pop(name, None)
            self._unavailable[name] = reason
        for name in changed:
            self._sections[name] = dict(sections.get(name, {}))
        if built:
            self.catalogue.clear()  # lists fetched with the old credentials
        return changed

    def _close_later(self, provider: Provider) -> None:
        task = asyncio.create_task(self._close(provider), name="speakd-provider-close")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close(provider: Provider) -> None:
        try:
            await provider.aclose()
        except Exception:
            log.exception("provider_close_failed", provider=provider.name)

    async def start(self) -> None:
        for provider in self._providers.values():
            await provider.start()

    async def aclose(self) -> None:
        for slot in self._slots.values():
            await slot.aclose()
        await asyncio.gather(*self._closing, return_exceptions=True)
