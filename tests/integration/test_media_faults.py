"""The media path breaking under a live session: the session stops at once, with its reason
logged, and leaves nothing in Asterisk.

websocket: the media WebSocket's TCP connection is cut (a proxy sits between speakd and
Asterisk's HTTP server, as a network would). rtp: the pacer process is killed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time

import pytest
from conftest import leftovers
from harness.daemon import Api, SpeakdProcess
from harness.hearing import LONG
from harness.proxy import TcpProxy
from yarl import URL

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def wait_say_status(api: Api, speaking_id: str, status: str, within: float = 10.0) -> dict:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        says = (await api.request("GET", f"/speakings/{speaking_id}/says")).body["result"]
        if says and says[-1]["status"] == status:
            return says[-1]
        await asyncio.sleep(0.05)
    raise AssertionError(f"the say never reached {status!r}")


def logged(daemon: SpeakdProcess) -> list[dict]:
    entries = []
    for line in daemon.log_text().splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            entries.append({"event": "unparsed", "line": line})
    return entries


def assert_clean_stop(daemon: SpeakdProcess, speaking_id: str, reason_has: str) -> None:
    entries = logged(daemon)
    stopped = [e for e in entries if e.get("event") == "session_stopped" and e.get("speaking_id") == speaking_id]
    # An error of the media path, not Asterisk gone (it is still up), with what broke in the detail.
    assert stopped and stopped[0]["reason"] == "error" and reason_has in stopped[0]["detail"], stopped
    # No exception anywhere: the fault is handled, not crashed through.
    assert not [e for e in entries if "exception" in e or e.get("event") == "unparsed"], daemon.log_tail()


async def test_media_websocket_cut_stops_the_session_and_leaves_nothing(ari, ari_settings, two_party_call, tmp_path):
    url = URL(ari_settings["url"])
    async with TcpProxy(url.host, url.port) as proxy:
        daemon = SpeakdProcess(
            tmp_path,
            f"http://127.0.0.1:{proxy.port}",
            ari_settings["user"],
            ari_settings["password"],
            transport="websocket",
        )
        await daemon.start()
        api = Api(daemon.base)
        try:
            speaking_id = await api.start_session(two_party_call.channel_id, direction="out")
            assert (await api.say(speaking_id, LONG)).status == 200
            await wait_say_status(api, speaking_id, "playing")
            await asyncio.sleep(1.5)
            assert proxy.cut("/media/") == 1, proxy.open_paths()
            cut_at = time.monotonic()
            await api.wait_status(speaking_id, "stopped", timeout=1.0)
            assert time.monotonic() - cut_at < 1.0
            assert await leftovers(ari, daemon.app) == []
            cut = await wait_say_status(api, speaking_id, "interrupted", within=1.0)
            assert 0 < cut["heard_chars"] < len(LONG)
            # The call itself is untouched, and the daemon serves a new session on it.
            again = await api.start_session(two_party_call.channel_id, direction="out")
            assert (await api.stop(again)).status == 200
        finally:
            await api.close()
            await daemon.stop()
    # Whichever Asterisk or speakd notices first: Asterisk hangs up the media channel when its
    # WebSocket drops, speakd sees the socket close.
    assert_clean_stop(daemon, speaking_id, "media")


def pacer_children(daemon_pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(daemon_pid), "-f", "speakd.media.rtp_pacer"], capture_output=True)
    return [int(pid) for pid in out.stdout.split()]


async def test_pacer_process_killed_stops_the_session_and_leaves_nothing(ari, ari_settings, two_party_call, tmp_path):
    daemon = SpeakdProcess(
        tmp_path, ari_settings["url"], ari_settings["user"], ari_settings["password"], transport="rtp"
    )
    await daemon.start()
    api = Api(daemon.base)
    try:
        speaking_id = await api.start_session(two_party_call.channel_id, direction="out")
        assert (await api.say(speaking_id, LONG)).status == 200
        await wait_say_status(api, speaking_id, "playing")
        assert daemon.proc is not None
        [pacer] = pacer_children(daemon.proc.pid)
        os.kill(pacer, signal.SIGKILL)
        killed_at = time.monotonic()
        await api.wait_status(speaking_id, "stopped", timeout=1.0)
        assert time.monotonic() - killed_at < 1.0
        assert await leftovers(ari, daemon.app) == []
        # A new pacer serves the next session.
        again = await api.start_session(two_party_call.channel_id, direction="out")
        assert (await api.say(again, "Still here.")).status == 200
        await wait_say_status(api, again, "played")
        assert (await api.stop(again)).status == 200
    finally:
        await api.close()
        await daemon.stop()
    assert_clean_stop(daemon, speaking_id, "pacer")
