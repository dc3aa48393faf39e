"""A TCP proxy between speakd and Asterisk's HTTP server, to break connections on purpose.

speakd is pointed at the proxy as its ARI URL; REST, the events WebSocket and the media
WebSockets (``GET /media/<id>``) all pass through it. ``cut("/media/")`` aborts every
connection on which a request for that path was made (connections are kept alive and
reused), both ways, like a network failure.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class _Link:
    paths: list[str]
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    def saw(self, data: bytes) -> None:
        """Note the request lines in client data (keep-alive: one connection, many requests)."""
        for line in data.split(b"\r\n"):
            parts = line.split(b" ")
            if len(parts) == 3 and parts[2].startswith(b"HTTP/") and parts[1].startswith(b"/"):
                self.paths.append(parts[1].decode(errors="replace"))


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: list[_Link] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for link in self._links:
            _abort(link)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def cut(self, path_prefix: str) -> int:
        """Abort every open connection whose request path starts with ``path_prefix``."""
        cut = [link for link in self._links if any(p.startswith(path_prefix) for p in link.paths)]
        for link in cut:
            _abort(link)
            self._links.remove(link)
        return len(cut)

    def open_paths(self) -> list[str]:
        return [p for link in self._links for p in link.paths]

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            first_line = await client_reader.readline()
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except (OSError, asyncio.IncompleteReadError):
            client_writer.close()
            return
        link = _Link([], [client_writer, upstream_writer])
        link.saw(first_line)
        self._links.append(link)
        upstream_writer.write(first_line)
        for source, sink, sniff in ((client_reader, upstream_writer, link.saw), (upstream_reader, client_writer, None)):
            task = asyncio.create_task(_pump(source, sink, sniff))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


async def _pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sniff: Callable[[bytes], None] | None
) -> None:
    with contextlib.suppress(OSError, asyncio.CancelledError):
        while data := await reader.read(65536):
            if sniff is not None:
                sniff(data)
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError, RuntimeError):
        writer.close()


def _abort(link: _Link) -> None:
    for writer in link.writers:
        transport = writer.transport
        if not transport.is_closing():
            transport.abort()
