"""Asterisk restarts under a running daemon: speakd reconnects, ends what died, serves again."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from conftest import TRANSPORTS, leftovers
from conftest_helpers import wait_for
from harness.calls import start_two_party_call
from harness.daemon import REPO, Api, SpeakdProcess

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.restarts_asterisk]


def sandbox_in_use(url: str) -> bool:
    """Only the project's own sandbox may be restarted, never an Asterisk the user runs."""
    from speakd import sandbox as sandbox_module

    state = sandbox_module.read_state()
    return sandbox_module.is_running(state) and state.get("ari_url", "").rstrip("/") == url.rstrip("/")


async def sandbox(command: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "speakd.sandbox", command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    output, _ = await proc.communicate()
    assert proc.returncode == 0, output.decode()


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    "how",
    [
        "down",  # a clean stop: Asterisk hangs up its channels and says so before the socket closes
        "crash",  # SIGKILL: no event at all; speakd finds out on reconnect (rtp), or at once
        # from its media WebSocket closing (websocket)
    ],
)
async def test_asterisk_restart_ends_dead_sessions_and_reconnects(ari_settings, ari, tmp_path, how, transport):
    if not sandbox_in_use(ari_settings["url"]):
        pytest.skip("the tests' Asterisk is not this project's sandbox: it is not ours to restart")
    daemon = SpeakdProcess(
        tmp_path, ari_settings["url"], ari_settings["user"], ari_settings["password"], transport=transport
    )
    await daemon.start()
    api = Api(daemon.base)
    try:
        call = await start_two_party_call(ari)
        speaking_id = await api.start_session(call.channel_id)
        await api.say(speaking_id, "Asterisk is about to restart under this sentence.")

        await sandbox(how)
        await wait_for(lambda: _health(api, 503), timeout=10, what="speakd to notice Asterisk is gone")
        # Asking for a session now is a clear 503, not a hang or a 500.
        refused = await api.create(call.channel_id)
        assert refused.status == 503 and "asterisk" in refused.message.lower()

        await sandbox("up")
        await wait_for(lambda: _health(api, 200), timeout=20, what="speakd to reconnect")
        assert (await api.wait_status(speaking_id, "stopped", timeout=5))["status"] == "stopped"
        if how == "crash":
            why = "gone while ARI was disconnected" if transport == "rtp" else "the media WebSocket closed"
            assert why in daemon.log_text()
        assert await leftovers(ari, daemon.app) == []

        fresh = await start_two_party_call(ari)
        new_id = await api.start_session(fresh.channel_id)  # events flow again: it can go active
        await fresh.hangup()
        await api.wait_status(new_id, "stopped", timeout=2)  # ... and hangups are seen again
    finally:
        await api.close()
        await daemon.stop()


async def _health(api: Api, status: int) -> bool:
    async with api._http.get(f"{api.base}/health") as resp:
        return resp.status == status
