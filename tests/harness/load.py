"""Load for tests that must hold up on a busy host: CPU-burning processes and polling clients."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass


@contextlib.contextmanager
def busy_loops(n: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """`n` processes spinning `while True: pass` at normal priority; always killed on exit."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(n):
            procs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


def assert_still_busy(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """The load really lasted: every busy loop is still running."""
    ended = [proc.pid for proc in procs if proc.poll() is not None]
    assert not ended, f"busy-loop processes {ended} ended early: the load did not last"


@dataclass
class PollStats:
    requests: int = 0
    failures: int = 0


@contextlib.asynccontextmanager
async def polling(
    get: Callable[[str], Awaitable[object]], ids: Sequence[str], tasks: int = 3, interval: float = 0.075
) -> AsyncIterator[PollStats]:
    """Clients polling: `tasks` asyncio tasks share `ids` and each GETs its share every
    `interval` seconds until the block ends. Failed requests are counted, not raised."""
    stats = PollStats()

    async def poll(share: Sequence[str]) -> None:
        while True:
            for item in share:
                try:
                    await get(item)
                except Exception:
                    stats.failures += 1
                stats.requests += 1
            await asyncio.sleep(interval)

    shares = [ids[i::tasks] for i in range(tasks)]
    running = [asyncio.create_task(poll(share), name=f"poller-{i}") for i, share in enumerate(shares) if share]
    try:
        yield stats
    finally:
        for task in running:
            task.cancel()
        for task in running:
            with contextlib.suppress(asyncio.CancelledError):
                await task
