"""Events between the nodes of a fleet: this node's sessions' events go to the other nodes,
and theirs come to this node's WebSocket clients (only: webhooks, metrics and ARI user events
stay with the node that owns the session).

Sending is the bus's way out: ``offer`` puts the event in a bounded queue without waiting; the
writer task hands the queue to the store's fleet link in batches (one transaction each, in the
order the events happened). While the store is down, the batch is tried again until it is
written (the queue keeps what comes meanwhile, and drops what would overflow it, with a
warning), so a PostgreSQL restart costs the other nodes' clients nothing but a delay.

On a store no other node shares (the solo link) nothing is queued or written.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Self

import structlog

from speakd.events.bus import EventSink, drain_and_stop
from speakd.events.model import Event
from speakd.store.fleet import FleetLink

log = structlog.get_logger(__name__)

QUEUE_EVENTS = 10_000
WRITE_BATCH = 500
# A batch the store refused is tried again after this long.
RETRY_S = 0.5
# On shutdown, how long the last events (the sessions' speaking_stopped) may take to be written.
DRAIN_TIMEOUT_S = 5.0


class FleetEventSink:
    """The other nodes' events reach ``local`` from when it is made; ``async with`` it for the
    writer (entered after the link, so left before it: the last events are written first)."""

    def __init__(self, fleet: FleetLink, local: EventSink, queue_events: int = QUEUE_EVENTS) -> None:
        self.fleet = fleet
        self.local = local
        self._queue: asyncio.Queue[Event] = asyncio.Queue(queue_events)
        self._writer: asyncio.Task[None] | None = None
        self.dropped = 0
        fleet.on_events(self._received)  # before the link is entered: it may hear at once

    # -- the bus's side: never blocks, never raises ------------------------------------------------

    def offer(self, event: Event) -> None:
        if self._writer is None:
            return  # a solo store, or not running
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning(
                    "fleet_event_dropped",
                    dropped=self.dropped,
                    reason=f"more than {self._queue.maxsize} events waiting to be written for the other nodes",
                )

    # -- lifecycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self.fleet.shared:
            self._writer = asyncio.create_task(self._write(), name="speakd-fleet-events-write")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            if not await drain_and_stop(self._queue, writer, DRAIN_TIMEOUT_S):
                log.error("fleet_events_drain_timeout", lost=self._queue.qsize())

    # -- writing -----------------------------------------------------------------------------------

    async def _write(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < WRITE_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._write_batch([_row(event) for event in batch])
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _write_batch(self, rows: list[dict[str, Any]]) -> None:
        failing = False
        while True:
            try:
                await self.fleet.add_events(rows)
            except Exception as exc:  # the store down (or anything else): this batch again, in order
                if not failing:
                    log.warning("fleet_events_write_failed", events=len(rows), error=getattr(exc, "message", repr(exc)))
                failing = True
                await asyncio.sleep(RETRY_S)
                continue
            if failing:
                log.info("fleet_events_written_again", events=len(rows))
            return

    # -- hearing -----------------------------------------------------------------------------------

    def _received(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            try:
                event = Event.from_json(row["body"])
            except (ValueError, TypeError, KeyError):
                log.warning("fleet_event_unreadable", node_id=row.get("node_id"), seq=row.get("seq"))
                continue
            self.local.offer(event)


def _row(event: Event) -> dict[str, Any]:
    return {
        "customer_id": event.customer_id,
        "speaking_id": event.speaking_id,
        "body": event.to_json(),
        "created": time.time(),
    }
