"""speakd.providers.fallback: where the rest of a cut say starts, the circuit breaker's states,
and one say through scripted providers (each word one 20 ms frame with an exact word mark), so
what the caller would hear is the words in order. Stand-in and recorded tests: tests/providers
and tests/integration test_failover.py."""

from __future__ import annotations

import asyncio
import re

import pytest

from speakd.audio import AudioFormat
from speakd.errors import ProviderError, UnsupportedLanguage
from speakd.providers.base import AudioChunk, Provider, SynthesisRequest
from speakd.providers.fallback import Breaker, BreakerState, Failover, FailoverSettings, resume_at

FMT = AudioFormat("ulaw", 8000)
TEXT = "one two three four five six"


# -- resume_at -----------------------------------------------------------------------------------


def test_resume_at_the_first_word_whose_marks_had_not_come():
    marks = [(3, 200), (7, 400), (13, 600)]  # "one" by 200 ms, "two" by 400, "three" by 600
    assert resume_at(TEXT, marks, 650) == TEXT.index("four")
    assert resume_at(TEXT, marks, 450) == TEXT.index("three")  # "three" half arrived: all of it again
    assert resume_at(TEXT, [], 0) == 0
    assert resume_at(TEXT, [(len(TEXT), 900)], 900) == len(TEXT)


def test_resume_at_without_marks_errs_towards_a_word_said_twice():
    # 11 characters a second: 1 s reaches "one two thr" -> "three" again, never "four".
    assert resume_at(TEXT, [], 1000) == TEXT.index("three")
    assert resume_at(TEXT, [], 700) == TEXT.index("three")  # 7 chars: "one two" whole
    assert resume_at(TEXT, [], 600) == TEXT.index("two")  # 6 chars: "one tw": "two" again
    assert resume_at(TEXT, [], 60_000) == len(TEXT)
    assert resume_at("  lead", [], 0) == 2  # never a blank start


# -- the breaker ---------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_n_failures_in_a_row_and_one_say_tries_it_after_its_cool_off():
    clock = Clock()
    breaker = Breaker(3, 30.0, clock)
    for _ in range(2):
        assert breaker.take()
        breaker.failed()
    assert breaker.take()
    breaker.succeeded()  # a success in between: the count starts again
    for _ in range(3):
        assert breaker.take()
        breaker.failed()
    assert breaker.state is BreakerState.OPEN and not breaker.take()
    clock.now += 29.9
    assert not breaker.available()
    clock.now += 0.2
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.take()  # this say tries it ...
    assert not breaker.take()  # ... and no other meanwhile
    breaker.failed()  # one failure while half-open opens it again
    assert breaker.state is BreakerState.OPEN
    clock.now += 30.1
    assert breaker.take()
    breaker.released()  # that say was flushed: no verdict, another may try
    assert breaker.take()
    breaker.succeeded()
    assert breaker.state is BreakerState.CLOSED and breaker.failures == 0


# -- one say through scripted providers ---------------------------------------------------------


class Words(Provider):
    """One 20 ms frame per word, filled with ``letter``, marked at the word's end. ``fail_after``:
    a ProviderError after that many words; ``stall_after``: silent after that many (until
    closed); ``empty``: an answer with no audio; ``languages``: what it speaks."""

    def __init__(self, name: str, letter: bytes, *, languages: tuple[str, ...] = ("en-US",)) -> None:
        self.name = name
        self.letter = letter
        self.languages = languages
        self.fail_after: int | None = None
        self.stall_after: int | None = None
        self.empty = False
        self.requests: list[SynthesisRequest] = []

    def check(self, language, voice_id, payload_type="text"):
        if language not in self.languages:
            raise UnsupportedLanguage(f"{self.name} does not speak {language}")

    def voice_for(self, language, voice_id, model=""):
        return voice_id or f"{self.name}-default"

    async def synthesize(self, request):
        self.requests.append(request)
        if self.empty:
            return
        for i, word in enumerate(re.finditer(r"\S+", request.text)):
            if i == self.fail_after:
                raise ProviderError(f"{self.name}: the audio stream was cut off")
            if i == self.stall_after:
                await asyncio.Event().wait()
            yield AudioChunk(self.letter * 160, FMT, marks=((word.end(), 160),))
            await asyncio.sleep(0)


def failover(*providers: Words, fallback: tuple[str, ...] = (), **settings) -> Failover:
    by_name = {p.name: p for p in providers}
    names = fallback or tuple(by_name)
    return Failover(FailoverSettings(names, **settings), by_name.__getitem__)


async def hear(failover: Failover, own: Provider, text: str = TEXT, **request):
    """(frames' letters, word marks as a session would place them, who spoke)."""
    spoke: list[tuple[str, str]] = []
    frames, marks = [], []
    request = SynthesisRequest(text, request.pop("language", "en-US"), request.pop("voice_id", "v1"), **request)
    async for chunk in failover.synthesize(own, request, spoke=lambda p, v: spoke.append((p, v))):
        for chars, _sample in chunk.marks:
            marks.append(text[:chars].split()[-1])
        frames.append(chunk.data[::160])
    return b"".join(frames), marks, spoke


async def test_a_provider_cut_mid_say_is_continued_by_the_next_from_the_first_unheard_word():
    own, gcp, piper = Words("elevenlabs", b"E"), Words("gcp", b"G"), Words("piper", b"P")
    own.fail_after = 2
    letters, marks, spoke = await hear(failover(own, gcp, piper, fallback=("gcp", "piper")), own)
    assert letters == b"EEGGGG"  # each word once: two by elevenlabs, the other four by gcp
    assert marks == TEXT.split()  # the marks count characters of the whole say
    assert gcp.requests[0].text == "three four five six"
    assert (gcp.requests[0].voice_id, gcp.requests[0].model) == ("", "")  # its default voice
    assert spoke == [("elevenlabs", "v1"), ("gcp", "gcp-default")]
    assert piper.requests == []


async def test_failures_before_any_audio_go_on_with_the_next_at_once():
    own, gcp, piper = Words("elevenlabs", b"E"), Words("gcp", b"G"), Words("piper", b"P")
    own.fail_after = 0
    gcp.empty = True  # an empty answer is a failure too
    letters, _marks, spoke = await hear(failover(own, gcp, piper, fallback=("gcp", "piper")), own)
    assert letters == b"P" * 6
    assert spoke == [("piper", "piper-default")]
    assert [r.text for r in (*own.requests, *gcp.requests, *piper.requests)] == [TEXT] * 3


async def test_no_first_audio_and_a_stall_are_failures_within_their_timeouts():
    own, gcp, piper = Words("elevenlabs", b"E"), Words("gcp", b"G"), Words("piper", b"P")
    own.stall_after = 0
    gcp.stall_after = 3
    chain = failover(own, gcp, piper, fallback=("gcp", "piper"), first_audio_timeout=0.2, stall_timeout=0.2)
    started = asyncio.get_running_loop().time()
    letters, _marks, spoke = await hear(chain, own)
    assert letters == b"GGGPPP"
    assert asyncio.get_running_loop().time() - started < 1.5
    assert [p for p, _ in spoke] == ["gcp", "piper"]


async def test_the_last_provider_left_is_waited_for_and_its_failure_fails_the_say_with_every_reason():
    own, piper = Words("elevenlabs", b"E"), Words("piper", b"P")
    own.fail_after = 1
    piper.fail_after = 2
    with pytest.raises(ProviderError) as info:
        await hear(failover(own, piper, fallback=("piper",)), own)
    assert "elevenlabs: the audio stream was cut off" in info.value.message
    assert "piper: the audio stream was cut off" in info.value.message


async def test_providers_that_cannot_speak_the_language_are_not_asked():
    own, gcp, piper = Words("elevenlabs", b"E", languages=("de-DE",)), Words("gcp", b"G"), Words("piper", b"P")
    gcp.languages = ("de-DE",)
    own.fail_after = 0
    letters, _marks, _spoke = await hear(failover(own, gcp, piper, fallback=("gcp", "piper")), own, language="de-DE")
    assert letters == b"G" * 6 and piper.requests == []


async def test_ssml_cut_mid_say_is_not_continued():
    own, gcp = Words("elevenlabs", b"E"), Words("gcp", b"G")
    own.fail_after = 2
    with pytest.raises(ProviderError, match="cut off"):
        await hear(failover(own, gcp, fallback=("gcp",)), own, payload_type="ssml")
    assert gcp.requests == []


async def test_an_open_breaker_skips_its_provider_until_one_say_tries_it_after_the_cool_off():
    clock = Clock()
    own, gcp = Words("elevenlabs", b"E"), Words("gcp", b"G")
    chain = Failover(FailoverSettings(("gcp",), breaker_failures=5, breaker_cool_off=30.0), {"gcp": gcp}.get, clock)
    own.fail_after = 0
    for _ in range(5):
        assert (await hear(chain, own))[0] == b"G" * 6
    assert len(own.requests) == 5 and chain.degraded() == ["elevenlabs"]
    clock.now += 29
    assert (await hear(chain, own))[0] == b"G" * 6
    assert len(own.requests) == 5, "no request during the cool-off"
    clock.now += 2
    own.fail_after = None
    assert (await hear(chain, own))[0] == b"E" * 6  # the one say that tries it again
    assert len(own.requests) == 6 and chain.degraded() == []


# -- a session's say through it --------------------------------------------------------------------


async def _say_through_session(own: Words, chain: Failover | None):
    from harness.fakes import SinkTransport

    from speakd.media.playout import Playout
    from speakd.sessions.says import SayItem
    from speakd.sessions.session import Session
    from speakd.store.records import Speaking

    record = Speaking("s1", "c", "call", "ch", "en-US", own.name, "", "out", "active", "t", "t")
    saved: list[dict] = []

    async def save(item):
        saved.append(item.row())

    sink = SinkTransport(speed=10)
    await sink.start()
    session = Session(record, own, "ulaw", Playout(lead_ms=1500, mark_every_ms=100), save, failover=chain)
    session.start_synthesis()
    session.start_playout(sink)
    item = session.new_say(TEXT)
    session.enqueue(item)
    try:
        async with asyncio.timeout(5):
            while not item.final:
                await asyncio.sleep(0.005)
    finally:
        await session.close()
        await sink.aclose()
    assert SayItem.from_row(saved[-1]).spoken_by == item.spoken_by  # stored as it is shown
    return item, sink.played_letters()


async def test_a_say_names_who_spoke_it_in_order():
    own, gcp = Words("elevenlabs", b"E"), Words("gcp", b"G")
    item, _heard = await _say_through_session(own, None)
    assert item.spoken_by == [{"provider": "elevenlabs", "voice_id": "elevenlabs-default"}]
    own.fail_after = 4
    item, heard = await _say_through_session(own, failover(own, gcp, fallback=("gcp",)))
    assert heard == b"EEEEGG" and str(item.status) == "played" and item.heard_text == TEXT
    assert item.to_dict()["spoken_by"] == [
        {"provider": "elevenlabs", "voice_id": "elevenlabs-default"},
        {"provider": "gcp", "voice_id": "gcp-default"},
    ]


async def test_the_metrics_show_each_breaker_and_count_the_says_that_moved_on():
    from speakd.metrics import Metrics

    metrics = Metrics()
    own, gcp = Words("elevenlabs", b"E"), Words("gcp", b"G")
    chain = metrics.watch_failover(failover(own, gcp, fallback=("gcp",), breaker_failures=1))
    own.fail_after = 2
    await hear(chain, own)
    text = metrics.exposition("")[0].decode()
    assert 'speakd_provider_failovers_total{provider="elevenlabs",stage="mid_say"} 1.0' in text
    assert 'speakd_provider_breaker_state{provider="elevenlabs",state="open"} 1.0' in text
    assert 'speakd_provider_breaker_state{provider="gcp",state="closed"} 1.0' in text


class CutInAWord(Words):
    """Two words and the start of a third in one chunk (marks at the two word ends), then cut."""

    async def synthesize(self, request):
        self.requests.append(request)
        ends = [m.end() for m in re.finditer(r"\S+", request.text)]
        yield AudioChunk(self.letter * 160 * 2 + b"x" * 80, FMT, marks=((ends[0], 160), (ends[1], 320)))
        raise ProviderError(f"{self.name}: the audio stream was cut off")


async def test_the_start_of_a_word_whose_end_never_came_is_not_heard():
    own, gcp = CutInAWord("elevenlabs", b"E"), Words("gcp", b"G")
    letters, marks, _spoke = await hear(failover(own, gcp, fallback=("gcp",)), own)
    assert letters == b"EEGGGG"  # not a fragment of "three" before gcp says it whole
    assert marks == TEXT.split()
    assert gcp.requests[0].text == "three four five six"


async def test_audio_after_the_last_mark_is_passed_on_at_the_end():
    own = Words("elevenlabs", b"E")

    async def with_tail(request):
        async for chunk in Words.synthesize(own, request):
            yield chunk
        yield AudioChunk(b"T" * 160, FMT)  # trailing silence, no mark

    own.synthesize = with_tail
    letters, _marks, _spoke = await hear(failover(own, Words("gcp", b"G"), fallback=("gcp",)), own)
    assert letters == b"E" * 6 + b"T"


def test_a_part_passes_audio_on_up_to_its_last_mark_within_it_and_holds_the_rest():
    from speakd.providers.fallback import _Part

    part = _Part(offset=10)
    first = part.take(AudioChunk(b"a" * 100, FMT, marks=((5, 60), (9, 130))))  # 9's end is not here yet
    assert (len(first.data), first.marks) == (60, ((15, 60),))
    part.passed(first)
    second = part.take(AudioChunk(b"b" * 100, FMT))
    assert (second.data, second.marks) == (b"a" * 40 + b"b" * 30, ((19, 70),))
    part.passed(second)
    assert part.marks == [(5, 8), (9, 16)] and part.passed_ms == 16  # ms at 8 kHz, this part's characters
    rest = part.rest()
    assert rest is not None and rest.data == b"b" * 70 and part.rest() is None
