"""A session's playout buffer: 20 ms frames waiting for the pacer.

The synthesis side (the event loop) awaits ``put``; the pacer (its own thread) calls ``pop``
once per frame period. Every frame carries the generation it was synthesized for. ``flush``
bumps the generation and empties the buffer in one step under the lock, so once it returns
no frame synthesized before it can be sent: frames still in flight from a cancelled
synthesis are refused at ``put`` and, should one slip through, dropped at ``pop``.

Marks are callbacks placed between frames (e.g. "this say item starts/ends playing"): the
pacer fires them when playout reaches them, at the real time the listener hears it. They run
on the pacer thread, so they must be quick and thread-safe (logging is).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable


class FrameBuffer:
    def __init__(self, max_frames: int = 500) -> None:
        self.max_frames = max_frames
        self.generation = 0
        self._entries: deque[tuple[int, bytes | Callable[[], None]]] = deque()
        self._frames = 0
        self._lock = threading.Lock()
        self._space = asyncio.Event()
        self._space.set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting = False

    def __len__(self) -> int:
        return self._frames

    async def put(self, generation: int, frame: bytes) -> bool:
        """Queue one frame; waits while the buffer is full. False if the frame is stale."""
        while True:
            with self._lock:
                if generation != self.generation:
                    return False
                if self._frames < self.max_frames:
                    self._entries.append((generation, frame))
                    self._frames += 1
                    return True
                self._space.clear()
                self._waiting = True
                self._loop = asyncio.get_running_loop()
            await self._space.wait()

    def mark(self, generation: int, callback: Callable[[], None]) -> None:
        """Fire ``callback`` when playout reaches this point (dropped by a flush)."""
        with self._lock:
            if generation == self.generation:
                self._entries.append((generation, callback))

    def pop(self) -> bytes | None:
        """The next frame to send now, or None. Never blocks; callable from any thread."""
        fire: list[Callable[[], None]] | None = None  # marks are rare: no list per frame
        frame: bytes | None = None
        with self._lock:
            while self._entries:
                generation, entry = self._entries.popleft()
                if generation != self.generation:
                    continue
                if isinstance(entry, bytes):
                    self._frames -= 1
                    frame = entry
                    if self._waiting and self._frames < self.max_frames:
                        self._waiting = False
                        self._wake_putter()
                    break
                fire = [*(fire or ()), entry]
        for callback in fire or ():
            callback()
        return frame

    def _wake_putter(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._space.set()
        else:
            loop.call_soon_threadsafe(self._space.set)

    def flush(self) -> int:
        """Drop everything queued and refuse frames of older generations. Returns frames dropped."""
        with self._lock:
            dropped = self._frames
            self.generation += 1
            self._entries.clear()
            self._frames = 0
            self._waiting = False
        self._space.set()  # wake a blocked put so it sees it is stale (called on the loop)
        return dropped
