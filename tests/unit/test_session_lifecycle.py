"""The session lifecycle's transition table and the ARI event handler table, on their own
(the service's behaviour through them is in test_service.py)."""

from __future__ import annotations

import itertools
import re
from types import SimpleNamespace
from typing import Any

import pytest

from speakd.ari.events import EventWaiters
from speakd.events import StopReason
from speakd.sessions.ari_events import AriEventHandlers
from speakd.sessions.live import TRANSITIONS, LiveSession, LiveSessions, SessionState
from speakd.store.records import Speaking, Status

S = SessionState
ALLOWED = {(S.INITIATING, S.ACTIVE), (S.INITIATING, S.STOPPING), (S.ACTIVE, S.STOPPING), (S.STOPPING, S.STOPPED)}


def live_session(speaking_id: str = "sp-1", watched: tuple[str, ...] = ("call-1", "sp-1-media")) -> LiveSession:
    record = Speaking(speaking_id, "c1", "call", "call-1", "en-US", "piper", "", "out", "initiating", "t", "t")
    target = SimpleNamespace(
        watched_ids=set(watched),
        media_id=f"{speaking_id}-media",
        conflict_key="call-1",
        ended_reason=StopReason.HANGUP,
        on_event=lambda event: None,
    )
    return LiveSession(SimpleNamespace(record=record), target)  # type: ignore[arg-type]


def test_the_transition_table_is_the_lifecycle():
    assert {(a, b) for a, targets in TRANSITIONS.items() for b in targets} == ALLOWED
    assert set(TRANSITIONS) == set(SessionState)


@pytest.mark.parametrize(("start", "to"), sorted(set(itertools.product(S, S)) - ALLOWED))
def test_an_illegal_transition_is_refused_and_changes_nothing(start, to):
    live = live_session()
    live.state = start
    live.record.status = "before"
    assert live.move_to(to) is False
    assert live.state is start and live.record.status == "before"


def test_the_record_status_follows_the_state_and_stays_while_stopping():
    live = live_session()
    assert live.state is S.INITIATING
    assert live.move_to(S.ACTIVE) and live.record.status == Status.ACTIVE
    assert live.move_to(S.STOPPING) and live.record.status == Status.ACTIVE  # the API has no "stopping"
    assert live.move_to(S.STOPPED) and live.record.status == Status.STOPPED
    stopped_while_initiating = live_session()
    assert stopped_while_initiating.move_to(S.STOPPING) and stopped_while_initiating.record.status == "initiating"
    assert not stopped_while_initiating.move_to(S.ACTIVE)  # a setup finishing late does not revive it


# -- the ARI event handler table --------------------------------------------------------------------


def handlers() -> tuple[AriEventHandlers, list[tuple[str, StopReason, str]], list[dict[str, Any]]]:
    stops: list[tuple[str, StopReason, str]] = []
    user_events: list[dict[str, Any]] = []
    sessions = LiveSessions()
    sessions.add(live_session())
    service = SimpleNamespace(
        waiters=EventWaiters(),
        sessions=sessions,
        stop_soon=lambda *args, **_: stops.append(args),
        user_event_handler=user_events.append,
    )
    return AriEventHandlers(service), stops, user_events  # type: ignore[arg-type]


def test_the_table_holds_exactly_the_handled_events_each_named_after_its_event():
    table, _, _ = handlers()
    assert set(table.table) == {
        "StasisEnd",
        "ChannelHangupRequest",
        "ChannelDestroyed",
        "BridgeDestroyed",
        "ChannelUserevent",
    }
    for event_type, handler in table.table.items():
        assert handler.__name__ == "on_" + re.sub(r"(?<!^)(?=[A-Z])", "_", event_type).lower()
    # Every on_<event> method is in the table: none is dead, none handles events unlisted.
    on_methods = {name for name in dir(AriEventHandlers) if name.startswith("on_")} - {"on_event"}
    assert on_methods == {handler.__name__ for handler in table.table.values()}


async def test_handlers_end_the_watching_session_and_pass_user_events_on():
    table, stops, user_events = handlers()
    await table.on_event({"type": "ChannelHangupRequest", "channel": {"id": "call-1"}})
    await table.on_event({"type": "StasisEnd", "channel": {"id": "somebody-else"}})
    assert stops == [("sp-1", StopReason.HANGUP, "hangup (call-1)")]
    event = {"type": "ChannelUserevent", "eventname": "speakd", "channel": {"id": "call-1"}}
    await table.on_event(event)
    assert user_events == [event]


@pytest.mark.parametrize("event_type", ["ChannelHangupRequest", "StasisEnd", "ChannelDestroyed"])
async def test_the_media_channel_ended_by_someone_else_is_a_media_error_not_a_hangup(event_type):
    # Asterisk hangs up an ExternalMedia channel whose connection closed, and that event may come
    # before speakd sees the close itself: the reason must not depend on which comes first.
    table, stops, _ = handlers()
    await table.on_event({"type": event_type, "channel": {"id": "sp-1-media"}})
    assert [(speaking_id, reason) for speaking_id, reason, _ in stops] == [("sp-1", StopReason.ERROR)]
    assert "media channel" in stops[0][2] and "sp-1-media" in stops[0][2]


async def test_an_event_type_not_in_the_table_is_not_dispatched_by_name():
    table, stops, user_events = handlers()
    # A method named after an event does not handle it unless the table says so.
    table.on_channel_varset = lambda event: stops.append(("called",))  # type: ignore[attr-defined]
    await table.on_event({"type": "ChannelVarset", "channel": {"id": "call-1"}})
    assert stops == [] and user_events == []


async def test_every_session_watching_a_channel_ends_with_it_and_one_leaving_keeps_the_other():
    # A call session and a conference member session on the same channel (or any two sessions
    # watching one object): its hangup ends both, and the first to end does not blind the other.
    table, stops, _ = handlers()
    sessions: LiveSessions = table.service.sessions
    member = live_session("sp-2", watched=("call-1", "sp-2-media"))
    sessions.add(member)
    await table.on_event({"type": "ChannelHangupRequest", "channel": {"id": "call-1"}})
    assert sorted(speaking_id for speaking_id, _, _ in stops) == ["sp-1", "sp-2"]
    stops.clear()
    sessions.remove(sessions.get("sp-1"))
    await table.on_event({"type": "ChannelDestroyed", "channel": {"id": "call-1"}})
    assert stops == [("sp-2", StopReason.HANGUP, "channel destroyed (call-1)")]
    sessions.remove(member)
    assert sessions.watched_ids() == set()
