"""Synthesis runs at most the playout's bound ahead of what has played (``MAX_AHEAD_MS``), for
a long say, for says queued behind it, and for a say held because synthesis is slow: what a
session holds does not grow with its says. A fake far end plays fast; nothing here is timed
beyond the slack a busy machine needs."""

from __future__ import annotations

import asyncio
import time

import pytest
from harness.fakes import SinkTransport

from speakd.audio import AudioFormat
from speakd.media.playout import MAX_AHEAD_MS, Playout
from speakd.media.rtp import FRAME_MS
from speakd.providers.base import AudioChunk, Provider, SynthesisRequest
from speakd.sessions.session import PUT_FRAMES, Session
from speakd.store.records import Speaking

FMT = AudioFormat("ulaw", 8000)
CHUNK_MS = 200
LONG_TEXT = ("Your call matters to us, and every word of this notice is read in full. " * 70)[:5000]
SPEECH_MS = 5000 * 1000 // 14  # a typical speaking rate: about six minutes
# What may pass the bound: the frames of one hand-over of a provider chunk, and one part put.
SLACK_MS = CHUNK_MS + PUT_FRAMES * FRAME_MS


class FastProvider(Provider):
    """A say's speech in 200 ms chunks, as fast as they are taken (or ``every_s`` apart)."""

    name = "fast"

    def __init__(self, every_s: float = 0.0, share_rate: float = 0.0) -> None:
        self.every_s = every_s
        self.share_rate = share_rate

    def check(self, language: str, voice_id: str, payload_type: str = "text") -> None:
        return None

    async def synthesize(self, request: SynthesisRequest):
        for _ in range(SPEECH_MS // CHUNK_MS):
            await asyncio.sleep(self.every_s)
            yield AudioChunk(b"\x55" * (CHUNK_MS * 8), FMT, share_rate=self.share_rate)


async def play(provider: Provider, says: int, speed: float, seconds: float, max_ahead_ms: int = MAX_AHEAD_MS):
    """Say ``says`` long texts; every 10 ms, how much was synthesized and not played (ms). Returns
    (samples, ms played, seconds until the first frame played, the sample then)."""

    async def save_say(_item: object) -> None:
        return None

    record = Speaking("s1", "c", "call", "ch", "en-US", provider.name, "", "out", "active", "t", "t")
    sink = SinkTransport(speed=speed)
    await sink.start()
    session = Session(record, provider, "ulaw", Playout(max_ahead_ms=max_ahead_ms), save_say)
    items = [session.new_say(LONG_TEXT) for _ in range(says)]
    session.start_synthesis()
    session.start_playout(sink)
    for item in items:
        session.enqueue(item)
    started = time.monotonic()
    first_played: float | None = None
    ahead_at_first_play = 0
    samples: list[int] = []
    try:
        while time.monotonic() - started < seconds:
            played_ms = len(sink.played) * FRAME_MS
            samples.append(sum(item.synthesized_ms for item in items) - played_ms)
            if played_ms and first_played is None:
                first_played, ahead_at_first_play = time.monotonic() - started, samples[-1]
            await asyncio.sleep(0.01)
        return samples, len(sink.played) * FRAME_MS, first_played, ahead_at_first_play
    finally:
        await asyncio.wait_for(session.close(), 10)
        await sink.aclose()
        assert sink.violations == []


@pytest.mark.parametrize("says", [1, 3])
async def test_a_long_say_and_the_says_behind_it_stay_within_the_bound_ahead_of_playout(says):
    samples, played_ms, _, _ = await play(FastProvider(), says, speed=50, seconds=3.0)
    # Long enough to matter: several times the bound played, and synthesis reached the bound
    # (without one, all of the says' speech would have been synthesized at once).
    assert played_ms > 3 * MAX_AHEAD_MS
    assert max(samples) > MAX_AHEAD_MS - 1000
    assert max(samples) <= MAX_AHEAD_MS + SLACK_MS, max(samples)


async def test_a_say_held_for_slow_synthesis_starts_once_the_bound_is_ready():
    # 0.8 times real time: a long say would run dry, so it is held; holding it until it could
    # play through would hold most of it, so it starts once the bound is ready.
    bound, rate = 2000, 0.8
    samples, played_ms, first_played, _ = await play(
        FastProvider(every_s=CHUNK_MS / 1000 / rate), 1, speed=1, seconds=4.0, max_ahead_ms=bound
    )
    assert first_played is not None and played_ms > 0
    assert first_played > 0.8 * bound / 1000 / rate  # held a while (not started at once) ...
    assert max(samples) <= bound + SLACK_MS, max(samples)  # ... never past the bound


@pytest.mark.parametrize("share_rate", [0.0, 0.8])
async def test_a_say_whose_provider_cannot_keep_up_its_pace_is_held_however_fast_it_began(share_rate):
    # The first chunks come at 20 times real time (this say's went before other sessions'), but
    # the provider says it can keep up 0.8 times real time from now on: held, as if slow.
    bound = 2000
    _, _, first_played, ahead = await play(
        FastProvider(every_s=CHUNK_MS / 1000 / 20, share_rate=share_rate), 1, speed=1, seconds=1.5, max_ahead_ms=bound
    )
    assert first_played is not None
    if share_rate:
        assert ahead > bound - 2 * CHUNK_MS, ahead  # held until the bound was ready
    else:
        assert ahead < 3 * CHUNK_MS, ahead  # no guess: fast enough, at once
