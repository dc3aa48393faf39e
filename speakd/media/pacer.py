"""The one pacer: a single thread that sends every active stream's next frame on time.

Deadlines are absolute on the monotonic clock (``next += interval``), so timer jitter does
not accumulate into drift. The 20 ms frame period is cut into ``SLOTS`` sub-ticks: a stream
that is talking sends exactly one frame every ``SLOTS`` sub-ticks, on its own slot; a stream
that is idle may start a talkspurt on any sub-tick (once a whole frame period has passed since
its last packet), so the first frame of speech waits at most one sub-tick (5 ms), not a whole
frame. There are no catch-up bursts (Asterisk's softmix drops a member's backlog over 80 ms
and there is no jitter buffer on this path): if pacing stalls for more than a frame period,
the missed ticks are skipped, counted and logged, and pacing resumes from now.

It runs on its own thread, not on the event loop, so that nothing the loop does (synthesis
hand-offs, HTTP, JSON, SQLite) can delay a frame; where the OS allows it the thread runs
with real-time priority, so that synthesis burning every core cannot either.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import structlog

from speakd.media.codec import FRAME_SAMPLES, PAYLOAD_TYPES, Codec
from speakd.media.frames import FrameBuffer
from speakd.media.rtp import RtpPacketizer

log = structlog.get_logger(__name__)

Send = Callable[[bytes, tuple[str, int]], None]

FRAME_INTERVAL = 0.020
SLOTS = 4
SLOT_SAMPLES = FRAME_SAMPLES // SLOTS
REPORT_EVERY = 50 * SLOTS * 10  # sub-ticks: 10 s
LATE_REPORT_MS = 10.0


class RtpStream:
    """One session's outgoing RTP: where it goes, its packetizer and its frame source."""

    def __init__(self, destination: tuple[str, int], codec: Codec, frames: FrameBuffer) -> None:
        self.destination = destination
        self.frames = frames
        self.packetizer = RtpPacketizer(PAYLOAD_TYPES[codec], FRAME_SAMPLES)
        self.talking = False
        self.slot = 0  # which sub-tick of the frame period this stream's talkspurt uses
        self.last_sent: int | None = None  # sub-tick count of the last packet


class Pacer:
    def __init__(
        self,
        send: Send,
        interval: float = FRAME_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send = send
        self.interval = interval
        self.sub_interval = interval / SLOTS
        self._clock = clock
        self._lock = threading.Lock()  # held for a whole tick: after remove(), nothing more is sent
        self._streams: tuple[RtpStream, ...] = ()
        self._has_streams = threading.Event()
        self.subticks = 0
        self.skipped_ticks = 0
        # How far past its deadline a sub-tick ran, reported every REPORT_EVERY sub-ticks when
        # it reached LATE_REPORT_MS: pacing health for operators.
        self.max_late_ms = 0.0
        self._window_late_ms = 0.0

    def add(self, stream: RtpStream) -> None:
        with self._lock:
            if stream not in self._streams:
                self._streams = (*self._streams, stream)
                self._has_streams.set()

    def remove(self, stream: RtpStream) -> None:
        with self._lock:
            self._streams = tuple(s for s in self._streams if s is not stream)
            if not self._streams:
                self._has_streams.clear()

    def __len__(self) -> int:
        return len(self._streams)

    def tick(self) -> int:
        """One sub-tick: send the frame of every stream due now. Returns packets sent."""
        with self._lock:
            now = self.subticks
            slot = now % SLOTS
            sent = 0
            for stream in self._streams:
                if stream.talking:
                    if stream.slot != slot:
                        continue
                    frame = stream.frames.pop()
                    if frame is None:  # the talkspurt ended
                        stream.talking = False
                        continue
                else:
                    if stream.last_sent is not None and now - stream.last_sent < SLOTS:
                        continue  # keep at least a frame period between packets
                    frame = stream.frames.pop()
                    if frame is None:
                        continue
                    # The sampling clock ran through the silence since the last packet (which
                    # already advanced it by one frame).
                    elapsed = 0 if stream.last_sent is None else (now - stream.last_sent) * SLOT_SAMPLES
                    stream.packetizer.silence(elapsed - FRAME_SAMPLES)
                    stream.talking = True
                    stream.slot = slot
                try:
                    self._send(stream.packetizer.packet(frame), stream.destination)
                except OSError as exc:  # one unreachable destination must not stop the others
                    log.warning("rtp_send_failed", destination=stream.destination, error=str(exc))
                stream.last_sent = now
                sent += 1
            self.subticks += 1
            return sent

    def run(self, stop: threading.Event, sleep: Callable[[float], object] | None = None) -> None:
        """Pace until ``stop`` is set (blocking: run it on its own thread)."""
        sleep = sleep or stop.wait
        deadline = self._clock()
        while not stop.is_set():
            if not self._streams:
                self._has_streams.wait(0.5)
                deadline = self._clock()
                continue
            self._window_late_ms = max(self._window_late_ms, (self._clock() - deadline) * 1000)
            self.tick()
            if self.subticks % REPORT_EVERY == 0:
                self.max_late_ms = max(self.max_late_ms, self._window_late_ms)
                if self._window_late_ms >= LATE_REPORT_MS:
                    log.info("pacer_late", max_late_ms=round(self._window_late_ms, 1), streams=len(self._streams))
                self._window_late_ms = 0.0
            deadline += self.sub_interval
            now = self._clock()
            if now - deadline > self.interval:
                # Stalled past a whole frame period: resume on a new grid from now rather
                # than catch up, which would put several frames on the wire at once.
                missed = int((now - deadline) / self.sub_interval)
                self.skipped_ticks += missed // SLOTS
                with self._lock:
                    self.subticks += missed
                log.warning("pacer_stalled", late_ms=round((now - deadline) * 1000, 1))
                deadline = now + self.sub_interval
            sleep(max(0.0, deadline - self._clock()))


class PacerThread:
    """Owns the pacer's thread: ``with PacerThread(pacer):`` starts it and stops/joins it."""

    def __init__(self, pacer: Pacer, realtime_priority: int = 0) -> None:
        self.pacer = pacer
        self.realtime_priority = realtime_priority
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="speakd-pacer", daemon=True)

    def __enter__(self) -> PacerThread:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _main(self) -> None:
        if self.realtime_priority > 0:
            try:
                # pid 0 = this thread on Linux: only the pacer gets real-time scheduling.
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(self.realtime_priority))
                log.info("pacer_priority", policy="SCHED_FIFO", priority=self.realtime_priority)
            except (PermissionError, OSError, AttributeError) as exc:
                log.warning(
                    "pacer_priority",
                    policy="normal",
                    reason=f"{exc}; for real-time pacing grant CAP_SYS_NICE (AmbientCapabilities=CAP_SYS_NICE)",
                )
        try:
            self.pacer.run(self._stop)
        except Exception:
            log.exception("pacer_crashed")
            raise
