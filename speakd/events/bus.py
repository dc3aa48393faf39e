"""The event bus: the service publishes, each way out (WebSocket clients, webhooks, ARI user
events) takes the event into a bounded queue of its own and delivers it from its own task.

``publish`` never awaits and never blocks: it runs where the event happens (a played mark,
an API verb), which must not wait for a slow client or a webhook that hangs.
"""

from __future__ import annotations

from typing import Protocol

import structlog

from speakd.events.model import Event

log = structlog.get_logger(__name__)


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
