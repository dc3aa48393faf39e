"""Keeps media WebSocket connects apart from media channels being made or removed.

chan_websocket (Asterisk 22.10.1, and master as of 2026-08) finds the channel an incoming media
connection is for with ``ao2_weakproxy_find(instances, id, OBJ_NOLOCK)`` while it holds no lock
on ``instances``. Making a media channel (``websocket_new``) and destroying one (its weak
proxy's unlink) write-lock that table. A lookup that runs while another thread holds or takes
the lock adjusts a lock it does not hold (``__adjust_lock``), and can leave the table locked
for good. After that, no media channel can be made and none can be hung up until Asterisk
restarts (seen on CI: every ``POST channels/externalMedia`` timed out after four sessions
stopped at once; 16 clients making, connecting and removing media channels with no gate wedge
the sandbox Asterisk within half a minute: docs/media.md).

So speakd never connects while it makes or removes a media channel. Connects may overlap
each other, and makes and removals may overlap each other; the two groups take turns, served
in arrival order so neither starves. This covers what one speakd does to its Asterisk; another
program connecting to chan_websocket on the same Asterisk is beyond it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections import deque
from collections.abc import AsyncIterator


class Use(enum.Enum):
    CONNECT = "connect"  # a media WebSocket being opened (until MEDIA_START)
    CHANGE = "change"  # a media channel being made or removed


class ChannelGate:
    def __init__(self) -> None:
        self._use: Use | None = None  # what the holders are doing (None: nobody holds it)
        self._holders = 0
        self._waiting: deque[tuple[Use, asyncio.Future[None]]] = deque()

    def connecting(self) -> contextlib.AbstractAsyncContextManager[None]:
        return self._hold(Use.CONNECT)

    def changing(self) -> contextlib.AbstractAsyncContextManager[None]:
        return self._hold(Use.CHANGE)

    @property
    def holders(self) -> tuple[Use | None, int]:
        return self._use, self._holders

    @contextlib.asynccontextmanager
    async def _hold(self, use: Use) -> AsyncIterator[None]:
        if self._waiting or (self._holders and self._use is not use):
            granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            entry = (use, granted)
            self._waiting.append(entry)
            try:
                await granted
            except asyncio.CancelledError:
                if granted.done() and not granted.cancelled():
                    self._release()  # let in just as it was cancelled
                elif entry in self._waiting:
                    self._waiting.remove(entry)
                    self._admit()  # it may have been what held the others back
                raise
        else:
            self._use = use
            self._holders += 1
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        self._holders -= 1
        if not self._holders:
            self._use = None
            self._admit()

    def _admit(self) -> None:
        """Let in the first waiter and those right behind it doing the same."""
        while self._waiting and (not self._holders or self._waiting[0][0] is self._use):
            use, granted = self._waiting.popleft()
            if granted.cancelled():
                continue
            self._use = use
            self._holders += 1
            granted.set_result(None)
