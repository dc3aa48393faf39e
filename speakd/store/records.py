"""The Speaking record: its fields, enums and timestamp format, exactly as the spec.

Here, beside the store that keeps it, so the store need not import the sessions that fill it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from speakd.provider_names import PROVIDER_NAMES

TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
NOT_YET = "9999-01-01 00:00:00.000000"  # the spec's "has not happened" sentinel


class Status(StrEnum):
    INITIATING = "initiating"
    ACTIVE = "active"
    STOPPED = "stopped"


# A session holds its call (and is counted live) in these.
LIVE_STATUSES = (Status.INITIATING, Status.ACTIVE)


class ReferenceType(StrEnum):
    CALL = "call"
    CONFBRIDGE = "confbridge"


class Direction(StrEnum):
    IN = "in"
    OUT = "out"
    BOTH = "both"


# ProviderName.GCP == "gcp", and so on for every name in speakd.provider_names.
ProviderName = StrEnum("ProviderName", [(name.upper(), name) for name in PROVIDER_NAMES])


def stamp_of(wall_time: float) -> str:
    """A wall-clock time (``time.time()``) in the spec's format."""
    return dt.datetime.fromtimestamp(wall_time, dt.UTC).strftime(TIME_FORMAT)


def seconds_of(stamp: str) -> float:
    """A time in the spec's format (UTC) as unix seconds: the inverse of :func:`stamp_of`."""
    return dt.datetime.strptime(stamp, TIME_FORMAT).replace(tzinfo=dt.UTC).timestamp()


_last_stamp = ""


def now_stamp() -> str:
    """The current UTC time in the spec's format, strictly increasing within this process.

    Strictly increasing so that ``tm_create`` can serve as a pagination cursor.
    """
    global _last_stamp
    stamp = stamp_of(time.time())
    if stamp <= _last_stamp:
        stamp = stamp_of(seconds_of(_last_stamp) + 1e-6)  # 1 µs on: exact, a float resolves finer
    _last_stamp = stamp
    return stamp


@dataclass
class Speaking:
    id: str
    customer_id: str
    reference_type: str
    reference_id: str
    language: str
    provider: str
    voice_id: str
    direction: str
    status: str
    tm_create: str
    tm_update: str
    tm_delete: str = NOT_YET

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def deleted(self) -> bool:
        return self.tm_delete != NOT_YET


FIELDS = tuple(f.name for f in dataclasses.fields(Speaking))


@dataclass(frozen=True)
class Owner:
    """The node process that owns a session's Asterisk objects, kept in the session's row beside
    the spec's fields (the API never shows it). ``run_id`` is new at every start of the process,
    so a restarted node is a new run: what an earlier run left is told apart from its own."""

    node_id: str
    run_id: str


@dataclass(frozen=True)
class NodeAddress:
    """Where another node is reached (``url``: its API) and the system name of its Asterisk
    (``asterisk``: the prefix of the channel ids it names; '' if it has none)."""

    id: str
    url: str
    asterisk: str = ""


# The owner of rows written before nodes existed: whichever node opens such a store takes them.
NO_OWNER = Owner("", "")

# A say as stored (sessions.says.SayItem.row()): written when queued, updated as it plays.
SAY_COLUMNS = (
    "say_id",
    "speaking_id",
    "text",
    "payload_type",
    "client_state",
    "command_id",
    "status",
    "error",
    "heard_chars",
    "played_ms",
    "tm_queued",
    "tm_play_start",
    "tm_play_end",
    "spoken_by",  # JSON: [{"provider", "voice_id"}, ...]
    "provider_failures",  # JSON: [{"provider", "voice_id", "stage", "error"}, ...]
    "interruptible",  # False: must be heard whole (a flush or stop does not cut it)
    "volume",  # dB on top of the one loudness
    "lexicon",  # the lexicon's name ('' for none)
)

# A webhook delivery waiting in the outbox: ``body`` is the exact JSON POSTed (signed as is),
# ``created`` the unix time it was queued (what give-up is measured from).
OUTBOX_FIELDS = ("event_id", "customer_id", "event_type", "body", "created", "attempts")
