"""The RTP pacer: a process of its own that puts every stream's next 20 ms frame on the wire.

A real-time thread inside the daemon still needs the daemon's GIL to run, and a busy host
deschedules whichever thread holds it: the pacer then stalls and callers hear dropouts
(notes/busy-host.md). This process has one thread and imports only the standard library and
the RTP packetizer, so nothing but the kernel decides when it runs; it asks for SCHED_FIFO
so that ordinary processes burning every core cannot delay it either.

It owns two inherited file descriptors: the daemon's bound RTP UDP socket (the daemon binds
it, so it knows the port it gives Asterisk as ``external_host``) and one end of a control
socketpair carrying :mod:`speakd.media.pacer_protocol`. It lives exactly as long as that
control socket: end of file there (the daemon closed it or died) ends the process.

Pacing: absolute monotonic deadlines every 5 ms sub-tick; a talking stream sends exactly
one frame per 20 ms on its own sub-tick; an idle stream starts a talkspurt on any sub-tick
(at least 20 ms after its last packet), so speech starts within 5 ms. No catch-up bursts:
after a stall of more than a frame period the missed sub-ticks are skipped and counted. The
one exception is the optional cushion: the first ``cushion`` extra frames of a talkspurt go
out right behind its first frame, so the far end holds that much audio in hand against this
process's own lateness (Asterisk's whisper path absorbs a backlog up to ~500 ms, softmix up
to 80 ms, so it is kept at most 2 frames).

A mark is reported when the far end reaches it, not when the frame after it is sent: the far end
plays what it holds a frame a period, so a cushion's frames (and anything sent ahead with them)
play one and two periods after they were sent, and every mark behind them is reached that much
later. Reported at the send, a say's start and words mid-talkspurt were 20 ms early per cushion
frame (while the first say's start, on an idle stream, was not).

When a talkspurt ends (the stream had no frame at its sub-tick), that is reported too, once the
far end has played its last frame: the daemon tells a say that ran dry from one that ended.

Between sub-ticks the process sleeps in ``select`` on the control socket, so control messages
are applied as they arrive. Its own messages to the daemon are buffered and written only when
the socket is writable: a daemon that is slow to read can never block a frame.

Run: ``python -m speakd.media.rtp_pacer --rtp-fd N --control-fd M [--priority P] [--cushion C]
[--xoff F] [--xon F]`` (flow control: XOFF once a stream has F frames queued, XON at F or fewer).
"""

from __future__ import annotations

import gc
import os
import select
import signal
import socket
import sys
import time
from collections import deque

from speakd.media import pacer_protocol as proto
from speakd.media.rtp import FRAME_MS, FRAME_SAMPLES, RtpPacketizer

FRAME_BYTES = FRAME_SAMPLES  # G.711: a byte a sample
FRAME_INTERVAL = FRAME_MS / 1000
SLOTS = 4
SLOT_SAMPLES = FRAME_SAMPLES // SLOTS
MAX_CUSHION = 2  # frames: 40 ms, half of softmix's 80 ms backlog limit
STATS_EVERY = 50 * SLOTS  # sub-ticks: 1 s
READ_CHUNK = 65536  # per wake-up: a large backlog of control data cannot hold up a deadline for long
# Flow control (frames queued for one stream): XOFF at 18 s of audio, XON again at 16 s.
XOFF_FRAMES = 900
XON_FRAMES = 800


class Stream:
    """One session's outgoing RTP: destination, packetizer, and its queue of frames and marks."""

    __slots__ = (
        "destination",
        "entries",
        "frames",
        "last_sent",
        "packetizer",
        "plays_at",
        "reached",
        "slot",
        "stream_id",
        "talking",
        "xoff",
    )

    def __init__(self, stream_id: int, destination: tuple[str, int], payload_type: int) -> None:
        self.stream_id = stream_id
        self.destination = destination
        self.packetizer = RtpPacketizer(payload_type, FRAME_SAMPLES)
        self.entries: deque[bytes | str] = deque()  # bytes = a frame, str = a mark id
        self.frames = 0
        self.talking = False
        self.slot = 0  # the sub-tick of the frame period this stream's talkspurt uses
        self.last_sent: int | None = None  # sub-tick count of the last packet
        # The sub-tick at which the far end starts playing the next frame sent (at the earliest
        # when it arrives), and the marks it reaches later than now: (sub-tick, mark id), in order
        # (None: where the talkspurt ended).
        self.plays_at = 0
        self.reached: deque[tuple[int, str | None]] = deque()
        self.xoff = False


class RtpPacer:
    """The pacing state machine and its loop. ``send`` and the clock are injectable for tests."""

    def __init__(
        self,
        rtp: socket.socket,
        control: socket.socket,
        *,
        cushion: int = 0,
        xoff_frames: int = XOFF_FRAMES,
        xon_frames: int = XON_FRAMES,
        clock=time.monotonic,
    ) -> None:
        self.rtp = rtp
        self.control = control
        self.cushion = max(0, min(cushion, MAX_CUSHION))
        self.xoff_frames = xoff_frames
        self.xon_frames = xon_frames
        self.clock = clock
        self.sub_interval = FRAME_INTERVAL / SLOTS
        self.streams: dict[int, Stream] = {}
        self.decoder = proto.Decoder()
        self.outgoing = bytearray()
        self.subticks = 0
        self.stalls = 0
        self.send_errors = 0
        self.max_late_ms = 0.0
        self.window_late_ms = 0.0

    # -- messages to the daemon -------------------------------------------------------------

    def emit(self, message: proto.Message) -> None:
        self.outgoing += proto.encode(message)

    def write_out(self) -> None:
        try:
            sent = self.control.send(self.outgoing)
        except BlockingIOError:
            return
        del self.outgoing[:sent]

    # -- control messages -------------------------------------------------------------------

    def _apply(self, message: proto.Message) -> None:
        match message:
            case proto.Audio(stream_id, data):
                stream = self.streams.get(stream_id)
                if stream is None:
                    return  # removed meanwhile
                view = memoryview(data)
                for start in range(0, len(data) - FRAME_BYTES + 1, FRAME_BYTES):
                    stream.entries.append(bytes(view[start : start + FRAME_BYTES]))
                stream.frames += len(data) // FRAME_BYTES
                if not stream.xoff and stream.frames >= self.xoff_frames:
                    stream.xoff = True
                    self.emit(proto.Xoff(stream_id))
            case proto.Mark(stream_id, mark_id):
                stream = self.streams.get(stream_id)
                if stream is None:
                    return
                if not stream.entries and not stream.talking:
                    self._reach(stream, mark_id, self.subticks)  # nothing before it here: once played there
                else:
                    stream.entries.append(mark_id)
            case proto.Flush(stream_id):
                stream = self.streams.get(stream_id)
                if stream is not None:
                    # The marks go too, unreported: what they marked will never play.
                    stream.entries.clear()
                    stream.reached.clear()
                    stream.frames = 0
                    self._check_xon(stream)
            case proto.Add(stream_id, host, port, payload_type):
                if stream_id not in self.streams:
                    self.streams[stream_id] = Stream(stream_id, (host, port), payload_type)
            case proto.Remove(stream_id):
                self.streams.pop(stream_id, None)
                self.emit(proto.Removed(stream_id))
            case _:
                raise proto.ProtocolError(f"the daemon sent {type(message).__name__}")

    def _check_xon(self, stream: Stream) -> None:
        if stream.xoff and stream.frames <= self.xon_frames:
            stream.xoff = False
            self.emit(proto.Xon(stream.stream_id))

    def _read_control(self) -> bool:
        """Apply what the daemon sent; False once it closed the socket."""
        try:
            data = self.control.recv(READ_CHUNK)
        except BlockingIOError:
            return True
        except ConnectionError:
            return False
        if not data:
            return False
        for message in self.decoder.feed(data):
            self._apply(message)
        return True

    # -- pacing -----------------------------------------------------------------------------

    def _next_frame(self, stream: Stream, now: int) -> bytes | None:
        """The stream's next frame, reporting the marks playout reaches on the way."""
        entries = stream.entries
        while entries:
            entry = entries.popleft()
            if type(entry) is bytes:
                stream.frames -= 1
                if stream.xoff:
                    self._check_xon(stream)
                return entry
            self._reach(stream, entry, now)
        return None

    def _reach(self, stream: Stream, mark_id: str | None, now: int) -> None:
        """Everything before ``mark_id`` (None: the end of the talkspurt) has been sent: report it
        once the far end has played it."""
        due = max(now, stream.plays_at)
        if due > now or stream.reached:
            stream.reached.append((due, mark_id))
        else:
            self.emit(_played(stream.stream_id, mark_id))

    def _send(self, stream: Stream, frame: bytes, now: int) -> None:
        stream.plays_at = max(now, stream.plays_at) + SLOTS
        try:
            self.rtp.sendto(stream.packetizer.packet(frame), stream.destination)
        except OSError:  # one unreachable destination (or a full send buffer) must not stop the others
            self.send_errors += 1

    def tick(self) -> None:
        """One sub-tick: send the frame of every stream due now."""
        now = self.subticks
        slot = now % SLOTS
        for stream in self.streams.values():
            reached = stream.reached
            while reached and reached[0][0] <= now:
                self.emit(_played(stream.stream_id, reached.popleft()[1]))
            if stream.talking:
                if stream.slot != slot:
                    continue
                frame = self._next_frame(stream, now)
                if frame is None:  # the talkspurt ended: the daemon learns when the far end runs dry
                    stream.talking = False
                    self._reach(stream, None, now)
                    continue
                self._send(stream, frame, now)
            else:
                if not stream.entries:
                    continue
                if stream.last_sent is not None and now - stream.last_sent < SLOTS:
                    continue  # keep at least a frame period between talkspurts' packets
                frame = self._next_frame(stream, now)
                if frame is None:
                    continue
                # The sampling clock ran through the silence since the last packet (which
                # already advanced it by one frame).
                elapsed = 0 if stream.last_sent is None else (now - stream.last_sent) * SLOT_SAMPLES
                stream.packetizer.silence(elapsed - FRAME_SAMPLES)
                stream.talking = True
                stream.slot = slot
                self._send(stream, frame, now)
                for _ in range(self.cushion):
                    extra = self._next_frame(stream, now)
                    if extra is None:
                        break
                    self._send(stream, extra, now)
            stream.last_sent = now
        self.subticks += 1

    def _stats(self) -> None:
        self.max_late_ms = max(self.max_late_ms, self.window_late_ms)
        self.emit(proto.Stats(self.window_late_ms, self.max_late_ms, self.stalls, self.send_errors, self.subticks))
        self.window_late_ms = 0.0

    def run(self) -> None:
        """Pace until the daemon closes the control socket."""
        clock = self.clock
        deadline = clock()
        next_stats = STATS_EVERY
        control = [self.control]
        while True:
            if self.streams:
                timeout: float | None = max(0.0, deadline - clock())
            else:
                timeout = None  # nothing to pace: sleep until the daemon says something
            readable, writable, _ = select.select(control, control if self.outgoing else (), (), timeout)
            if readable:
                had_streams = bool(self.streams)
                if not self._read_control():
                    return
                if not had_streams and self.streams:
                    deadline = clock()  # a new grid from now: an idle pacer is never "late"
            if writable:
                self.write_out()
            if not self.streams:
                continue
            now = clock()
            if now < deadline:
                continue
            self.window_late_ms = max(self.window_late_ms, (now - deadline) * 1000)
            self.tick()
            if self.subticks >= next_stats:
                self._stats()
                next_stats = self.subticks + STATS_EVERY
            if self.outgoing:
                self.write_out()  # marks go back at once, not after the next select
            deadline += self.sub_interval
            now = clock()
            if now - deadline > FRAME_INTERVAL:
                # Stalled past a whole frame period: resume on a new grid from now rather
                # than catch up, which would put several frames on the wire at once.
                missed = int((now - deadline) / self.sub_interval)
                self.stalls += missed // SLOTS
                self.subticks += missed
                deadline = now + self.sub_interval


def _played(stream_id: int, mark_id: str | None) -> proto.Message:
    return proto.Drained(stream_id) if mark_id is None else proto.MarkPlayed(stream_id, mark_id)


def set_realtime(priority: int) -> str:
    """Ask for SCHED_FIFO; returns why not ("" when obtained)."""
    if priority <= 0:
        return "disabled (priority 0)"
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (OSError, AttributeError) as exc:
        return f"{exc}; grant CAP_SYS_NICE (AmbientCapabilities=CAP_SYS_NICE) for real-time pacing"
    return ""


def _parse_args(argv: list[str]) -> dict[str, int]:
    # Not argparse: every import counts towards the pacer's start-up.
    options = {
        "--rtp-fd": -1,
        "--control-fd": -1,
        "--priority": 0,
        "--cushion": 0,
        "--xoff": XOFF_FRAMES,
        "--xon": XON_FRAMES,
    }
    it = iter(argv)
    for name in it:
        if name not in options:
            raise SystemExit(f"rtp_pacer: unknown option {name}")
        options[name] = int(next(it))
    if options["--rtp-fd"] < 0 or options["--control-fd"] < 0:
        raise SystemExit("rtp_pacer: --rtp-fd and --control-fd are required")
    return options


def main(argv: list[str] | None = None) -> int:
    options = _parse_args(sys.argv[1:] if argv is None else argv)
    # The pacer ends when the daemon closes the control socket, not on the terminal's ^C or
    # the service manager's SIGTERM to the whole group: the daemon still removes its streams
    # in order while it shuts down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    rtp = socket.socket(fileno=options["--rtp-fd"])
    control = socket.socket(fileno=options["--control-fd"])
    # Our own end of the socketpair (its own open file): non-blocking affects only us. The RTP
    # socket's file is shared with the daemon, which already made it non-blocking: left alone.
    control.setblocking(False)
    priority = options["--priority"]
    reason = set_realtime(priority)
    pacer = RtpPacer(
        rtp, control, cushion=options["--cushion"], xoff_frames=options["--xoff"], xon_frames=options["--xon"]
    )
    # Everything allocated so far lives as long as the process: out of the collector's sight,
    # so a full collection (rare, but it walks every tracked object) stays short.
    gc.freeze()
    pacer.emit(proto.Ready(not reason, priority if not reason else 0, reason))
    pacer.write_out()
    try:
        pacer.run()
    except proto.ProtocolError as exc:
        print(f"rtp_pacer: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
