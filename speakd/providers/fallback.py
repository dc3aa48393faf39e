"""Speech that survives its provider: a say goes on with the next provider of ``[tts] fallback``
when the one speaking it fails, and a provider that keeps failing is skipped for a while.

:class:`Failover` is what a session synthesizes through when a fallback list is configured
(without one, sessions call their provider directly, as before). For one say it tries the
session's own provider (or its streaming text input), then each fallback provider, each with its
default voice for the session's language (its ``voices`` table, if it maps one):

* before the first audio, an error, an empty answer or no audio within ``first_audio_timeout`` is
  a failure, and the next provider is asked at once;
* once audio flows, a cut stream or one silent for ``stall_timeout`` is a failure, and the next
  provider speaks the rest of the text from the first word whose audio had not arrived
  (:func:`resume_at`), so the caller hears the text once, not restarted and nothing skipped. The
  audio of a provider that gives word marks is passed on up to its last mark (:class:`_Part`),
  so no fragment of that word is heard before the next provider says it. The word marks of the
  chunks it yields count characters of the say's whole text, whoever spoke them.

The timeouts apply only while another provider is left to go to: the last one is waited for
(its own ``first_byte_timeout`` / ``read_timeout``), as a say without fallback is.

Each provider has a :class:`Breaker`: after ``breaker_failures`` failures in a row it is skipped,
no time lost on it, for ``breaker_cool_off`` seconds; then one say tries it (half-open): its
success closes the breaker, its failure opens it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

import structlog

from speakd.audio import AudioFormat
from speakd.config import TtsConfig
from speakd.errors import InvalidRequest, ProviderError
from speakd.providers.base import AudioChunk, Provider, SynthesisRequest, TextStream

log = structlog.get_logger(__name__)

# With no word marks from the provider, what arrived is read at this speaking rate: slower than
# voices speak (Piper's about 18 characters a second, ElevenLabs' about 15), so a word may be
# said twice but none is skipped.
UNALIGNED_CHARS_PER_S = 11
_SPACE = re.compile(r"\s*")


# -- where the rest of a say starts ------------------------------------------------------------------


def resume_at(text: str, marks: Sequence[tuple[int, int]], received_ms: int) -> int:
    """Where in ``text`` the rest of a cut say starts: the first word whose audio had not all
    arrived after ``received_ms`` of it. ``marks``: (characters of ``text`` spoken, ms into the
    audio by then), as the provider gave them; none: estimated at :data:`UNALIGNED_CHARS_PER_S`,
    the word under the estimate said again."""
    if marks:
        heard = max((chars for chars, at_ms in marks if at_ms <= received_ms), default=0)
    else:
        heard = min(len(text), received_ms * UNALIGNED_CHARS_PER_S // 1000)
        while 0 < heard < len(text) and not text[heard - 1].isspace() and not text[heard].isspace():
            heard -= 1  # inside a word: all of it again
    heard = min(max(heard, 0), len(text))
    return _SPACE.match(text, heard).end()  # type: ignore[union-attr]


# -- the circuit breaker ----------------------------------------------------------------------------


class BreakerState(StrEnum):
    CLOSED = "closed"  # used
    OPEN = "open"  # skipped until its cool-off has passed
    HALF_OPEN = "half_open"  # its cool-off passed: the next say tries it, one at a time


class Breaker:
    """One provider's breaker (pure state; ``clock`` in seconds). Shared by every session: all
    on one event loop, so no lock."""

    def __init__(self, failures_to_open: int, cool_off_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures_to_open = failures_to_open
        self.cool_off_s = cool_off_s
        self.clock = clock
        self.failures = 0  # in a row
        self._opened_at: float | None = None
        self._probing = False  # a say is trying it while half-open

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self.clock() - self._opened_at < self.cool_off_s:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    def available(self) -> bool:
        """Whether a say could use it now (nothing changes: see :meth:`take`)."""
        state = self.state
        return state is BreakerState.CLOSED or (state is BreakerState.HALF_OPEN and not self._probing)

    def take(self) -> bool:
        """A say is to use it: True if it may (half-open: this say is the one that tries it)."""
        if not self.available():
            return False
        if self.state is BreakerState.HALF_OPEN:
            self._probing = True
        return True

    def succeeded(self) -> None:
        self.failures = 0
        self._opened_at = None
        self._probing = False

    def failed(self) -> None:
        self.failures += 1
        if self._probing or self.failures >= self.failures_to_open:
            self._opened_at = self.clock()
        self._probing = False

    def released(self) -> None:
        """The say using it ended without a verdict (flushed, stopped): another may try it."""
        self._probing = False


# -- the settings -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FailoverSettings:
    """``[tts]``'s keys for it (speakd.config.TtsConfig has their defaults and checks)."""

    fallback: tuple[str, ...]
    first_audio_timeout: float = TtsConfig.first_audio_timeout
    stall_timeout: float = TtsConfig.stall_timeout
    breaker_failures: int = TtsConfig.breaker_failures
    breaker_cool_off: float = TtsConfig.breaker_cool_off

    @classmethod
    def of(cls, tts: TtsConfig) -> FailoverSettings:
        return cls(
            tuple(tts.fallback), tts.first_audio_timeout, tts.stall_timeout, tts.breaker_failures, tts.breaker_cool_off
        )


# -- one say through the providers ------------------------------------------------------------------


@dataclass(frozen=True)
class _Candidate:
    provider: Provider
    text_stream: TextStream | None = None  # the session's own, for a streamed speaking
    own: bool = False  # the session's provider, with the session's voice and model

    def synthesize(self, request: SynthesisRequest) -> AsyncIterator[AudioChunk]:
        if self.text_stream is not None:
            return self.text_stream.synthesize(request)
        if self.own:
            return self.provider.synthesize(request)
        # Another provider: its default voice for the language (its model too).
        return self.provider.synthesize(dataclasses.replace(request, voice_id="", model=""))

    def voice(self, request: SynthesisRequest) -> str:
        """The voice it speaks ``request`` with."""
        voice_id, model = (request.voice_id, request.model) if self.own else ("", "")
        try:
            return self.provider.voice_for(request.language, voice_id, model)
        except InvalidRequest:
            return voice_id


class Failover:
    """The providers of ``[tts] fallback`` after each session's own, with a breaker each.
    ``lookup(name)``: the provider sessions use under that name (ProviderNotConfigured if none)."""

    def __init__(
        self,
        settings: FailoverSettings,
        lookup: Callable[[str], Provider],
        clock: Callable[[], float] = time.monotonic,
        on_failover: Callable[[str, str], None] | None = None,
    ) -> None:
        self.settings = settings
        self._lookup = lookup
        self._clock = clock
        self._breakers: dict[str, Breaker] = {}
        # Told (provider, stage) each time a say leaves a provider: "before_audio" or "mid_say".
        self.on_failover = on_failover or (lambda provider, stage: None)

    def breaker(self, name: str) -> Breaker:
        if name not in self._breakers:
            s = self.settings
            self._breakers[name] = Breaker(s.breaker_failures, s.breaker_cool_off, self._clock)
        return self._breakers[name]

    def states(self) -> dict[str, BreakerState]:
        """Each provider's breaker as it stands (the fallback providers, and those sessions used)."""
        names = dict.fromkeys([*self.settings.fallback, *self._breakers])
        return {name: self.breaker(name).state for name in names}

    def degraded(self) -> list[str]:
        """The providers whose breaker is not closed (skipped, or about to be tried again)."""
        return [name for name, state in self.states().items() if state is not BreakerState.CLOSED]

    def _candidates(self, own: Provider, text_stream: TextStream | None, request: SynthesisRequest) -> list[_Candidate]:
        found = [_Candidate(own, text_stream, own=True)]
        for name in self.settings.fallback:
            if name == own.name:
                continue
            try:
                provider = self._lookup(name)
                provider.check(request.language, "", request.payload_type)
            except InvalidRequest as exc:  # not configured, or cannot speak this say
                log.debug("fallback_unsuitable", provider=name, reason=exc.message)
                continue
            found.append(_Candidate(provider))
        return found

    async def synthesize(
        self,
        own: Provider,
        request: SynthesisRequest,
        text_stream: TextStream | None = None,
        spoke: Callable[[str, str], None] = lambda provider, voice: None,
        failed: Callable[[str, str, str, str], None] = lambda provider, voice, stage, error: None,
    ) -> AsyncIterator[AudioChunk]:
        """The say's audio (see the module docstring); ``spoke(provider, voice)`` is told each
        time a provider starts speaking it, ``failed(provider, voice, stage, error)`` each time
        one fails on it. ProviderError when no provider is left."""
        candidates = self._candidates(own, text_stream, request)
        failures: list[str] = []
        offset = 0  # characters of request.text whose audio has come
        for index, candidate in enumerate(candidates):
            name = candidate.provider.name
            breaker = self.breaker(name)
            if not breaker.take():
                failures.append(f"{name}: skipped after {breaker.failures} failures in a row")
                log.info("provider_skipped", provider=name, state=str(breaker.state))
                continue
            last = not any(self.breaker(c.provider.name).available() for c in candidates[index + 1 :])
            text = request.text[offset:]
            attempt = dataclasses.replace(request, text=text)
            part = _Part(offset)
            verdict = False
            try:
                async with contextlib.aclosing(candidate.synthesize(attempt)) as chunks:  # type: ignore[type-var]
                    async for chunk in _timed(chunks, None if last else self.settings):
                        passed = part.take(chunk)
                        if passed.data and not part.passed_s:
                            spoke(name, candidate.voice(request))
                        part.passed(passed)
                        if passed.data or passed.marks:
                            yield passed
                if (rest := part.rest()) is not None:
                    part.passed(rest)
                    yield rest
            except ProviderError as exc:
                verdict = True
                breaker.failed()
                message = exc.message if exc.message.startswith(f"{name}:") else f"{name}: {exc.message}"
                failures.append(message)
                stage = "mid_say" if part.passed_s else "before_audio"
                failed(name, candidate.voice(request), stage, message)
                if part.passed_s and request.payload_type == "ssml":
                    # SSML cannot be cut at a character: the rest is not spoken again.
                    raise ProviderError(message) from exc
                offset += resume_at(text, part.marks, part.passed_ms)
                log.warning(
                    "provider_failed" if last else "provider_failed_over",
                    provider=name,
                    stage=stage,
                    error=message,
                    resume_at=offset,
                    breaker=str(breaker.state),
                )
                if not last:
                    self.on_failover(name, stage)
                if not request.text[offset:].strip():
                    return  # every word had come
            else:
                verdict = True
                breaker.succeeded()
                return
            finally:
                if not verdict:  # cancelled, or the consumer closed us: no verdict on the provider
                    breaker.released()
        if not failures:
            failures.append("no provider can speak it")
        raise ProviderError("; ".join(failures) if len(failures) > 1 else failures[0])


class _Part:
    """One provider's part of a say. Its audio is passed on up to its last word mark; what follows
    (the start of a word whose end has not come) is held back until the next mark or the end, so
    when it fails the caller hears no fragment of a word the next provider says again. A provider
    that gives no marks is passed on as it comes. Marks are moved to count characters of the say."""

    def __init__(self, offset: int) -> None:
        self.offset = offset  # characters of the say before this part's text
        self.marks: list[tuple[int, int]] = []  # (characters of this part's text, ms into what was passed on)
        self.passed_s = 0.0  # seconds of audio passed on
        self._held = b""
        self._held_marks: list[tuple[int, int]] = []  # (characters of the say, sample into what is held)
        self._format: AudioFormat | None = None
        self._aligned = False  # it has given a word mark

    @property
    def passed_ms(self) -> int:
        return round(self.passed_s * 1000)

    def take(self, chunk: AudioChunk) -> AudioChunk:
        """What of ``chunk`` (and of what was held before it) to pass on now."""
        width = chunk.format.bytes_per_sample
        data = self._held + chunk.data
        shift = len(self._held) // width
        marks = [*self._held_marks, *((chars + self.offset, sample + shift) for chars, sample in chunk.marks)]
        self._aligned = self._aligned or bool(marks)
        if self._aligned:  # up to the last mark within the audio
            cut = max((sample for _, sample in marks if sample * width <= len(data)), default=0)
        else:
            cut = len(data) // width
        self._held, self._format = data[cut * width :], chunk.format
        self._held_marks = [(chars, sample - cut) for chars, sample in marks if sample > cut]
        return dataclasses.replace(chunk, data=data[: cut * width], marks=tuple(m for m in marks if m[1] <= cut))

    def rest(self) -> AudioChunk | None:
        """At its end: what is still held."""
        if not (self._held or self._held_marks) or self._format is None:
            return None
        rest = AudioChunk(self._held, self._format, tuple(self._held_marks))
        self._held, self._held_marks = b"", []
        return rest

    def passed(self, chunk: AudioChunk) -> None:
        rate, start_ms = chunk.format.sample_rate, self.passed_s * 1000
        for chars, sample in chunk.marks:
            self.marks.append((chars - self.offset, round(start_ms + sample * 1000 / rate)))
        self.passed_s += len(chunk.data) / chunk.format.bytes_per_sample / rate


async def _timed(chunks: AsyncIterator[AudioChunk], settings: FailoverSettings | None) -> AsyncIterator[AudioChunk]:
    """``chunks`` with failover's timeouts (none: ``settings`` None); an empty answer is a failure."""
    if settings is None:
        got = False
        async for chunk in chunks:
            got = got or bool(chunk.data)
            yield chunk
        if not got:
            raise ProviderError("the provider returned no audio")
        return
    got = False
    while True:
        limit = settings.stall_timeout if got else settings.first_audio_timeout
        try:
            async with asyncio.timeout(limit):
                chunk = await anext(chunks)
        except StopAsyncIteration:
            if not got:
                raise ProviderError("the provider returned no audio") from None
            return
        except TimeoutError:
            what = "stalled: no audio for" if got else "no audio within"
            key = "stall_timeout" if got else "first_audio_timeout"
            raise ProviderError(f"{what} {limit:g} s ([tts] {key})") from None
        got = got or bool(chunk.data)
        yield chunk
