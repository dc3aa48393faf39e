"""What the parties of a real call hear, read off their recordings.

Each test places a real two-party call in Asterisk where both phones send audio, drives the
real daemon over HTTP, hangs up, and judges the recordings: energy over time, and the
correlation of the 20 ms energy envelope with the same text rendered by Piper directly.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from conftest import TRANSPORTS, leftovers
from harness.audio import FRAME_S, envelope_correlation, render_piper
from harness.daemon import Api, SpeakdProcess
from harness.hearing import (
    ASTERISK_DELAY_S,
    GREETING,
    LONG,
    assert_heard,
    assert_not_heard,
    first_frame_sent_at,
    last_speech_s,
    longest_quiet_inside_speech,
    loud_times,
    speech_seconds,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.mark.by_ear
@pytest.mark.parametrize(("direction", "hearers"), [("out", {"alice"}), ("in", {"bob"}), ("both", {"alice", "bob"})])
async def test_only_the_intended_party_hears(api, make_two_party_call, direction, hearers):
    call = await make_two_party_call()
    speaking_id = await api.start_session(call.channel_id, direction=direction)
    reference = render_piper(GREETING)
    assert (await api.say(speaking_id, GREETING)).status == 200
    await asyncio.sleep(len(reference) / 8000 + 1.0)
    for party in call.parties:
        recording = await call.recording(party)
        if party in hearers:
            assert_heard(recording, reference, party)
        else:
            assert_not_heard(recording, party)
    await api.wait_status(speaking_id, "stopped")  # the hangup ended the session


@pytest.mark.by_ear
async def test_two_says_play_back_to_back_without_a_gap(api, two_party_call):
    first, second = "The first sentence is here.", "And the second one follows it at once."
    speaking_id = await api.start_session(two_party_call.channel_id, direction="out")
    assert (await api.say(speaking_id, first)).status == 200
    assert (await api.say(speaking_id, second)).status == 200
    reference = np.concatenate([render_piper(first), render_piper(second)])
    await asyncio.sleep(len(reference) / 8000 + 1.0)
    recording = await two_party_call.recording("alice")
    assert_heard(recording, reference, "alice")
    # The only pauses are the ones Piper itself puts in: nothing added between the items.
    assert longest_quiet_inside_speech(recording) <= longest_quiet_inside_speech(reference) + 0.06


@pytest.mark.by_ear
async def test_flush_stops_speech_within_a_frame_and_the_next_say_plays(api, speakd, two_party_call):
    after = "After the interruption, this plays."
    speaking_id = await api.start_session(two_party_call.channel_id, direction="out")
    reference = render_piper(LONG)
    assert (await api.say(speaking_id, LONG)).status == 200
    await asyncio.sleep(2.0)
    flush_asked = time.time()
    flushed = await api.flush(speaking_id)
    flushed_by = time.time()  # the flush was done by the time its answer arrived
    assert flushed.status == 200 and flushed.body["status"] == "active"
    await asyncio.sleep(1.5)  # a quiet stretch: nothing of the flushed text may come back
    assert (await api.say(speaking_id, after)).status == 200
    await asyncio.sleep(len(render_piper(after)) / 8000 + 1.0)
    recording = await two_party_call.recording("alice")

    first_frame = first_frame_sent_at(speakd, speaking_id)
    played = flushed_by - first_frame  # at most this much can have played
    assert len(reference) / 8000 > played + 2.0, "the text must be long enough to be cut"
    # Where the long text started in the recording: align the part of it that surely played.
    corr, lag = envelope_correlation(recording, reference[: int((flush_asked - first_frame) * 8000)])
    assert corr > 0.8, f"the start of the long text should be heard (corr {corr:.2f})"
    start_s = lag * FRAME_S
    cut_by = start_s + played + 0.020 + ASTERISK_DELAY_S
    # Where the say after the flush starts.
    after_corr, after_lag = envelope_correlation(recording[int(cut_by * 8000) :], render_piper(after))
    assert after_corr > 0.9, f"the say after the flush should be heard (corr {after_corr:.2f})"
    resumed_s = cut_by + after_lag * FRAME_S
    assert resumed_s - cut_by > 1.0
    # (ends a little before the next say's aligned start: alignment is good to a frame or two)
    window = recording[int(cut_by * 8000) : int((resumed_s - 0.06) * 8000)]
    assert speech_seconds(window) == 0.0, (
        f"speech heard after the flush: {speech_seconds(window):.2f}s between {cut_by:.2f}s and {resumed_s:.2f}s; "
        f"loud frames at {loud_times(window, cut_by)}; speech started at {start_s:.2f}s, played {played:.3f}s"
    )
    # ... and the long text did play right up to the flush (the check above is not vacuous).
    assert last_speech_s(recording[: int(cut_by * 8000)]) > start_s + played - 0.8


async def test_hangup_mid_speech_stops_the_session_and_leaves_nothing(api, ari, speakd, two_party_call):
    speaking_id = await api.start_session(two_party_call.channel_id, direction="both")
    assert (await api.say(speaking_id, LONG)).status == 200
    await asyncio.sleep(1.0)
    hung_up_at = time.monotonic()
    await ari.delete(f"/channels/{two_party_call.channel_id}")
    await api.wait_status(speaking_id, "stopped", timeout=1.0)
    assert time.monotonic() - hung_up_at < 1.0
    assert await leftovers(ari, speakd.app) == []


@pytest.mark.by_ear
async def test_stop_mid_speech_silences_and_cleans_up(api, ari, speakd, two_party_call):
    speaking_id = await api.start_session(two_party_call.channel_id, direction="out")
    assert (await api.say(speaking_id, LONG)).status == 200
    await asyncio.sleep(1.5)
    stop_asked = time.time()
    stopped = await api.stop(speaking_id)
    stopped_by = time.time()  # the answer also waits for the teardown: an upper bound
    assert stopped.status == 200 and stopped.body["status"] == "stopped"
    assert await leftovers(ari, speakd.app) == []
    await asyncio.sleep(1.0)
    recording = await two_party_call.recording("alice")
    first_frame = first_frame_sent_at(speakd, speaking_id)
    corr, lag = envelope_correlation(recording, render_piper(LONG)[: int((stop_asked - first_frame) * 8000)])
    assert corr > 0.8, f"the start of the long text should be heard (corr {corr:.2f})"
    cut_by = lag * FRAME_S + (stopped_by - first_frame) + 0.020 + ASTERISK_DELAY_S
    tail = recording[int(cut_by * 8000) :]
    assert speech_seconds(tail) == 0.0, f"speech after the stop, at {loud_times(tail, cut_by)}"
    assert last_speech_s(recording) > cut_by - 0.8


@pytest.mark.by_ear
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_alaw_sessions_are_heard(ari_settings, make_two_party_call, tmp_path, transport):
    """media.codec = alaw: the ExternalMedia channel and every frame are G.711 a-law."""
    daemon = SpeakdProcess(
        tmp_path,
        ari_settings["url"],
        ari_settings["user"],
        ari_settings["password"],
        codec="alaw",
        transport=transport,
    )
    await daemon.start()
    api = Api(daemon.base)
    try:
        call = await make_two_party_call()
        speaking_id = await api.start_session(call.channel_id, direction="out")
        reference = render_piper(GREETING)
        reply = await api.say(speaking_id, GREETING)
        assert reply.status == 200
        # A fresh daemon's first say may start late; wait until it has played, then let the
        # recording catch up (MixMonitor drops what it has not written when the call hangs up).
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            says = (await api.request("GET", f"/speakings/{speaking_id}/says")).body["result"]
            if says[-1]["status"] == "played":
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        assert_heard(await call.recording("alice"), reference, "alice (a-law)")
    finally:
        await api.close()
        await daemon.stop()
