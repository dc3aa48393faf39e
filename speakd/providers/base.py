"""The provider interface: text in, an async stream of audio chunks out.

A provider is one module under ``speakd.providers`` that imports its SDK and nothing
imports that SDK anywhere else. The session layer only sees this interface:

* :meth:`Provider.check` validates language/voice/payload type before a session or
  ``say`` is accepted, so a bad request is a 400 and not a failure mid-call;
* :meth:`Provider.synthesize` is an async generator of raw audio chunks in
  :attr:`AudioChunk.format`. It is cancelled (``aclose()``/task cancel) on flush or stop,
  so it must not swallow :class:`asyncio.CancelledError` and must release its stream.

Providers that can produce telephony audio directly (8 kHz mu-law/a-law) should do so when
``request.codec`` asks for it: the session then skips resampling and encoding entirely.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

from speakd.audio import AudioFormat, Codec
from speakd.errors import InvalidRequest, either

# What a request's text is written in (not an RTP payload type: those are media.codec's).
PayloadType = Literal["text", "ssml"]
TEXT_PAYLOAD_TYPES: tuple[str, ...] = get_args(PayloadType)


@dataclass(frozen=True, slots=True)
class AudioChunk:
    data: bytes
    format: AudioFormat
    # Word marks from the provider's alignment, where it gives one: (characters of the
    # request text spoken, sample offset into this chunk by which they were).
    marks: tuple[tuple[int, int], ...] = ()
    # The provider's guess of when the next chunk of this stream comes (0: no guess):
    # the session holds a say back rather than start it and run dry.
    next_in_ms: int = 0
    # The provider's guess of the seconds of audio per second it can keep making for this stream
    # from now on, given its load (0: no guess): the session holds a say back if it is below real
    # time, whatever the stream's first chunks measured.
    share_rate: float = 0.0


@dataclass(frozen=True, slots=True)
class SynthesisRequest:
    text: str
    language: str
    voice_id: str
    """Provider voice id; empty means the provider's default voice for ``language``."""
    codec: Codec = "ulaw"
    """The RTP codec of the session: a provider may return exactly this at 8 kHz."""
    payload_type: PayloadType = "text"
    model: str = ""
    """Provider model, from a ``Provider.Model.VoiceId`` voice or the provider config."""
    deadline: Callable[[], float] | None = None
    """When (``time.monotonic()``) the next audio is needed to play without a gap; providers
    that share the host's CPU among sessions (Piper) serve the earliest first."""
    cache: bool = True
    """False: the text may be personal; its audio is neither kept nor served by the audio cache."""


class TextStream(abc.ABC):
    """One speaking stream's text-input connection to a provider (ElevenLabs ``stream-input``,
    Google ``StreamingSynthesize``), kept across the stream's chunks so that prosody carries
    over and no sentence pays for a new connection. Used one chunk at a time, in order.

    Cancelling :meth:`synthesize` (a reset or stop) must leave the stream usable for the next
    chunk: drop what the provider still buffers, or reconnect on next use. A provider that
    closes an idle connection (Google after a few seconds) is kept alive or reopened here,
    never by the caller."""

    @abc.abstractmethod
    def synthesize(self, request: SynthesisRequest) -> AsyncIterator[AudioChunk]:
        """This chunk's audio (``request.text``); marks count characters of ``request.text``."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Close the provider connection."""


@dataclass(frozen=True, slots=True)
class Voice:
    provider: str
    voice_id: str
    name: str
    languages: tuple[str, ...]
    gender: str = ""


class Provider(abc.ABC):
    """One TTS provider. Instances are shared by every session; they must be task-safe."""

    name: str
    supports_ssml: bool = False

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load models / open clients. Called once at daemon start."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release clients. Called once at daemon stop."""

    @abc.abstractmethod
    def check(self, language: str, voice_id: str, payload_type: str = "text") -> None:
        """Raise :class:`speakd.errors.InvalidRequest` (or a subclass) naming the provider and
        what is wrong if this provider cannot speak ``language`` with ``voice_id``."""

    def check_payload_type(self, payload_type: str) -> None:
        """For :meth:`check`: InvalidRequest unless ``payload_type`` is text, or SSML on a
        provider that :attr:`supports_ssml`."""
        if payload_type not in TEXT_PAYLOAD_TYPES:
            raise InvalidRequest(f"payload_type must be {either(TEXT_PAYLOAD_TYPES)}, not '{payload_type}'")
        if payload_type == "ssml" and not self.supports_ssml:
            raise InvalidRequest(f"provider '{self.name}' does not accept SSML: send payload_type 'text'")

    @abc.abstractmethod
    def synthesize(self, request: SynthesisRequest) -> AsyncIterator[AudioChunk]:
        """Stream audio for ``request``: an async generator, first chunk as early as possible."""

    def voice_for(self, language: str, voice_id: str, model: str = "") -> str:
        """The voice a request for ``language`` with ``voice_id`` is spoken with (``voice_id`` ""
        means the provider's default for the language): what a say item names as its speaker."""
        return voice_id

    def open_text_stream(self, language: str, voice_id: str, codec: Codec, model: str = "") -> TextStream | None:
        """A streaming text input for one speaking stream where the provider has one (None: each
        chunk of the stream is synthesized on its own)."""
        return None

    def rendering(self, request: SynthesisRequest) -> dict[str, str]:
        """What the sound of ``request`` depends on besides its text and this provider's name: the
        voice, model and language as resolved (a default voice named), the audio asked for, and
        every setting of this provider that changes the sound. The audio cache keys on it, so a
        provider that leaves a setting out plays a wrong rendering. The request's own fields here."""
        return {
            "language": request.language,
            "voice": request.voice_id,
            "model": request.model,
            "codec": request.codec,
            "payload_type": request.payload_type,
        }

    async def list_voices(self, language: str | None = None) -> list[Voice]:
        return []


class DelegatingProvider(Provider):
    """A provider standing for another (:attr:`inner`): every call goes to it, and attributes
    this class does not define are the inner provider's. A subclass overrides only what it adds;
    :meth:`synthesize` is always its own (what a wrapper adds is around the audio stream)."""

    def __init__(self, inner: Provider) -> None:
        self.inner = inner

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.inner.name

    @property
    def supports_ssml(self) -> bool:  # type: ignore[override]
        return self.inner.supports_ssml

    def __getattr__(self, attribute: str) -> Any:  # anything provider-specific
        if attribute == "inner":  # not set yet (during __init__): no recursion
            raise AttributeError(attribute)
        return getattr(self.inner, attribute)

    async def start(self) -> None:
        await self.inner.start()

    async def aclose(self) -> None:
        await self.inner.aclose()

    def check(self, language: str, voice_id: str, payload_type: str = "text") -> None:
        self.inner.check(language, voice_id, payload_type)

    def open_text_stream(self, language: str, voice_id: str, codec: Codec, model: str = "") -> TextStream | None:
        return self.inner.open_text_stream(language, voice_id, codec, model)

    def voice_for(self, language: str, voice_id: str, model: str = "") -> str:
        return self.inner.voice_for(language, voice_id, model)

    def rendering(self, request: SynthesisRequest) -> dict[str, str]:
        return self.inner.rendering(request)

    async def list_voices(self, language: str | None = None) -> list[Voice]:
        return await self.inner.list_voices(language)
