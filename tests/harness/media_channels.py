"""Media channels made, connected and removed by many clients at once, through speakd's own
MediaPaths and AriClient (tests/integration/test_chan_websocket_race.py, bench/chan_websocket_race.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

from speakd.ari.client import AriClient
from speakd.ari.errors import AriNotFound
from speakd.sessions.media import MediaPaths

STEP_TIMEOUT = 5.0  # a step this slow found chan_websocket's table locked for good


class NoGate:
    """What speakd did before speakd.media.channel_gate: connects, makes and removals at will."""

    def connecting(self) -> contextlib.AbstractAsyncContextManager[None]:
        return contextlib.nullcontext()

    changing = connecting


async def make_connect_remove(ari: AriClient, media: MediaPaths, app: str) -> None:
    """What a session does with its media channel, in the gate speakd takes for each step."""
    channel_id = f"{app}-{uuid.uuid4().hex[:12]}-media"
    async with media.changing():
        channel = await ari.post(
            "channels/externalMedia", app=app, channelId=channel_id, **media.external_media_params()
        )
    transport = await media.open(channel)
    async with media.changing():
        await transport.aclose()  # which hangs the channel up too, as the DELETE does
        with contextlib.suppress(AriNotFound):
            await ari.delete(f"channels/{channel_id}")
        while True:
            try:
                await ari.get(f"channels/{channel_id}")
            except AriNotFound:
                break
            await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def websocket_media(url: str, user: str, password: str) -> AsyncIterator[tuple[AriClient, MediaPaths, str]]:
    """An ARI app of its own (its events read) and websocket MediaPaths on it."""
    app = f"speakd-race-{uuid.uuid4().hex[:6]}"
    async with AriClient(url, user, password, app) as ari:
        events = asyncio.create_task(ari.run_events(lambda _event: None))
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
                yield ari, media, app
        finally:
            events.cancel()
            await asyncio.gather(events, return_exceptions=True)


async def run_clients(ari: AriClient, media: MediaPaths, app: str, clients: int, seconds: float) -> int:
    """``clients`` loops of :func:`make_connect_remove` for ``seconds``: how many were done.
    Raises TimeoutError as soon as one step takes over STEP_TIMEOUT."""
    done = 0
    until = time.monotonic() + seconds

    async def client() -> None:
        nonlocal done
        while time.monotonic() < until:
            await asyncio.wait_for(make_connect_remove(ari, media, app), STEP_TIMEOUT)
            done += 1

    async with asyncio.TaskGroup() as group:
        for _ in range(clients):
            group.create_task(client())
    return done
