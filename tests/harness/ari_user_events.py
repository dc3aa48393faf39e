"""speakd's events as an operator's ARI application receives them: ``ChannelUserevent``s.

``AriUserEvents`` is a Stasis application of the test's own (its ``/ari/events`` WebSocket)
and an ``EventLog``: each ``ChannelUserevent`` speakd raises for it becomes an envelope of the
same shape as the WebSocket's (``event_type``, ``timestamp``, ``topic``, ``data``), so one
scenario can be checked on every way out alike. The data is what the user event's variables
say: every value a string. ``speakd_error`` replies go to ``errors`` instead, and the
application can send speakd its commands (``speakd_say``, ``speakd_flush``, ``speakd_stop``).

    async with AriUserEvents(ari) as operator:
        await operator.watch(f"channel:{call.channel_id}")
        await operator.command(speakd.app, "speakd_say", call.channel_id, text="Hello.")
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import aiohttp

from .ari import Ari
from .events import Envelope, EventLog

ENVELOPE_VARIABLES = ("eventname", "topic", "timestamp")


def envelope_of(user_event: dict[str, Any]) -> Envelope:
    """A speaking event's ``ChannelUserevent`` as the WebSocket's envelope."""
    variables = dict(user_event.get("userevent") or {})
    return {
        "event_type": user_event.get("eventname") or variables.get("eventname", ""),
        "timestamp": variables.get("timestamp", ""),
        "topic": variables.get("topic", ""),
        "data": {k: v for k, v in variables.items() if k not in ENVELOPE_VARIABLES},
    }


def raised_on(user_event: dict[str, Any]) -> str:
    """Where Asterisk says the event was raised: "channel:<id>", "bridge:<id>" or "" (no source)."""
    if user_event.get("channel"):
        return f"channel:{user_event['channel']['id']}"
    if user_event.get("bridge"):
        return f"bridge:{user_event['bridge']['id']}"
    return ""


class AriUserEvents(EventLog):
    def __init__(self, ari: Ari, name: str | None = None) -> None:
        self.app = name or f"operator-{uuid.uuid4().hex[:8]}"
        super().__init__(f"ARI user events ({self.app})")
        self.ari = ari
        self.raw: list[dict[str, Any]] = []  # every ChannelUserevent, as Asterisk sent it
        self.sources: list[str] = []  # raised_on() of each entry of self.events
        self.errors: list[dict[str, Any]] = []  # speakd_error variables
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AriUserEvents:
        ws_url = self.ari.url.replace("http", "ws", 1) + "/ari/events"
        self._ws = await self.ari.session.ws_connect(
            ws_url, params={"app": self.app, "subscribeAll": "false"}, heartbeat=10
        )
        self._reader = asyncio.create_task(self._read(), name=f"ari-user-events-{self.app}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def _read(self) -> None:
        assert self._ws is not None
        async for message in self._ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            event = message.json()
            if event.get("type") != "ChannelUserevent":
                continue
            event["_received"] = time.monotonic()
            self.raw.append(event)
            if event.get("eventname") == "speakd_error":
                async with self._changed:
                    self.errors.append(dict(event.get("userevent") or {}))
                    self._changed.notify_all()
                continue
            self.sources.append(raised_on(event))
            await self.add(envelope_of(event))

    async def watch(self, source: str) -> None:
        """Subscribe to a channel (``channel:<id>``) or bridge (``bridge:<id>``)."""
        await self.ari.post(f"/applications/{self.app}/subscription", eventSource=source)

    async def command(self, speakd_app: str, command: str, channel_id: str, **variables: str) -> None:
        """Send speakd a command on a channel, as an operator's application does."""
        await self.ari.post(
            f"/events/user/{command}",
            json={"variables": variables},
            application=speakd_app,
            source=f"channel:{channel_id}",
        )

    async def wait_error(self, timeout: float = 5.0) -> dict[str, Any]:
        """The first speakd_error received."""
        deadline = time.monotonic() + timeout
        async with self._changed:
            while not self.errors:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{self.name}: no speakd_error within {timeout} s; got {self.raw}")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self._changed.wait()
        return self.errors[0]

    async def wait_type(self, speaking_id: str, event_type: str, timeout: float = 30.0) -> Envelope:
        """The session's first event of this type."""

        def seen(_: list[Envelope]) -> bool:
            return any(e["event_type"] == event_type for e in self.of(speaking_id))

        await self.wait_for(seen, timeout, f"{event_type} of {speaking_id}")
        return next(e for e in self.of(speaking_id) if e["event_type"] == event_type)

    def session_ids(self) -> list[str]:
        """The speaking ids seen, in order of their first event."""
        seen: list[str] = []
        for e in self.events:
            sid = e["data"].get("speaking_id") or e["data"].get("id", "")
            if sid and sid not in seen:
                seen.append(sid)
        return seen
