"""The fleet link on PostgreSQL (speakd.store.fleet): events through the ``fleet_events``
table, wake-ups through NOTIFY, webhook claims in ``webhook_claims``.

Sending: a batch of this node's events is inserted and ``NOTIFY``-ed in one transaction
(notifications go out on commit, so a notified row is visible); the row holds the body, so
NOTIFY's 8000-byte limit never applies. Each node prunes its own rows older than
:data:`KEEP_EVENTS_S` in the same transactions.

Hearing: a connection of its own (not the pool's: LISTEN belongs to one session) listens;
a notification from another node (and every reconnect, to catch up) makes the reader fetch
the other nodes' rows after this node's cursor for each of them. One cursor per writing node:
each node's rows commit in seq order (its writes are serialized), but two nodes' may commit
out of order, past a single global cursor. The cursors start at each node's newest row at
start, and survive a lost connection: after PostgreSQL restarts, the listener reconnects by
itself (logged once each way) and the reader catches up from them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Self

import asyncpg
import structlog

from speakd.store.fleet import EventsHandler, Row, WakeHandler
from speakd.store.interface import StoreUnwritable
from speakd.store.records import Owner
from speakd.store.sql import Step
from speakd.tasks import cancel_and_wait

if TYPE_CHECKING:
    from speakd.store.postgres import PostgresStore

log = structlog.get_logger(__name__)

EVENTS_CHANNEL = "speakd_fleet_events"  # payload: the writing node's id
WEBHOOKS_CHANNEL = "speakd_fleet_webhooks"  # payload: a customer id with rows waiting; '': claims freed
# A node's events are kept this long: a node that cannot read for longer misses the older ones.
KEEP_EVENTS_S = 60.0
PRUNE_EVERY_S = 10.0
READ_BATCH = 1000
CONNECT_TIMEOUT_S = 5.0
# The listening connection is pinged this often (a dead one is replaced), with this timeout.
CHECK_EVERY_S = 5.0
RECONNECT_FIRST_S = 0.1
RECONNECT_MAX_S = 3.0
# A failed read of the others' events is tried again after this long.
READ_RETRY_S = 0.5

_NOTIFY = "SELECT pg_notify(?, ?)"


def _ignore_events(rows: list[Row]) -> None:
    return None


def _ignore_wake(customer_id: str | None) -> None:
    return None


class PostgresLink:
    shared = True

    def __init__(self, store: PostgresStore, owner: Owner) -> None:
        self.store = store
        self.owner = owner
        self._events_handler: EventsHandler = _ignore_events
        self._wake_handler: WakeHandler = _ignore_wake
        self._cursors: dict[str, int] = {}
        self._read_wanted = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._pruned_at = 0.0
        self._failures = 0  # connections lost or refused in a row: logged at the first, and when back
        self.listening = asyncio.Event()  # set while the listening connection is up (for tests)

    def on_events(self, handler: EventsHandler) -> None:
        self._events_handler = handler

    def on_webhook_wake(self, handler: WakeHandler) -> None:
        self._wake_handler = handler

    async def __aenter__(self) -> Self:
        self._cursors = await self.store.fleet_events_cursors()
        self._tasks = [
            asyncio.create_task(self._listen(), name="speakd-fleet-listen"),
            asyncio.create_task(self._read(), name="speakd-fleet-read"),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await cancel_and_wait(*self._tasks)
        self._tasks = []

    # -- sending ---------------------------------------------------------------------------------

    async def add_events(self, rows: list[Row]) -> None:
        node_id = self.owner.node_id
        also = [Step(_NOTIFY, [(EVENTS_CHANNEL, node_id)], rows=True)]
        now = time.time()
        prune = now - self._pruned_at >= PRUNE_EVERY_S
        if prune:
            also.append(self.store.fleet_events_prune_step(node_id, now - KEEP_EVENTS_S))
        await self.store.fleet_events_add(node_id, rows, *also)
        if prune:
            self._pruned_at = now

    # -- webhook claims --------------------------------------------------------------------------

    async def claim_webhooks(self, customer_ids: Iterable[str], lease_s: float) -> set[str]:
        now = time.time()
        return await self.store.webhook_claim(self.owner, list(customer_ids), now + lease_s, now)

    async def release_webhooks(self) -> None:
        if await self.store.webhook_release(self.owner):
            await self._notify_webhooks([""])

    async def wake_webhooks(self, customer_ids: Iterable[str]) -> None:
        await self._notify_webhooks(list(customer_ids))

    async def _notify_webhooks(self, payloads: list[str]) -> None:
        if payloads:
            await self.store._transaction([Step(_NOTIFY, [(WEBHOOKS_CHANNEL, p) for p in payloads], rows=True)])

    # -- hearing ---------------------------------------------------------------------------------

    def _notified_events(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        if payload != self.owner.node_id:
            self._read_wanted.set()

    def _notified_wake(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        self._wake_handler(payload or None)

    async def _listen(self) -> None:
        while True:
            try:
                await self._listen_once()
                error = "the listening connection was closed"
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = str(exc) or type(exc).__name__
            self.listening.clear()
            if not self._failures:
                log.warning("fleet_listener_lost", server=self.store.server, error=error)
            self._failures += 1
            await asyncio.sleep(min(RECONNECT_MAX_S, RECONNECT_FIRST_S * 2 ** min(self._failures - 1, 10)))

    async def _listen_once(self) -> None:
        """Listen on a new connection until it is lost."""
        connection = await asyncpg.connect(self.store.url, timeout=CONNECT_TIMEOUT_S)
        try:
            lost = asyncio.Event()
            connection.add_termination_listener(lambda _: lost.set())
            await connection.add_listener(EVENTS_CHANNEL, self._notified_events)
            await connection.add_listener(WEBHOOKS_CHANNEL, self._notified_wake)
            if self._failures:
                log.info("fleet_listener_back", server=self.store.server, after_failures=self._failures)
            self._failures = 0
            self.listening.set()
            # What was written while nobody listened (or before the first connection).
            self._read_wanted.set()
            self._wake_handler(None)
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), CHECK_EVERY_S)
                if not lost.is_set():
                    await connection.execute("SELECT 1", timeout=CHECK_EVERY_S)
        finally:
            connection.terminate()

    async def _read(self) -> None:
        while True:
            await self._read_wanted.wait()
            self._read_wanted.clear()
            try:
                await self._read_all()
            except StoreUnwritable:  # the server is away: the listener's reconnect asks again
                await asyncio.sleep(READ_RETRY_S)
                self._read_wanted.set()
            except Exception:
                log.exception("fleet_events_read_failed")
                await asyncio.sleep(READ_RETRY_S)
                self._read_wanted.set()

    async def _read_all(self) -> None:
        while True:
            rows = await self.store.fleet_events_after(self.owner.node_id, self._cursors, READ_BATCH)
            if rows:
                for row in rows:
                    self._cursors[row["node_id"]] = int(row["seq"])
                self._events_handler(rows)
            if len(rows) < READ_BATCH:
                return
