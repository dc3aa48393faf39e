"""What every stand-in shares: its own thread and loop, request records, failure on command,
and the streaming events tests assert on (ordering, not wall-clock)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

# "empty": a success with no audio (the ElevenLabs stand-in's HTTP stream).
FailMode = Literal["unauthorized", "forbidden", "server_error", "hang", "cut", "empty"]
FAIL_MODES = ("unauthorized", "forbidden", "server_error", "hang", "cut", "empty")
HANG_LIMIT = 30.0  # seconds a "hang" waits for the client to give up before ending anyway


@dataclass
class Recorded:
    """One request a stand-in received."""

    kind: str  # "synthesize" | "stream" | "list_voices"
    path: str = ""
    voice: str = ""
    language: str = ""
    format: str = ""
    sample_rate: int = 0
    ssml: bool = False
    text: str = ""
    model: str = ""
    engine: str = ""
    auth: str = ""
    query: dict[str, str] = field(default_factory=dict)
    body: Any = None


class ClientGone(Exception):
    """The client closed the connection while the stand-in was waiting."""


class Standin:
    """Base: subclasses implement :meth:`_start_server` / :meth:`_stop_server`."""

    def __init__(self, *, chunk_bytes: int = 1600, chunk_delay: float = 0.02, cut_after: int = 2) -> None:
        self.chunk_bytes = chunk_bytes
        self.chunk_delay = chunk_delay
        self.cut_after = cut_after
        self.gain_db = 0.0  # its voices this much louder than the stand-ins' shared rendering
        self.requests: list[Recorded] = []
        self.events: list[str] = []
        """``request``, ``first_chunk``, ``finished``, ``client_closed``, ``cut``, ``failed:<mode>``."""
        self.first_chunk_sent = threading.Event()
        self.finished = threading.Event()
        self.client_closed = threading.Event()
        self._fails: list[str] = []
        self._hold: threading.Event | None = None
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.host = "127.0.0.1"
        self.port = 0

    # -- what tests use ----------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def fail_next(self, mode: FailMode, count: int = 1) -> None:
        """Fail the next ``count`` synthesis requests with ``mode``."""
        if mode not in FAIL_MODES:
            raise ValueError(f"unknown fail mode {mode!r}; one of {FAIL_MODES}")
        with self._lock:
            self._fails.extend([mode] * count)

    def hold_after_first_chunk(self) -> None:
        """Streams stop after their first chunk until :meth:`release` (or the client leaves)."""
        self._hold = threading.Event()

    def release(self) -> None:
        if self._hold is not None:
            self._hold.set()

    def synth_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.kind in ("synthesize", "stream")]

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Standin:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._start_server())
            except BaseException as exc:
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._stop_server())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"standin-{type(self).__name__}", daemon=True)
        self._thread.start()
        ready.wait(30)
        if errors:
            raise errors[0]
        return self

    def close(self) -> None:
        self.release()
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop = None

    def __enter__(self) -> Standin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def _start_server(self) -> None:
        raise NotImplementedError

    async def _stop_server(self) -> None:
        raise NotImplementedError

    # -- helpers for subclasses --------------------------------------------------------------

    def _record(self, rec: Recorded) -> str | None:
        """Record a request; return the failure mode to apply to it, if any."""
        with self._lock:
            self.requests.append(rec)
            self.events.append("request")
            mode = self._fails.pop(0) if self._fails and rec.kind != "list_voices" else None
        if mode:
            self.events.append(f"failed:{mode}")
        return mode

    async def _wait(self, is_gone: Callable[[], bool], until: threading.Event | None, limit: float) -> None:
        """Wait until ``until`` is set, the client leaves (ClientGone) or ``limit`` passes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while until is None or not until.is_set():
            if is_gone():
                self._closed()
                raise ClientGone
            if loop.time() > deadline:
                return
            await asyncio.sleep(0.01)

    def _closed(self) -> None:
        if not self.client_closed.is_set():
            self.events.append("client_closed")
            self.client_closed.set()

    async def _stream(
        self,
        parts: list[bytes],
        send: Callable[[bytes], Awaitable[None]],
        is_gone: Callable[[], bool],
        mode: str | None,
    ) -> bool:
        """Send ``parts`` with the configured delay, honouring hold and cut; False if cut."""
        for index, part in enumerate(parts):
            if mode == "cut" and index >= self.cut_after:
                self.events.append("cut")
                return False
            if index and self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
            if is_gone():
                self._closed()
                raise ClientGone
            if index == 0:  # marked before sending: the client may see it before we resume
                self.events.append("first_chunk")
                self.first_chunk_sent.set()
            await send(part)
            if index == 0 and self._hold is not None:
                await self._wait(is_gone, self._hold, HANG_LIMIT)
        self.events.append("finished")
        self.finished.set()
        return True


class Blackhole:
    """A port where TCP connects hang: a listener whose accept queue is full and never drained.

    Linux drops further SYNs, so a client's connect times out — a real connect timeout.
    """

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(0)
        self.host, self.port = self._listener.getsockname()
        self._fillers: list[socket.socket] = []
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect((self.host, self.port))
            self._fillers.append(s)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def close(self) -> None:
        for s in self._fillers:
            s.close()
        self._listener.close()
