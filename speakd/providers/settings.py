"""A provider's config section read with types, and the settings every cloud provider takes from it.

Values may come from TOML (typed) or from ``SPEAKD_<PROVIDER>_<KEY>`` variables (always
strings); a bad one is a ProviderNotConfigured naming the key.

Every cloud provider (``[aws]``, ``[gcp]``, ``[elevenlabs]``) reads these keys alike
(:class:`CloudSettings`); each provider's module describes the others:

``connect_timeout``       seconds to connect (default 3).
``first_byte_timeout``    seconds from request to first audio byte (default 6).
``read_timeout``          seconds the stream may stall once audio flows (default 10).
``retries``               retries before any audio was yielded (default 1, at most 3).
``voices``                per-language default voices overriding the provider's built-in table: a
                          TOML table, e.g. ``{ "de-DE" = "Daniel" }``, or ``de-DE=Daniel,fr-FR=Remi``
                          from the environment.
``voice_cache_ttl``       seconds ``GET /v1.0/voices`` caches the voice list (default 300).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from speakd.errors import ProviderNotConfigured
from speakd.parsing import parse_bool, parse_table
from speakd.providers.catalogue import DEFAULT_VOICE_CACHE_TTL

_Number = TypeVar("_Number", int, float)


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
        result = self._number(key, float, "a number of seconds")
        if result is None:
            return default
        if result <= 0:
            raise ProviderNotConfigured(f"{self.provider}: '{key}' must be greater than 0")
        return result

    def int(self, key: str, default: int, choices: tuple[int, ...] = ()) -> int:
        result = self._number(key, int, "an integer")
        if result is None:
            return default
        if choices and result not in choices:
            raise ProviderNotConfigured(f"{self.provider}: '{key}' must be one of {list(choices)}, not {result}")
        return result

    def _number(self, key: str, kind: Callable[[Any], _Number], what: str) -> _Number | None:
        """``key`` read as ``kind``; None when unset or empty (the caller's default)."""
        value = self.data.get(key)
        if value is None or value == "":
            return None
        try:
            return kind(value)
        except (TypeError, ValueError):
            raise ProviderNotConfigured(f"{self.provider}: '{key}' must be {what}, not {value!r}") from None

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


@dataclass(frozen=True)
class CloudSettings:
    """The keys every cloud provider reads alike (see the module docstring)."""

    timeouts: Timeouts = Timeouts()
    voices: Mapping[str, str] = field(default_factory=dict)
    """The ``voices`` table as written: language -> voice, keys not parsed yet."""
    voice_cache_ttl: float = DEFAULT_VOICE_CACHE_TTL

    @classmethod
    def from_section(cls, section: Section) -> CloudSettings:
        return cls(
            timeouts=Timeouts.from_section(section),
            voices=section.table("voices"),
            voice_cache_ttl=section.float("voice_cache_ttl", DEFAULT_VOICE_CACHE_TTL),
        )
