"""Local far ends for the capacity bench, each a process of its own (its CPU is not speakd's).

    python bench/sinks.py ws    # chan_websocket's media protocol, consumed at 50 frames/s
    python bench/sinks.py rtp   # a UDP socket that stamps every RTP packet on arrival

Each prints one JSON line when ready (``{"http": port, "media": port}``) and serves
``GET /stats`` (JSON) and ``POST /reset`` on the HTTP port until its stdin closes.

``ws`` speaks chan_websocket as speakd expects it: accepts the ``media`` subprotocol on
``/media/<connection id>``, sends ``MEDIA_START connection_id:… channel:… format:ulaw
optimal_frame_size:160 ptime:20`` first, queues binary audio (re-framed to 160 bytes), plays
one frame per connection per 20 ms on absolute deadlines (a late tick plays the frames it
owes, like a timer catching up), answers ``MARK_MEDIA correlation_id:x`` with
``MEDIA_MARK_PROCESSED correlation_id:x`` when playout reaches it, drops the queue (and the
marks in it) on ``FLUSH_MEDIA``, and sends ``MEDIA_XOFF``/``MEDIA_XON`` at 900/800 frames.
A tick at which a connection that has started playing finds its queue empty is an underrun
(its wall time is reported; the bench ignores those after the audio's natural end).

``rtp`` reads with ``SO_TIMESTAMPNS`` (kernel arrival time) and keeps, per SSRC, the packet
count, first/last arrival, sequence gaps and every inter-arrival gap over 30 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import sys
import time
from collections import deque
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

FRAME_BYTES = 160
FRAME_S = 0.020
XOFF, XON = 900, 800
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
GAP_S = 0.030


# -- chan_websocket -------------------------------------------------------------------------


@dataclass
class Connection:
    connection_id: str
    ws: web.WebSocketResponse
    queue: deque[bytes | str] = field(default_factory=deque)  # bytes = a frame, str = a mark id
    frames: int = 0
    partial: bytes = b""
    played: int = 0
    first_play: float | None = None
    last_play: float | None = None
    underruns: list[float] = field(default_factory=list)
    marks_answered: int = 0
    flushes: int = 0
    xoff: bool = False
    outgoing: list[str] = field(default_factory=list)


class WebSocketSink:
    def __init__(self) -> None:
        self.connections: dict[str, Connection] = {}
        self.closed: list[Connection] = []
        self.max_late_s = 0.0
        self.ticks = 0

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("media",), max_msg_size=1 << 20)
        await ws.prepare(request)
        cid = request.match_info["cid"]
        conn = Connection(cid, ws)
        self.connections[cid] = conn
        await ws.send_str(
            f"MEDIA_START connection_id:{cid} channel:WebSocket/INCOMING/{cid} format:ulaw "
            f"optimal_frame_size:{FRAME_BYTES} ptime:20"
        )
        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    data = conn.partial + msg.data
                    whole = len(data) - len(data) % FRAME_BYTES
                    conn.partial = data[whole:]
                    for i in range(0, whole, FRAME_BYTES):
                        conn.queue.append(data[i : i + FRAME_BYTES])
                    conn.frames += whole // FRAME_BYTES
                    if conn.frames >= XOFF and not conn.xoff:
                        conn.xoff = True
                        conn.outgoing.append("MEDIA_XOFF")
                elif msg.type == WSMsgType.TEXT:
                    command, _, rest = msg.data.strip().partition(" ")
                    if command == "MARK_MEDIA":
                        conn.queue.append(rest.partition("correlation_id:")[2].split(" ")[0])
                    elif command == "FLUSH_MEDIA":
                        conn.queue.clear()
                        conn.frames = 0
                        conn.partial = b""
                        conn.flushes += 1
        finally:
            self.connections.pop(cid, None)
            self.closed.append(conn)
        return ws

    def _play(self, conn: Connection, now: float) -> None:
        queue = conn.queue
        while queue and isinstance(queue[0], str):
            conn.outgoing.append(f"MEDIA_MARK_PROCESSED correlation_id:{queue.popleft()}")
            conn.marks_answered += 1
        if not queue:
            if conn.first_play is not None:
                conn.underruns.append(now)
            return
        queue.popleft()
        conn.frames -= 1
        conn.played += 1
        if conn.first_play is None:
            conn.first_play = now
        conn.last_play = now
        # The marks right behind this frame are processed once it has played.
        while queue and isinstance(queue[0], str):
            conn.outgoing.append(f"MEDIA_MARK_PROCESSED correlation_id:{queue.popleft()}")
            conn.marks_answered += 1
        if conn.xoff and conn.frames <= XON:
            conn.xoff = False
            conn.outgoing.append("MEDIA_XON")

    async def run(self) -> None:
        start = time.monotonic()
        done = 0
        while True:
            due = int((time.monotonic() - start) / FRAME_S) + 1
            target = start + due * FRAME_S
            await asyncio.sleep(max(0.0, target - time.monotonic()))
            late = time.monotonic() - target
            self.max_late_s = max(self.max_late_s, late)
            owed = int((time.monotonic() - start) / FRAME_S) - done
            now = time.time()
            for _ in range(owed):
                for conn in list(self.connections.values()):
                    self._play(conn, now)
            done += max(0, owed)
            self.ticks += 1
            for conn in list(self.connections.values()):
                if conn.outgoing:
                    messages, conn.outgoing = conn.outgoing, []
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        for text in messages:
                            await conn.ws.send_str(text)

    def stats(self) -> dict:
        conns = [*self.connections.values(), *self.closed]
        return {
            "max_late_ms": round(self.max_late_s * 1000, 1),
            "connections": [
                {
                    "id": c.connection_id,
                    "played": c.played,
                    "first_play": c.first_play,
                    "last_play": c.last_play,
                    "underruns": c.underruns,
                    "marks": c.marks_answered,
                    "flushes": c.flushes,
                }
                for c in conns
            ],
        }

    def reset(self) -> None:
        self.closed.clear()
        self.max_late_s = 0.0


# -- RTP ------------------------------------------------------------------------------------


@dataclass
class Stream:
    packets: int = 0
    first: float = 0.0
    last: float = 0.0
    last_seq: int = -1
    seq_gaps: int = 0
    # (arrival, gap s, packets missing by sequence number) for every gap over GAP_S: a gap with
    # none missing is the sender's (late, or nothing to send); missing ones were lost here.
    gaps: list[tuple[float, float, int]] = field(default_factory=list)


class RtpSink:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.streams: dict[int, Stream] = {}

    def on_readable(self) -> None:
        while True:
            try:
                data, ancdata, _flags, _addr = self.sock.recvmsg(2048, 64)
            except (BlockingIOError, InterruptedError):
                return
            at = time.time()
            for level, kind, value in ancdata:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                    sec, nsec = struct.unpack("qq", value[:16])
                    at = sec + nsec / 1e9
            if len(data) < 12:
                continue
            seq, ssrc = struct.unpack("!H", data[2:4])[0], struct.unpack("!I", data[8:12])[0]
            stream = self.streams.get(ssrc)
            if stream is None:
                stream = self.streams[ssrc] = Stream(first=at)
            else:
                missing = (seq - stream.last_seq - 1) & 0xFFFF
                if at - stream.last > GAP_S:
                    stream.gaps.append((at, at - stream.last, missing))
                if missing:
                    stream.seq_gaps += 1
            stream.packets += 1
            stream.last = at
            stream.last_seq = seq

    def stats(self) -> dict:
        return {
            "streams": [
                {
                    "ssrc": ssrc,
                    "packets": s.packets,
                    "first": s.first,
                    "last": s.last,
                    "seq_gaps": s.seq_gaps,
                    "gaps": s.gaps,
                }
                for ssrc, s in self.streams.items()
            ]
        }

    def reset(self) -> None:
        self.streams.clear()


# -- process --------------------------------------------------------------------------------


async def _stdin_closed() -> None:
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.buffer.read)


async def main(kind: str) -> None:
    app = web.Application()
    ready: dict[str, int] = {}
    background: list[asyncio.Task] = []
    if kind == "ws":
        sink = WebSocketSink()
        app.router.add_get("/media/{cid}", sink.handle)
        background.append(asyncio.create_task(sink.run()))
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        sink = RtpSink(sock)  # type: ignore[assignment]
        asyncio.get_running_loop().add_reader(sock.fileno(), sink.on_readable)  # type: ignore[attr-defined]
        ready["media"] = sock.getsockname()[1]

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response(sink.stats())

    async def reset(_request: web.Request) -> web.Response:
        sink.reset()
        return web.json_response({})

    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", reset)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    ready["http"] = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    ready.setdefault("media", ready["http"])
    print(json.dumps(ready), flush=True)
    try:
        await _stdin_closed()
    finally:
        for task in background:
            task.cancel()
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "ws"))
