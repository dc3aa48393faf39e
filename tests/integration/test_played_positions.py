"""What speakd says was played, checked against what the party recorded.

The recording's first sample is placed on the wall clock by the phone's dialplan
(``SPEAKD_REC_T0_<test>_<party>``, set as MixMonitor starts), so a say's ``tm_play_start`` and
``tm_play_end`` can be compared with where its speech is in the recording; ``heard_text`` of a
flushed say is compared with where the recording's speech stops.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import pytest
from harness.audio import FRAME_S, render_piper
from harness.hearing import (
    GREETING,
    LONG,
    assert_heard,
    assert_heard_text_within_a_word,
    where_speech_stops,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

TIMING_TOLERANCE_S = 0.060
RATE = 8000


def wall(stamp: str) -> float:
    return dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=dt.UTC).timestamp()


async def says_of(api, speaking_id: str) -> list[dict]:
    reply = await api.request("GET", f"/speakings/{speaking_id}/says")
    assert reply.status == 200, reply
    return reply.body["result"]


async def wait_say(api, speaking_id: str, say_id: str, statuses: set[str], timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for item in await says_of(api, speaking_id):
            if item["say_id"] == say_id and item["status"] in statuses:
                return item
        await asyncio.sleep(0.05)
    raise AssertionError(f"say {say_id} never reached {statuses}: {await says_of(api, speaking_id)}")


@pytest.mark.by_ear
async def test_a_played_through_say_reports_when_the_party_heard_it(api, two_party_call):
    second = "And this one came a little later."
    speaking_id = await api.start_session(two_party_call.channel_id, direction="out")
    first_say = (await api.say(speaking_id, GREETING)).body["say_id"]
    played_first = await wait_say(api, speaking_id, first_say, {"played"})
    await asyncio.sleep(0.7)  # a pause: the next say's start is when it plays, not when it was queued
    second_say = (await api.say(speaking_id, second)).body["say_id"]
    played_second = await wait_say(api, speaking_id, second_say, {"played"})
    await asyncio.sleep(1.0)  # MixMonitor loses what it had not written yet when the call hangs up
    origin = await two_party_call.recording_started_at("alice")
    recording = await two_party_call.recording("alice")

    search_from = 0.0
    for item, text in ((played_first, GREETING), (played_second, second)):
        reference = render_piper(text)
        assert item["heard_text"] == text and item["heard_chars"] == len(text)
        assert item["error"] == ""
        assert abs(item["played_ms"] / 1000 - len(reference) / RATE) < 0.05, item
        part = recording[int(search_from * RATE) :]
        lag = assert_heard(part, reference, "alice")
        heard_from = origin + search_from + lag * FRAME_S
        heard_to = heard_from + len(reference) / RATE
        start_error = wall(item["tm_play_start"]) - heard_from
        end_error = wall(item["tm_play_end"]) - heard_to
        assert abs(start_error) <= TIMING_TOLERANCE_S, f"tm_play_start is {start_error * 1000:+.0f} ms off: {item}"
        assert abs(end_error) <= TIMING_TOLERANCE_S, f"tm_play_end is {end_error * 1000:+.0f} ms off: {item}"
        print(f"{item['say_id'][:8]}: start {start_error * 1000:+.0f} ms, end {end_error * 1000:+.0f} ms")
        search_from = heard_to - origin
    assert wall(played_second["tm_queued"]) - wall(played_first["tm_play_end"]) > 0.6


@pytest.mark.by_ear
async def test_a_flushed_say_reports_what_was_heard(api, two_party_call):
    after = "After the interruption, this plays."
    speaking_id = await api.start_session(two_party_call.channel_id, direction="out")
    cut_say = (await api.say(speaking_id, LONG)).body["say_id"]
    await wait_say(api, speaking_id, cut_say, {"playing"})
    await asyncio.sleep(2.6)
    assert (await api.flush(speaking_id)).status == 200
    cut = await wait_say(api, speaking_id, cut_say, {"interrupted"}, timeout=1.0)
    await asyncio.sleep(1.0)
    after_say = (await api.say(speaking_id, after)).body["say_id"]
    await wait_say(api, speaking_id, after_say, {"played"})
    await asyncio.sleep(1.0)  # MixMonitor loses what it had not written yet when the call hangs up
    recording = await two_party_call.recording("alice")

    start_s, stopped_at = where_speech_stops(recording, LONG, cut["played_ms"])
    # The say after the flush plays.
    assert_heard(recording[int((start_s + stopped_at + 0.1) * RATE) :], render_piper(after), "alice (after the flush)")
    assert abs(cut["played_ms"] / 1000 - stopped_at) < 0.3, f"played_ms {cut['played_ms']} vs {stopped_at:.2f}s"
    assert_heard_text_within_a_word(LONG, cut["heard_text"], cut["heard_chars"], stopped_at)
