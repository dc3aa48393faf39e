"""/metrics and /health of the real daemon against the test Asterisk, on both transports.

The daemon is shared with other tests, so counters and histograms are compared before and
after what a test does; what it does is counted exactly.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Any

import aiohttp
import pytest
from harness.daemon import Api, SpeakdProcess
from harness.hearing import GREETING, LONG
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.asyncio(loop_scope="session")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(daemon: SpeakdProcess, accept: str = "") -> tuple[Samples, str]:
    """Every sample of ``GET /metrics`` (no credentials) and the content type it came as."""
    async with aiohttp.ClientSession() as http, http.get(f"{daemon.base}/metrics", headers={"Accept": accept}) as resp:
        assert resp.status == 200, await resp.text()
        text = await resp.text()
        content_type = resp.headers["Content-Type"]
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples, content_type


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, frozenset(labels.items())]


async def health(daemon: SpeakdProcess) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(f"{daemon.base}/health") as resp:
        return resp.status, await resp.json()


async def wait_say(api: Api, speaking_id: str, say_id: str, statuses: set[str], timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        says = (await api.request("GET", f"/speakings/{speaking_id}/says")).body["result"]
        item = next(s for s in says if s["say_id"] == say_id)
        if item["status"] in statuses:
            return item
        assert time.monotonic() < deadline, f"say {say_id} is still {item['status']}, not {statuses}"
        await asyncio.sleep(0.05)


@pytest.mark.both_transports
async def test_metrics_count_a_session_that_speaks_and_is_flushed(api, speakd, two_party_call):
    before, _ = await scrape(speakd)
    speaking_id = await api.start_session(two_party_call.channel_id, direction="out")
    first = (await api.say(speaking_id, GREETING)).body["say_id"]
    await wait_say(api, speaking_id, first, {"played"})
    long_say = (await api.say(speaking_id, LONG)).body["say_id"]
    await wait_say(api, speaking_id, long_say, {"playing"})
    await asyncio.sleep(1.5)  # well into the say: audio is buffered ahead of playout

    playing, _ = await scrape(speakd)
    assert value(playing, "speakd_sessions", status="active") >= 1
    assert value(playing, "speakd_media_lead_seconds_gcount") >= 1
    assert value(playing, "speakd_media_lead_seconds_gsum") > 0
    assert value(playing, "speakd_ari_connected") == 1

    flushes = value(playing, "speakd_flush_to_silence_seconds_count")
    assert (await api.flush(speaking_id)).status == 200
    await wait_say(api, speaking_id, long_say, {"interrupted"})
    # The far end confirms the flush on its own time (a stop first would close the media path).
    deadline = time.monotonic() + 10
    while value((await scrape(speakd))[0], "speakd_flush_to_silence_seconds_count") == flushes:
        assert time.monotonic() < deadline, "the flush was never confirmed"
        await asyncio.sleep(0.05)
    assert (await api.stop(speaking_id)).status == 200
    after, _ = await scrape(speakd)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("speakd_sessions_created_total") == 1
    assert delta("speakd_sessions_stopped_total", reason="stop") == 1
    assert delta("speakd_says_total", status="played") == 1
    assert delta("speakd_says_total", status="interrupted") == 1
    assert delta("speakd_says_total", status="failed") == 0
    # Both says were asked of a session with nothing else to say.
    assert delta("speakd_say_time_to_first_audio_seconds_count") == 2
    assert delta("speakd_say_time_to_first_audio_seconds_sum") > 0
    # The flush cut audio in flight; the stop after it had nothing left to cut and is not a flush.
    assert delta("speakd_flush_to_silence_seconds_count") == 1
    assert delta("speakd_flush_to_silence_seconds_sum") > 0
    # Each say was synthesized by Piper or played from the audio cache (this shared daemon's other
    # tests may have said the same texts before): never both, never neither.
    synthesized = delta("speakd_provider_first_byte_seconds_count", provider="piper")
    assert synthesized + delta("speakd_cache_hits_total") == 2
    assert delta("speakd_cache_misses_total") == synthesized
    assert delta("speakd_provider_errors_total", provider="piper", stage="before_audio") == 0
    assert value(after, "speakd_ari_connected") == 1
    if speakd.transport == "rtp":
        assert delta("speakd_rtp_pacer_lateness_seconds_count") >= 1  # one report a second of pacing
        assert ("speakd_rtp_pacer_stalls_total", frozenset()) in after
    else:
        assert ("speakd_rtp_pacer_stalls_total", frozenset()) not in after


async def test_metrics_take_no_credentials_and_speak_both_formats(speakd):
    text, content_type = await scrape(speakd)
    assert content_type.startswith("text/plain; version=0.0.4")
    assert ("speakd_webhook_backlog", frozenset()) in text
    _, content_type = await scrape(speakd, accept="application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")


@pytest.mark.both_transports
async def test_health_reports_ari_and_the_store(speakd):
    status, body = await health(speakd)
    assert status == 200, body
    assert body["status"] == "ok" and body["failed"] == []
    assert body["ari_connected"] is True and body["store_writable"] is True and body["store_error"] == ""
    assert isinstance(body["live_sessions"], int)
    assert body["media_transport"] == speakd.transport


async def test_health_is_503_while_the_store_takes_no_write(speakd):
    """Another process holding the database's write lock: the store takes no write (works as
    root too, where file modes do not stop a write), then does again once it is released."""
    holder = sqlite3.connect(speakd.workdir / "speakd.sqlite3", timeout=0, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        deadline = time.monotonic() + 10
        while (result := await health(speakd))[0] == 200:  # an answer up to a second old may be served
            assert time.monotonic() < deadline, "health stayed 200 while the store was locked"
            await asyncio.sleep(0.2)
        status, body = result
        assert status == 503, body
        assert body["status"] == "unavailable" and body["failed"] == ["store"]
        assert body["store_writable"] is False and "locked" in body["store_error"]
        assert body["ari_connected"] is True
    finally:
        holder.close()  # rolls back: the lock goes with it
    deadline = time.monotonic() + 10
    while (result := await health(speakd))[0] != 200:
        assert time.monotonic() < deadline, f"health stayed {result} after the store was released"
        await asyncio.sleep(0.2)
    assert result[1]["store_writable"] is True
