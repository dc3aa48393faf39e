"""A live session's state, in one place, and the index of live sessions.

Each live session is one :class:`LiveSession`: its :class:`SessionState` (changed only by
:meth:`LiveSession.move_to`, which refuses a transition the lifecycle does not have), the tasks
the service runs for it, and what the API keeps about it (its open text stream, command ids,
waiters on its says). :class:`LiveSessions` finds them by id, by reference and by the Asterisk
objects they watch.

The record's ``status`` (public, :class:`~speakd.store.records.Status`) follows the state: it
reads ``initiating``/``active``/``stopped`` on entering those states and keeps its last value
while stopping (the API has no ``stopping``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum

from speakd.sessions.says import SayItem
from speakd.sessions.session import Session
from speakd.sessions.stream import SpeakingStream
from speakd.sessions.targets import Target
from speakd.store.records import Speaking, Status


class SessionState(StrEnum):
    INITIATING = "initiating"  # record written; attaching to the call or conference
    ACTIVE = "active"  # attached: says play
    STOPPING = "stopping"  # tearing down: tasks cancelled, Asterisk objects removed
    STOPPED = "stopped"  # torn down (the entry leaves LiveSessions right after)


TRANSITIONS: dict[SessionState, frozenset[SessionState]] = {
    SessionState.INITIATING: frozenset({SessionState.ACTIVE, SessionState.STOPPING}),
    SessionState.ACTIVE: frozenset({SessionState.STOPPING}),
    SessionState.STOPPING: frozenset({SessionState.STOPPED}),
    SessionState.STOPPED: frozenset(),
}

# What the record's status reads on entering a state; STOPPING keeps the last one.
RECORD_STATUS = {
    SessionState.INITIATING: Status.INITIATING,
    SessionState.ACTIVE: Status.ACTIVE,
    SessionState.STOPPED: Status.STOPPED,
}


@dataclass
class LiveSession:
    session: Session
    target: Target
    state: SessionState = SessionState.INITIATING
    setup: asyncio.Task[None] | None = None  # attaching; owned here, awaited by the stop
    stopping: asyncio.Task[Speaking] | None = None  # the one teardown; awaited by every stop
    stream: SpeakingStream | None = None  # the client's open text stream, one at a time
    # command_id -> (when first seen, its say): the answer a repeat gets.
    commands: dict[str, tuple[float, asyncio.Future[SayItem]]] = field(default_factory=dict)
    # say id -> its final state, for waiters (resolved as the say's final event is published).
    say_done: dict[str, asyncio.Future[SayItem]] = field(default_factory=dict)
    # Another node ended it (this run was found lost): stopped here without writes or events.
    fenced: bool = False

    @property
    def id(self) -> str:
        return self.session.record.id

    @property
    def record(self) -> Speaking:
        return self.session.record

    @property
    def speakable(self) -> bool:
        """Whether a say may still be queued: not once a stop has begun (no worker would play it)."""
        return self.state in (SessionState.INITIATING, SessionState.ACTIVE)

    def move_to(self, state: SessionState) -> bool:
        """Enter ``state`` if the lifecycle allows it from the current one; False (and no
        change) if not: e.g. a setup finishing after a stop began does not make it active."""
        if state not in TRANSITIONS[self.state]:
            return False
        self.state = state
        if (status := RECORD_STATUS.get(state)) is not None:
            self.record.status = status
        return True


class LiveSessions:
    """The live sessions, by id, by reference (one per call or conference) and by watched object."""

    def __init__(self) -> None:
        self._by_id: dict[str, LiveSession] = {}
        # (reference_type, conflict key) -> speaking id: taken before the record is written.
        self._by_reference: dict[tuple[str, str], str] = {}
        # Asterisk object id -> the speaking ids watching it (a channel can be a call's and a
        # conference member's at once)
        self._by_object: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[LiveSession]:
        return iter(list(self._by_id.values()))  # a copy: entries leave while callers await

    def __contains__(self, speaking_id: str) -> bool:
        return speaking_id in self._by_id

    def get(self, speaking_id: str) -> LiveSession | None:
        return self._by_id.get(speaking_id)

    def holder(self, key: tuple[str, str]) -> str | None:
        """The speaking id holding a reference (live, or its record still being written)."""
        return self._by_reference.get(key)

    def reserve(self, key: tuple[str, str], speaking_id: str) -> None:
        self._by_reference[key] = speaking_id

    def unreserve(self, key: tuple[str, str]) -> None:
        self._by_reference.pop(key, None)

    def add(self, live: LiveSession) -> None:
        self._by_id[live.id] = live
        for object_id in live.target.watched_ids:
            self._by_object.setdefault(object_id, set()).add(live.id)

    def remove(self, live: LiveSession) -> None:
        self._by_id.pop(live.id, None)
        self.unreserve((live.record.reference_type, live.target.conflict_key))
        for object_id in live.target.watched_ids:
            watchers = self._by_object.get(object_id, set())
            watchers.discard(live.id)
            if not watchers:
                self._by_object.pop(object_id, None)

    def watching(self, object_id: str) -> list[LiveSession]:
        """The live sessions that watch this Asterisk object."""
        return [
            live for speaking_id in sorted(self._by_object.get(object_id, ())) if (live := self._by_id.get(speaking_id))
        ]

    def watched_ids(self) -> set[str]:
        return set(self._by_object)
