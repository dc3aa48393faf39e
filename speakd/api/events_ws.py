"""``GET /v1.0/ws``: speaking events over a WebSocket, by topic subscription.

The client sends ``{"type": "subscribe", "topics": [...]}`` and ``{"type": "unsubscribe",
"topics": [...]}``; speakd answers each with ``{"type": "subscribed", "topics": [every topic
now subscribed]}`` (or ``{"type": "error", "message": ...}`` for a refused one, the connection
staying open) and sends each matching event as its envelope. A topic is one of the customer's
own: ``customer_id:<id>:speaking:<speaking id | event type>``, or a prefix ending in ``*``.

Each connection has a bounded queue filled by the event bus without waiting; a client too slow
to read it is disconnected (close code 1008, the reason says so) rather than grow speakd's memory
or hold up anyone else's events.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import structlog
from aiohttp import WSMsgType, web

from speakd.api.schemas import websocket_response
from speakd.errors import either
from speakd.events.model import Event, customer_of_topic
from speakd.parsing import load_json_object
from speakd.sessions.stream import error_message
from speakd.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

MESSAGE_TYPES = ("subscribe", "unsubscribe")  # what a client sends
QUEUE_EVENTS = 1000
MAX_TOPICS = 100
# Close code "policy violation": used for a client that fell too far behind.
CLOSE_TOO_SLOW = 1008
CLOSE_GOING_AWAY = 1001


class TopicRefused(ValueError):
    """A subscription that is not well-formed or not the customer's own; the message says why."""


def check_topics(customer_id: str, topics: Any) -> list[str]:
    if not isinstance(topics, list) or not topics or not all(isinstance(t, str) and t for t in topics):
        raise TopicRefused("'topics' must be a non-empty list of topic strings")
    for topic in topics:
        owner = customer_of_topic(topic)
        if owner is None:
            raise TopicRefused(
                f"'{topic}' is not a speaking topic: use customer_id:<your customer id>:speaking:<speaking id>, "
                "...:speaking:<event type>, or ...:speaking:*"
            )
        if owner != customer_id:
            raise TopicRefused(f"'{topic}' is another customer's topic; subscribe to customer_id:{customer_id}:...")
    return topics


class Subscriber:
    def __init__(self, customer_id: str, ws: web.WebSocketResponse) -> None:
        self.customer_id = customer_id
        self.ws = ws
        self.topics: set[str] = set()
        self.queue: asyncio.Queue[Event] = asyncio.Queue(QUEUE_EVENTS)
        self.too_slow = False

    def offer(self, event: Event) -> None:
        if event.customer_id != self.customer_id or not event.matched_by(self.topics):
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.too_slow = True


class EventHub:
    """The WebSocket clients' side of the event bus."""

    def __init__(self) -> None:
        self._subscribers: set[Subscriber] = set()

    def offer(self, event: Event) -> None:
        for subscriber in self._subscribers:
            subscriber.offer(event)

    @contextlib.contextmanager
    def subscriber(self, customer_id: str, ws: web.WebSocketResponse) -> Iterator[Subscriber]:
        subscriber = Subscriber(customer_id, ws)
        self._subscribers.add(subscriber)
        try:
            yield subscriber
        finally:
            self._subscribers.discard(subscriber)

    async def aclose(self, drain_s: float = 2.0) -> None:
        """Shutdown (after the sessions stopped): let each client read what is queued for it
        (its sessions' speaking_stopped), for ``drain_s`` at most, then close with 1001."""
        deadline = asyncio.get_running_loop().time() + drain_s
        while any(not s.queue.empty() for s in self._subscribers):
            if asyncio.get_running_loop().time() >= deadline:
                break
            await asyncio.sleep(0.02)
        for subscriber in list(self._subscribers):
            await subscriber.ws.close(code=CLOSE_GOING_AWAY, message=b"speakd is shutting down")


async def serve(request: web.Request, hub: EventHub, customer_id: str) -> web.WebSocketResponse:
    ws = websocket_response()
    await ws.prepare(request)
    with hub.subscriber(customer_id, ws) as subscriber:
        sender = asyncio.create_task(_send_events(ws, subscriber), name="speakd-events-ws-send")
        try:
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    continue
                await ws.send_json(_handle(subscriber, message.data))
        finally:
            await cancel_and_wait(sender)
    return ws


def _handle(subscriber: Subscriber, text: str) -> dict[str, Any]:
    try:
        message = load_json_object(text, "the message")
    except ValueError as exc:
        return error_message(f'{exc}; send {{"type": "subscribe", "topics": [...]}}')
    kind = message.get("type")
    if kind not in MESSAGE_TYPES:
        return error_message(f"'type' must be {either(MESSAGE_TYPES)}")
    try:
        topics = check_topics(subscriber.customer_id, message.get("topics"))
    except TopicRefused as exc:
        return error_message(str(exc))
    if kind == "subscribe":
        if len(subscriber.topics | set(topics)) > MAX_TOPICS:
            return error_message(f"at most {MAX_TOPICS} topics per connection; use a '*' topic")
        subscriber.topics.update(topics)
    else:
        subscriber.topics.difference_update(topics)
    return {"type": "subscribed", "topics": sorted(subscriber.topics)}


async def _send_events(ws: web.WebSocketResponse, subscriber: Subscriber) -> None:
    while True:
        event = await subscriber.queue.get()  # a full queue (too_slow) always has one to get
        if subscriber.too_slow:
            log.warning("events_client_too_slow", customer_id=subscriber.customer_id, queued=QUEUE_EVENTS)
            await ws.close(code=CLOSE_TOO_SLOW, message=f"more than {QUEUE_EVENTS} events unread".encode())
            return
        await ws.send_json(event.envelope())
