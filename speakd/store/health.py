"""Whether the store takes a write, for ``GET /health``.

The check is a real write (the ``health`` row), done at most once a second whatever the
request rate and given ``STORE_CHECK_TIMEOUT_S``; while one is still waiting in the store's
thread no other is queued behind it.
"""

from __future__ import annotations

import asyncio
import time

from speakd.store.interface import Store, StoreRefused, StoreUnwritable

STORE_CHECK_TIMEOUT_S = 1.0
STORE_CHECK_EVERY_S = 1.0  # a check younger than this is answered again


class StoreCheck:
    """Whether the store takes a write: ``(writable, why not)``, fresh to within a second."""

    def __init__(self, store: Store) -> None:
        self.store = store
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
            self._write = self.store.write_health_row()
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
        if isinstance(error, StoreUnwritable):
            return False, error.message
        if isinstance(error, StoreRefused):
            return False, f"the store refused a write: {error}"
        return False, f"the store failed a write: {type(error).__name__}: {error}"


def _retrieve(write: asyncio.Future[None]) -> None:
    if not write.cancelled():
        write.exception()  # reported by the check that waits for it; never "never retrieved"
