"""A customer's webhook endpoint, as tests need it: verifies every POST, can be made to fail.

``WebhookReceiver`` is an ``EventLog`` (see harness/events.py) fed by a local aiohttp server on
127.0.0.1. Every POST's signature is checked here, independently of speakd's code: HMAC-SHA256
with the secret over ``"<X-Speakd-Timestamp>.<raw body>"``, hex, as ``X-Speakd-Signature:
sha256=<hex>``, and a timestamp within ``max_age_s`` of now. A POST that fails the check is
answered 401 and makes ``async with`` fail at its end (``bad`` lists why), so no test can pass
with a wrong signature. Like a real receiver, it keeps an event once: a repeat of an
``X-Speakd-Event-Id`` it already took is counted in ``duplicates`` (delivery is at least once).

Modes (``await receiver.set_mode(...)``): ``healthy`` (200, events kept), ``down`` (not
listening: connection refused), ``hanging`` (accepts the request, never answers), ``failing``
(500).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from typing import Any

from aiohttp import web

from harness.daemon import free_port
from harness.events import EventLog

MODES = ("healthy", "down", "hanging", "failing")


def expected_signature(secret: str, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def webhook_section(url: str, secret: str, customer_id: str, request_timeout: float = 3.0) -> str:
    """speakd's config for one customer's webhook, retrying fast (for a SpeakdProcess's extra_config)."""
    return f"""
[webhooks]
request_timeout = {request_timeout}
first_backoff = 0.2
max_backoff = 1.0
give_up_after = 600

[webhooks.customers."{customer_id}"]
url = "{url}"
secret = "{secret}"
"""


class WebhookReceiver(EventLog):
    def __init__(self, secret: str, name: str = "webhook", max_age_s: float = 300.0) -> None:
        super().__init__(name)
        self.secret = secret
        self.max_age_s = max_age_s
        self.port = free_port()
        self.mode = "healthy"
        self.bad: list[str] = []  # why a POST's signature (or headers) did not check out
        self.ids: list[str] = []  # X-Speakd-Event-Id of each event kept, in arrival order
        self.duplicates = 0
        self.posts: dict[str, int] = dict.fromkeys(MODES, 0)  # POSTs received, by the mode they met
        self._release = asyncio.Event()  # answers the hanging requests (with 503)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def __aenter__(self) -> WebhookReceiver:
        await self._listen()
        return self

    async def __aexit__(self, exc_type: object, *exc: object) -> None:
        self._release.set()
        await self._unlisten()
        if exc_type is None:
            self.assert_all_signed()

    def assert_all_signed(self) -> None:
        assert not self.bad, f"{self.name}: POSTs that failed verification: {self.bad}"

    async def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        if mode != "hanging":
            self._release.set()
            self._release = asyncio.Event()
        self.mode = mode
        if mode == "down":
            await self._unlisten()
        elif self._runner is None:
            await self._listen()

    async def _listen(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True).start()
        self._runner = runner

    async def _unlisten(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()  # closes the listener and every open connection

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        problem = self._check(request, body)
        if problem:
            self.bad.append(problem)
            return web.Response(status=401, text=problem)
        mode = self.mode
        self.posts[mode] += 1
        if mode == "hanging":
            await self._release.wait()
            return web.Response(status=503)
        if mode == "failing":
            return web.Response(status=500, text="failing on purpose")
        envelope: dict[str, Any] = json.loads(body)
        if request.headers.get("X-Speakd-Event-Type") != envelope.get("event_type"):
            self.bad.append(f"X-Speakd-Event-Type {request.headers.get('X-Speakd-Event-Type')!r} vs {envelope}")
        event_id = request.headers["X-Speakd-Event-Id"]
        if event_id in self.ids:
            self.duplicates += 1
        else:
            self.ids.append(event_id)
            await self.add(envelope)
        return web.Response(status=204)

    def _check(self, request: web.Request, body: bytes) -> str:
        timestamp = request.headers.get("X-Speakd-Timestamp", "")
        signature = request.headers.get("X-Speakd-Signature", "")
        if not request.headers.get("X-Speakd-Event-Id"):
            return "no X-Speakd-Event-Id"
        if request.content_type != "application/json":
            return f"Content-Type {request.content_type!r}"
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > self.max_age_s:
            return f"X-Speakd-Timestamp {timestamp!r} is not unix seconds within {self.max_age_s}s of now"
        if not hmac.compare_digest(signature, expected_signature(self.secret, timestamp, body)):
            return f"X-Speakd-Signature {signature!r} does not match the body"
        return ""
