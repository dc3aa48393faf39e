"""Speaking into conferences: an ARI mixing bridge and a dialplan ConfBridge room.

Each test builds a real conference in Asterisk whose phones record what they hear, drives the
real daemon over HTTP (reference_type "confbridge"), and judges the recordings as
test_speech.py does for calls.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import leftovers
from harness.audio import FRAME_S, envelope_correlation, render_piper
from harness.daemon import CUSTOMER_B, KEY_B
from harness.hearing import (
    ASTERISK_DELAY_S,
    GREETING,
    LONG,
    assert_heard,
    assert_not_heard,
    first_frame_sent_at,
    judge_intact,
    last_speech_s,
    loud_times,
    speech_seconds,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

KINDS = ("bridge", "confbridge")


@pytest.fixture
def make_conference(mixing_conference, confbridge_room):
    """`await make_conference(kind, n)` -> (conference, reference_id) for an ARI bridge or a ConfBridge room."""

    async def make(kind: str, n: int = 3, variables: dict[str, str] | None = None):
        if kind == "bridge":
            conf = await mixing_conference(n=n, variables=variables)
            return conf, conf.bridge_id
        conf = await confbridge_room(n=n, variables=variables)
        return conf, conf.room

    return make


# A dialplan ConfBridge room mixes the speech with every participant's carrier and resamples it:
# envelope correlation measured 0.94-0.97 at speakd_bridge's fixed 16 kHz (0.74-0.83 when a room
# left at softmix's automatic rate switched rates mid-speech: asterisk-config/confbridge.conf),
# 0.92-0.95 on ARI bridges; nothing heard is near 0.
HEARD_CORR = 0.8


async def start(api, reference_id: str, **fields) -> str:
    return await api.start_session(reference_id, reference_type="confbridge", **fields)


async def confbridge_rooms(ari, room: str) -> list[dict]:
    return [b for b in await ari.get("/bridges") if b.get("creator") == "ConfBridge" and b.get("name") == room]


@pytest.mark.by_ear
@pytest.mark.parametrize("kind", KINDS)
async def test_every_participant_hears_and_the_end_of_the_conference_stops_the_session(
    api, ari, speakd, make_conference, kind
):
    conf, reference_id = await make_conference(kind, n=3)
    speaking_id = await start(api, reference_id)  # direction omitted: both
    assert (await api.get(speaking_id)).body["direction"] == "both"
    reference = render_piper(GREETING)
    assert (await api.say(speaking_id, GREETING)).status == 200
    await asyncio.sleep(len(reference) / 8000 + 1.0)

    # Everyone but the last leaves: the session goes on for the one still there.
    for p in conf.participants[:-1]:
        assert_heard(await p.recording(), reference, f"{kind} participant {p.name}", HEARD_CORR)
    await asyncio.sleep(0.5)
    assert (await api.get(speaking_id)).body["status"] == "active", "one participant is still in the conference"

    # The last one leaves: the session stops within a second and nothing of speakd's is left.
    last = conf.participants[-1]
    left_at = time.monotonic()
    await last.hangup()
    await api.wait_status(speaking_id, "stopped", timeout=1.0)
    assert time.monotonic() - left_at < 1.0
    assert await leftovers(ari, speakd.app) == []
    if kind == "confbridge":  # speakd's announcer did not keep the emptied room alive
        assert await confbridge_rooms(ari, conf.room) == []
    assert_heard(await last.recording(), reference, f"{kind} participant {last.name}", HEARD_CORR)


async def test_destroying_the_bridge_stops_the_session(api, ari, speakd, mixing_conference):
    conf = await mixing_conference(n=2)
    speaking_id = await start(api, conf.bridge_id)
    assert (await api.say(speaking_id, LONG)).status == 200
    await asyncio.sleep(0.5)
    destroyed_at = time.monotonic()
    await ari.delete(f"/bridges/{conf.bridge_id}")
    await api.wait_status(speaking_id, "stopped", timeout=1.0)
    assert time.monotonic() - destroyed_at < 1.0
    assert await leftovers(ari, speakd.app) == []


@pytest.mark.by_ear
async def test_a_confbridge_room_named_by_its_bridge_id(api, ari, speakd, confbridge_room):
    conf = await confbridge_room(n=1)
    [bridge] = await confbridge_rooms(ari, conf.room)
    speaking_id = await start(api, bridge["id"])
    # The same room by its name is the same conference: one session at a time.
    second = await api.create(conf.room, reference_type="confbridge", direction="both")
    assert second.status == 409, second
    reference = render_piper(GREETING)
    assert (await api.say(speaking_id, GREETING)).status == 200
    await asyncio.sleep(len(reference) / 8000 + 1.0)
    assert_heard(await conf.participants[0].recording(), reference, "the participant", HEARD_CORR)
    await api.wait_status(speaking_id, "stopped", timeout=1.0)


@pytest.mark.by_ear
@pytest.mark.parametrize("kind", KINDS)
async def test_flush_stops_speech_and_the_next_say_plays(api, speakd, make_conference, kind):
    after = "After the interruption, this plays."
    conf, reference_id = await make_conference(kind, n=3)
    speaking_id = await start(api, reference_id)
    reference = render_piper(LONG)
    assert (await api.say(speaking_id, LONG)).status == 200
    await asyncio.sleep(2.0)
    flushed = await api.flush(speaking_id)
    flushed_by = time.time()
    assert flushed.status == 200 and flushed.body["status"] == "active"
    await asyncio.sleep(1.5)
    assert (await api.say(speaking_id, after)).status == 200
    await asyncio.sleep(len(render_piper(after)) / 8000 + 1.0)
    played = flushed_by - first_frame_sent_at(speakd, speaking_id)
    assert len(reference) / 8000 > played + 2.0, "the text must be long enough to be cut"

    for p in conf.participants:
        recording = await p.recording()
        who = f"{kind} participant {p.name}"
        corr, lag = envelope_correlation(recording, reference[: int(played * 8000)])
        assert corr > HEARD_CORR, f"{who} should hear the start of the long text (corr {corr:.2f})"
        start_s = lag * FRAME_S
        cut_by = start_s + played + 0.020 + ASTERISK_DELAY_S
        after_corr, after_lag = envelope_correlation(recording[int(cut_by * 8000) :], render_piper(after))
        # (a whole short say aligns better than the cut start of a long one)
        assert after_corr > HEARD_CORR + 0.1, f"{who} should hear the say after the flush (corr {after_corr:.2f})"
        resumed_s = cut_by + after_lag * FRAME_S
        assert resumed_s - cut_by > 1.0
        window = recording[int(cut_by * 8000) : int((resumed_s - 0.06) * 8000)]
        assert speech_seconds(window) == 0.0, (
            f"{who}: speech after the flush, {speech_seconds(window):.2f}s between {cut_by:.2f}s and "
            f"{resumed_s:.2f}s; loud frames at {loud_times(window, cut_by)}"
        )
        assert last_speech_s(recording[: int(cut_by * 8000)]) > start_s + played - 0.8


@pytest.mark.by_ear
@pytest.mark.parametrize("kind", KINDS)
async def test_stop_mid_speech_silences_and_cleans_up(api, ari, speakd, make_conference, kind):
    conf, reference_id = await make_conference(kind, n=3)
    speaking_id = await start(api, reference_id)
    assert (await api.say(speaking_id, LONG)).status == 200
    await asyncio.sleep(1.5)
    asked_at = time.time()  # the speech played at least until the stop was asked for ...
    stopped = await api.stop(speaking_id)
    stopped_by = time.time()  # ... and at most until its answer came (which includes the teardown)
    assert stopped.status == 200 and stopped.body["status"] == "stopped"
    assert await leftovers(ari, speakd.app) == []
    await asyncio.sleep(1.0)
    first_sent = first_frame_sent_at(speakd, speaking_id)
    surely_played, played = asked_at - first_sent, stopped_by - first_sent
    for p in conf.participants:
        recording = await p.recording()
        who = f"{kind} participant {p.name}"
        corr, lag = envelope_correlation(recording, render_piper(LONG)[: int(surely_played * 8000)])
        assert corr > HEARD_CORR, f"{who} should hear the start of the long text (corr {corr:.2f})"
        cut_by = lag * FRAME_S + played + 0.020 + ASTERISK_DELAY_S
        tail = recording[int(cut_by * 8000) :]
        assert speech_seconds(tail) == 0.0, f"{who}: speech after the stop, at {loud_times(tail, cut_by)}"
        assert last_speech_s(recording) > cut_by - 0.8


@pytest.mark.parametrize("kind", KINDS)
async def test_one_session_per_conference(api, make_conference, kind):
    _, reference_id = await make_conference(kind, n=1)
    speaking_id = await start(api, reference_id)
    second = await api.create(reference_id, reference_type="confbridge")
    assert second.status == 409, second
    assert speaking_id in second.message
    await api.stop(speaking_id)
    third = await api.create(reference_id, reference_type="confbridge")
    assert third.status == 201, third
    await api.wait_status(third.body["id"], "active")
    await api.stop(third.body["id"])


@pytest.mark.parametrize("direction", ["in", "out"])
@pytest.mark.parametrize("kind", KINDS)
async def test_direction_other_than_both_is_refused(api, make_conference, kind, direction):
    _, reference_id = await make_conference(kind, n=1)
    reply = await api.create(reference_id, reference_type="confbridge", direction=direction)
    assert reply.status == 400, reply
    assert "'both'" in reply.message and "conference" in reply.message


@pytest.mark.parametrize("kind", KINDS)
async def test_a_conference_of_another_customer_is_a_404(api, make_conference, kind):
    # Its participants' legs name customer B as their owner, like a call leg would.
    _, reference_id = await make_conference(kind, n=1, variables={"SPEAKD_CUSTOMER_ID": CUSTOMER_B})
    refused = await api.create(reference_id, reference_type="confbridge", direction="both")
    assert refused.status == 404, refused
    owner = api.as_customer(KEY_B)
    created = await owner.create(reference_id, reference_type="confbridge", direction="both")
    assert created.status == 201, created
    await owner.stop(created.body["id"])


async def test_unknown_conference_is_a_400(api):
    reply = await api.create("no-such-room-4711", reference_type="confbridge")
    assert reply.status == 400, reply
    assert "no conference 'no-such-room-4711'" in reply.message


async def test_a_bridge_that_is_not_a_conference_is_a_400(api, ari):
    # A holding bridge exists in ARI but is no conference.
    bridge_id = f"holding-{time.monotonic_ns()}"
    await ari.post("/bridges", type="holding", bridgeId=bridge_id)
    try:
        reply = await api.create(bridge_id, reference_type="confbridge")
        assert reply.status == 400, reply
        assert "not a conference" in reply.message
    finally:
        await ari.delete_quietly(f"/bridges/{bridge_id}")


async def test_a_conference_with_no_participant_is_a_409(api, ari, speakd):
    bridge_id = f"empty-{time.monotonic_ns()}"
    await ari.post("/bridges", type="mixing", bridgeId=bridge_id)
    try:
        reply = await api.create(bridge_id, reference_type="confbridge")
        assert reply.status == 409, reply
        assert "no participant" in reply.message
        assert await leftovers(ari, speakd.app) == []
    finally:
        await ari.delete_quietly(f"/bridges/{bridge_id}")


# -- one member: whispered to it alone (out), or to everyone but it (in) -----------------------

# Through one member's leg the sandbox's Local-channel phones hear the speech 6-7 dB down on both
# kinds (docs/media.md: the level through Local channels), as every participant does: assert_heard
# and judge_intact take the level they measure.


@pytest.mark.by_ear
@pytest.mark.parametrize("direction", ["out", "in"])
@pytest.mark.parametrize("kind", KINDS)
async def test_a_member_alone_hears_it_or_everyone_but_the_member(api, ari, speakd, make_conference, kind, direction):
    conf, reference_id = await make_conference(kind, n=3)
    member, others = conf.participants[1], [conf.participants[0], conf.participants[2]]
    speaking_id = await start(api, reference_id, member=member.channel_id, direction=direction)
    assert (await api.get(speaking_id)).body["direction"] == direction
    reference = render_piper(GREETING)
    assert (await api.say(speaking_id, GREETING)).status == 200
    await asyncio.sleep(len(reference) / 8000 + 1.0)

    # The others leave first: the member's session goes on while it is there.
    for p in others:
        recording = await p.recording()
        who = f"{kind} participant {p.name} ({direction}, member {member.name})"
        if direction == "in":
            intact = judge_intact(recording, reference, who)
            print(intact.summary())
            assert_heard(recording, reference, who, HEARD_CORR)
            # One hole of a frame at most: what Asterisk's own whisper shows now and then (harness.hearing).
            assert not intact.dropouts or intact.only_asterisk_floor, intact.summary()
        else:
            assert_not_heard(recording, who)
    assert (await api.get(speaking_id)).body["status"] == "active"

    # The member leaving ends its session as a hangup does, and nothing of speakd's is left. On
    # the ARI bridge it leaves without hanging up; a ConfBridge member (in the dialplan) hangs up.
    left_at = time.monotonic()
    if kind == "bridge":
        await ari.post(f"/bridges/{conf.bridge_id}/removeChannel", channel=member.channel_id)
    else:
        await member.hangup()
    await api.wait_status(speaking_id, "stopped", timeout=1.0)
    assert time.monotonic() - left_at < 1.0
    assert await leftovers(ari, speakd.app) == []
    recording = await member.recording()
    if direction == "out":
        print(judge_intact(recording, reference, f"{kind} member {member.name}").summary())
        assert_heard(recording, reference, f"{kind} member {member.name}", HEARD_CORR)
    else:
        assert_not_heard(recording, f"{kind} member {member.name} (in: everyone but the member)")


@pytest.mark.parametrize("kind", KINDS)
async def test_a_member_not_in_the_conference_is_a_400(api, ari, speakd, make_conference, make_two_party_call, kind):
    _, reference_id = await make_conference(kind, n=1)
    other_call = await make_two_party_call()  # a live channel, in no conference
    for member in (other_call.channel_id, "no-such-channel-4711"):
        reply = await api.create(reference_id, reference_type="confbridge", direction="out", member=member)
        assert reply.status == 400, reply
        assert f"member '{member}' is not a participant of conference" in reply.message
    assert await leftovers(ari, speakd.app) == []
    on_a_call = await api.create(other_call.channel_id, direction="out", member=other_call.channel_id)
    assert on_a_call.status == 400 and "only with reference_type 'confbridge'" in on_a_call.message


@pytest.mark.parametrize("kind", KINDS)
async def test_a_member_session_beside_one_for_the_whole_conference(api, make_conference, kind):
    conf, reference_id = await make_conference(kind, n=2)
    member = conf.participants[0].channel_id
    whole = await start(api, reference_id)
    own = await start(api, reference_id, member=member, direction="out")
    again = await api.create(reference_id, reference_type="confbridge", direction="in", member=member)
    assert again.status == 409 and own in again.message, again
    for speaking_id in (own, whole):
        assert (await api.stop(speaking_id)).status == 200
