"""Speaking events: what happened to a session and to each say, in seed 002's envelope.

Every event is published on two topics of its customer: the session's
(``customer_id:<id>:speaking:<speaking id>``) and its type's
(``customer_id:<id>:speaking:<event type>``), so a client can follow one session or, say,
every say that finished. A subscription that matches both gets the event once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class EventType(StrEnum):
    SPEAKING_CREATED = "speaking_created"
    SPEAKING_STARTED = "speaking_started"
    SPEAKING_STOPPED = "speaking_stopped"
    SAY_STARTED = "speaking_say_started"
    SAY_FINISHED = "speaking_say_finished"
    SAY_INTERRUPTED = "speaking_say_interrupted"
    SAY_FAILED = "speaking_say_failed"


class StopReason(StrEnum):
    """Why a session stopped (``data.reason`` of ``speaking_stopped``)."""

    STOP = "stop"  # stop or delete over the API, the dialplan or ARI
    HANGUP = "hangup"
    CONFERENCE_ENDED = "conference_ended"
    ERROR = "error"  # setup failed, the media path broke, or speakd died with it live
    SHUTDOWN = "shutdown"
    ASTERISK_GONE = "asterisk_gone"
    NODE_LOST = "node_lost"  # its node died or vanished: another node ended it (fleet)


class InterruptReason(StrEnum):
    """What cut a say (``data.reason`` of ``speaking_say_interrupted``); or the session's StopReason."""

    FLUSH = "flush"
    RESET = "reset"  # a text stream's reset (barge-in)
    STOP_CURRENT = "stop_current"  # a later say with stop: current
    STOP_ALL = "stop_all"  # a later say with stop: all


TOPIC_PREFIX = "customer_id:"


def speaking_topic(customer_id: str, speaking_id: str) -> str:
    return f"{TOPIC_PREFIX}{customer_id}:speaking:{speaking_id}"


def customer_of_topic(topic: str) -> str | None:
    """The customer a topic (or topic pattern) belongs to; None if it is not one of ours."""
    if not topic.startswith(TOPIC_PREFIX):
        return None
    customer, sep, rest = topic[len(TOPIC_PREFIX) :].partition(":")
    if not sep or not customer or not (rest == "speaking:*" or rest.startswith("speaking:") or rest == "*"):
        return None
    return customer


def topic_matches(pattern: str, topic: str) -> bool:
    """A pattern is a topic, or a prefix of topics ending in ``*``."""
    if pattern.endswith("*"):
        return topic.startswith(pattern[:-1])
    return pattern == topic


@dataclass(frozen=True)
class Event:
    event_type: EventType
    timestamp: str  # when it happened, in the spec's format (a say's: when it was played)
    customer_id: str
    speaking_id: str
    data: dict[str, Any]
    # Where Asterisk should raise it as a user event: "channel:<id>" or "bridge:<id>"; "" for nowhere.
    source: str = field(default="", compare=False)

    @property
    def topic(self) -> str:
        return speaking_topic(self.customer_id, self.speaking_id)

    @property
    def topics(self) -> tuple[str, str]:
        return self.topic, f"{TOPIC_PREFIX}{self.customer_id}:speaking:{self.event_type}"

    def matched_by(self, patterns: set[str] | frozenset[str]) -> bool:
        return any(topic_matches(p, t) for p in patterns for t in self.topics)

    def envelope(self) -> dict[str, Any]:
        return {"event_type": str(self.event_type), "timestamp": self.timestamp, "topic": self.topic, "data": self.data}

    def to_json(self) -> str:
        """All of it, for another node (speakd.events.fleet); :meth:`from_json` gives it back equal."""
        fields = {"event_type": str(self.event_type), "timestamp": self.timestamp, "customer_id": self.customer_id}
        fields |= {"speaking_id": self.speaking_id, "data": self.data, "source": self.source}
        return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Event:
        fields = json.loads(text)
        return cls(**{**fields, "event_type": EventType(fields["event_type"])})
