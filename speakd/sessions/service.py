"""The Speaking service: the API's verbs, the sessions' lifecycle, and the ARI event handlers.

Handlers are named after the ARI events they handle. Every session's tasks are owned here:
``stop`` (from the API, a hangup, or shutdown) cancels and awaits them and removes every
Asterisk object the session made before the record reads ``stopped``.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import structlog

from speakd.ari.client import AriClient
from speakd.ari.errors import AriError
from speakd.ari.events import EventWaiters, event_object_ids
from speakd.errors import Conflict, InvalidRequest, NotFound, ServiceUnavailable, TooManyRequests
from speakd.events import Event, EventBus, EventType, InterruptReason, StopReason
from speakd.media.playout import Playout
from speakd.media.transport import TransportError
from speakd.providers import ProviderRegistry
from speakd.providers.base import TextStream
from speakd.sessions.chunker import TextChunker
from speakd.sessions.conference import ConferenceTarget
from speakd.sessions.media import MediaPaths
from speakd.sessions.says import SayItem, SayStatus
from speakd.sessions.session import Session
from speakd.sessions.stream import Send, SpeakingStream
from speakd.sessions.targets import (
    AttachContext,
    CallTarget,
    SetupFailed,
    Target,
    channel_owner,
    hang_up_and_wait,
    is_own_object,
)
from speakd.store.records import NOT_YET, Speaking, Status, now_stamp
from speakd.store.sqlite import SqliteStore

log = structlog.get_logger(__name__)

# Says waiting to be synthesized, per session: a bound, so one client cannot grow the
# daemon's memory without limit (5000 characters each).
MAX_QUEUED_SAYS = 100
# A say repeating an earlier one's command_id within this long is answered, not played again.
COMMAND_ID_WINDOW_S = 60.0


class SayStop(StrEnum):
    """What a say cuts before it plays (seed 003's ``stop``)."""

    CURRENT = "current"
    ALL = "all"


@dataclass
class SayRequest:
    text: str
    payload_type: str = "text"
    client_state: str = ""
    command_id: str = ""
    stop: SayStop | None = None


@dataclass
class CreateRequest:
    reference_type: str
    reference_id: str
    language: str
    provider: str
    voice_id: str
    direction: str
    model: str = ""


@dataclass
class _Live:
    session: Session
    target: Target
    task: asyncio.Task[None] | None = None  # setup, then wait for the end
    stopping: asyncio.Task[Speaking] | None = None
    # command_id -> (when first seen, its say): the answer a repeat gets.
    commands: dict[str, tuple[float, asyncio.Future[SayItem]]] = field(default_factory=dict)


class SpeakingService:
    def __init__(
        self,
        *,
        store: SqliteStore,
        ari: AriClient,
        providers: ProviderRegistry,
        media: MediaPaths,
        owner_variable: str,
        events: EventBus | None = None,
        lead_ms: int = 1500,
        mark_every_ms: int = 100,
    ) -> None:
        self.store = store
        self.ari = ari
        self.providers = providers
        self.media = media
        self.owner_variable = owner_variable
        self.events = events or EventBus()
        self.lead_ms = lead_ms
        self.mark_every_ms = mark_every_ms
        self.waiters = EventWaiters()
        self.ctx = AttachContext(ari=ari, waiters=self.waiters, app=ari.app, media=media)
        self._live: dict[str, _Live] = {}
        self._by_reference: dict[tuple[str, str], str] = {}
        self._by_object: dict[str, str] = {}  # Asterisk object id -> speaking id
        self._closing = False
        self._say_done: dict[str, asyncio.Future[SayItem]] = {}  # say id -> its final state, for waiters
        self._streams: dict[str, SpeakingStream] = {}  # speaking id -> its open text stream
        # ChannelUserevents sent to speakd's application go here (operators' commands); must not block.
        self.user_event_handler: Callable[[dict[str, Any]], None] | None = None
        # Told how long each flush of audio in flight took to be confirmed by the far end (s).
        self.on_flush_confirmed: Callable[[float], None] | None = None
        # Told of each say whose synthesis fell behind its playout (the caller heard a gap).
        self.on_underrun: Callable[[], None] | None = None

    @property
    def live_count(self) -> int:
        return len(self._live)

    def live_sessions(self) -> list[Session]:
        return [live.session for live in self._live.values()]

    # -- API verbs --------------------------------------------------------------------------

    async def create(self, customer_id: str, req: CreateRequest) -> Speaking:
        if self._closing:
            raise ServiceUnavailable("speakd is shutting down; retry on the next instance")
        if not self.ari.connected.is_set():
            raise ServiceUnavailable("speakd is not connected to Asterisk (ARI); retry shortly")
        provider = self.providers.get(req.provider)
        provider.check(req.language, req.voice_id)
        speaking_id = str(uuid.uuid4())
        target = self._target(req, speaking_id)
        await target.validate(self.ari, customer_id, self.owner_variable)

        key = (req.reference_type, target.conflict_key)
        if key in self._by_reference:  # checked and taken with no await in between
            other = self._live.get(self._by_reference[key])  # None while its record is being written
            # Name the other session only to its owner.
            mine = other is not None and other.session.record.customer_id == customer_id
            which = f"speaking session {self._by_reference[key]}" if mine else "another speaking session"
            raise Conflict(f"{which} is already active on {req.reference_type} '{req.reference_id}'; stop it first")
        self._by_reference[key] = speaking_id
        stamp = now_stamp()
        record = Speaking(
            id=speaking_id,
            customer_id=customer_id,
            reference_type=req.reference_type,
            reference_id=req.reference_id,
            language=req.language,
            provider=req.provider,
            voice_id=req.voice_id,
            direction=req.direction,
            status=Status.INITIATING,
            tm_create=stamp,
            tm_update=stamp,
            tm_delete=NOT_YET,
        )
        try:
            await self.store.insert(record)
        except BaseException:
            del self._by_reference[key]
            raise
        self._publish(EventType.SPEAKING_CREATED, record, target.event_source)
        session = Session(
            record,
            provider,
            self.media.codec,  # type: ignore[arg-type]
            Playout(lead_ms=self.lead_ms, mark_every_ms=self.mark_every_ms, on_flush_confirmed=self.on_flush_confirmed),
            self._save_say,
            model=req.model,
            say_event=lambda kind, item, at, extra: self._publish_say(kind, record, target, item, at, extra),
            on_underrun=self.on_underrun,
        )
        live = _Live(session, target)
        self._live[speaking_id] = live
        for object_id in target.watched_ids:
            self._by_object[object_id] = speaking_id
        # The session's tasks start in a context of their own, not the request's: the create
        # request's id (bound for logging) would otherwise label every line the session logs.
        contextvars.Context().run(self._start_tasks, live)
        log.info("session_created", speaking_id=speaking_id, **{k: v for k, v in vars(req).items() if v})
        return record

    async def get(self, customer_id: str, speaking_id: str) -> Speaking:
        live = self._live.get(speaking_id)
        record = live.session.record if live else await self.store.get(speaking_id)
        if record is None or record.customer_id != customer_id:
            raise NotFound(f"speaking '{speaking_id}' not found")
        return record

    async def list(self, customer_id: str, page_size: int, page_token: str | None) -> tuple[list[Speaking], str]:
        records = await self.store.list(customer_id, page_size, page_token)
        # Live records are fresher than the rows (status changes are written through anyway).
        records = [self._live[r.id].session.record if r.id in self._live else r for r in records]
        next_token = records[-1].tm_create if len(records) == page_size else ""
        return records, next_token

    async def say(self, customer_id: str, speaking_id: str, req: SayRequest) -> tuple[Speaking, SayItem]:
        record = await self.get(customer_id, speaking_id)
        live = self._live.get(speaking_id)
        if live is None or record.status == Status.STOPPED:
            raise InvalidRequest(f"speaking '{speaking_id}' is {record.status}; create a new session to speak")
        if req.command_id:
            loop = asyncio.get_running_loop()
            now = loop.time()
            for command_id, (seen, _) in list(live.commands.items()):
                if now - seen > COMMAND_ID_WINDOW_S:
                    del live.commands[command_id]
            if req.command_id in live.commands:  # a repeat: the first say's answer, not played again
                first = live.commands[req.command_id][1]
                return record, await asyncio.shield(first)
            pending: asyncio.Future[SayItem] = loop.create_future()
            live.commands[req.command_id] = (now, pending)
            try:
                item = await self._queue_say(live, record, req)
            except BaseException as exc:
                del live.commands[req.command_id]  # refused: a retry may try again
                if isinstance(exc, Exception):
                    pending.set_exception(exc)
                    pending.exception()  # retrieved: only a repeat waiting on it raises it
                else:
                    pending.cancel()
                raise
            pending.set_result(item)
            return record, item
        return record, await self._queue_say(live, record, req)

    async def _queue_say(
        self, live: _Live, record: Speaking, req: SayRequest, text_stream: TextStream | None = None
    ) -> SayItem:
        session = live.session
        session.provider.check(record.language, record.voice_id, req.payload_type)
        # A say that cuts what is queued never finds the queue full.
        if req.stop is not SayStop.ALL and len(session.queue) >= MAX_QUEUED_SAYS:
            raise TooManyRequests(
                f"speaking '{record.id}' already has {MAX_QUEUED_SAYS} says waiting; "
                "wait for them to play, or flush, before queueing more"
            )
        item = session.new_say(req.text, req.payload_type, req.client_state, req.command_id)
        item.text_stream = text_stream
        await self.store.insert_say(item.row())
        if record.id not in self._live:  # stopped while the record was written
            item.status = SayStatus.INTERRUPTED
            await self.store.update_say(item.row())
            raise InvalidRequest(f"speaking '{record.id}' is stopped; create a new session to speak")
        if req.stop is SayStop.ALL:
            session.flush(InterruptReason.STOP_ALL)
        elif req.stop is SayStop.CURRENT:
            session.interrupt_current()
        session.enqueue(item)
        return item

    # -- for the ways in that name a channel, not a session (dialplan, ARI user events) ---------

    def active_on(self, reference_type: str, reference_id: str) -> str | None:
        """The id of the session live on this call (or conference, by the name it was created with)."""
        speaking_id = self._by_reference.get((reference_type, reference_id))
        return speaking_id if speaking_id in self._live else None

    async def channel_customer(self, channel_id: str, fallback: str = "") -> str:
        """The customer a channel's owner variable names, else ``fallback`` ("" if neither)."""
        try:
            owner = await channel_owner(self.ari, channel_id, self.owner_variable)
        except AriError as exc:
            raise ServiceUnavailable(f"Asterisk is not reachable: {exc.message}") from None
        return owner or fallback

    async def speak_on_call(
        self, customer_id: str, channel_id: str, create: CreateRequest, req: SayRequest
    ) -> tuple[Speaking, SayItem]:
        """Say on the call's live session, or on a new one made with ``create``; ``create``'s
        language, voice and direction apply only to a new session."""
        speaking_id = self.active_on("call", channel_id)
        if speaking_id is None:
            speaking_id = (await self.create(customer_id, create)).id
        return await self.say(customer_id, speaking_id, req)

    async def wait_say(self, speaking_id: str, say_id: str) -> SayItem:
        """The say once it is final (played, interrupted or failed)."""
        live = self._live.get(speaking_id)
        item = next((i for i in live.session.says if i.say_id == say_id), None) if live else None
        if item is None:  # its session has ended: the store has its final state
            row = next((r for r in await self.store.list_says(speaking_id) if r["say_id"] == say_id), None)
            if row is None:
                raise NotFound(f"say '{say_id}' not found in speaking '{speaking_id}'")
            return SayItem.from_row(row)
        if item.final:
            return item
        done = self._say_done.setdefault(say_id, asyncio.get_running_loop().create_future())
        return await asyncio.shield(done)

    # -- text streams (GET /v1.0/speakings/{id}/stream) ---------------------------------------

    async def open_stream(
        self,
        customer_id: str,
        speaking_id: str,
        send: Send,
        close: Callable[[], Awaitable[None]],
        chunker: TextChunker,
        timestamps: bool,
    ) -> SpeakingStream:
        """A client's text stream into the session: one at a time per session."""
        record = await self.get(customer_id, speaking_id)
        live = self._live.get(speaking_id)
        if live is None or record.status == Status.STOPPED:
            raise InvalidRequest(f"speaking '{speaking_id}' is {record.status}; create a new session to stream into")
        if speaking_id in self._streams:
            raise Conflict(f"a text stream is already open on speaking '{speaking_id}'; one at a time")
        session = live.session
        stream = SpeakingStream(
            speaking_id=speaking_id,
            queue_chunk=lambda text, text_stream: self._queue_say(live, record, SayRequest(text), text_stream),
            cut=lambda: session.flush(InterruptReason.RESET),
            wait_final=lambda item: self.wait_say(speaking_id, item.say_id),
            send=send,
            close=close,
            chunker=chunker,
            text_stream=session.provider.open_text_stream(
                record.language, record.voice_id, session.codec, session.model
            ),
            timestamps=timestamps,
        )
        self._streams[speaking_id] = stream
        return stream

    def close_stream(self, stream: SpeakingStream) -> None:
        if self._streams.get(stream.speaking_id) is stream:
            del self._streams[stream.speaking_id]

    async def says(self, customer_id: str, speaking_id: str) -> list[dict[str, Any]]:
        """The session's say items, oldest first (newest last)."""
        await self.get(customer_id, speaking_id)
        live = self._live.get(speaking_id)
        if live is not None:
            return [item.to_dict() for item in live.session.says]
        return [SayItem.from_row(row).to_dict() for row in await self.store.list_says(speaking_id)]

    async def _save_say(self, item: SayItem) -> None:
        await self.store.update_say_later(item.row())

    async def flush(self, customer_id: str, speaking_id: str) -> Speaking:
        record = await self.get(customer_id, speaking_id)
        live = self._live.get(speaking_id)
        if live is None or record.status == Status.STOPPED:
            raise InvalidRequest(f"speaking '{speaking_id}' is {record.status}; there is nothing to flush")
        live.session.flush(InterruptReason.FLUSH)
        return record

    async def stop(self, customer_id: str, speaking_id: str) -> Speaking:
        record = await self.get(customer_id, speaking_id)
        if speaking_id not in self._live:
            return record  # already stopped: stop is idempotent
        return await self._stop(speaking_id, StopReason.STOP, "stopped by request")

    async def delete(self, customer_id: str, speaking_id: str) -> Speaking:
        record = await self.get(customer_id, speaking_id)
        if speaking_id in self._live:
            record = await self._stop(speaking_id, StopReason.STOP, "deleted")
        if not record.deleted:
            stamp = now_stamp()
            record.tm_delete = stamp
            record.tm_update = stamp
            await self.store.update(record)
        return record

    # -- lifecycle --------------------------------------------------------------------------

    def _target(self, req: CreateRequest, speaking_id: str) -> Target:
        if req.reference_type == "call":
            return CallTarget(req.reference_id, req.direction, speaking_id, self.ari.app)
        if req.reference_type == "confbridge":
            return ConferenceTarget(req.reference_id, req.direction, speaking_id, self.ari.app)
        raise InvalidRequest(f"reference_type '{req.reference_type}' is not supported by this speakd")

    def _start_tasks(self, live: _Live) -> None:
        live.session.start_synthesis()
        live.task = asyncio.create_task(self._setup(live), name=f"speakd-setup-{live.session.record.id}")

    async def _setup(self, live: _Live) -> None:
        session = live.session
        speaking_id = session.record.id
        started = asyncio.get_running_loop().time()
        try:
            transport = await live.target.attach(self.ctx)
        except (SetupFailed, AriError, TransportError) as exc:
            session.log.warning("session_setup_failed", error=str(exc))
            self._stop_soon(speaking_id, StopReason.ERROR, f"setup failed: {exc}", asterisk_may_be_gone=True)
            return
        except Exception as exc:  # a bug must not leave a session initiating forever
            session.log.exception("session_setup_crashed")
            self._stop_soon(speaking_id, StopReason.ERROR, f"setup failed: {type(exc).__name__}: {exc}")
            return
        if speaking_id not in self._live or live.stopping is not None:
            return
        session.start_playout(transport)
        # The media path going away on its own (Asterisk restart, network) ends the session.
        transport.closed.add_done_callback(
            lambda closed: self._stop_soon(speaking_id, StopReason.ERROR, closed.result(), asterisk_may_be_gone=True)
        )
        session.record.status = Status.ACTIVE  # published before it is stored: no say event may precede it
        self._publish(EventType.SPEAKING_STARTED, session.record, live.target.event_source)
        await self._set_status(session.record, Status.ACTIVE)
        session.log.info(
            "session_active",
            setup_ms=round((asyncio.get_running_loop().time() - started) * 1000, 1),
            transport=str(transport.kind),
        )

    async def _set_status(self, record: Speaking, status: Status) -> None:
        record.status = status
        record.tm_update = now_stamp()
        # Not refused when the store is: the session's state changed whether or not it is stored.
        await self.store.update_later(record)

    def _stop_soon(
        self, speaking_id: str, reason: StopReason, detail: str, *, asterisk_may_be_gone: bool = False
    ) -> None:
        """Start stopping a session (once); the stop task is owned by the session entry.
        ``asterisk_may_be_gone``: an error that Asterisk going away also causes; told apart on stopping."""
        live = self._live.get(speaking_id)
        if live is not None and live.stopping is None:
            live.stopping = asyncio.create_task(
                self._do_stop(live, reason, detail, asterisk_may_be_gone), name=f"speakd-stop-{speaking_id}"
            )
            live.stopping.add_done_callback(_log_stop_failure)

    async def _stop(self, speaking_id: str, reason: StopReason, detail: str) -> Speaking:
        live = self._live[speaking_id]
        self._stop_soon(speaking_id, reason, detail)
        assert live.stopping is not None
        # shield: a client hanging up mid-request must not abandon a half-done teardown.
        return await asyncio.shield(live.stopping)

    async def _do_stop(self, live: _Live, reason: StopReason, detail: str, asterisk_may_be_gone: bool) -> Speaking:
        session = live.session
        record = session.record
        if asterisk_may_be_gone and not await self._asterisk_reachable():
            reason = StopReason.ASTERISK_GONE
        if live.task is not None and not live.task.done():
            # Let setup finish rather than cancel it: a cancelled POST may still create its
            # object in Asterisk after our DELETE, leaving an orphan. Setup is bounded anyway.
            done, _ = await asyncio.wait({live.task}, timeout=15)
            if not done:
                live.task.cancel()
                await asyncio.gather(live.task, return_exceptions=True)
        dropped = await session.close(reason)
        if (stream := self._streams.get(record.id)) is not None:
            await stream.end(f"speaking '{record.id}' stopped ({reason}); nothing more can be said on it")
        await live.target.release_media()
        await live.target.detach(self.ctx)
        try:
            await self._set_status(record, Status.STOPPED)
        finally:
            self._live.pop(record.id, None)
            self._by_reference.pop((record.reference_type, live.target.conflict_key), None)
            for object_id in live.target.watched_ids:
                self._by_object.pop(object_id, None)
            self._publish(EventType.SPEAKING_STOPPED, record, live.target.event_source, reason=reason, detail=detail)
        session.log.info("session_stopped", reason=str(reason), detail=detail, dropped_says=dropped)
        return record

    async def _asterisk_reachable(self) -> bool:
        if not self.ari.connected.is_set():
            return False
        try:
            await self.ari.get("asterisk/ping")
        except AriError:
            return False
        return True

    # -- events -----------------------------------------------------------------------------

    def _publish(self, kind: EventType, record: Speaking, source: str, **extra: str) -> None:
        """A session event: the speaking resource as it is now (``extra``: e.g. a stop's reason)."""
        data = {**record.to_dict(), **{k: str(v) for k, v in extra.items()}}
        self.events.publish(Event(kind, now_stamp(), record.customer_id, record.id, data, source))

    def _publish_say(
        self, kind: EventType, record: Speaking, target: Target, item: SayItem, at: str, extra: dict[str, str]
    ) -> None:
        data = {"speaking_id": record.id, **item.to_dict(), **extra}
        self.events.publish(Event(kind, at, record.customer_id, record.id, data, target.event_source))
        if item.final and (done := self._say_done.pop(item.say_id, None)) is not None and not done.done():
            done.set_result(item)

    # -- ARI events -------------------------------------------------------------------------

    async def on_event(self, event: dict[str, Any]) -> None:
        self.waiters.resolve(event)
        for object_id in event_object_ids(event):  # targets that judge events themselves (conferences)
            live = self._live.get(self._by_object.get(object_id, ""))
            if live is not None and (detail := live.target.on_event(event)):
                self._stop_soon(live.session.record.id, live.target.ended_reason, detail)
        handler = getattr(self, "_" + _snake(event.get("type", "")), None)
        if handler is not None:
            handler(event)

    def _end_for(self, event: dict[str, Any], why: str) -> None:
        for object_id in event_object_ids(event):
            live = self._live.get(self._by_object.get(object_id, ""))
            if live is not None:
                self._stop_soon(live.session.record.id, live.target.ended_reason, f"{why} ({object_id})")

    def _stasis_end(self, event: dict[str, Any]) -> None:
        self._end_for(event, "channel left speakd")

    def _channel_hangup_request(self, event: dict[str, Any]) -> None:
        self._end_for(event, "hangup")

    def _channel_destroyed(self, event: dict[str, Any]) -> None:
        self._end_for(event, "channel destroyed")

    def _bridge_destroyed(self, event: dict[str, Any]) -> None:
        self._end_for(event, "bridge destroyed")

    def _channel_userevent(self, event: dict[str, Any]) -> None:
        if self.user_event_handler is not None:
            self.user_event_handler(event)

    async def on_ari_connected(self) -> None:
        """On every (re)connect: end sessions whose objects are gone; remove our orphans."""
        await self.media.choose()
        try:
            channels = {c["id"] for c in await self.ari.get("channels")}
            bridges = {b["id"] for b in await self.ari.get("bridges")}
        except AriError as exc:
            log.warning("reconcile_failed", error=str(exc))
            return
        present = channels | bridges
        for speaking_id, live in list(self._live.items()):
            missing = [i for i in live.target.watched_ids if i not in present]
            if missing and live.session.record.status == Status.ACTIVE:
                # Its objects went while speakd could not see Asterisk (a restart takes them all).
                detail = f"gone while ARI was disconnected: {', '.join(sorted(missing))}"
                self._stop_soon(speaking_id, StopReason.ASTERISK_GONE, detail)
            elif live.session.record.status == Status.ACTIVE and (detail := await live.target.reconcile(self.ari)):
                self._stop_soon(speaking_id, live.target.ended_reason, f"{detail} (seen on reconnect)")
        mine = set(self._by_object)
        orphans = [("bridges", b) for b in bridges if is_own_object(self.ari.app, b) and b not in mine]
        orphans += [("channels", c) for c in channels if is_own_object(self.ari.app, c) and c not in mine]
        for kind, object_id in orphans:
            if kind == "channels":
                await hang_up_and_wait(self.ctx, object_id, "orphan channel")
            else:
                try:
                    await self.ari.delete(f"{kind}/{object_id}")
                except AriError as exc:
                    log.warning("orphan_remove_failed", kind=kind, id=object_id, error=str(exc))
                    continue
            log.info("orphan_removed", kind=kind, id=object_id)

    async def recover(self) -> None:
        """Start-up: sessions a previous run left unfinished are stopped (their objects go on connect)."""
        stale = await self.store.stop_unfinished(now_stamp())
        for record in stale:
            log.info("stale_session_stopped", speaking_id=record.id, was=record.status)
            record.status = Status.STOPPED
            source = f"channel:{record.reference_id}" if record.reference_type == "call" else ""
            self._publish(
                EventType.SPEAKING_STOPPED, record, source, reason=StopReason.ERROR, detail="speakd restarted"
            )

    async def shutdown(self) -> None:
        """Stop every live session: say so for each, remove its Asterisk objects."""
        self._closing = True
        ids = list(self._live)
        if ids:
            log.info("shutdown_stopping_sessions", count=len(ids))
        await asyncio.gather(
            *(self._stop(i, StopReason.SHUTDOWN, "daemon shutdown") for i in ids), return_exceptions=True
        )


def _log_stop_failure(task: asyncio.Task[Speaking]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("session_stop_failed", task=task.get_name(), error=repr(task.exception()))


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
