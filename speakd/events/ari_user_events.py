"""ARI user events: every speaking event raised in Asterisk where it happened, for the ARI
applications that watch it.

Who receives a user event. ``POST /events/user/<name>?application=<app>&source=...`` is
delivered to the one application it names, and to nobody else: ``stasis_app_user_event``
(res/res_stasis.c) publishes it on that application's topic only (a copy goes to AMI when
the source is a channel), whatever other applications are subscribed to the source; the
source only adds its snapshot to the event. An application does not even have to watch the
source to get an event addressed to it. So speakd raises each event once per application
watching its source: ``GET /applications`` lists, per application, the channels and bridges it
watches (``channel_ids`` / ``bridge_ids``: those it subscribed to, and those in Stasis with
it; an application connected with ``subscribeAll`` shows ``__AST_CHANNEL_ALL_TOPIC`` /
``__AST_BRIDGE_ALL_TOPIC`` and watches them all). speakd's own application is left out.

Asterisk drops a channel's subscriptions when the channel goes, so the last events of a call
that hung up (``speaking_say_interrupted``, ``speaking_stopped``) would find nobody watching and
no channel to raise them on. The applications last seen watching each source are remembered
until its session's ``speaking_stopped``: once the source is gone they still get the events,
raised without a source (a ``ChannelUserevent`` with no ``channel``); the ``source`` variable
says where it happened.

Delivery: ``offer`` (from the event bus) only queues; one task owned by the sink drains the
queue in batches: one ``GET /applications`` per batch, then each source's events in order
(sources concurrently, a few requests at a time). A full queue drops events with a warning;
a failed raise (Asterisk unreachable, application gone) is logged and not retried.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import structlog

from speakd.ari.client import AriClient
from speakd.ari.errors import AriError, AriNotFound, AriUnavailable, AriUnprocessable
from speakd.events.bus import drain_and_stop, next_batch
from speakd.events.model import Event, EventType
from speakd.parsing import format_bool

log = structlog.get_logger(__name__)

QUEUE_EVENTS = 5000
BATCH = 200
CONCURRENT_REQUESTS = 8  # ARI's connection pool is shared with session setups: take little of it
REMEMBERED_SOURCES = 4096
ALL_CHANNELS = "__AST_CHANNEL_ALL_TOPIC"
ALL_BRIDGES = "__AST_BRIDGE_ALL_TOPIC"


def flat(value: Any) -> str:
    """A user event variable: a string, as AMI and dialplan consumers expect."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return format_bool(value)
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def variables_of(event: Event) -> dict[str, str]:
    """The event's data as variables, plus what its envelope says around the data."""
    variables = {key: flat(value) for key, value in event.data.items()}
    variables.setdefault("speaking_id", event.speaking_id)
    variables["topic"] = event.topic
    variables["timestamp"] = event.timestamp
    variables["source"] = event.source
    return variables


@dataclass(frozen=True)
class UserEvent:
    name: str
    source: str  # "channel:<id>", "bridge:<id>", or "" (only to also_to)
    variables: dict[str, str]
    also_to: tuple[str, ...] = ()  # applications that get it whether or not they watch the source
    ends_source: bool = False  # the source's last event: forget who watched it


class Watching:
    """Who watches what, from one ``GET /applications``."""

    def __init__(self, apps: Iterable[dict[str, Any]], own_app: str) -> None:
        self.channels: dict[str, set[str]] = {}
        self.bridges: dict[str, set[str]] = {}
        self.all_channels: set[str] = set()
        self.all_bridges: set[str] = set()
        for app in apps:
            name = app.get("name", "")
            if not name or name == own_app:
                continue
            for ids, everything, table, watch_all in (
                ("channel_ids", ALL_CHANNELS, self.channels, self.all_channels),
                ("bridge_ids", ALL_BRIDGES, self.bridges, self.all_bridges),
            ):
                for object_id in app.get(ids) or ():
                    if object_id == everything:
                        watch_all.add(name)
                    else:
                        table.setdefault(object_id, set()).add(name)

    def of(self, source: str) -> frozenset[str]:
        """The applications that named this object."""
        kind, _, object_id = source.partition(":")
        table = self.channels if kind == "channel" else self.bridges if kind == "bridge" else {}
        return frozenset(table.get(object_id, ()))

    def of_all(self, source: str) -> frozenset[str]:
        """The applications that watch every object of its kind."""
        kind = source.partition(":")[0]
        return frozenset(self.all_channels if kind == "channel" else self.all_bridges if kind == "bridge" else ())


class AriUserEventSink:
    """The ARI side of the event bus (see the module's docstring)."""

    def __init__(self, ari: AriClient, own_app: str, *, queue_events: int = QUEUE_EVENTS) -> None:
        self._ari = ari
        self._own_app = own_app
        self._queue: asyncio.Queue[UserEvent] = asyncio.Queue(queue_events)
        self._watchers: OrderedDict[str, frozenset[str]] = OrderedDict()
        self._limit = asyncio.Semaphore(CONCURRENT_REQUESTS)
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.dropped = 0

    # -- taking events (never blocks, never raises) -------------------------------------------

    def offer(self, event: Event) -> None:
        if event.source:
            ends = event.event_type is EventType.SPEAKING_STOPPED
            self._put(UserEvent(str(event.event_type), event.source, variables_of(event), ends_source=ends))

    def raise_event(self, name: str, source: str, variables: dict[str, str], also_to: tuple[str, ...] = ()) -> None:
        """Raise an event of speakd's own (``speakd_error``) on ``source``, in order with the rest."""
        self._put(UserEvent(name, source, {**variables, "source": source}, tuple(a for a in also_to if a)))

    def _put(self, item: UserEvent) -> None:
        if self._closed:
            return
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("ari_user_events_dropped", dropped=self.dropped, queued=self._queue.maxsize)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="speakd-ari-user-events")

    async def aclose(self, drain_timeout: float = 2.0) -> None:
        """Deliver what is queued (for at most ``drain_timeout``), then stop."""
        self._closed = True
        if self._task is None or self._task.done():
            return
        await drain_and_stop(self._queue, self._task, drain_timeout)
        if not self._queue.empty():
            log.info("ari_user_events_unsent", count=self._queue.qsize())

    async def _run(self) -> None:
        while True:
            async with next_batch(self._queue, BATCH) as batch:
                try:
                    await self._deliver(batch)
                except Exception:  # a bug here must not end delivery for good
                    log.exception("ari_user_events_failed", count=len(batch))

    # -- delivery -----------------------------------------------------------------------------

    async def _deliver(self, batch: list[UserEvent]) -> None:
        if not self._ari.connected.is_set():
            log.info("ari_user_events_skipped", reason="ARI not connected", count=len(batch))
            return
        try:
            watching = Watching(await self._ari.get("applications"), self._own_app)
        except AriError as exc:
            log.info("ari_user_events_skipped", reason=exc.message, count=len(batch))
            return
        by_source: dict[str, list[UserEvent]] = {}
        for item in batch:
            by_source.setdefault(item.source, []).append(item)
        await asyncio.gather(*(self._deliver_source(s, items, watching) for s, items in by_source.items()))

    async def _deliver_source(self, source: str, items: list[UserEvent], watching: Watching) -> None:
        watchers = watching.of(source)
        gone = False
        if watchers:
            self._remember(source, watchers)
        elif self._watchers.get(source) and await self._gone(source):
            watchers, gone = self._watchers[source], True  # it went, taking their subscriptions with it
        elif source in self._watchers:
            del self._watchers[source]  # still there, nobody watches it any more
        watchers |= watching.of_all(source)
        for item in items:
            apps = (watchers | set(item.also_to)) - {self._own_app}
            if apps:
                await asyncio.gather(*(self._raise(app, item, gone) for app in sorted(apps)))
            if item.ends_source:
                self._watchers.pop(source, None)

    def _remember(self, source: str, watchers: frozenset[str]) -> None:
        self._watchers[source] = watchers
        self._watchers.move_to_end(source)
        while len(self._watchers) > REMEMBERED_SOURCES:
            self._watchers.popitem(last=False)

    async def _gone(self, source: str) -> bool:
        kind, _, object_id = source.partition(":")
        try:
            await self._ari.get(f"{kind}s/{object_id}")
        except AriNotFound:
            return True
        except AriError:
            return False
        return False

    async def _raise(self, app: str, item: UserEvent, gone: bool) -> None:
        body = {"variables": item.variables}
        source = None if gone else item.source or None
        async with self._limit:
            try:
                try:
                    params = {"application": app, "source": source}
                    await self._ari.request("POST", f"events/user/{item.name}", params=params, json_body=body)
                except AriUnprocessable:  # the source has gone: raise it without one
                    if source is None:
                        raise
                    await self._ari.request(
                        "POST", f"events/user/{item.name}", params={"application": app}, json_body=body
                    )
            except AriNotFound:
                log.debug("ari_user_event_app_gone", app=app, event=item.name, source=item.source)
            except AriUnavailable as exc:
                log.info("ari_user_event_failed", app=app, event=item.name, source=item.source, error=exc.message)
            except AriError as exc:
                log.info(
                    "ari_user_event_refused",
                    app=app,
                    event=item.name,
                    source=item.source,
                    status=exc.status,
                    error=exc.message,
                )
