"""A create's ``member`` and a say's ``volume``: how they are read, and the member target's rules."""

from __future__ import annotations

import pytest

from speakd.errors import InvalidRequest
from speakd.events.model import StopReason
from speakd.sessions.conference import ConferenceTarget, MemberTarget
from speakd.sessions.requests import create_request, say_request


@pytest.mark.parametrize(("given", "volume"), [(None, 0.0), (-20, -20.0), (10, 10.0), (-6.5, -6.5), ("-6", -6.0)])
def test_volume_in_range(given, volume):
    data = {"text": "Hi."} | ({} if given is None else {"volume": given})
    assert say_request(data).volume == volume


@pytest.mark.parametrize("given", [-20.5, 10.01, "loud", True, float("nan"), [1]])
def test_volume_out_of_range_or_not_a_number(given):
    with pytest.raises(InvalidRequest, match="'volume' must be a number of dB from -20 to \\+10"):
        say_request({"text": "Hi.", "volume": given})


def test_member_only_on_a_conference():
    req = create_request({"reference_type": "confbridge", "reference_id": "room1", "member": "chan-1"}, "piper")
    assert req.member == "chan-1"
    with pytest.raises(InvalidRequest, match="only with reference_type 'confbridge'"):
        create_request({"reference_type": "call", "reference_id": "c1", "member": "chan-1"}, "piper")
    with pytest.raises(InvalidRequest, match="'member' must be the channel id"):
        create_request({"reference_type": "confbridge", "reference_id": "r", "member": "a b"}, "piper")


def test_directions_on_a_conference():
    with pytest.raises(InvalidRequest, match="name it in 'member'"):
        ConferenceTarget("room1", "out", "s1", "speakd")
    target = ConferenceTarget("room1", "in", "s1", "speakd", member="chan-1")
    assert target.ended_reason is StopReason.HANGUP  # the member leaving: as a hangup
    assert ConferenceTarget("room1", "both", "s1", "speakd").ended_reason is StopReason.CONFERENCE_ENDED


def test_a_member_must_be_a_participant_and_its_leaving_ends_the_session():
    target = MemberTarget("room1", "out", "0b1c2d3e-0000-4000-8000-000000000000", "speakd", member="p2")
    bridge = {"id": "b-1", "channels": ["p1", "p2", "CBAnn-1"]}
    target.check(bridge)
    assert target.conf_bridge_id == "b-1"
    own = f"{target.prefix}-announcer2"
    for member in ("p9", own):
        other = MemberTarget("room1", "out", "0b1c2d3e-0000-4000-8000-000000000000", "speakd", member=member)
        with pytest.raises(InvalidRequest, match=f"member '{member}' is not a participant"):
            other.check({"id": "b-1", "channels": ["p1", own]})
    varset = {"type": "ChannelVarset", "variable": "BRIDGEPEER", "channel": {"id": "p2"}}
    assert target.on_event(varset | {"value": "p1,CBAnn-1"}) is None  # membership changed, still in
    assert target.on_event(varset | {"value": ""}) == "member 'p2' left conference 'room1'"
    assert target.on_event(varset | {"value": "", "channel": {"id": "p1"}}) is None
    assert target.watched_ids == {"p2", target.snoop_id, target.media_id, target.bridge_id}
