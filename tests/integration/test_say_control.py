"""Per-say control (seed 003's speak command), judged on what the party recorded:
``command_id`` (a repeat is not played again), ``stop: all`` and ``stop: current``.
``client_state`` is checked in test_events.py, where it is echoed."""

from __future__ import annotations

import asyncio

import pytest
from conftest_helpers import wait_statuses
from harness.audio import FRAME_S, RATE, render_piper
from harness.hearing import GREETING, LONG, assert_heard, assert_nothing_else, where_speech_stops

pytestmark = pytest.mark.asyncio(loop_scope="session")

SECOND = "And this is the second thing I wanted to say."
THIRD = "Sorry, let me put that differently."


def span(recording, text: str, who: str) -> tuple[float, float]:
    reference = render_piper(text)
    start = assert_heard(recording, reference, who) * FRAME_S
    return start, start + len(reference) / RATE


async def say_id_of(api, speaking_id: str, text: str, **fields) -> str:
    reply = await api.say(speaking_id, text, **fields)
    assert reply.status == 200, reply
    return reply.body["say_id"]


@pytest.mark.by_ear
@pytest.mark.one_transport
async def test_a_repeated_command_id_is_answered_not_played_again(api, two_party_call):
    speaking_id = await api.start_session(two_party_call.channel_id, direction="out")
    # Three at once and one later, all with the same command_id: one say, the first answer.
    replies = await asyncio.gather(*(api.say(speaking_id, GREETING, command_id="cmd-1") for _ in range(3)))
    assert {r.status for r in replies} == {200}
    (say_id,) = {r.body["say_id"] for r in replies}
    await wait_statuses(api, speaking_id, {say_id: "played"})
    again = await api.say(speaking_id, GREETING, command_id="cmd-1")
    assert again.status == 200 and again.body["say_id"] == say_id
    # Another command_id is another say.
    second = await say_id_of(api, speaking_id, SECOND, command_id="cmd-2")
    assert second != say_id
    says = await wait_statuses(api, speaking_id, {say_id: "played", second: "played"})
    assert len(says) == 2, says
    assert says[say_id]["command_id"] == "cmd-1"
    await asyncio.sleep(1.0)  # MixMonitor drops what it has not written when the call ends

    recording = await two_party_call.recording("alice")
    first_span = span(recording, GREETING, "alice (the command)")
    second_span = span(recording, SECOND, "alice (the other command)")
    assert first_span[1] <= second_span[0] + 0.1
    assert_nothing_else(recording, [first_span, second_span], "a repeated command_id")


@pytest.mark.by_ear
@pytest.mark.one_transport
async def test_stop_all_cuts_the_playing_say_and_drops_the_queued_ones(api, two_party_call):
    speaking_id = await api.start_session(two_party_call.channel_id, direction="out")
    long_say = await say_id_of(api, speaking_id, LONG)
    queued = await say_id_of(api, speaking_id, SECOND)
    await wait_statuses(api, speaking_id, {long_say: "playing"})
    await asyncio.sleep(2.6)
    third = await say_id_of(api, speaking_id, THIRD, stop="all")
    says = await wait_statuses(api, speaking_id, {third: "played"})
    assert says[long_say]["status"] == "interrupted" and 0 < says[long_say]["heard_chars"] < len(LONG)
    assert says[queued]["status"] == "interrupted" and says[queued]["heard_chars"] == 0
    await asyncio.sleep(1.0)

    recording = await two_party_call.recording("alice")
    third_span = span(recording, THIRD, "alice (the say after stop: all)")
    # The new say follows the cut at once: look for where the long one stopped before it.
    before_third = recording[: int((third_span[0] - 0.05) * RATE)]
    start, stopped_at = where_speech_stops(before_third, LONG, says[long_say]["played_ms"])
    # The queued say was never heard: nothing but the long say's head and the new say.
    assert_nothing_else(recording, [(start, start + stopped_at), third_span], "stop: all")


@pytest.mark.by_ear
@pytest.mark.one_transport
async def test_stop_current_cuts_the_playing_say_and_keeps_the_queue(api, two_party_call):
    speaking_id = await api.start_session(two_party_call.channel_id, direction="out")
    long_say = await say_id_of(api, speaking_id, LONG)
    queued = await say_id_of(api, speaking_id, SECOND)
    await wait_statuses(api, speaking_id, {long_say: "playing"})
    await asyncio.sleep(2.6)
    third = await say_id_of(api, speaking_id, THIRD, stop="current")
    says = await wait_statuses(api, speaking_id, {queued: "played", third: "played"})
    assert says[long_say]["status"] == "interrupted" and 0 < says[long_say]["heard_chars"] < len(LONG)
    assert says[queued]["tm_play_end"] <= says[third]["tm_play_start"], "the queue keeps its order"
    await asyncio.sleep(1.0)

    recording = await two_party_call.recording("alice")
    second_span = span(recording, SECOND, "alice (the queued say, after stop: current)")
    third_span = span(recording, THIRD, "alice (the say with stop: current)")
    assert second_span[1] <= third_span[0] + 0.1, f"the queued say plays first: {second_span} then {third_span}"
    before_second = recording[: int((second_span[0] - 0.05) * RATE)]
    start, stopped_at = where_speech_stops(before_second, LONG, says[long_say]["played_ms"])
    assert_nothing_else(recording, [(start, start + stopped_at), second_span, third_span], "stop: current")
