"""Fixtures for tests that run the real daemon against the test Asterisk."""

from __future__ import annotations

import pytest_asyncio
from harness.daemon import Api, SpeakdProcess

TRANSPORTS = ("websocket", "rtp")


@pytest_asyncio.fixture(scope="session", loop_scope="session", params=TRANSPORTS)
async def speakd(request, ari_settings, tmp_path_factory):
    """One daemon per media transport, shared by the tests that do not restart it: every
    test using it runs on both transports."""
    daemon = SpeakdProcess(
        tmp_path_factory.mktemp("speakd"),
        ari_settings["url"],
        ari_settings["user"],
        ari_settings["password"],
        transport=request.param,
    )
    await daemon.start()
    yield daemon
    await daemon.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def api(speakd):
    client = Api(speakd.base)
    yield client
    await client.close()


async def leftovers(ari, app: str) -> list[str]:
    """Every channel or bridge of this daemon's app still in Asterisk."""
    channels = [c["id"] for c in await ari.get("/channels")]
    bridges = [b["id"] for b in await ari.get("/bridges")]
    return [i for i in channels + bridges if i.startswith(f"{app}-")]
