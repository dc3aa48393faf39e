"""A session's playout buffer: 20 ms frames waiting for the pacer.

The synthesis side awaits ``put``; the pacer calls ``pop`` synchronously once per tick.
Every frame carries the generation it was synthesized for. ``flush`` bumps the generation
and empties the buffer in one synchronous step, so once it returns no frame synthesized
before it can be sent: frames still in flight from a cancelled synthesis are refused at
``put`` and, should one slip through, dropped at ``pop``.

Marks are callbacks placed between frames (e.g. "this say item starts/ends playing"): the
pacer fires them when playout reaches them, at the real time the listener hears it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable


class FrameBuffer:
    def __init__(self, max_frames: int = 500) -> None:
        self.max_frames = max_frames
        self.generation = 0
        self._entries: deque[tuple[int, bytes | Callable[[], None]]] = deque()
        self._frames = 0
        self._space = asyncio.Event()
        self._space.set()

    def __len__(self) -> int:
        return self._frames

    async def put(self, generation: int, frame: bytes) -> bool:
        """Queue one frame; waits while the buffer is full. False if the frame is stale."""
        while self._frames >= self.max_frames and generation == self.generation:
            self._space.clear()
            await self._space.wait()
        if generation != self.generation:
            return False
        self._entries.append((generation, frame))
        self._frames += 1
        return True

    def mark(self, generation: int, callback: Callable[[], None]) -> None:
        """Fire ``callback`` when playout reaches this point (dropped by a flush)."""
        if generation == self.generation:
            self._entries.append((generation, callback))

    def pop(self) -> bytes | None:
        """The next frame to send now, or None. Never blocks."""
        while self._entries:
            generation, entry = self._entries.popleft()
            if generation != self.generation:
                continue
            if isinstance(entry, bytes):
                self._frames -= 1
                if self._frames < self.max_frames:
                    self._space.set()
                return entry
            entry()
        return None

    def flush(self) -> int:
        """Drop everything queued and refuse frames of older generations. Returns frames dropped."""
        dropped = self._frames
        self.generation += 1
        self._entries.clear()
        self._frames = 0
        self._space.set()  # wake a blocked put so it sees it is stale
        return dropped
