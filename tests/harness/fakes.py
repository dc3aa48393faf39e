"""Fakes for unit tests that need no Asterisk.

:class:`SinkTransport` is a local far end that consumes like chan_websocket: audio handed to
it is queued and played at real time (one 160-byte frame per 20 ms, optionally sped up), a
mark is reported through ``on_mark`` once everything queued before it has been played, the
queue running dry after playing through ``on_drained``, ``flush`` drops the queue and the marks
in it. It records what it "played" and when, so a
test can assert on what the call would have heard, and it can close on its own or send
XOFF/XON like the real thing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from speakd.config import TransportKind
from speakd.media.transport import MediaTransport

FRAME_BYTES = 160
FRAME_S = 0.020


@dataclass(frozen=True, slots=True)
class PlayedFrame:
    at: float  # time.monotonic() when the frame started playing
    wall: float  # time.time() at the same moment
    data: bytes


@dataclass(frozen=True, slots=True)
class _Mark:
    mark_id: str


class SinkTransport(MediaTransport):
    """A fake far end that plays what it is sent at ``speed`` times real time.

    Recorded for tests:

    * ``played``: every frame played, in order, with when it started playing;
    * ``reported``: the mark ids reported back, in order;
    * ``flush_points``: ``len(played)`` at each flush (what played after a flush is
      ``played[flush_points[-1]:]``);
    * ``queue_log``: ``(time.monotonic(), frames queued)`` after every ``send_audio``;
    * ``dry_points``: ``len(played)`` each time the queue ran dry after playing had begun
      (a dry point before the last frame is an underrun: the call heard a gap);
    * ``events``: the calls in order: ``("audio", bytes)``, ``("mark", id)``, ``("flush",)``;
    * ``violations``: contract breaches (partial frames, calls after ``aclose``), so a test
      can assert there were none without an exception killing the caller's task.

    ``xoff_frames``/``xon_frames`` make it flow-control itself like chan_websocket's
    queue levels; ``xoff()``/``xon()`` do it by hand. ``stall()`` stops playout (a far end
    that plays and confirms nothing) until ``resume()``. ``report_delay``: seconds its
    reports (marks, running dry) take to arrive, in order, like events over a busy host's
    WebSocket.
    """

    kind = TransportKind.WEBSOCKET

    def __init__(
        self,
        *,
        speed: float = 10.0,
        xoff_frames: int | None = None,
        xon_frames: int | None = None,
        report_delay: float = 0.0,
    ) -> None:
        super().__init__()
        self.speed = speed
        self.report_delay = report_delay
        self._reports: deque[tuple[float, Any]] = deque()  # (due, callback) in order
        self._has_reports = asyncio.Event()
        self.period = FRAME_S / speed
        self.xoff_frames = xoff_frames
        self.xon_frames = xon_frames if xon_frames is not None else (xoff_frames or 0) * 8 // 9
        self.played: list[PlayedFrame] = []
        self.reported: list[str] = []
        self.flush_points: list[int] = []
        self.queue_log: list[tuple[float, int]] = []
        self.events: list[tuple[Any, ...]] = []
        self.violations: list[str] = []
        self.dry_points: list[int] = []
        self.xoffs = 0
        self.started = False
        self.aclosed = False
        self._queue: deque[bytes | _Mark] = deque()
        self._queued_frames = 0
        self._has_work = asyncio.Event()
        self._running = asyncio.Event()
        self._running.set()
        self._task: asyncio.Task[None] | None = None
        self._reporter: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    # -- MediaTransport --------------------------------------------------------------------

    async def start(self) -> None:
        self.started = True
        self._task = asyncio.create_task(self._play(), name="sink-transport")
        self._reporter = asyncio.create_task(self._deliver_reports(), name="sink-transport-reports")

    def send_audio(self, data: bytes) -> None:
        if self.aclosed:
            self.violations.append("send_audio after aclose")
            return
        if len(data) % FRAME_BYTES:
            self.violations.append(f"send_audio of {len(data)} bytes: not whole frames")
        self.events.append(("audio", data))
        for start in range(0, len(data), FRAME_BYTES):
            self._queue.append(data[start : start + FRAME_BYTES])
            self._queued_frames += 1
        self.queue_log.append((time.monotonic(), self._queued_frames))
        if self.xoff_frames is not None and self._queued_frames >= self.xoff_frames and self.writable.is_set():
            self.xoff()
        self._work()

    def mark(self, mark_id: str) -> None:
        if self.aclosed:
            self.violations.append("mark after aclose")
            return
        self.events.append(("mark", mark_id))
        self._queue.append(_Mark(mark_id))
        self._work()

    def flush(self) -> None:
        self.events.append(("flush",))
        self.flush_points.append(len(self.played))
        self._queue.clear()
        self._queued_frames = 0
        if self.xoff_frames is not None and not self.writable.is_set():
            self.xon()

    async def aclose(self) -> None:
        self.aclosed = True
        for task in (self._task, self._reporter):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._reporter = None

    # -- test controls ---------------------------------------------------------------------

    def far_end_close(self, reason: str = "media WebSocket closed by Asterisk (code 1006)") -> None:
        """The far end goes away on its own: playout stops and ``closed`` resolves."""
        if self._task is not None:
            self._task.cancel()
        self._far_end_closed(reason)

    def xoff(self) -> None:
        self.xoffs += 1
        self.writable.clear()

    def xon(self) -> None:
        self.writable.set()

    def stall(self) -> None:
        """Stop playing (and so confirming marks) until :meth:`resume`."""
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    # -- what was heard --------------------------------------------------------------------

    @property
    def queued_frames(self) -> int:
        return self._queued_frames

    @property
    def max_queued_frames(self) -> int:
        return max((n for _, n in self.queue_log), default=0)

    def underruns(self, start: int = 0) -> list[int]:
        """Dry points after frame ``start`` with more played after them: gaps in what was heard."""
        return [n for n in self.dry_points if start < n < len(self.played)]

    def played_bytes(self, start: int = 0) -> bytes:
        return b"".join(f.data for f in self.played[start:])

    def played_letters(self, start: int = 0) -> bytes:
        """One byte per played frame (its first byte): b"AAAB" for three A frames and a B."""
        return bytes(f.data[0] for f in self.played[start:])

    def played_after_flush(self) -> bytes:
        return self.played_letters(self.flush_points[-1] if self.flush_points else 0)

    async def wait_idle(self, frames: int = 0, timeout: float = 5.0) -> None:
        """Until at least ``frames`` frames have played and everything queued has been
        played and its marks reported."""
        async with asyncio.timeout(timeout):
            while len(self.played) < frames or self._queue or not self._idle.is_set():
                await asyncio.sleep(0.002)

    # -- the player ------------------------------------------------------------------------

    def _report(self, callback: Any) -> None:
        if not self.report_delay:
            callback()
            return
        self._reports.append((asyncio.get_running_loop().time() + self.report_delay, callback))
        self._has_reports.set()

    async def _deliver_reports(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._reports:
                self._has_reports.clear()
                await self._has_reports.wait()
            due, callback = self._reports.popleft()
            await asyncio.sleep(max(0.0, due - loop.time()))
            callback()

    def _work(self) -> None:
        self._idle.clear()
        self._has_work.set()

    async def _play(self) -> None:
        loop = asyncio.get_running_loop()
        next_at: float | None = None
        while True:
            await self._running.wait()
            # Marks at the head: everything queued before them has finished playing.
            while self._queue and isinstance(self._queue[0], _Mark):
                mark = self._queue.popleft()
                assert isinstance(mark, _Mark)
                self.reported.append(mark.mark_id)
                self._report(lambda m=mark.mark_id: self.on_mark(m))
            if not self._queue:
                if self.played and (not self.dry_points or self.dry_points[-1] != len(self.played)):
                    self.dry_points.append(len(self.played))
                    self._report(lambda: self.on_drained())
                self._idle.set()
                self._has_work.clear()
                await self._has_work.wait()
                next_at = None
                continue
            frame = self._queue.popleft()
            assert isinstance(frame, bytes)
            self._queued_frames -= 1
            if self.xoff_frames is not None and not self.writable.is_set() and self._queued_frames <= self.xon_frames:
                self.xon()
            now = loop.time()
            if next_at is None or next_at < now - self.period:
                next_at = now  # started, or fell behind (a busy loop): no catch-up burst
            self.played.append(PlayedFrame(time.monotonic(), time.time(), frame))
            next_at += self.period
            await asyncio.sleep(max(0.0, next_at - loop.time()))
