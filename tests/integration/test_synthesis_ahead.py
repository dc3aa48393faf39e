"""On a real call, a 5000-character say (about six minutes of speech, which Piper renders many
times faster than it plays) is never more than the playout's bound ahead of what has played:
the daemon's own gauge of audio in flight (``speakd_media_lead_seconds``: at the far end and
held for it) stays within ``MAX_AHEAD_MS`` all along, and reaches near it (so the bound, not
synthesis, is what stops it). Not timed: sampled while the say plays."""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp
import pytest
from harness.daemon import SpeakdProcess
from prometheus_client.parser import text_string_to_metric_families

from speakd.media.playout import MAX_AHEAD_MS

pytestmark = pytest.mark.asyncio(loop_scope="session")

WATCH_S = 8.0
BOUND_S = MAX_AHEAD_MS / 1000


async def lead_seconds(daemon: SpeakdProcess) -> tuple[float, float]:
    """(sessions with audio in flight, their audio in flight summed, seconds) from /metrics."""
    async with aiohttp.ClientSession() as http, http.get(f"{daemon.base}/metrics") as resp:
        text = await resp.text()
    values = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}
    return values["speakd_media_lead_seconds_gcount"], values["speakd_media_lead_seconds_gsum"]


async def test_a_long_say_is_synthesized_at_most_the_bound_ahead_of_playout(api, speakd, two_party_call):
    sid = await api.start_session(two_party_call.channel_id, direction="out")
    text = (f"Notice {uuid.uuid4().hex[:6]}. " + "Every word of this notice is read to you in full. " * 110)[:5000]
    assert (await api.say(sid, text)).status == 200
    most, samples = 0.0, 0
    deadline = time.monotonic() + WATCH_S
    while time.monotonic() < deadline:
        sessions, ahead = await lead_seconds(speakd)
        if sessions:
            assert sessions == 1  # this session alone: the sum is its own
            samples += 1
            most = max(most, ahead)
            assert ahead <= BOUND_S + 0.1, f"{ahead:.2f} s synthesized ahead of playout"
        await asyncio.sleep(0.1)
    assert samples > WATCH_S * 5
    assert most > BOUND_S - 2.0  # the bound is what held it back (the say is minutes long)
    says = (await api.request("GET", f"/speakings/{sid}/says")).body["result"]
    assert says[-1]["status"] == "playing"
    assert (await api.stop(sid)).status == 200
