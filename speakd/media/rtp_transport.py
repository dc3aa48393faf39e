"""The ``rtp`` transport: the daemon's side of the RTP pacer process.

:class:`PacerProcess` spawns and owns the pacer (:mod:`speakd.media.rtp_pacer`), one for all
sessions, handing it the daemon's bound RTP socket and one end of a control socketpair.
:class:`RtpTransport` is one session's stream in it, towards the ExternalMedia channel's
``UNICASTRTP_LOCAL_ADDRESS``/``PORT``.

Every call a session makes is one synchronous write to the control socket (an asyncio
``StreamWriter``, whose ``write`` never waits), so the pacer sees them in the order they were
made: a FLUSH drops at the pacer everything written before it, whether it was still in the
daemon's buffer, in the socket or in the pacer's queue.

If the pacer dies, every open transport's ``closed`` resolves with the reason, and the next
``start()`` spawns a new pacer. It is not respawned at once: the streams it carried are gone
(their queued audio and marks with them) and their sessions decide what to do, and a pacer
that cannot start is then reported to the session that needs it instead of crash-looping in
the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import structlog

from speakd.config import TransportKind
from speakd.media import pacer_protocol as proto
from speakd.media.rtp_pacer import FRAME_BYTES, MAX_CUSHION, XOFF_FRAMES, XON_FRAMES
from speakd.media.transport import MediaTransport, TransportError
from speakd.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

READY_TIMEOUT = 5.0  # a cold Python start is ~50 ms; this is for a host that is very busy
REMOVE_TIMEOUT = 1.0
EXIT_TIMEOUT = 2.0
AUDIO_CHUNK = 50 * FRAME_BYTES  # one AUDIO message carries at most 1 s
SOCKET_BUFFER = 1 << 20  # bytes: a few seconds of audio for all streams in flight to the pacer
LATE_REPORT_MS = 10.0
LATE_REPORT_EVERY = 10.0  # seconds between pacer_late log lines


class PacerProcess:
    """The pacer child and its control channel: ``async with PacerProcess(rtp_socket, ...) as pacer:``.

    ``rtp_socket`` stays the caller's (it is bound and closed by the daemon); the child gets a
    copy of its descriptor. ``realtime_priority`` is ``[rtp] realtime_priority`` (whose default
    is the one: none here).
    """

    def __init__(
        self,
        rtp_socket: socket.socket,
        *,
        realtime_priority: int,
        cushion_frames: int = 1,
        xoff_frames: int = XOFF_FRAMES,
        xon_frames: int = XON_FRAMES,
        on_stats: Callable[[proto.Stats], None] | None = None,
    ) -> None:
        if not 0 <= cushion_frames <= MAX_CUSHION:
            raise ValueError(f"cushion_frames must be 0..{MAX_CUSHION}, not {cushion_frames}")
        self.rtp_socket = rtp_socket
        self.realtime_priority = realtime_priority
        self.cushion_frames = cushion_frames
        self.xoff_frames = xoff_frames
        self.xon_frames = xon_frames
        # For /health, as reported by the pacer: SCHED_FIFO obtained, worst lateness of a
        # sub-tick (ms), frame periods skipped by stalls, sends that failed.
        self.realtime = False
        self.max_late_ms = 0.0
        self.stalls = 0
        self.send_errors = 0
        self.starts = 0
        self.on_stats = on_stats  # every report (about one a second while pacing), e.g. for metrics
        self._proc: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._streams: dict[int, RtpTransport] = {}
        self._removed: dict[int, asyncio.Future[None]] = {}
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()
        self._closing = False
        self._stats_base = (0.0, 0, 0)  # max late, stalls, errors of the pacers before this one
        self._last_late_log = 0.0

    @property
    def running(self) -> bool:
        return self._reader_task is not None and not self._reader_task.done()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def __aenter__(self) -> PacerProcess:
        await self.ensure_running()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def ensure_running(self) -> None:
        """Spawn the pacer unless it runs; raises :class:`TransportError` if it cannot start."""
        async with self._lock:
            if self._closing:
                raise TransportError("the RTP pacer is shutting down")
            if self.running:
                return
            await self._reap()
            await self._spawn()

    async def aclose(self) -> None:
        """Stop the pacer: it sends nothing once this returns. Open transports get ``closed``."""
        self._closing = True
        async with self._lock:
            await self._reap()
        self._lost("the RTP pacer was stopped")

    # -- the child ----------------------------------------------------------------------------

    async def _spawn(self) -> None:
        self._carry_stats()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for sock in (ours, theirs):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        rtp_fd = self.rtp_socket.fileno()
        args = [
            *("--rtp-fd", str(rtp_fd), "--control-fd", str(theirs.fileno())),
            *("--priority", str(self.realtime_priority), "--cushion", str(self.cushion_frames)),
            *("--xoff", str(self.xoff_frames), "--xon", str(self.xon_frames)),
        ]
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "speakd.media.rtp_pacer",
                *args,
                pass_fds=(rtp_fd, theirs.fileno()),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
        except OSError as exc:
            ours.close()
            raise TransportError(f"could not start the RTP pacer: {exc}") from None
        finally:
            theirs.close()  # the child's copy is the only one left: its exit is our end of file
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        self._proc, self._writer = proc, writer
        self._ready = asyncio.get_running_loop().create_future()
        self._reader_task = asyncio.create_task(self._read(reader, proc), name="speakd-rtp-pacer-read")
        self.starts += 1
        await asyncio.wait({self._ready, self._reader_task}, timeout=READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        if not self._ready.done():
            await self._reap()
            raise TransportError("the RTP pacer did not start")

    async def _reap(self) -> None:
        """End the current child (if any) and its reader task, and wait for both."""
        proc, writer, task = self._proc, self._writer, self._reader_task
        self._proc = self._writer = self._reader_task = None
        if writer is not None:
            writer.close()  # end of file: the pacer exits by itself
        if proc is not None:
            try:
                await asyncio.wait_for(proc.wait(), EXIT_TIMEOUT)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await cancel_and_wait(task)
        if writer is not None:
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _read(self, reader: asyncio.StreamReader, proc: asyncio.subprocess.Process) -> None:
        decoder = proto.Decoder()
        try:
            while data := await reader.read(65536):
                for message in decoder.feed(data):
                    self._dispatch(message)
        except ConnectionError:
            pass
        except proto.ProtocolError as exc:
            log.error("pacer_protocol_error", error=str(exc))
            proc.kill()
        code = await proc.wait()
        if proc is self._proc:  # not ended by _reap: it died on its own
            self._lost(f"the RTP pacer exited (code {code})")

    def _lost(self, reason: str) -> None:
        """The pacer is gone: every stream in it is too."""
        if self._streams and not self._closing:
            log.error("pacer_died", reason=reason, streams=len(self._streams))
        streams, self._streams = self._streams, {}
        for transport in streams.values():
            transport._far_end_closed(reason)
        removed, self._removed = self._removed, {}
        for waiter in removed.values():
            if not waiter.done():
                waiter.set_result(None)
        if self._writer is not None:
            self._writer.close()

    def _dispatch(self, message: proto.Message) -> None:
        match message:
            case proto.MarkPlayed(stream_id, mark_id):
                transport = self._streams.get(stream_id)
                if transport is not None:
                    transport._mark_played(mark_id)
            case proto.Drained(stream_id):
                if (transport := self._streams.get(stream_id)) is not None:
                    transport._drained()
            case proto.Removed(stream_id):
                waiter = self._removed.pop(stream_id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
            case proto.Xoff(stream_id):
                if (transport := self._streams.get(stream_id)) is not None:
                    transport.writable.clear()
            case proto.Xon(stream_id):
                if (transport := self._streams.get(stream_id)) is not None:
                    transport.writable.set()
            case proto.Stats():
                self._on_stats(message)
            case proto.Ready(realtime, priority, reason):
                self.realtime = realtime
                if realtime:
                    log.info("pacer_priority", policy="SCHED_FIFO", priority=priority, pid=self.pid)
                else:
                    log.warning("pacer_priority", policy="normal", reason=reason, pid=self.pid)
                if self._ready is not None and not self._ready.done():
                    self._ready.set_result(None)
            case _:
                log.warning("pacer_unexpected_message", message=type(message).__name__)

    def _on_stats(self, stats: proto.Stats) -> None:
        if self.on_stats is not None:
            self.on_stats(stats)
        base_late, base_stalls, base_errors = self._stats_base
        stalls = base_stalls + stats.stalls
        if stalls > self.stalls:
            log.warning("pacer_stalled", stalls=stalls, window_max_late_ms=round(stats.window_max_late_ms, 1))
        self.stalls = stalls
        self.send_errors = base_errors + stats.send_errors
        self.max_late_ms = max(base_late, stats.max_late_ms)
        now = time.monotonic()
        if stats.window_max_late_ms >= LATE_REPORT_MS and now - self._last_late_log >= LATE_REPORT_EVERY:
            self._last_late_log = now
            log.info("pacer_late", max_late_ms=round(stats.window_max_late_ms, 1), streams=len(self._streams))

    # -- for RtpTransport -----------------------------------------------------------------------

    def _write(self, message: proto.Message) -> None:
        writer = self._writer
        if writer is not None and not writer.is_closing():
            writer.write(proto.encode(message))

    def _add(self, transport: RtpTransport, host: str, port: int, payload_type: int) -> int:
        if not self.running:
            raise TransportError("the RTP pacer is not running")
        stream_id = next(self._ids)
        self._streams[stream_id] = transport
        self._write(proto.Add(stream_id, host, port, payload_type))
        return stream_id

    def _owns(self, stream_id: int, transport: RtpTransport) -> bool:
        return self._streams.get(stream_id) is transport

    async def _remove(self, stream_id: int) -> None:
        if self._streams.pop(stream_id, None) is None:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._removed[stream_id] = waiter
        self._write(proto.Remove(stream_id))
        try:
            await asyncio.wait_for(waiter, REMOVE_TIMEOUT)
        except TimeoutError:
            self._removed.pop(stream_id, None)
            log.warning("pacer_remove_timeout", stream_id=stream_id, timeout_s=REMOVE_TIMEOUT)

    def _carry_stats(self) -> None:
        # A new pacer counts from zero; /health keeps counting across restarts.
        self._stats_base = (self.max_late_ms, self.stalls, self.send_errors)


class RtpTransport(MediaTransport):
    """One session's RTP stream in the shared pacer process."""

    kind = TransportKind.RTP

    def __init__(
        self,
        pacer: PacerProcess,
        destination: tuple[str, int],
        payload_type: int,
        log_context: dict[str, str] | None = None,
    ) -> None:
        """``destination``: the ExternalMedia channel's UNICASTRTP_LOCAL_ADDRESS and _PORT."""
        super().__init__()
        self.pacer = pacer
        self.destination = destination
        self.payload_type = payload_type
        self._stream_id: int | None = None
        self._log = log.bind(**(log_context or {}))

    async def start(self) -> None:
        host, port = self.destination
        try:
            # An address, never a name: the pacer would resolve it on every packet.
            ipaddress.ip_address(host)
        except ValueError:
            raise TransportError(f"the RTP destination must be an IP address, not {host!r}") from None
        if not 0 < port < 65536 or not 0 <= self.payload_type <= 127:
            raise TransportError(f"bad RTP destination port {port} or payload type {self.payload_type}")
        if self._stream_id is not None:
            raise RuntimeError("RtpTransport.start() called twice")
        await self.pacer.ensure_running()
        self._stream_id = self.pacer._add(self, host, port, self.payload_type)

    def _live(self) -> bool:
        return self._stream_id is not None and self.pacer._owns(self._stream_id, self)

    def send_audio(self, data: bytes) -> None:
        if len(data) % FRAME_BYTES:
            raise ValueError(f"audio must be whole {FRAME_BYTES}-byte frames, got {len(data)} bytes")
        if not self._live():
            return  # closed, or the pacer died (``closed`` says so)
        assert self._stream_id is not None
        for start in range(0, len(data), AUDIO_CHUNK):
            self.pacer._write(proto.Audio(self._stream_id, data[start : start + AUDIO_CHUNK]))

    def mark(self, mark_id: str) -> None:
        if self._live():
            assert self._stream_id is not None
            self.pacer._write(proto.Mark(self._stream_id, mark_id))

    def flush(self) -> None:
        if self._live():
            assert self._stream_id is not None
            self.pacer._write(proto.Flush(self._stream_id))
            self.writable.set()  # the pacer's queue is empty now (its XON may still be on its way)

    async def aclose(self) -> None:
        """Remove the stream; once this returns the pacer sends none of its packets."""
        if self._stream_id is not None:
            await self.pacer._remove(self._stream_id)

    def _mark_played(self, mark_id: str) -> None:
        try:
            self.on_mark(mark_id)
        except Exception:  # one session's callback must not stop the pacer's reader
            self._log.exception("on_mark_failed", mark_id=mark_id)

    def _drained(self) -> None:
        try:
            self.on_drained()
        except Exception:
            self._log.exception("on_drained_failed")
