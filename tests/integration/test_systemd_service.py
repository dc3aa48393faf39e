"""speakd as systemd runs it: the notify protocol and watchdog read off a NOTIFY_SOCKET the test
binds, and SIGHUP reloads (new credentials, a new log level) under a live session."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
import uuid
from pathlib import Path

import pytest
from harness.audio import render_piper
from harness.daemon import CUSTOMER_A, KEY_A, Api, SpeakdProcess
from harness.hearing import LONG, assert_heard

from speakd.systemd_notify import socket_address

pytestmark = pytest.mark.asyncio(loop_scope="session")

ROTATED_KEY = "key-customer-a-rotated"


class NotifyListener:
    """What systemd would receive: every datagram on a socket in the abstract namespace."""

    def __init__(self) -> None:
        self.name = f"@speakd-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(socket_address(self.name))
        self.sock.setblocking(False)
        self.received: list[tuple[float, str]] = []  # (monotonic time, message)

    async def until(self, predicate, timeout: float = 30.0) -> str:
        """Read until a message satisfying ``predicate`` arrives; returns it."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                data = await asyncio.wait_for(loop.sock_recv(self.sock, 4096), left)
            except TimeoutError:
                break
            message = data.decode()
            self.received.append((time.monotonic(), message))
            if predicate(message):
                return message
        raise AssertionError(f"no such notify message in {timeout}s; received: {[m for _, m in self.received]}")

    def messages(self) -> list[str]:
        return [m for _, m in self.received]

    def close(self) -> None:
        self.sock.close()


def status_of(message: str) -> str | None:
    for line in message.splitlines():
        if line.startswith("STATUS="):
            return line[len("STATUS=") :]
    return None


def log_events(daemon: SpeakdProcess) -> list[dict]:
    events = []
    for line in daemon.log_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


async def wait_for_log(daemon: SpeakdProcess, event: str, after: int = 0, timeout: float = 10.0) -> dict:
    """The first ``event`` log line after the first ``after`` lines."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in log_events(daemon)[after:] if e.get("event") == event]
        if found:
            return found[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"{event} not logged in {timeout}s:\n{daemon.log_tail()}")


async def say_status(api: Api, speaking_id: str, leaving: str, timeout: float = 60.0) -> str:
    """The status of the session's first say once it is no longer ``leaving`` (generous: a busy
    host holds a say back until synthesis keeps ahead)."""
    deadline = time.monotonic() + timeout
    while True:
        says = await api.request("GET", f"/speakings/{speaking_id}/says")
        assert says.status == 200, says
        status = says.body["result"][0]["status"]
        if status != leaving or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.1)


@pytest.fixture
def notify():
    listener = NotifyListener()
    yield listener
    listener.close()


async def test_ready_status_watchdog_reload_and_stopping_reach_systemd(
    ari_settings, tmp_path, notify, make_two_party_call
):
    daemon = SpeakdProcess(
        tmp_path,
        ari_settings["url"],
        ari_settings["user"],
        ari_settings["password"],
        env={"NOTIFY_SOCKET": notify.name, "WATCHDOG_USEC": "1000000"},  # a ping every 0.5 s
    )
    api = Api(daemon.base)
    try:
        await daemon.start()
        ready = await notify.until(lambda m: m.startswith("READY=1"))
        assert status_of(ready) == "0 live sessions; connected to Asterisk"
        assert not any("STOPPING=1" in m for m in notify.messages())
        # The watchdog keeps being fed after READY.
        pings_before = notify.messages().count("WATCHDOG=1")
        for _ in range(3):
            await notify.until(lambda m: m == "WATCHDOG=1", timeout=10)
        assert notify.messages().count("WATCHDOG=1") >= pings_before + 3

        call = await make_two_party_call()
        speaking_id = await api.start_session(call.channel_id, direction="out")
        await notify.until(lambda m: status_of(m) == "1 live session; connected to Asterisk", timeout=10)

        # A reload with a broken file: announced to systemd, refused, the old config kept.
        config = tmp_path / "speakd.toml"
        good = config.read_text()
        config.write_text(good + "\n[auth\n")
        logged = len(log_events(daemon))
        os.kill(daemon.proc.pid, signal.SIGHUP)
        await notify.until(lambda m: m.startswith("RELOADING=1"), timeout=10)
        await notify.until(lambda m: m.startswith("READY=1"), timeout=10)
        failed = await wait_for_log(daemon, "config_reload_failed", after=logged)
        assert "not valid TOML" in failed["error"] and "fix the file" in failed["kept"]
        assert (await api.get(speaking_id)).status == 200
        assert daemon.proc.poll() is None

        await api.stop(speaking_id)
        await notify.until(lambda m: status_of(m) == "0 live sessions; connected to Asterisk", timeout=10)
        stopping_sent = len(notify.received)
        assert await daemon.stop() == 0
        await notify.until(lambda m: m.startswith("STOPPING=1"), timeout=5)
        messages = notify.messages()
        first_ready = next(i for i, m in enumerate(messages) if m.startswith("READY=1"))
        stopping = next(i for i, m in enumerate(messages) if m.startswith("STOPPING=1"))
        assert first_ready < stopping and stopping >= stopping_sent
    finally:
        await api.close()
        await daemon.stop()


@pytest.mark.by_ear
async def test_sighup_rotates_the_access_key_and_log_level_while_a_say_plays_to_the_end(
    ari_settings, tmp_path: Path, make_two_party_call
):
    daemon = SpeakdProcess(tmp_path, ari_settings["url"], ari_settings["user"], ari_settings["password"])
    old_key, new_key = Api(daemon.base, KEY_A), Api(daemon.base, ROTATED_KEY)
    try:
        await daemon.start()
        call = await make_two_party_call()
        speaking_id = await old_key.start_session(call.channel_id, direction="out")
        reference = render_piper(LONG)
        said = await old_key.say(speaking_id, LONG)
        assert said.status == 200
        assert await say_status(old_key, speaking_id, "queued") == "playing"
        await asyncio.sleep(1.0)  # well into the say

        config = tmp_path / "speakd.toml"
        text = config.read_text()
        assert f'"{KEY_A}" =' in text and 'level = "info"' in text
        # The new keys include the sandbox's published one, which a reload warns of as a start does.
        new_keys = f'"dev-accesskey" = "{CUSTOMER_A}", "{ROTATED_KEY}" ='
        text = text.replace(f'"{KEY_A}" =', new_keys).replace('level = "info"', 'level = "debug"')
        config.write_text(text)
        logged = len(log_events(daemon))
        assert not any(e.get("level") == "debug" for e in log_events(daemon))
        os.kill(daemon.proc.pid, signal.SIGHUP)
        reloaded = await wait_for_log(daemon, "config_reloaded", after=logged)
        assert reloaded["changed"] == ["auth.access_keys", "log.level"]
        assert reloaded["log_level"] == "debug" and ROTATED_KEY not in json.dumps(reloaded)
        warned = await wait_for_log(daemon, "config_warning", after=logged)
        assert "published with speakd" in warned["problem"] and "dev-accesskey" not in warned["problem"]

        assert (await new_key.get(speaking_id)).status == 200
        refused = await old_key.get(speaking_id)
        assert refused.status == 401 and refused.body["error"]["reason"] == "unauthorized"
        # The reload did not touch the say: still playing, then played to its end.
        assert await say_status(new_key, speaking_id, "queued") == "playing"
        assert await say_status(new_key, speaking_id, "playing", timeout=len(reference) / 8000 + 10) == "played"
        assert_heard(await call.recording("alice"), reference, "alice")
        # The new level took effect: debug lines from then on (the say's events), none before.
        assert any(e.get("level") == "debug" for e in log_events(daemon)[logged:])
    finally:
        await old_key.close()
        await new_key.close()
        await daemon.stop()
