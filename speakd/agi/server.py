"""The FastAGI listener: one task per connection, owned here; the protocol is speakd.agi.protocol.

Reads are bounded (a line is at most ``MAX_LINE_BYTES``, the environment ``MAX_ENV_LINES`` lines
and must arrive within ``env_timeout``; a command's answer within ``command_timeout``), and so is
the number of connections. ``aclose`` stops listening, lets running scripts finish for a grace
period (their says end when the sessions stop), then cancels and awaits what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from speakd.agi.protocol import (
    HANGUP_LINE,
    MAX_LINE_BYTES,
    AgiEnvironment,
    AgiProtocolError,
    AgiResponse,
    EnvironmentParser,
    ResponseParser,
)
from speakd.tasks import cancel_and_wait

log = structlog.get_logger(__name__)
T = TypeVar("T")

Handler = Callable[[AgiEnvironment, "AgiConnection"], Awaitable[None]]


class ConnectionClosed(Exception):
    """Asterisk closed the connection (or the channel's AGI ended)."""


class AgiConnection:
    """One FastAGI connection, used by one script at a time."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, command_timeout: float = 10.0
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.command_timeout = command_timeout
        self.hung_up = False  # Asterisk said HANGUP: the channel is gone, only "dead" commands work

    async def _readline(self) -> str:
        try:
            raw = await self._reader.readline()
        except ValueError:  # the stream's limit: a line longer than MAX_LINE_BYTES
            raise AgiProtocolError(f"line longer than {MAX_LINE_BYTES} bytes") from None
        if not raw.endswith(b"\n"):
            raise ConnectionClosed("Asterisk closed the AGI connection")
        return raw.decode("utf-8", "replace")

    async def read_environment(self) -> AgiEnvironment:
        parser = EnvironmentParser()
        while (env := parser.feed(await self._readline())) is None:
            pass
        return env

    async def command(self, line: str) -> AgiResponse:
        """Send one command line (speakd.agi.protocol formats it) and read its answer."""
        self._writer.write(line.encode())
        parser = ResponseParser()
        async with asyncio.timeout(self.command_timeout):
            await self._writer.drain()
            while (response := parser.feed(await self._readline())) is None:
                pass
        if parser.hung_up:
            self.hung_up = True
        return response

    async def until_hangup(self, fut: asyncio.Future[T]) -> T | None:
        """``fut``'s result, or None if the channel hangs up first (``fut`` is then cancelled).
        No command may be sent meanwhile: this reads the connection."""
        hangup = asyncio.ensure_future(self._wait_hangup()) if not self.hung_up else None
        try:
            waiting = {fut} | ({hangup} if hangup else set())
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if fut.done():
                return fut.result()
            if hangup is not None:
                hangup.result()  # raises ConnectionClosed if that is what ended the wait
            return None
        finally:
            await cancel_and_wait(fut, hangup)

    async def _wait_hangup(self) -> None:
        while True:
            line = (await self._readline()).rstrip("\r\n")
            if line == HANGUP_LINE:
                self.hung_up = True
                return
            log.warning("agi_unexpected_line", line=line[:80])


class AgiServer:
    def __init__(
        self,
        host: str,
        port: int,
        handler: Handler,
        *,
        env_timeout: float = 10.0,
        command_timeout: float = 10.0,
        max_connections: int = 500,
    ) -> None:
        self.host = host
        self.port = port
        self.handler = handler
        self.env_timeout = env_timeout
        self.command_timeout = command_timeout
        self.max_connections = max_connections
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def bound_port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the AGI server is not listening")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port, limit=MAX_LINE_BYTES)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._tasks) >= self.max_connections:
            log.warning("agi_connection_refused", reason=f"{self.max_connections} connections already open")
            writer.close()
            return
        task = asyncio.create_task(self._serve(reader, writer), name="speakd-agi-connection")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = AgiConnection(reader, writer, command_timeout=self.command_timeout)
        peer = writer.get_extra_info("peername")
        try:
            async with asyncio.timeout(self.env_timeout):
                env = await conn.read_environment()
            with structlog.contextvars.bound_contextvars(agi_script=env.script, channel=env.channel):
                log.info("agi_request", channel_id=env.channel_id, args=len(env.args))
                await self.handler(env, conn)
        except (AgiProtocolError, ConnectionClosed, TimeoutError, OSError) as exc:
            log.warning("agi_connection_failed", peer=str(peer), error=str(exc) or type(exc).__name__)
        except Exception:
            log.exception("agi_script_crashed", peer=str(peer))
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await writer.wait_closed()

    def stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()

    async def aclose(self, grace: float = 2.0) -> None:
        """Stop listening; scripts still running get ``grace`` seconds, then are cancelled."""
        self.stop_listening()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)
        await cancel_and_wait(*self._tasks)
        if self._server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self._server.wait_closed()
