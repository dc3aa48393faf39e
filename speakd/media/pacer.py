"""The one pacer: a single task that sends every active stream's next frame each 20 ms tick.

Deadlines are absolute on the monotonic clock (``next += interval``), so timer jitter does
not accumulate into drift. Each stream gets at most one frame per tick: there are no
catch-up bursts (Asterisk's softmix drops a member's backlog over 80 ms and there is no
jitter buffer on this path). If the loop was stalled for more than a tick, the missed ticks
are skipped, counted and logged, and pacing resumes from now.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from speakd.media.codec import FRAME_SAMPLES, PAYLOAD_TYPES, Codec
from speakd.media.frames import FrameBuffer
from speakd.media.rtp import RtpPacketizer

log = structlog.get_logger(__name__)

Send = Callable[[bytes, tuple[str, int]], None]


class RtpStream:
    """One session's outgoing RTP: where it goes, its packetizer and its frame source."""

    def __init__(self, destination: tuple[str, int], codec: Codec, frames: FrameBuffer) -> None:
        self.destination = destination
        self.frames = frames
        self.packetizer = RtpPacketizer(PAYLOAD_TYPES[codec], FRAME_SAMPLES)
        self.frames_sent = 0
        self.on_first_frame: Callable[[], None] | None = None


class Pacer:
    def __init__(self, send: Send, interval: float = 0.020, clock: Callable[[], float] = time.monotonic) -> None:
        self._send = send
        self.interval = interval
        self._clock = clock
        self._streams: list[RtpStream] = []
        self._wake = asyncio.Event()
        self.ticks = 0
        self.skipped_ticks = 0

    def add(self, stream: RtpStream) -> None:
        if stream not in self._streams:
            self._streams.append(stream)
            self._wake.set()

    def remove(self, stream: RtpStream) -> None:
        if stream in self._streams:
            self._streams.remove(stream)

    def __len__(self) -> int:
        return len(self._streams)

    def tick(self) -> int:
        """Send one frame for every stream that has one. Returns packets sent."""
        sent = 0
        for stream in tuple(self._streams):
            frame = stream.frames.pop()
            if frame is None:
                stream.packetizer.idle()
                continue
            try:
                self._send(stream.packetizer.packet(frame), stream.destination)
            except OSError as exc:  # one unreachable destination must not stop the others
                log.warning("rtp_send_failed", destination=stream.destination, error=str(exc))
                continue
            sent += 1
            stream.frames_sent += 1
            if stream.frames_sent == 1 and stream.on_first_frame is not None:
                stream.on_first_frame()
        self.ticks += 1
        return sent

    async def run(self) -> None:
        """Run until cancelled. Sleeps when no stream is registered."""
        deadline = self._clock()
        while True:
            if not self._streams:
                self._wake.clear()
                await self._wake.wait()
                deadline = self._clock()
            self.tick()
            deadline += self.interval
            now = self._clock()
            if now - deadline > self.interval:
                # Stalled past a whole tick: resume on a new grid from now rather than
                # catch up, which would put several frames on the wire at once.
                missed = int((now - deadline) / self.interval)
                self.skipped_ticks += missed
                log.warning("pacer_stalled", missed_ticks=missed, late_ms=round((now - deadline) * 1000, 1))
                deadline = now + self.interval
            await asyncio.sleep(max(0.0, deadline - self._clock()))
