"""Playout against a fake far end (no Asterisk): bounded lead, marks, played positions, flush.

The sink plays 10x faster than real time; assertions are about order and bounds, with slack
for a busy machine, never about exact timing.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from harness.fakes import FRAME_BYTES, SinkTransport

from speakd.media.playout import BYTES_PER_MS, Playout


def audio(letter: str, ms: int) -> bytes:
    """``ms`` of audio, each frame filled with ``letter`` so the sink's record tells whose it is."""
    assert ms % 20 == 0
    return letter.encode() * (ms * BYTES_PER_MS)


async def until(check, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.002)


@pytest.fixture
async def make():
    """``await make(**playout_kwargs, sink=SinkTransport(...))`` -> an attached (playout, sink)."""
    made: list[tuple[Playout, SinkTransport]] = []

    async def _make(sink: SinkTransport | None = None, attach: bool = True, **kwargs) -> tuple[Playout, SinkTransport]:
        sink = sink or SinkTransport(speed=10)
        await sink.start()
        playout = Playout(**kwargs)
        if attach:
            playout.attach(sink)
        made.append((playout, sink))
        return playout, sink

    yield _make
    for playout, sink in made:
        await playout.aclose()
        await sink.aclose()
        assert sink.violations == []


def audio_runs(events) -> list[int]:
    """Bytes of audio sent between consecutive marks (and after the last)."""
    runs, current = [], 0
    for event in events:
        if event[0] == "audio":
            current += len(event[1])
        elif event[0] == "mark":
            runs.append(current)
            current = 0
    if current:
        runs.append(current)
    return runs


# -- marks --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mark_every_ms", [20, 100, 240])
async def test_a_mark_follows_every_mark_interval_of_audio(make, mark_every_ms):
    playout, sink = await make(lead_ms=60_000, mark_every_ms=mark_every_ms)
    assert await playout.put(playout.generation, audio("A", 960))
    await sink.wait_idle(48)
    runs = audio_runs(sink.events)
    assert runs[-1] > 0 and sink.events[-1][0] == "mark"  # the last audio is marked too
    # One large put: a mark after each whole interval, the remainder marked at the end.
    interval = mark_every_ms * BYTES_PER_MS
    assert runs[: 960 // mark_every_ms] == [interval] * (960 // mark_every_ms)
    assert sum(runs) == 960 * BYTES_PER_MS
    assert all(run % FRAME_BYTES == 0 and 0 < run <= interval for run in runs)
    # Every mark is reported back, in the order sent.
    assert sink.reported == [e[1] for e in sink.events if e[0] == "mark"]
    assert len(set(sink.reported)) == len(sink.reported)


async def test_a_mark_interval_that_is_not_whole_frames_rounds_down(make):
    playout, sink = await make(lead_ms=60_000, mark_every_ms=70)
    for _ in range(3):  # separate puts: each is marked on its own
        assert await playout.put(playout.generation, audio("A", 100))
    await sink.wait_idle(15)
    runs = audio_runs(sink.events)
    assert all(run % FRAME_BYTES == 0 and run <= 70 * BYTES_PER_MS for run in runs)
    assert sum(runs) == 300 * BYTES_PER_MS


# -- positions ----------------------------------------------------------------------------------


async def test_position_never_passes_an_unconfirmed_mark(make):
    sink = SinkTransport(speed=10)
    sink.stall()  # a far end that plays, and so confirms, nothing
    playout, _ = await make(sink, lead_ms=60_000, mark_every_ms=100)
    assert await playout.put(playout.generation, audio("A", 500))
    await until(lambda: len(audio_runs(sink.events)) == 5)
    first_mark_ms = 100
    for _ in range(20):  # 0.3 s of wall clock: far longer than the audio would take to play
        assert playout.position() <= first_mark_ms
        await asyncio.sleep(0.015)
    assert sink.played == []
    sink.resume()
    positions = []
    while len(sink.reported) < 5:
        positions.append(playout.position())
        await asyncio.sleep(0.001)
    await sink.wait_idle(25)
    positions.append(playout.position())
    assert positions == sorted(positions)  # never goes back
    assert positions[-1] == 500


async def test_position_does_not_advance_while_nothing_plays(make):
    playout, sink = await make(lead_ms=60_000, mark_every_ms=100)
    assert await playout.put(playout.generation, audio("A", 100))
    await sink.wait_idle(5)
    assert playout.position() == 100
    await asyncio.sleep(0.2)  # silence: the timeline is the amount of audio sent
    assert playout.position() == 100
    assert await playout.put(playout.generation, audio("B", 100))
    await sink.wait_idle(10)
    assert playout.position() == 200
    assert playout.lead_now_ms == 0
    assert sink.played_letters() == b"A" * 5 + b"B" * 5


async def test_audio_put_before_attach_waits_for_the_transport(make):
    playout, sink = await make(attach=False)
    assert await playout.put(playout.generation, audio("A", 60))
    await asyncio.sleep(0.02)
    assert sink.events == []
    playout.attach(sink)
    await until(lambda: len(sink.played) == 3)
    assert sink.played_letters() == b"AAA"


# -- flush --------------------------------------------------------------------------------------


async def test_flush_returns_the_reached_position_drops_pending_and_refuses_stale_audio(make):
    playout, sink = await make(lead_ms=400, mark_every_ms=100)
    old = playout.generation
    assert await playout.put(old, audio("A", 3000))  # 300 ms of wall clock at 10x
    await until(lambda: len(sink.played) >= 20)
    sent_before = sum(len(e[1]) for e in sink.events if e[0] == "audio")
    reported_before = len(sink.reported)
    pending_marks = [e[1] for e in sink.events if e[0] == "mark"][len(sink.reported) :]
    reached = playout.flush()
    played_ms = sink.flush_points[-1] * 20
    # Where playout was, as far as marks and the clock tell: within a mark interval of what
    # the far end had started to play (the frame in progress counts as played there).
    assert played_ms - 100 - 20 <= reached <= played_ms + 100
    assert playout.generation == old + 1
    assert sink.queued_frames == 0
    assert playout.lead_now_ms == 0
    # A late confirmation of a mark from before the flush (raced the FLUSH_MEDIA) changes nothing.
    assert pending_marks
    sink.on_mark(pending_marks[-1])
    assert playout.lead_now_ms == 0
    # Nothing queued before the flush is sent after it; old audio is refused.
    await asyncio.sleep(0.05)
    assert sum(len(e[1]) for e in sink.events if e[0] == "audio") == sent_before < 3000 * BYTES_PER_MS
    assert await playout.put(old, audio("X", 100)) is False
    assert await playout.put(playout.generation, audio("B", 100)) is True
    await sink.wait_idle(sink.flush_points[-1] + 5)
    assert sink.played_after_flush() == b"B" * 5
    assert not set(pending_marks) & set(sink.reported[reported_before:])
    # The timeline counts the flushed audio as sent (it is the audio sent), then B.
    assert playout.position() == sent_before // BYTES_PER_MS + 100


async def test_a_put_waiting_for_buffer_space_is_refused_after_a_flush(make):
    playout, _sink = await make(attach=False, max_ahead_ms=100)
    generation = playout.generation
    assert await playout.put(generation, audio("A", 100))
    blocked = asyncio.create_task(playout.put(generation, audio("A", 20)))
    await asyncio.sleep(0.02)
    assert not blocked.done()  # the local buffer is full and nothing drains it
    assert playout.flush() == 0  # nothing was ever sent, so nothing played
    assert await asyncio.wait_for(blocked, 1) is False
    assert await playout.put(playout.generation, audio("B", 20)) is True


# -- boundaries ---------------------------------------------------------------------------------


async def test_boundaries_fire_in_order_when_playout_reaches_them(make):
    playout, sink = await make(lead_ms=60_000, mark_every_ms=100)
    fired: list[tuple[str, float, int, float]] = []

    def boundary(name: str):
        return lambda at: fired.append((name, at, len(sink.played), time.time()))

    generation = playout.generation
    before = time.time()
    playout.boundary(generation, boundary("a-start"))
    assert await playout.put(generation, audio("A", 200))
    playout.boundary(generation, boundary("a-end"))
    playout.boundary(generation, boundary("b-start"))
    assert await playout.put(generation, audio("B", 120))
    playout.boundary(generation, boundary("b-end"))
    playout.boundary(generation - 1, boundary("stale"))  # from before a flush: never fires
    await sink.wait_idle(16)
    assert [(name, frames) for name, _, frames, _ in fired] == [
        ("a-start", 0),
        ("a-end", 10),  # reported once A's last frame has played, before B's first
        ("b-start", 10),
        ("b-end", 16),
    ]
    times = [at for _, at, _, _ in fired]
    assert times == sorted(times)
    assert all(before <= at <= called for _, at, _, called in fired)  # wall-clock times
    assert times[1] >= sink.played[9].wall  # A ended after its last frame started
    assert times[3] >= sink.played[15].wall


async def test_a_boundary_pending_at_a_flush_never_fires(make):
    sink = SinkTransport(speed=10)
    sink.stall()
    playout, _ = await make(sink, lead_ms=60_000, mark_every_ms=100)
    fired: list[str] = []
    generation = playout.generation
    assert await playout.put(generation, audio("A", 200))
    playout.boundary(generation, lambda at: fired.append("end"))
    await until(lambda: sum(e[0] == "mark" for e in sink.events) == 3)  # two after audio, then ours
    boundary_mark = sink.events[-1][1]
    playout.flush()
    sink.resume()
    sink.on_mark(boundary_mark)  # even if the far end confirmed it after all
    assert await playout.put(playout.generation, audio("B", 40))
    await sink.wait_idle(2)
    assert fired == []
    assert sink.played_letters() == b"BB"


# -- flow control and lead ----------------------------------------------------------------------


async def test_xoff_pauses_feeding_until_xon(make):
    sink = SinkTransport(speed=10)
    sink.xoff()
    playout, _ = await make(sink, lead_ms=60_000, mark_every_ms=100)
    assert await playout.put(playout.generation, audio("A", 500))
    playout.boundary(playout.generation, lambda at: None)  # marks are not audio: they may go
    await asyncio.sleep(0.1)
    assert not any(e[0] == "audio" for e in sink.events)
    sink.xon()
    await sink.wait_idle(25)
    assert sink.played_letters() == b"A" * 25


async def test_the_far_ends_queue_levels_bound_what_is_sent(make):
    # chan_websocket-like flow control by queue level, and a lead that would allow far more.
    sink = SinkTransport(speed=10, xoff_frames=10, xon_frames=5)
    playout, _ = await make(sink, lead_ms=60_000, mark_every_ms=100)
    assert await playout.put(playout.generation, audio("A", 2000))
    await sink.wait_idle(100)
    assert sink.xoffs >= 2
    assert sink.max_queued_frames < 10 + 5  # at most one mark interval beyond XOFF
    assert sink.played_letters() == b"A" * 100


@pytest.mark.parametrize(("lead_ms", "mark_every_ms"), [(300, 100), (200, 40), (1000, 200)])
async def test_the_lead_at_the_far_end_stays_under_lead_plus_one_mark_interval(make, lead_ms, mark_every_ms):
    playout, sink = await make(lead_ms=lead_ms, mark_every_ms=mark_every_ms)
    generation = playout.generation
    for _ in range(4):  # several puts, as synthesis delivers them
        assert await playout.put(generation, audio("A", 1000))
    samples = []
    while len(sink.played) < 200:
        samples.append((playout.lead_now_ms, sink.queued_frames))
        await asyncio.sleep(0.001)
    await sink.wait_idle(200)
    limit_frames = (lead_ms + mark_every_ms) // 20
    assert sink.max_queued_frames <= limit_frames, sink.queue_log
    assert max(lead for lead, _ in samples) <= lead_ms + mark_every_ms
    assert sink.max_queued_frames >= lead_ms // 20 // 2  # it did run ahead: the bound is not vacuous
    assert sink.played_letters() == b"A" * 200


async def test_aclose_does_not_hang_when_a_mark_wakes_the_feeder(make):
    sink = SinkTransport(speed=10)
    sink.stall()
    playout, _ = await make(sink, lead_ms=100, mark_every_ms=100)
    assert await playout.put(playout.generation, audio("A", 1000))
    await until(lambda: any(e[0] == "mark" for e in sink.events))
    await asyncio.sleep(0.02)  # the feeder waits for the lead to shrink (wait_for, 100 ms timeout)
    sink.on_mark(next(e[1] for e in sink.events if e[0] == "mark"))  # the far end confirms a mark...
    closing = asyncio.ensure_future(playout.aclose())  # ... just as the session closes
    done, _ = await asyncio.wait({closing}, timeout=1)
    if not done:  # clean up: a second cancel gets through
        playout._feeder.cancel()
        await closing
    assert done, "Playout.aclose() hung: the feeder survived its cancellation"
