"""Voices, languages and the plumbing the cloud providers share.

* :func:`parse_voice` / :func:`resolve_voice`: the peer form ``Provider.Model.VoiceId``
  (``AWS.Polly.Joanna-Neural``, ``ElevenLabs.eleven_flash_v2_5.<id>``,
  ``Google.en-US-Chirp3-HD-Charon``) split into provider name, model and voice id. A plain voice
  id passes through unchanged.
* :func:`list_voices_cached`: a provider's own voice list, cached with a TTL;
  :func:`list_voices_of`: those of a registry's providers, as ``GET /v1.0/voices`` lists them.
* :func:`resilient_stream`: the failure behaviour every cloud provider shares: first-byte
  timeout, one retry while nothing has been yielded, a stall timeout between chunks, and a
  :class:`~speakd.errors.ProviderError` with a clear message for anything else. Audio already
  yielded is never replayed.
* :class:`Section`: typed reads of a provider config section whose values may come from TOML
  (typed) or from ``SPEAKD_<PROVIDER>_<KEY>`` variables (always strings).

Nothing here imports a provider SDK.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from speakd.errors import InvalidRequest, ProviderError, ProviderNotConfigured, UnsupportedLanguage
from speakd.languages import language_matches, parse_language_tag, primary_language
from speakd.parsing import parse_bool, parse_table
from speakd.provider_names import PROVIDER_NAMES
from speakd.providers.base import Provider, Voice

if TYPE_CHECKING:
    from speakd.providers import ProviderRegistry

log = structlog.get_logger(__name__)

# ---------------------------------------------------------------------------------------------
# Peer voice form
# ---------------------------------------------------------------------------------------------

# What peers call a provider (lowercased) -> its speakd name; every speakd name stands for itself.
PROVIDER_ALIASES: dict[str, str] = {name: name for name in PROVIDER_NAMES} | {
    "amazon": "aws",
    "polly": "aws",
    "google": "gcp",
    "eleven": "elevenlabs",
    "11labs": "elevenlabs",
}


@dataclass(frozen=True, slots=True)
class ParsedVoice:
    provider: str | None
    """speakd provider name (``aws``, ``gcp``, ``elevenlabs``, ``piper``), None for a plain id."""
    model: str
    voice_id: str


def parse_voice(voice: str) -> ParsedVoice:
    """Split ``Provider.Model.VoiceId`` (or ``Provider.VoiceId``); a plain id passes through.

    Only a first part naming a known provider makes the peer form, so voice ids that contain
    dots of their own are not mangled.
    """
    voice = (voice or "").strip()
    head, sep, rest = voice.partition(".")
    provider = PROVIDER_ALIASES.get(head.lower()) if sep else None
    if provider is None or not rest:
        return ParsedVoice(None, "", voice)
    model, sep, voice_id = rest.partition(".")
    if not sep:
        # ``Google.en-US-Chirp3-HD-Charon``: provider and voice, no model.
        return ParsedVoice(provider, "", model)
    if not voice_id:
        raise InvalidRequest(f"voice_id '{voice}' has an empty voice after the model")
    return ParsedVoice(provider, model, voice_id)


def resolve_voice(provider: str | None, voice: str) -> ParsedVoice:
    """The provider, model and voice a ``say``/session asks for.

    ``provider`` is the request's ``provider`` field (None/empty when omitted). A peer-form voice
    names its provider; naming another one in ``provider`` is a 400.
    """
    parsed = parse_voice(voice)
    if parsed.provider is None:
        return ParsedVoice(provider or None, "", parsed.voice_id)
    if provider and provider != parsed.provider:
        raise InvalidRequest(f"voice_id '{voice}' is a {parsed.provider} voice but provider '{provider}' was requested")
    return parsed


def split_voice(provider_name: str, voice_id: str, model: str = "") -> tuple[str, str]:
    """(model, voice id) for a provider given a voice that may still be in peer form."""
    parsed = parse_voice(voice_id)
    if parsed.provider is None:
        return model, parsed.voice_id
    if parsed.provider != provider_name:
        raise InvalidRequest(f"voice_id '{voice_id}' is a {parsed.provider} voice, not a {provider_name} one")
    return (parsed.model or model), parsed.voice_id


# ---------------------------------------------------------------------------------------------
# Languages
# ---------------------------------------------------------------------------------------------


def pick_locale(provider: str, language: str, locales: Mapping[str, Any]) -> str:
    """The key of ``locales`` for ``language`` (``de`` → ``de-DE``), or UnsupportedLanguage."""
    lang = parse_language_tag(language)
    if lang in locales:
        return lang
    if "-" not in lang:
        for locale in locales:
            if primary_language(locale) == lang:
                return locale
    raise UnsupportedLanguage(f"provider '{provider}' does not speak language '{language}'")


# ---------------------------------------------------------------------------------------------
# Config sections
# ---------------------------------------------------------------------------------------------


class Section:
    """A provider config section; values may be TOML-typed or env strings."""

    def __init__(self, provider: str, section: Mapping[str, Any]) -> None:
        self.provider = provider
        self.data = {str(k).lower(): v for k, v in section.items()}

    def str(self, key: str, default: str = "") -> str:
        value = self.data.get(key)
        if value is None:
            return default
        return str(value).strip()

    def float(self, key: str, default: float) -> float:
        value = self.data.get(key)
        if value is None or value == "":
            return default
        try:
            result = float(value)
        except (TypeError, ValueError):
            raise ProviderNotConfigured(
                f"{self.provider}: '{key}' must be a number of seconds, not {value!r}"
            ) from None
        if result <= 0:
            raise ProviderNotConfigured(f"{self.provider}: '{key}' must be greater than 0")
        return result

    def int(self, key: str, default: int, choices: tuple[int, ...] = ()) -> int:
        value = self.data.get(key)
        if value is None or value == "":
            return default
        try:
            result = int(value)
        except (TypeError, ValueError):
            raise ProviderNotConfigured(f"{self.provider}: '{key}' must be an integer, not {value!r}") from None
        if choices and result not in choices:
            raise ProviderNotConfigured(f"{self.provider}: '{key}' must be one of {list(choices)}, not {result}")
        return result

    def bool(self, key: str, default: bool) -> bool:
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        try:
            return parse_bool(str(value))
        except ValueError:
            raise ProviderNotConfigured(f"{self.provider}: '{key}' must be true or false, not {value!r}") from None

    def table(self, key: str) -> dict[str, str]:
        """A TOML table, or ``k=v,k2=v2`` from the environment."""
        value = self.data.get(key)
        if value is None or value == "":
            return {}
        if isinstance(value, Mapping):
            return {str(k): str(v) for k, v in value.items()}
        try:
            return parse_table(str(value))
        except ValueError:
            raise ProviderNotConfigured(f"{self.provider}: '{key}' must look like 'de-DE=Vicki,fr-FR=Lea'") from None


@dataclass(frozen=True)
class Timeouts:
    connect: float = 3.0
    """Seconds to open the connection to the provider."""
    first_byte: float = 6.0
    """Seconds from the start of a request to its first audio byte (connecting included)."""
    read: float = 10.0
    """Seconds the stream may stall between two chunks once audio is flowing."""
    retries: int = 1
    """Retries of a request that failed before any audio was yielded."""

    @classmethod
    def from_section(cls, section: Section) -> Timeouts:
        return cls(
            connect=section.float("connect_timeout", cls.connect),
            first_byte=section.float("first_byte_timeout", cls.first_byte),
            read=section.float("read_timeout", cls.read),
            retries=section.int("retries", cls.retries, choices=(0, 1, 2, 3)),
        )


# ---------------------------------------------------------------------------------------------
# Failure behaviour
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Failure:
    message: str
    retryable: bool


class ConnectTimeout(Exception):
    """Raised by a provider attempt when the connection could not be opened in time."""


def credentials_rejected(provider: str, detail: str) -> Failure:
    return Failure(f"{provider}: the credentials were rejected by the provider ({detail})", retryable=False)


async def resilient_stream(
    provider: str,
    attempt: Callable[[], AsyncIterator[Any]],
    classify: Callable[[BaseException], Failure],
    timeouts: Timeouts,
    size: Callable[[Any], int] = len,
) -> AsyncIterator[Any]:
    """Yield the audio of ``attempt()`` with speakd's failure behaviour.

    ``attempt`` opens one request and iterates its audio; it runs in the caller's task (no
    helper tasks, so SDKs that bind state to a task are safe). Before the first byte, a timeout
    or a retryable failure opens one new request (``timeouts.retries``); after it, any failure
    or a stall longer than ``timeouts.read`` ends the stream with a ProviderError saying it was
    cut off — what was yielded is never sent again. Cancellation propagates and closes the
    request. ``size`` measures an item: bytes by default; an attempt may yield AudioChunks.
    """
    failures: list[str] = []
    for number in range(1, timeouts.retries + 2):
        stream = attempt()
        failure: Failure | None = None
        yielded = 0
        try:
            try:
                async with asyncio.timeout(timeouts.first_byte):
                    first = await anext(stream)
            except StopAsyncIteration:
                failure = Failure(f"{provider}: the provider returned no audio", retryable=False)
            except TimeoutError:
                failure = Failure(
                    f"{provider}: no audio within the first-byte timeout of {timeouts.first_byte:g} s",
                    retryable=True,
                )
            except ConnectTimeout as exc:
                failure = Failure(
                    f"{provider}: could not connect within {timeouts.connect:g} s ({exc})", retryable=True
                )
            except Exception as exc:
                failure = classify(exc)
            if failure is None:
                yielded = size(first)
                yield first
                while True:
                    try:
                        async with asyncio.timeout(timeouts.read):
                            chunk = await anext(stream)
                    except StopAsyncIteration:
                        return
                    except TimeoutError:
                        raise ProviderError(
                            f"{provider}: the audio stream stalled for {timeouts.read:g} s after "
                            f"{yielded} bytes and was abandoned"
                        ) from None
                    except Exception as exc:
                        detail = classify(exc).message.removeprefix(f"{provider}: ")
                        raise ProviderError(
                            f"{provider}: the audio stream was cut off after {yielded} bytes: {detail}"
                        ) from exc
                    if size(chunk):
                        yielded += size(chunk)
                        yield chunk
        finally:
            await _close_quietly(provider, stream)
        failures.append(failure.message)
        if not failure.retryable or number > timeouts.retries:
            break
        log.warning("provider_retry", provider=provider, attempt=number, reason=failure.message)
    message = failures[-1]
    if len(failures) > 1:
        message += f" (tried {len(failures)} times)"
    raise ProviderError(message)


async def _close_quietly(provider: str, stream: AsyncIterator[bytes]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.debug("provider_stream_close_failed", provider=provider, error=repr(exc))


def http_failure(provider: str, status: int | None, detail: str) -> Failure:
    """Failure for an HTTP status from a provider (auth, throttling, server errors)."""
    if status in (401, 403):
        return credentials_rejected(provider, f"HTTP {status}: {detail}")
    if status is not None and (status >= 500 or status in (408, 429)):
        return Failure(f"{provider}: the provider failed with HTTP {status}: {detail}", retryable=True)
    return Failure(f"{provider}: the provider refused the request with HTTP {status}: {detail}", retryable=False)


# ---------------------------------------------------------------------------------------------
# Voice lists
# ---------------------------------------------------------------------------------------------

DEFAULT_VOICE_CACHE_TTL = 300.0
_voice_cache: dict[tuple[int, str], tuple[float, list[Voice]]] = {}
_voice_locks: dict[tuple[int, str], asyncio.Lock] = {}


async def list_voices_cached(provider: Provider, language: str | None = None, ttl: float | None = None) -> list[Voice]:
    """``provider.list_voices(language)`` cached for ``ttl`` seconds (the provider's
    ``voice_cache_ttl`` attribute, else 300 s). Failures are not cached."""
    if ttl is None:
        ttl = float(getattr(provider, "voice_cache_ttl", DEFAULT_VOICE_CACHE_TTL))
    key = (id(provider), parse_language_tag(language) if language else "")
    now = time.monotonic()
    hit = _voice_cache.get(key)
    if hit is not None and now - hit[0] < ttl:
        return hit[1]
    lock = _voice_locks.setdefault(key, asyncio.Lock())
    async with lock:
        hit = _voice_cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < ttl:
            return hit[1]
        voices = await provider.list_voices(key[1] or None)
        _voice_cache[key] = (time.monotonic(), voices)
        return voices


async def list_voices_of(registry: ProviderRegistry, provider: str, language: str) -> list[Voice]:
    """``GET /v1.0/voices``: the voices of ``provider`` (a name or an alias) in the registry, or
    with ``provider`` "" of every configured provider, one that fails left out (and logged).
    ``language``: a parsed tag, or "" for every language."""
    if provider:
        name = PROVIDER_ALIASES.get(provider.lower(), provider.lower())
        voices = await list_voices_cached(registry.get(name), language or None)  # ProviderNotConfigured: 400
    else:
        providers = list(registry)
        results = await asyncio.gather(
            *(list_voices_cached(p, language or None) for p in providers), return_exceptions=True
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


def clear_voice_cache() -> None:
    _voice_cache.clear()
