"""Fixtures for tests that run the real daemon against the test Asterisk."""

from __future__ import annotations

import pytest_asyncio
from harness.daemon import Api, SpeakdProcess

TRANSPORTS = ("websocket", "rtp")


def pytest_collection_modifyitems(config, items):
    """What the media transport changes is what a party hears (and what /health and /metrics
    report of it): a test on the shared daemon runs on both transports when it is judged by ear
    or marked ``both_transports``, and on websocket (the default) otherwise. A test judged by ear
    of what sits above the media path (a say's queue, a lexicon, how text becomes says) is
    marked ``one_transport``: the flush, cut and timing it rests on are judged on both elsewhere."""
    keep, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_rtp = callspec is not None and callspec.params.get("speakd") == "rtp"
        per_transport = item.get_closest_marker("both_transports") or (
            item.get_closest_marker("by_ear") and not item.get_closest_marker("one_transport")
        )
        (dropped if on_rtp and not per_transport else keep).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


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
