"""For operators: ``GET /health`` (can speakd serve?) and ``GET /metrics`` (Prometheus).

Both are served without credentials: a monitoring system or Prometheus has no customer, and
neither shows anything of one (no session ids, no customer ids, no text). Like the rest of
the API they are only as reachable as ``[server] host`` and the host's firewall make them.

``/health`` is 200 when ARI is connected and the store takes a write, else 503 naming what
failed. The store check is a real write (the ``health`` row), done at most once a second
whatever the request rate and given ``STORE_CHECK_TIMEOUT_S``; while one is still waiting
in the store's thread no other is queued behind it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Any

from aiohttp import web

from speakd.metrics import Metrics

STORE_CHECK_TIMEOUT_S = 1.0
STORE_CHECK_EVERY_S = 1.0  # a check younger than this is answered again


class StoreCheck:
    """Whether the service's store takes a write: ``(writable, why not)``, fresh to within a second."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self._result: tuple[bool, str] = (False, "")
        self._checked_at = -float("inf")
        self._write: asyncio.Future[None] | None = None
        self._write_started = 0.0
        self._lock = asyncio.Lock()

    async def writable(self) -> tuple[bool, str]:
        async with self._lock:  # requests arriving meanwhile take this check's answer
            if time.monotonic() - self._checked_at >= STORE_CHECK_EVERY_S:
                self._result = await self._check()
                self._checked_at = time.monotonic()
            return self._result

    async def _check(self) -> tuple[bool, str]:
        if self._write is None or self._write.done():
            self._write = self.service.store.write_health_row()
            self._write.add_done_callback(_retrieve)
            self._write_started = time.monotonic()
        # wait(), not wait_for(): giving up must not cancel the write (it has a thread already).
        done, _ = await asyncio.wait({self._write}, timeout=STORE_CHECK_TIMEOUT_S)
        if not done:
            waited = time.monotonic() - self._write_started
            return False, f"a write to the store has not finished after {waited:.1f} s"
        error = self._write.exception()
        if error is None:
            return True, ""
        if isinstance(error, sqlite3.Error):
            return False, f"the store refused a write: {error}"
        return False, f"the store failed a write: {type(error).__name__}: {error}"


def _retrieve(write: asyncio.Future[None]) -> None:
    if not write.cancelled():
        write.exception()  # reported by the check that waits for it; never "never retrieved"


async def health_body(service: Any, store_check: StoreCheck) -> tuple[dict[str, Any], int]:
    ari_connected = service.ari.connected.is_set()
    store_writable, store_error = await store_check.writable()
    failed = [name for name, ok in (("ari", ari_connected), ("store", store_writable)) if not ok]
    body = {
        "status": "unavailable" if failed else "ok",
        "failed": failed,
        "ari_connected": ari_connected,
        "store_writable": store_writable,
        "store_error": store_error,
        "live_sessions": service.live_count,
        **service.media.health(),
    }
    return body, 503 if failed else 200


def metrics_response(metrics: Metrics, request: web.Request) -> web.Response:
    body, content_type = metrics.exposition(request.headers.get("Accept", ""))
    return web.Response(body=body, headers={"Content-Type": content_type})
