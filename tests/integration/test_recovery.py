"""The daemon dies or restarts: no record is lost, no Asterisk object is left behind."""

from __future__ import annotations

import asyncio

import pytest
from conftest import leftovers
from conftest_helpers import wait_for
from harness.daemon import Api, SpeakdProcess

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_kill9_mid_session_then_restart(ari_settings, ari, make_two_party_call, tmp_path):
    daemon = SpeakdProcess(tmp_path, ari_settings["url"], ari_settings["user"], ari_settings["password"])
    await daemon.start()
    api = Api(daemon.base)
    try:
        call = await make_two_party_call()
        speaking_id = await api.start_session(call.channel_id, direction="out")
        assert (await api.say(speaking_id, "This sentence is cut off when the daemon is killed.")).status == 200
        await asyncio.sleep(0.5)
        assert await leftovers(ari, daemon.app), "the session should own a snoop, a media channel and a bridge"

        daemon.kill9()
        await daemon.start()  # same config, same database, same ARI app

        record = await api.get(speaking_id)
        assert record.status == 200
        assert record.body["status"] == "stopped"
        assert record.body["tm_update"] > record.body["tm_create"]
        assert await leftovers(ari, daemon.app) == []
        # The call itself is untouched, and a new session can attach to it.
        assert (await ari.get(f"/channels/{call.channel_id}"))["state"] == "Up"
        again = await api.start_session(call.channel_id)
        await api.stop(again)
    finally:
        await api.close()
        await daemon.stop()


async def test_sigterm_stops_live_sessions_and_removes_their_objects(ari_settings, ari, make_two_party_call, tmp_path):
    daemon = SpeakdProcess(tmp_path, ari_settings["url"], ari_settings["user"], ari_settings["password"])
    await daemon.start()
    api = Api(daemon.base)
    try:
        call = await make_two_party_call()
        speaking_id = await api.start_session(call.channel_id)
        await api.say(speaking_id, "Still speaking when the daemon is asked to stop.")
        await api.say(speaking_id, "This one was still queued.")
        assert await daemon.stop() == 0
        assert await leftovers(ari, daemon.app) == []
        assert '"session_stopped"' in daemon.log_text() and "daemon shutdown" in daemon.log_text()
        await daemon.start()
        assert (await api.get(speaking_id)).body["status"] == "stopped"
    finally:
        await api.close()
        await daemon.stop()


async def test_orphans_of_a_dead_daemon_are_removed_on_connect(ari_settings, ari, harness_app, tmp_path):
    """Objects carrying the app's prefix but no record (e.g. a crash mid-setup) are removed too."""
    daemon = SpeakdProcess(tmp_path, ari_settings["url"], ari_settings["user"], ari_settings["password"])
    orphan = f"{daemon.app}-00000000-0000-0000-0000-000000000000-bridge"
    await ari.post("/bridges", type="mixing", bridgeId=orphan)
    try:
        await daemon.start()
        await wait_for(lambda: _gone(ari, orphan), timeout=5, what="the orphan bridge to be removed")
    finally:
        await ari.delete_quietly(f"/bridges/{orphan}")
        await daemon.stop()


async def _gone(ari, bridge_id: str) -> bool:
    return bridge_id not in [b["id"] for b in await ari.get("/bridges")]
