"""Media channels made, connected and removed by many clients at once, through speakd's own
code: the make of a session's set-up (``create_external_media``: the externalMedia POST and
MediaPaths.open), and a session's teardown's removal in the gate it holds
(tests/integration/test_chan_websocket_race.py, bench/chan_websocket_race.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from speakd.ari.client import AriClient
from speakd.ari.events import EventWaiters
from speakd.media.transport import MediaTransport
from speakd.sessions.media import MediaPaths
from speakd.sessions.targets import AttachContext, create_external_media, hang_up_and_wait

STEP_TIMEOUT = 5.0  # a step this slow found chan_websocket's table locked for good


class NoGate:
    """What speakd did before speakd.media.channel_gate: connects, makes and removals at will."""

    def connecting(self) -> contextlib.AbstractAsyncContextManager[None]:
        return contextlib.nullcontext()

    changing = connecting


@dataclass
class MediaOnly:
    """What ``create_external_media`` uses of a session's target."""

    session_id: str
    transport: MediaTransport | None = None


async def make_connect_remove(ctx: AttachContext) -> None:
    """What a session does with its media channel, from set-up to teardown."""
    channel_id = f"{ctx.app}-{uuid.uuid4().hex[:12]}-media"
    target = MediaOnly(channel_id)
    await create_external_media(ctx, target, channel_id)  # type: ignore[arg-type]
    assert target.transport is not None
    async with ctx.media.changing():  # as SpeakingService's teardown holds it
        await target.transport.aclose()  # which hangs the channel up too, as the DELETE does
        await hang_up_and_wait(ctx, channel_id, "media channel")


@contextlib.asynccontextmanager
async def websocket_media(url: str, user: str, password: str) -> AsyncIterator[AttachContext]:
    """An ARI app of its own (its events read) and websocket MediaPaths on it."""
    app = f"speakd-race-{uuid.uuid4().hex[:6]}"
    waiters = EventWaiters()
    async with AriClient(url, user, password, app) as ari:
        events = asyncio.create_task(ari.run_events(waiters.resolve))
        try:
            await asyncio.wait_for(ari.connected.wait(), 10)
            async with MediaPaths(
                ari,
                mode="websocket",
                codec="slin16",
                rtp_bind=("127.0.0.1", 0),
                rtp_external_host="",
                realtime_priority=0,
            ) as media:
                yield AttachContext(ari, waiters, app, media)
        finally:
            events.cancel()
            await asyncio.gather(events, return_exceptions=True)


async def run_clients(
    ctx: AttachContext, clients: int, seconds: float, on_done: Callable[[], None] = lambda: None
) -> int:
    """``clients`` loops of :func:`make_connect_remove` for ``seconds``: how many were done
    (``on_done`` is told of each). Raises TimeoutError as soon as one step takes over STEP_TIMEOUT."""
    done = 0
    until = time.monotonic() + seconds

    async def client() -> None:
        nonlocal done
        while time.monotonic() < until:
            await asyncio.wait_for(make_connect_remove(ctx), STEP_TIMEOUT)
            done += 1
            on_done()

    async with asyncio.TaskGroup() as group:
        for _ in range(clients):
            group.create_task(client())
    return done
