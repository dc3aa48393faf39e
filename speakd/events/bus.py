"""The event bus: the service publishes, each way out (WebSocket clients, webhooks, ARI user
events) takes the event into a bounded queue of its own and delivers it from its own task.

``publish`` never awaits and never blocks: it runs where the event happens (a played mark,
an API verb), which must not wait for a slow client or a webhook that hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Protocol, TypeVar

import structlog

from speakd.events.model import Event
from speakd.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

T = TypeVar("T")


class EventSink(Protocol):
    def offer(self, event: Event) -> None:
        """Take the event for delivery, without blocking; never raises."""


class EventBus:
    def __init__(self) -> None:
        self._sinks: list[EventSink] = []

    def add_sink(self, sink: EventSink) -> None:
        self._sinks.append(sink)

    def publish(self, event: Event) -> None:
        log.debug("event", event_type=str(event.event_type), speaking_id=event.speaking_id)
        for sink in list(self._sinks):
            try:
                sink.offer(event)
            except Exception:  # one broken way out must not cost the others their event
                log.exception("event_sink_failed", sink=type(sink).__name__)


# -- a way out's own queue and task ---------------------------------------------------------


@contextlib.asynccontextmanager
async def next_batch(queue: asyncio.Queue[T], limit: int) -> AsyncIterator[list[T]]:
    """Wait for one item, then take what else is queued (up to ``limit`` in all); the items
    count as done (for ``queue.join()``) when the block ends, however it ends."""
    batch = [await queue.get()]
    while len(batch) < limit and not queue.empty():
        batch.append(queue.get_nowait())
    try:
        yield batch
    finally:
        for _ in batch:
            queue.task_done()


async def drain_and_stop(queue: asyncio.Queue[T], task: asyncio.Task[None], within_s: float) -> bool:
    """Let ``task`` finish what is queued (for at most ``within_s``), then cancel it; whether
    everything was."""
    drained = True
    try:
        async with asyncio.timeout(within_s):
            await queue.join()
    except TimeoutError:
        drained = False
    await cancel_and_wait(task)
    return drained
