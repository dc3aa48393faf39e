"""Session ordering, barge-in and say states with a scripted provider and a fake far end (no
Asterisk): what the call would have heard, and what each say reports about it.

The sink plays in real time or a few times faster; assertions are about order and bounds,
with slack for a busy machine.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re

import pytest
from harness.fakes import SinkTransport

from speakd.audio import AudioFormat
from speakd.errors import ProviderError
from speakd.media.playout import Playout
from speakd.providers.base import AudioChunk, Provider, SynthesisRequest
from speakd.sessions import session as session_module
from speakd.sessions.says import SayItem, SayStatus
from speakd.sessions.session import Session
from speakd.store.records import NOT_YET, TIME_FORMAT, Speaking

FMT = AudioFormat("ulaw", 8000)
MARK_MS = 100


def words(letter: str, count: int) -> str:
    """A say's text: ``count`` words, each spoken as one 20 ms frame filled with ``letter``."""
    return " ".join(f"{letter}{i:03d}" for i in range(count))


class ScriptedProvider(Provider):
    """One frame per word of the text, filled with the text's first letter, with an exact
    word alignment (word i is spoken by the end of frame i)."""

    name = "scripted"

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}  # letter -> held after 2 frames until set
        self.closed: list[str] = []
        self.fail_after: dict[str, int] = {}  # letter -> frames before a ProviderError
        self.crash_after: dict[str, int] = {}  # letter -> frames before a bug (RuntimeError)
        self.half_frame_first: set[str] = set()  # letters whose first chunk is half a frame

    def check(self, language, voice_id, payload_type="text"):
        pass

    async def synthesize(self, request: SynthesisRequest):
        letter = request.text[0]
        ends = [m.end() for m in re.finditer(r"\S+", request.text)]
        try:
            for i, end in enumerate(ends):
                gate = self.gates.get(letter)
                if gate is not None and i >= 2:
                    await gate.wait()
                if self.fail_after.get(letter) == i:
                    raise ProviderError(f"provider cut off {letter}")
                if self.crash_after.get(letter) == i:
                    raise RuntimeError(f"bug in {letter}")
                size = 80 if i == 0 and letter in self.half_frame_first else 160
                yield AudioChunk(letter.encode() * size, FMT, marks=((end, size),))
                await asyncio.sleep(0)
        finally:
            self.closed.append(letter)


def record() -> Speaking:
    return Speaking("s1", "c", "call", "ch", "en-US", "scripted", "", "out", "active", "t", "t")


def seconds(stamp: str) -> float:
    return dt.datetime.strptime(stamp, TIME_FORMAT).replace(tzinfo=dt.UTC).timestamp()


class Env:
    def __init__(self, provider: ScriptedProvider, sink: SinkTransport, session: Session) -> None:
        self.provider = provider
        self.sink = sink
        self.session = session
        self.saved: list[dict] = []  # rows handed to save_say, in order
        self.underruns: list[float] = []  # when the session counted a gap in the middle of a say

    def say(self, text: str) -> SayItem:
        item = self.session.new_say(text)
        self.session.enqueue(item)
        return item

    def saved_statuses(self, item: SayItem) -> list[str]:
        return [row["status"] for row in self.saved if row["say_id"] == item.say_id]

    def last_saved(self, item: SayItem) -> dict:
        return [row for row in self.saved if row["say_id"] == item.say_id][-1]

    async def stored(self, *items: SayItem) -> None:
        """Until each item's current state has been handed to save_say."""
        await until(lambda: all(any(r["say_id"] == i.say_id for r in self.saved) for i in items))
        await until(lambda: all(self.last_saved(i) == i.row() for i in items))

    def start_playout(self) -> None:
        self.session.start_playout(self.sink)


@pytest.fixture
async def make():
    """``await make(lead_ms=..., speed=..., playout=True)`` -> an Env with synthesis started."""
    made: list[Env] = []

    async def _make(
        *,
        lead_ms: int = 1500,
        mark_every_ms: int = MARK_MS,
        speed: float = 10,
        playout: bool = True,
        save_delay: float = 0.0,
        provider: ScriptedProvider | None = None,
        report_delay: float = 0.0,
    ) -> Env:
        sink = SinkTransport(speed=speed, report_delay=report_delay)
        await sink.start()
        env: Env

        async def save_say(item: SayItem) -> None:
            if save_delay:
                await asyncio.sleep(save_delay)  # a slow store
            env.saved.append(item.row())

        provider = provider or ScriptedProvider()
        underruns: list[float] = []
        session = Session(
            record(),
            provider,
            "ulaw",
            Playout(lead_ms=lead_ms, mark_every_ms=mark_every_ms),
            save_say,
            model="",
            on_underrun=lambda: underruns.append(asyncio.get_running_loop().time()),
        )
        env = Env(provider, sink, session)
        env.underruns = underruns
        session.start_synthesis()
        if playout:
            env.start_playout()
        made.append(env)
        return env

    yield _make
    for env in made:
        await asyncio.wait_for(env.session.close(), 10)
        await env.sink.aclose()
        assert env.sink.violations == []


async def until(check, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.002)


async def finished(*items: SayItem, timeout: float = 5.0) -> None:
    await until(lambda: all(item.final for item in items), timeout)


# -- ordering -----------------------------------------------------------------------------------


async def test_items_play_in_order_back_to_back(make):
    env = await make(speed=1)
    a, b, c = env.say(words("A", 10)), env.say(words("B", 5)), env.say(words("C", 5))
    await finished(a, b, c)
    assert env.sink.played_letters() == b"A" * 10 + b"B" * 5 + b"C" * 5
    assert env.sink.underruns() == []  # no gap between items: each was ready before the last ended
    assert [item.status for item in (a, b, c)] == [SayStatus.PLAYED] * 3


async def test_says_sent_while_initiating_play_once_the_media_path_exists(make):
    env = await make(playout=False)
    a, b = env.say(words("A", 30)), env.say(words("B", 20))
    await until(lambda: a.synthesized and b.synthesized)
    await asyncio.sleep(0.02)
    assert a.status == b.status == SayStatus.QUEUED  # synthesized, but nothing played yet
    env.start_playout()
    await finished(a, b)
    assert env.sink.played_letters() == b"A" * 30 + b"B" * 20
    assert env.sink.underruns() == []


# -- say states ---------------------------------------------------------------------------------


async def test_say_moves_queued_playing_played_with_ordered_play_times(make):
    env = await make(speed=1)
    env.sink.stall()  # the far end plays nothing yet: synthesized is not playing
    a = env.say(words("A", 10))
    assert a.status == SayStatus.QUEUED
    assert (a.tm_play_start, a.tm_play_end) == (NOT_YET, NOT_YET)
    await until(lambda: a.synthesized)
    await asyncio.sleep(0.05)
    assert a.status == SayStatus.QUEUED
    b = env.say(words("B", 5))
    seen = [a.status]
    env.sink.resume()
    async with asyncio.timeout(5):
        while not (a.final and b.final):
            if a.status != seen[-1]:
                seen.append(a.status)
            await asyncio.sleep(0.001)
    assert seen == [SayStatus.QUEUED, SayStatus.PLAYING, SayStatus.PLAYED]
    await env.stored(a, b)
    assert env.saved_statuses(a) == ["playing", "played"]
    assert env.saved_statuses(b) == ["playing", "played"]
    for item in (a, b):
        assert item.tm_queued <= item.tm_play_start <= item.tm_play_end < NOT_YET
        assert item.heard_chars == len(item.text) and item.heard_text == item.text
        assert item.played_ms == item.synthesized_ms == 20 * len(item.text.split())
    assert a.tm_play_end <= b.tm_play_start  # back to back: B starts as A ends
    # The times are when the far end played the audio (slack for a busy machine).
    played = env.sink.played
    assert abs(seconds(a.tm_play_start) - played[0].wall) < 0.05
    assert seconds(a.tm_play_end) >= played[9].wall
    assert abs(seconds(b.tm_play_start) - played[10].wall) < 0.05
    assert seconds(b.tm_play_end) >= played[14].wall


# -- flush --------------------------------------------------------------------------------------


async def test_flush_drops_queued_and_in_flight_audio_and_next_say_plays(make):
    env = await make()
    env.provider.gates["A"] = asyncio.Event()  # A stalls after 2 frames, as a slow provider would
    a, b = env.say(words("A", 50)), env.say(words("B", 5))
    await env.sink.wait_idle(2)
    assert env.sink.played_letters() == b"AA"
    assert a.status == SayStatus.PLAYING and b.status == SayStatus.QUEUED
    assert env.session.flush() == []  # no must-play say left
    env.provider.gates["A"].set()  # whatever A would still produce must never be sent
    c = env.say(words("C", 3))
    await finished(c)
    await asyncio.sleep(0.05)
    assert env.sink.played_after_flush() == b"CCC"  # nothing synthesized before the flush
    assert env.sink.played_letters() == b"AACCC"
    assert "A" in env.provider.closed  # the in-flight synthesis was cancelled and closed
    # A was cut after its two frames played; B never started.
    assert a.status == SayStatus.INTERRUPTED
    assert (a.played_ms, a.heard_text) == (40, "A000 A001")
    assert a.tm_play_start <= a.tm_play_end < NOT_YET
    assert b.status == SayStatus.INTERRUPTED
    assert (b.played_ms, b.heard_chars, b.tm_play_start, b.tm_play_end) == (0, 0, NOT_YET, NOT_YET)
    assert c.status == SayStatus.PLAYED
    await env.stored(a, b)
    assert env.last_saved(a)["status"] == env.last_saved(b)["status"] == "interrupted"


async def test_flush_mid_say_reports_what_the_far_end_played(make):
    env = await make(speed=5)
    a, b = env.say(words("A", 150)), env.say(words("B", 10))
    await until(lambda: len(env.sink.played) >= 40)
    assert env.session.flush() == []  # no must-play say left
    played_frames = env.sink.flush_points[-1]
    assert env.sink.played_letters() == b"A" * played_frames
    assert a.status == SayStatus.INTERRUPTED
    # What the say reports was heard is what the far end played, within a mark interval
    # (the frame in progress at the flush counts as played there).
    assert abs(a.played_ms - played_frames * 20) <= MARK_MS + 20
    heard_words = a.heard_text.split()
    assert a.heard_text == " ".join(heard_words) and heard_words == a.text.split()[: len(heard_words)]
    assert abs(len(heard_words) - played_frames) <= MARK_MS // 20 + 1
    assert a.heard_chars == a.chars_heard_by(a.played_ms)
    assert a.tm_play_start <= a.tm_play_end < NOT_YET
    assert (b.status, b.heard_chars, b.played_ms) == (SayStatus.INTERRUPTED, 0, 0)
    await env.stored(a, b)
    assert env.last_saved(a) == a.row() and env.last_saved(b) == b.row()
    # The session goes on.
    c = env.say(words("C", 5))
    await finished(c)
    await env.sink.wait_idle(played_frames + 5)
    assert env.sink.played_after_flush() == b"C" * 5
    assert c.status == SayStatus.PLAYED


async def test_a_flush_with_nothing_playing_changes_nothing(make):
    env = await make()
    a = env.say(words("A", 5))
    await finished(a)
    assert env.session.flush() == []
    assert a.status == SayStatus.PLAYED
    b = env.say(words("B", 5))
    await finished(b)
    await env.sink.wait_idle(10)
    assert env.sink.played_letters() == b"AAAAABBBBB"


# -- provider failures --------------------------------------------------------------------------


async def test_provider_failure_keeps_what_played_and_the_session_goes_on(make):
    env = await make()
    env.provider.fail_after["A"] = 3
    a, b = env.say(words("A", 10)), env.say(words("B", 2))
    await finished(a, b)
    await env.sink.wait_idle(5)
    assert env.sink.played_letters() == b"AAABB"  # nothing of A replayed, B still plays
    assert a.status == SayStatus.FAILED
    assert "cut off A" in a.error
    assert (a.played_ms, a.heard_text) == (60, "A000 A001 A002")  # the audio played stays counted
    assert a.tm_play_start <= a.tm_play_end < NOT_YET
    await env.stored(a, b)
    assert env.saved_statuses(a) == ["playing", "failed"]
    assert b.status == SayStatus.PLAYED


async def test_provider_failure_before_any_audio_fails_the_say(make):
    env = await make()
    env.provider.fail_after["A"] = 0
    a, b = env.say(words("A", 10)), env.say(words("B", 2))
    await finished(a, b)
    await env.sink.wait_idle(2)
    assert env.sink.played_letters() == b"BB"
    assert a.status == SayStatus.FAILED
    assert a.error == "provider cut off A"
    assert (a.heard_chars, a.played_ms, a.tm_play_start, a.tm_play_end) == (0, 0, NOT_YET, NOT_YET)
    await env.stored(a, b)
    assert env.last_saved(a)["error"] == "provider cut off A"
    assert b.status == SayStatus.PLAYED


async def test_a_provider_bug_fails_the_say_and_the_session_goes_on(make):
    env = await make()
    env.provider.crash_after["A"] = 2
    a, b = env.say(words("A", 10)), env.say(words("B", 2))
    await finished(a, b)
    assert a.status == SayStatus.FAILED and a.error == "RuntimeError: bug in A"
    assert a.played_ms == 40
    assert b.status == SayStatus.PLAYED


async def test_a_failure_after_less_than_a_frame_of_audio_stays_failed(make):
    env = await make()
    env.provider.half_frame_first.add("A")
    env.provider.fail_after["A"] = 1  # half a frame, then the provider gives up
    env.sink.stall()  # the far end is still playing something else
    a, b = env.say(words("A", 10)), env.say(words("B", 2))
    await finished(a)
    assert a.status == SayStatus.FAILED
    env.sink.resume()
    await finished(b)
    await env.sink.wait_idle(2)
    await asyncio.sleep(0.05)
    assert env.sink.played_letters() == b"BB"  # the half frame never reached the call
    assert a.status == SayStatus.FAILED and a.error == "provider cut off A"
    await env.stored(a, b)
    assert env.saved_statuses(a)[-1] == "failed"


# -- close --------------------------------------------------------------------------------------


async def test_close_reports_dropped_items(make):
    env = await make()
    env.provider.gates["A"] = asyncio.Event()
    a, b = env.say(words("A", 10)), env.say(words("B", 1))
    await asyncio.sleep(0.01)
    assert await env.session.close() == 2
    assert a.status == b.status == SayStatus.INTERRUPTED
    assert "A" in env.provider.closed


async def test_close_stores_every_says_final_state_before_it_returns(make):
    env = await make(save_delay=0.01)  # a slow store: close must wait for it
    a = env.say(words("A", 5))
    await finished(a)
    b, c = env.say(words("B", 100)), env.say(words("C", 5))
    await until(lambda: b.status == SayStatus.PLAYING and len(env.sink.played) > 15)
    # No marks while closing: a mark waking the feeder as close cancels it hangs close on
    # Python 3.11 (see test_playout.py::test_aclose_does_not_hang_when_a_mark_wakes_the_feeder).
    env.sink.stall()
    await asyncio.sleep(0.01)
    assert await env.session.close() == 2
    for item in (a, b, c):
        assert item.final
        assert env.last_saved(item) == item.row()  # stored as it ended, before close returned
    assert [b.status, c.status] == [SayStatus.INTERRUPTED, SayStatus.INTERRUPTED]
    assert 0 < b.heard_chars < len(b.text) and c.heard_chars == 0
    count = len(env.saved)
    await asyncio.sleep(0.05)
    assert len(env.saved) == count  # nothing written after close


async def test_a_played_say_is_kept_as_its_stored_record_alone(make):
    """A session's memory per played say is what the API shows of it (its word marks and run-time
    state go once its final state is stored); the API still lists every say from memory."""
    env = await make(save_delay=0.01)
    played = [env.say(words("A", 30)) for _ in range(5)]
    waiting = env.say(words("B", 200))
    await finished(*played)
    await env.stored(*played)
    assert all(item.word_marks for item in played)
    await until(lambda: all(env.session.says[item.say_id] is not item for item in played))
    assert list(env.session.says) == [item.say_id for item in [*played, waiting]]
    for item in played:
        kept = env.session.says[item.say_id]
        assert kept.to_dict() == item.to_dict() and kept.word_marks == [] and kept.status == SayStatus.PLAYED
        assert kept.ready.is_set()  # it ended: nothing waits for more of it
    assert env.session.says[waiting.say_id] is waiting


async def test_a_session_keeps_only_its_last_stored_says_in_memory(make, monkeypatch):
    """Memory does not grow with the says a session played: beyond KEPT_FINAL_SAYS stored ones,
    the oldest is forgotten (the store keeps it); says not final yet are always kept."""
    monkeypatch.setattr(session_module, "KEPT_FINAL_SAYS", 3)
    env = await make()
    played = [env.say(words("A", 5)) for _ in range(7)]
    waiting = env.say(words("B", 400))
    await finished(*played)
    await env.stored(*played)
    await until(lambda: env.session.says_forgotten == 4)
    assert list(env.session.says) == [item.say_id for item in [*played[4:], waiting]]
    assert [env.session.says[item.say_id].status for item in played[4:]] == [SayStatus.PLAYED] * 3


# -- underruns ----------------------------------------------------------------------------------


async def test_a_say_that_runs_dry_mid_speech_is_counted_while_it_is_dry_and_once(make):
    env = await make()
    env.provider.gates["C"] = gate = asyncio.Event()
    fine = env.say(words("B", 10))
    await finished(fine)
    assert env.underruns == []  # played through, and its end drained the far end: no gap in it
    item = env.say(words("C", 10))
    # Two frames came at once (fast enough to start at once), then synthesis stalls: the far end
    # plays them out and the caller hears nothing. Counted then, not when audio comes again.
    await until(lambda: env.underruns)
    await asyncio.sleep(0.1)
    assert len(env.underruns) == 1 and not item.final
    gate.set()
    await finished(item)
    assert len(env.underruns) == 1 and item.status == SayStatus.PLAYED


async def test_a_say_that_ran_dry_is_counted_when_the_far_end_says_so_after_its_next_audio_went(make):
    """On a busy host the far end's word comes late: the say's next audio may be sent (and the
    say even end) before it arrives. The caller heard the gap all the same."""
    env = await make(report_delay=0.2)
    env.provider.gates["C"] = gate = asyncio.Event()
    item = env.say(words("C", 10))
    await until(lambda: env.sink.dry_points)  # its first frames played out: the far end ran dry
    gate.set()  # the rest comes, and goes, before the far end's word does
    await until(lambda: len(env.sink.played) == 10)
    assert env.underruns == []
    await finished(item)
    await until(lambda: env.underruns)
    await asyncio.sleep(0.3)  # the end's own report: the say's end, not a gap
    assert len(env.underruns) == 1 and env.sink.underruns() == env.sink.dry_points[:1]


# -- lead ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("lead_ms", "mark_every_ms"), [(200, 100), (500, 60)])
async def test_the_lead_at_the_far_end_never_exceeds_lead_plus_one_mark_interval(make, lead_ms, mark_every_ms):
    env = await make(lead_ms=lead_ms, mark_every_ms=mark_every_ms)
    a, b = env.say(words("A", 150)), env.say(words("B", 50))
    await finished(a, b, timeout=10)
    await env.sink.wait_idle(200)
    assert env.sink.played_letters() == b"A" * 150 + b"B" * 50
    assert env.sink.max_queued_frames <= (lead_ms + mark_every_ms) // 20, env.sink.queue_log
