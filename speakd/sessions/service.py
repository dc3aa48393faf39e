"""The Speaking service: the API's verbs and the sessions' lifecycle.

A session is created ``initiating``, becomes ``active`` once attached, and is stopped (by the
API, a hangup, its media path closing, or shutdown) by one teardown that cancels and awaits its
tasks and removes every Asterisk object it made before the record reads ``stopped``. Its state
and the transitions allowed are in :mod:`speakd.sessions.live`; ARI events reach it through
:mod:`speakd.sessions.ari_events`, and an ARI reconnect through :mod:`speakd.sessions.reconcile`.
The service also answers ``/health`` and ``/v1.0/voices`` (:meth:`SpeakingService.health`,
:meth:`SpeakingService.voices`), so the API needs nothing else of it.
"""

from __future__ import annotations

import asyncio
import contextvars
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import structlog

from speakd.ari.client import AriClient
from speakd.ari.errors import AriError
from speakd.ari.events import EventWaiters
from speakd.errors import Conflict, InvalidRequest, NotFound, ServiceUnavailable, TooManyRequests
from speakd.events import Event, EventBus, EventType, InterruptReason, StopReason
from speakd.media.loudness import VoiceLevels
from speakd.media.playout import Playout
from speakd.media.transport import TransportError
from speakd.providers import ProviderRegistry
from speakd.providers.base import TextStream, Voice
from speakd.providers.fallback import Failover
from speakd.sessions.ari_events import AriEventHandlers
from speakd.sessions.chunker import TextChunker
from speakd.sessions.conference import ConferenceTarget
from speakd.sessions.lexicons import Lexicons
from speakd.sessions.live import LiveSession, LiveSessions, SessionState
from speakd.sessions.media import MediaPaths
from speakd.sessions.peers import NoSuchReference, OwnedElsewhere, SoloPeers
from speakd.sessions.reconcile import reconcile, stop_stale_sessions
from speakd.sessions.requests import CreateRequest, SayRequest, SayStop
from speakd.sessions.says import SayItem, SayStatus
from speakd.sessions.session import Session
from speakd.sessions.stream import Send, SpeakingStream
from speakd.sessions.targets import AttachContext, CallTarget, SetupFailed, Target, channel_owner, unreachable
from speakd.store.health import StoreCheck
from speakd.store.interface import AlreadyLive, Store
from speakd.store.records import LIVE_STATUSES, NO_OWNER, NOT_YET, Owner, Speaking, Status, now_stamp
from speakd.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

# Says waiting to be synthesized, per session: a bound, so one client cannot grow the
# daemon's memory without limit (5000 characters each).
MAX_QUEUED_SAYS = 100
# A say repeating an earlier one's command_id within this long is answered, not played again.
COMMAND_ID_WINDOW_S = 60.0
# Why a command naming a channel is refused when no customer is found for it.
NO_CUSTOMER = "no_customer"
# What a command naming a call (not a session) does to the session live on it.
CallVerb = Literal["flush", "stop"]
# Why a create is refused once shutdown began (also an ARI command arriving then).
SHUTTING_DOWN = "speakd is shutting down; retry on the next instance"


class SpeakingService:
    def __init__(
        self,
        *,
        store: Store,
        ari: AriClient,
        providers: ProviderRegistry,
        media: MediaPaths,
        owner_variable: str,
        events: EventBus | None = None,
        lead_ms: int,
        mark_every_ms: int,
        owner: Owner = NO_OWNER,
        peers: SoloPeers | None = None,
        failover: Failover | None = None,
        levels: VoiceLevels | None = None,
    ) -> None:
        self.store = store
        self.levels = levels  # the one loudness, learned per voice, shared by every session
        self.failover = failover  # [tts] fallback: where a say goes on when its provider fails
        self.owner = owner  # this node's run: its sessions' owner in the store
        self.peers = peers or SoloPeers()  # the other nodes sharing the store (requests routed to them)
        self.ari = ari
        self.providers = providers
        self.media = media
        self.owner_variable = owner_variable
        self.events = events or EventBus()
        self.lead_ms = lead_ms
        self.mark_every_ms = mark_every_ms
        self.waiters = EventWaiters()
        self.ctx = AttachContext(ari=ari, waiters=self.waiters, app=ari.app, media=media)
        self.sessions = LiveSessions()
        self.ari_events = AriEventHandlers(self)
        self.store_check = StoreCheck(store)
        self.lexicons = Lexicons(store)  # each customer's pronunciation lexicons
        self._closing = False  # shutting down: creates are refused
        # ChannelUserevents sent to speakd's application go here (operators' commands); must not block.
        self.user_event_handler: Callable[[dict[str, Any]], None] | None = None
        # Told how long each flush of audio in flight took to be confirmed by the far end (s).
        self.on_flush_confirmed: Callable[[float], None] | None = None
        # Told of each say whose synthesis fell behind its playout (the caller heard a gap).
        self.on_underrun: Callable[[], None] | None = None

    @property
    def live_count(self) -> int:
        return len(self.sessions)

    def live_sessions(self) -> list[Session]:
        return [live.session for live in self.sessions]

    # -- API verbs --------------------------------------------------------------------------

    async def create(self, customer_id: str, req: CreateRequest, *, route: bool = False) -> Speaking:
        """``route``: a call another node's Asterisk has is OwnedElsewhere, and a reference this
        node's has not is NoSuchReference with the nodes to ask (speakd.sessions.peers)."""
        if self._closing:
            raise ServiceUnavailable(SHUTTING_DOWN)
        if route and req.reference_type == "call" and (node := await self.peers.node_for_channel(req.reference_id)):
            raise OwnedElsewhere(f"call '{req.reference_id}'", node)
        if not self.ari.connected.is_set():
            raise ServiceUnavailable("speakd is not connected to Asterisk (ARI); retry shortly")
        provider = self.providers.get(req.provider)
        provider.check(req.language, req.voice_id)
        if req.lexicon:
            await self.lexicons.named(customer_id, req.lexicon, "'lexicon'")
        speaking_id = str(uuid.uuid4())
        target = self._target(req, speaking_id)
        try:
            await target.validate(self.ari, customer_id, self.owner_variable)
        except NoSuchReference as missing:
            if route:
                missing.rounds = await self.peers.search_rounds(req.reference_type, req.reference_id)
            raise

        key = (req.reference_type, target.conflict_key)
        # Checked here first (fast, on this node); the store's index holds it across nodes (below).
        if (holder := self.sessions.holder(key)) is not None:  # checked and taken with no await in between
            other = self.sessions.get(holder)  # None while its record is being written
            # Name the other session only to its owner.
            mine = other is not None and other.record.customer_id == customer_id
            raise _already_active(req, holder if mine else None)
        self.sessions.reserve(key, speaking_id)
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
            await self.store.insert(record, self.owner, target.conflict_key)
        except AlreadyLive:  # live on another node (or left live by a node that is gone)
            self.sessions.unreserve(key)
            raise _already_active(req) from None
        except BaseException:
            self.sessions.unreserve(key)
            raise
        self._publish(EventType.SPEAKING_CREATED, record, target.event_source)
        live: LiveSession  # bound just below: the session reports no say before its tasks start
        session = Session(
            record,
            provider,
            self.media.codec,  # type: ignore[arg-type]
            Playout(lead_ms=self.lead_ms, mark_every_ms=self.mark_every_ms, on_flush_confirmed=self.on_flush_confirmed),
            self._save_say,
            model=req.model,
            say_event=lambda kind, item, at, extra: self._publish_say(kind, live, item, at, extra),
            on_underrun=self.on_underrun,
            failover=self.failover,
            levels=self.levels,
        )
        session.lexicon = req.lexicon
        live = LiveSession(session, target)
        self.sessions.add(live)
        # The session's tasks start in a context of their own, not the request's: the create
        # request's id (bound for logging) would otherwise label every line the session logs.
        contextvars.Context().run(self._start_tasks, live)
        log.info("session_created", speaking_id=speaking_id, **{k: v for k, v in vars(req).items() if v})
        return record

    async def get(self, customer_id: str, speaking_id: str) -> Speaking:
        live = self.sessions.get(speaking_id)
        # A fenced session's row holds the other node's ending, while this node still tears it down.
        record = live.record if live and not live.fenced else await self.store.get(speaking_id)
        if record is None or record.customer_id != customer_id:
            raise NotFound(f"speaking '{speaking_id}' not found")
        return record

    async def list(self, customer_id: str, page_size: int, page_token: str | None) -> tuple[list[Speaking], str]:
        records = await self.store.list(customer_id, page_size, page_token)
        # Live records are fresher than the rows (status changes are written through anyway), but
        # a fenced session's row is the other node's ending, and the truth.
        records = [live.record if (live := self.sessions.get(r.id)) and not live.fenced else r for r in records]
        next_token = records[-1].tm_create if len(records) == page_size else ""
        return records, next_token

    async def say(self, customer_id: str, speaking_id: str, req: SayRequest) -> tuple[Speaking, SayItem]:
        record, live = await self._speakable(customer_id, speaking_id, "create a new session to speak")
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
        self, live: LiveSession, record: Speaking, req: SayRequest, text_stream: TextStream | None = None
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
        item.cache = req.cache
        item.volume = req.volume
        item.interruptible = req.interruptible
        item.lexicon = session.lexicon if req.lexicon is None else req.lexicon
        if item.lexicon:
            named_by = "the session's 'lexicon'" if req.lexicon is None else "'lexicon'"
            item.rewrite = await self.lexicons.rewrite(
                record.customer_id, item.lexicon, item.text, item.payload_type, named_by, "say"
            )
        await self.store.insert_say(item.row())
        if not live.speakable:  # a stop began while the record was written
            item.status = SayStatus.INTERRUPTED
            await self.store.update_say(item.row())
            raise InvalidRequest(f"speaking '{record.id}' is stopped; create a new session to speak")
        if req.stop is SayStop.ALL:
            session.flush(InterruptReason.STOP_ALL)  # must-play says stay, and this one plays after them
        elif req.stop is SayStop.CURRENT:
            session.interrupt_current()
        session.enqueue(item)
        return item

    # -- for the ways in that name a channel, not a session (dialplan, ARI user events) ---------

    def active_on(self, reference_type: str, reference_id: str) -> str | None:
        """The id of the session live on this call (or conference, by the name it was created with)."""
        speaking_id = self.sessions.holder((reference_type, reference_id))
        return speaking_id if speaking_id is not None and speaking_id in self.sessions else None

    async def channel_customer(self, channel_id: str, fallback: str = "") -> str:
        """The customer a channel's owner variable names, else ``fallback`` ("" if neither)."""
        try:
            owner = await channel_owner(self.ari, channel_id, self.owner_variable)
        except AriError as exc:
            raise unreachable(exc) from None
        return owner or fallback

    async def customer_of_channel(self, channel_id: str, fallback: str, fallback_setting: str) -> str:
        """:meth:`channel_customer`, but with neither the command is refused (``fallback_setting``:
        where speakd's fallback is configured)."""
        customer = await self.channel_customer(channel_id, fallback)
        if not customer:
            raise InvalidRequest(
                f"channel '{channel_id}' names no customer ({self.owner_variable} is not set on it) "
                f"and speakd has no {fallback_setting}",
                reason=NO_CUSTOMER,
            )
        return customer

    async def speak_on_call(
        self, customer_id: str, channel_id: str, create: CreateRequest, req: SayRequest
    ) -> tuple[Speaking, SayItem]:
        """Say on the call's live session, or on a new one made with ``create``; ``create``'s
        language, voice and direction apply only to a new session."""
        speaking_id = self.active_on("call", channel_id)
        if speaking_id is None:
            speaking_id = (await self.create(customer_id, create)).id
        return await self.say(customer_id, speaking_id, req)

    async def on_call(
        self, verb: CallVerb, customer_id: str, channel_id: str, *, missing_ok: bool = False
    ) -> str | None:
        """Flush or stop the session live on the call: its id. With none live, NotFound, or None
        if ``missing_ok``."""
        speaking_id = self.active_on("call", channel_id)
        if speaking_id is None:
            if missing_ok:
                return None
            raise NotFound(f"no speaking session is live on channel '{channel_id}'; nothing to {verb}")
        await (self.flush if verb == "flush" else self.stop)(customer_id, speaking_id)
        return speaking_id

    async def wait_say(self, speaking_id: str, say_id: str) -> SayItem:
        """The say once it is final (played, interrupted or failed)."""
        live = self.sessions.get(speaking_id)
        item = live.session.says.get(say_id) if live else None
        if item is None:  # its session has ended: the store has its final state
            row = next((r for r in await self.store.list_says(speaking_id) if r["say_id"] == say_id), None)
            if row is None:
                raise NotFound(f"say '{say_id}' not found in speaking '{speaking_id}'")
            return SayItem.from_row(row)
        if item.final:
            return item
        assert live is not None
        done = live.say_done.setdefault(say_id, asyncio.get_running_loop().create_future())
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
        cache: bool = True,
    ) -> SpeakingStream:
        """A client's text stream into the session: one at a time per session; ``cache``: its
        sentences' audio may be kept in the audio cache (a say's ``cache``)."""
        record, live = await self._speakable(customer_id, speaking_id, "create a new session to stream into")
        if live.stream is not None:
            raise Conflict(f"a text stream is already open on speaking '{speaking_id}'; one at a time")
        session = live.session
        stream = SpeakingStream(
            speaking_id=speaking_id,
            queue_chunk=lambda text, text_stream: self._queue_say(
                live, record, SayRequest(text, cache=cache), text_stream
            ),
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
        live.stream = stream
        return stream

    def close_stream(self, stream: SpeakingStream) -> None:
        live = self.sessions.get(stream.speaking_id)
        if live is not None and live.stream is stream:
            live.stream = None

    async def says(self, customer_id: str, speaking_id: str) -> list[dict[str, Any]]:
        """The session's say items, oldest first (newest last)."""
        _, live = await self.here(customer_id, speaking_id)
        if live is None:
            return [SayItem.from_row(row).to_dict() for row in await self.store.list_says(speaking_id)]
        kept = live.session.says
        if not live.session.says_forgotten:
            return [item.to_dict() for item in kept.values()]
        # Older says are the store's alone; the ones kept here are as fresh as it, or fresher.
        rows = await self.store.list_says(speaking_id)
        return [(kept.get(row["say_id"]) or SayItem.from_row(row)).to_dict() for row in rows]

    async def _save_say(self, item: SayItem) -> None:
        await self.store.update_say_later(item.row())

    async def flush(self, customer_id: str, speaking_id: str) -> tuple[Speaking, list[str]]:
        """The session, and the must-play says the flush left playing or queued (their ids, in order)."""
        record, live = await self._speakable(customer_id, speaking_id, "there is nothing to flush")
        protected = live.session.flush(InterruptReason.FLUSH)
        return record, [item.say_id for item in protected]

    async def stop(self, customer_id: str, speaking_id: str) -> Speaking:
        record, live = await self.here(customer_id, speaking_id)
        if live is None:
            return record  # already stopped: stop is idempotent
        return await self._stop(live, StopReason.STOP, "stopped by request")

    async def delete(self, customer_id: str, speaking_id: str) -> Speaking:
        record, live = await self.here(customer_id, speaking_id)
        if live is not None:
            record = await self._stop(live, StopReason.STOP, "deleted")
        if not record.deleted:
            stamp = now_stamp()
            record.tm_delete = stamp
            record.tm_update = stamp
            await self.store.update(record)
        return record

    async def here(self, customer_id: str, speaking_id: str) -> tuple[Speaking, LiveSession | None]:
        """The customer's session and its live entry (None: not live on this node), or
        OwnedElsewhere if it is live on another node. A session live here costs no store read."""
        if (live := self.sessions.get(speaking_id)) is not None:
            if live.record.customer_id != customer_id:
                raise NotFound(f"speaking '{speaking_id}' not found")
            return live.record, live
        record = await self.get(customer_id, speaking_id)
        if record.status in LIVE_STATUSES and (node := await self.peers.owner_of(speaking_id)) is not None:
            raise OwnedElsewhere(f"speaking '{speaking_id}'", node)
        return record, None

    async def _speakable(self, customer_id: str, speaking_id: str, what_now: str) -> tuple[Speaking, LiveSession]:
        """The customer's session and its live entry, unless it is gone or torn down (``what_now``:
        what the client can do then)."""
        record, live = await self.here(customer_id, speaking_id)
        if live is None or not live.speakable:
            shown = SessionState.STOPPING if live is not None and live.state is SessionState.STOPPING else record.status
            raise InvalidRequest(f"speaking '{speaking_id}' is {shown}; {what_now}")
        return record, live

    # -- for operators (GET /health, GET /v1.0/voices) -----------------------------------------

    async def health(self) -> dict[str, Any]:
        """Whether speakd can serve: ``failed`` names what fails (ARI, the store); empty if nothing."""
        ari_connected = self.ari.connected.is_set()
        store_writable, store_error = await self.store_check.writable()
        failed = [name for name, ok in (("ari", ari_connected), ("store", store_writable)) if not ok]
        # Providers skipped by their circuit breaker: speech goes on with the others.
        degraded = self.failover.degraded() if self.failover is not None else []
        return {
            "status": "unavailable" if failed else "degraded" if degraded else "ok",
            "failed": failed,
            "degraded_providers": degraded,
            "ari_connected": ari_connected,
            "store_writable": store_writable,
            "store_error": store_error,
            "live_sessions": self.live_count,
            **self.media.health(),
        }

    async def voices(self, provider: str, language: str) -> list[Voice]:
        """The voices of ``provider`` (every configured one if ""), for ``language`` if given."""
        return await self.providers.voices(provider, language)

    # -- lifecycle --------------------------------------------------------------------------

    def _target(self, req: CreateRequest, speaking_id: str) -> Target:
        if req.reference_type == "call":
            return CallTarget(req.reference_id, req.direction, speaking_id, self.ari.app)
        if req.reference_type == "confbridge":
            return ConferenceTarget(req.reference_id, req.direction, speaking_id, self.ari.app, member=req.member)
        raise InvalidRequest(f"reference_type '{req.reference_type}' is not supported by this speakd")

    def _start_tasks(self, live: LiveSession) -> None:
        live.session.start_synthesis()
        live.setup = asyncio.create_task(self._setup(live), name=f"speakd-setup-{live.id}")

    async def _setup(self, live: LiveSession) -> None:
        session = live.session
        speaking_id = session.record.id
        started = asyncio.get_running_loop().time()
        try:
            transport = await live.target.attach(self.ctx)
        except (SetupFailed, AriError, TransportError) as exc:
            session.log.warning("session_setup_failed", error=str(exc))
            self.stop_soon(speaking_id, StopReason.ERROR, f"setup failed: {exc}", asterisk_may_be_gone=True)
            return
        except Exception as exc:  # a bug must not leave a session initiating forever
            session.log.exception("session_setup_crashed")
            self.stop_soon(speaking_id, StopReason.ERROR, f"setup failed: {type(exc).__name__}: {exc}")
            return
        if not live.move_to(SessionState.ACTIVE):  # stopped meanwhile: the teardown releases the transport
            return
        session.start_playout(transport)
        # The media path going away on its own (Asterisk restart, network) ends the session.
        transport.closed.add_done_callback(
            lambda closed: self.stop_soon(speaking_id, StopReason.ERROR, closed.result(), asterisk_may_be_gone=True)
        )
        # Published before it is stored: no say event may precede it.
        self._publish(EventType.SPEAKING_STARTED, session.record, live.target.event_source)
        await self._store_status(session.record)
        session.log.info(
            "session_active",
            setup_ms=round((asyncio.get_running_loop().time() - started) * 1000, 1),
            transport=str(transport.kind),
        )

    async def _store_status(self, record: Speaking) -> None:
        """Write the status the session's state gave the record (LiveSession.move_to)."""
        record.tm_update = now_stamp()
        # Not refused when the store is: the session's state changed whether or not it is stored.
        await self.store.update_later(record)

    def stop_soon(
        self, speaking_id: str, reason: StopReason, detail: str, *, asterisk_may_be_gone: bool = False
    ) -> None:
        """Start stopping a session (once: only the first call moves it to STOPPING); the stop task
        is owned by the session entry. ``asterisk_may_be_gone``: an error that Asterisk going away
        also causes; told apart on stopping."""
        live = self.sessions.get(speaking_id)
        if live is not None and live.move_to(SessionState.STOPPING):
            live.stopping = asyncio.create_task(
                self._do_stop(live, reason, detail, asterisk_may_be_gone), name=f"speakd-stop-{speaking_id}"
            )
            live.stopping.add_done_callback(_log_stop_failure)

    async def _stop(self, live: LiveSession, reason: StopReason, detail: str) -> Speaking:
        """Stop the session (or join the stop under way) and wait until it is stopped."""
        self.stop_soon(live.id, reason, detail)
        assert live.stopping is not None
        # shield: a client hanging up mid-request must not abandon a half-done teardown.
        return await asyncio.shield(live.stopping)

    async def _do_stop(
        self, live: LiveSession, reason: StopReason, detail: str, asterisk_may_be_gone: bool
    ) -> Speaking:
        session = live.session
        record = session.record
        if asterisk_may_be_gone and not await self._asterisk_reachable():
            reason = StopReason.ASTERISK_GONE
        if live.setup is not None and not live.setup.done():
            # Let setup finish rather than cancel it: a cancelled POST may still create its
            # object in Asterisk after our DELETE, leaving an orphan. Setup is bounded anyway.
            done, _ = await asyncio.wait({live.setup}, timeout=15)
            if not done:
                await cancel_and_wait(live.setup)
        dropped = await session.close(reason)
        if live.stream is not None:
            await live.stream.end(f"speaking '{record.id}' stopped ({reason}); nothing more can be said on it")
        # Closing the media path hangs the media channel up as much as the DELETE does.
        async with self.ctx.media.changing():
            await live.target.release_media()
            await live.target.detach(self.ctx)
        try:
            live.move_to(SessionState.STOPPED)
            if not live.fenced:  # another node wrote its end, and published it
                await self._store_status(record)
        finally:
            self.sessions.remove(live)
            if not live.fenced:
                self._publish_stopped(record, live.target.event_source, reason, detail)
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

    def _publish_stopped(self, record: Speaking, source: str, reason: StopReason, detail: str) -> None:
        self._publish(EventType.SPEAKING_STOPPED, record, source, reason=reason, detail=detail)

    def _publish_say(self, kind: EventType, live: LiveSession, item: SayItem, at: str, extra: dict[str, str]) -> None:
        record = live.record
        if not live.fenced:
            self._publish_say_event(kind, record, item.to_dict(), at, extra, live.target.event_source)
        if item.final and (done := live.say_done.pop(item.say_id, None)) is not None and not done.done():
            done.set_result(item)

    def _publish_say_event(
        self, kind: EventType, record: Speaking, say: dict[str, Any], at: str, extra: dict[str, str], source: str
    ) -> None:
        data = {"speaking_id": record.id, **say, **extra}
        self.events.publish(Event(kind, at, record.customer_id, record.id, data, source))

    # -- nodes that die (speakd.sessions.liveness) ------------------------------------------

    def publish_lost(self, record: Speaking, says: list[dict[str, Any]], detail: str) -> None:
        """Events of another node's session that this node ended (its run was lost): its
        interrupted says, then its stop. No source: its Asterisk is the lost node's."""
        reason = StopReason.NODE_LOST
        for row in says:
            say = SayItem.from_row(row).to_dict()
            self._publish_say_event(EventType.SAY_INTERRUPTED, record, say, now_stamp(), {"reason": str(reason)}, "")
        self._publish_stopped(record, "", reason, detail)

    def stop_fenced(self, speaking_ids: set[str]) -> None:
        """Sessions another node ended, having found this run lost: stopped here (their Asterisk
        objects removed) without writing their rows or publishing their events, which it did."""
        for speaking_id in speaking_ids:
            if (live := self.sessions.get(speaking_id)) is not None and not live.fenced:
                live.fenced = True
                log.warning("session_fenced", speaking_id=speaking_id)
                self.stop_soon(speaking_id, StopReason.NODE_LOST, "another node ended it: this node was found lost")

    # -- Asterisk ---------------------------------------------------------------------------

    async def on_event(self, event: dict[str, Any]) -> None:
        """An event from the ARI events WebSocket (handled by :class:`AriEventHandlers`)."""
        await self.ari_events.on_event(event)

    async def on_ari_connected(self) -> None:
        """On every (re)connect: choose the media transport, then catch up with Asterisk."""
        await self.media.choose()
        await self.peers.announce_asterisk(self.ari)
        await reconcile(self.ctx, self.sessions, self.stop_soon)

    async def recover(self) -> None:
        """Start-up: sessions a previous run left unfinished are stopped (their objects go on connect)."""
        await stop_stale_sessions(self.store, self.owner.node_id, self._publish_stopped)

    async def shutdown(self) -> None:
        """Stop every live session: say so for each, remove its Asterisk objects."""
        self._closing = True
        lives = list(self.sessions)
        if lives:
            log.info("shutdown_stopping_sessions", count=len(lives))
        await asyncio.gather(
            *(self._stop(live, StopReason.SHUTDOWN, "daemon shutdown") for live in lives), return_exceptions=True
        )


def _already_active(req: CreateRequest, holder: str | None = None) -> Conflict:
    """The 409 of a create on a reference that has a live session (``holder``: its id, told to
    its own customer only)."""
    which = f"speaking session {holder}" if holder else "another speaking session"
    return Conflict(f"{which} is already active on {req.reference_type} '{req.reference_id}'; stop it first")


def _log_stop_failure(task: asyncio.Task[Speaking]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("session_stop_failed", task=task.get_name(), error=repr(task.exception()))
