"""Receiving speakd's events as a client does, through each way out, into one shape.

Every way out is an ``EventLog``: a list of envelopes ``{"event_type", "timestamp", "topic",
"data"}`` in arrival order, that tests wait on. ``WsEvents`` subscribes over ``/v1.0/ws``; the
webhook receiver and the ARI user-event listener (their own modules) are EventLogs too, so one
scenario can be checked on all of them alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import aiohttp

Envelope = dict[str, Any]

WS_CLOSE = aiohttp.WSMsgType.CLOSE
SESSION_EVENTS = ("speaking_created", "speaking_started", "speaking_stopped")


class EventLog:
    def __init__(self, name: str) -> None:
        self.name = name
        self.events: list[Envelope] = []
        self._changed = asyncio.Condition()

    async def add(self, envelope: Envelope) -> None:
        async with self._changed:
            self.events.append(envelope)
            self._changed.notify_all()

    def of(self, speaking_id: str) -> list[Envelope]:
        """This session's events, in arrival order."""
        return [e for e in self.events if _speaking_id(e) == speaking_id]

    def sequence(self, speaking_id: str) -> list[tuple[str, str]]:
        """(event type, say id or "") of the session's events: what tests compare across ways."""
        return [(e["event_type"], e["data"].get("say_id", "")) for e in self.of(speaking_id)]

    async def wait_for(self, predicate: Callable[[list[Envelope]], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        async with self._changed:
            while not predicate(self.events):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{self.name}: {what} not seen within {timeout} s; got {self.events}")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self._changed.wait()

    async def wait_stopped(self, speaking_id: str, timeout: float = 30.0) -> list[Envelope]:
        """The session's events once its speaking_stopped has arrived."""

        def stopped(_: list[Envelope]) -> bool:
            return any(e["event_type"] == "speaking_stopped" for e in self.of(speaking_id))

        await self.wait_for(stopped, timeout, f"speaking_stopped of {speaking_id}")
        return self.of(speaking_id)


def _speaking_id(envelope: Envelope) -> str:
    data = envelope.get("data") or {}
    if envelope.get("event_type") in SESSION_EVENTS:
        return data.get("id", "")
    return data.get("speaking_id", "")


class WsEvents(EventLog):
    """A client of ``/v1.0/ws``: ``async with WsEvents(base, key) as ws: await ws.subscribe([...])``."""

    def __init__(self, base: str, accesskey: str, name: str = "websocket") -> None:
        super().__init__(name)
        self.url = f"{base}/v1.0/ws?accesskey={accesskey}"
        self.replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self.closed: tuple[int | None, str] | None = None

    async def __aenter__(self) -> WsEvents:
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(self.url)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._http is not None and self._reader is not None
        if self._ws is not None:
            await self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self._http.close()

    async def _read(self) -> None:
        assert self._ws is not None
        while True:
            message = await self._ws.receive()
            if message.type in (WS_CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                # CLOSE carries the peer's reason in .extra; the response itself keeps only the code.
                reason = message.extra if message.type == WS_CLOSE else ""
                self.closed = (self._ws.close_code, str(reason or ""))
                return
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            body = message.json()
            if "event_type" in body:
                await self.add(body)
            else:
                await self.replies.put(body)

    async def send(self, message: Any) -> dict[str, Any]:
        """Send a control message; return speakd's reply to it."""
        assert self._ws is not None
        await self._ws.send_json(message) if not isinstance(message, str) else await self._ws.send_str(message)
        async with asyncio.timeout(5):
            return await self.replies.get()

    async def subscribe(self, topics: list[str]) -> dict[str, Any]:
        return await self.send({"type": "subscribe", "topics": topics})

    async def unsubscribe(self, topics: list[str]) -> dict[str, Any]:
        return await self.send({"type": "unsubscribe", "topics": topics})
