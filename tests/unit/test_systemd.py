"""The systemd unit (systemd-analyze verify, sysusers), the notify protocol and watchdog, and
the parts a SIGHUP reload is made of (provider slots, config differences, the log level)."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog

from speakd.audio import AudioFormat
from speakd.config import ConfigError, load_config
from speakd.errors import ProviderNotConfigured
from speakd.logging import configure_logging, set_log_level
from speakd.providers import ProviderRegistry, ProviderSlot
from speakd.providers.base import AudioChunk, Provider, SynthesisRequest
from speakd.reload import differences
from speakd.systemd_notify import NotifySocket, ServiceNotifier, socket_address, watchdog_interval

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "speakd.service"
SHIPPED_EXEC = "/opt/speakd/.venv/bin/speakd"


# -- the unit ---------------------------------------------------------------------------------


def _verify(unit_text: str, tmp_path: Path) -> str:
    """systemd-analyze verify on a copy whose ExecStart is this environment's speakd (verify
    refuses a binary that does not exist); what it says about the unit."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    entry = Path(sys.executable).with_name("speakd")
    assert entry.exists(), f"{entry} missing: install speakd into this venv (pip install -e .)"
    unit = tmp_path / "speakd.service"
    unit.write_text(unit_text.replace(SHIPPED_EXEC, str(entry)))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    said = [line for line in (result.stdout + result.stderr).splitlines() if "speakd.service" in line]
    assert result.returncode == 0 or said, result.stderr
    return "\n".join(said)


def test_the_unit_verifies_cleanly(tmp_path):
    text = UNIT.read_text()
    assert SHIPPED_EXEC in text  # what the README installs, and what the copy replaces
    assert _verify(text, tmp_path) == ""


def test_verify_catches_a_mistake_in_the_unit(tmp_path):
    """The check above can fail: verify reports a misspelt key (and exits 0, hence the output check)."""
    broken = UNIT.read_text().replace("NoNewPrivileges=yes", "NoNewPrivilegez=yes")
    assert "NoNewPrivilegez" in _verify(broken, tmp_path)


def test_the_unit_asks_for_what_speakd_implements():
    keys = dict(
        line.split("=", 1) for line in UNIT.read_text().splitlines() if "=" in line and not line.startswith("#")
    )
    assert keys["Type"] == "notify"
    assert keys["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert keys["EnvironmentFile"] == "-/etc/speakd/speakd.env"
    assert keys["StateDirectory"] == "speakd"
    # The default store lives where the unit lets speakd write.
    assert load_config(None, {}).store.path.startswith("/var/lib/speakd/")
    assert "CAP_SYS_NICE" in keys["AmbientCapabilities"] and keys["RestrictRealtime"] == "no"


def test_sysusers_creates_the_service_user(tmp_path):
    sysusers = shutil.which("systemd-sysusers")
    if sysusers is None:
        pytest.skip("systemd-sysusers is not installed (Debian: apt-get install systemd)")
    (tmp_path / "etc").mkdir()
    subprocess.run(
        [sysusers, f"--root={tmp_path}", str(REPO / "systemd" / "speakd.sysusers")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    users = {line.split(":")[0]: line.split(":") for line in (tmp_path / "etc" / "passwd").read_text().splitlines()}
    assert users["speakd"][5] == "/var/lib/speakd"
    assert "speakd:" in (tmp_path / "etc" / "group").read_text()


# -- the notify protocol ----------------------------------------------------------------------


def test_socket_address_and_watchdog_interval():
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@abc") == "\0abc"
    me = os.getpid()
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}, me) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(me)}, me) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(me + 1)}, me) is None
    assert watchdog_interval({}, me) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, me) is None
    assert watchdog_interval({"WATCHDOG_USEC": "x"}, me) is None


@pytest.fixture
def listener():
    """A notify socket as systemd binds it, in the abstract namespace."""
    name = f"@speakd-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(socket_address(name))
    sock.setblocking(False)
    yield name, sock
    sock.close()


def drain(sock: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


def test_notify_socket_sends_datagrams_and_survives_a_missing_listener(listener):
    name, sock = listener
    sender = NotifySocket(name)
    assert sender.send("READY=1\nSTATUS=x")
    assert drain(sock) == ["READY=1\nSTATUS=x"]
    gone = NotifySocket(f"@speakd-test-nobody-{uuid.uuid4().hex}")
    assert gone.send("WATCHDOG=1") is False  # logged, not raised
    sender.close()
    gone.close()


def test_from_environ_takes_systemds_variables_out_of_the_environment(listener):
    name, sock = listener
    environ = {"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid()), "PATH": "/bin"}
    notifier = ServiceNotifier.from_environ(lambda: "x", environ)
    assert notifier.watchdog_every == 1.0
    notifier.ready()
    assert drain(sock) == ["READY=1\nSTATUS=x"]  # to the socket systemd named
    assert environ == {"PATH": "/bin"}  # the pacer process must not inherit them
    unsupervised = ServiceNotifier.from_environ(lambda: "x", {})
    unsupervised.ready()  # no socket: a no-op
    assert unsupervised.watchdog_every is None


async def test_pings_come_from_the_event_loop_and_stop_while_it_is_stuck(listener):
    name, sock = listener
    notifier = ServiceNotifier(NotifySocket(name), lambda: "idle", watchdog_every=0.05)
    notifier.start()
    try:
        await asyncio.sleep(0.3)
        assert drain(sock).count("WATCHDOG=1") >= 2
        time.sleep(0.5)  # noqa: ASYNC251 - the point: a stuck loop, nothing else runs
        assert drain(sock) == [], "pings must come from the loop, not from a thread"
        await asyncio.sleep(0.3)
        assert "WATCHDOG=1" in drain(sock)  # the loop turns again: pings resume
    finally:
        await notifier.aclose()


async def test_status_is_sent_when_it_changes_and_ready_reload_stopping_in_order(listener, monkeypatch):
    monkeypatch.setattr("speakd.systemd_notify.STATUS_POLL_S", 0.02)
    name, sock = listener
    current = {"line": "starting"}
    notifier = ServiceNotifier(NotifySocket(name), lambda: current["line"], watchdog_every=None)
    assert notifier.reloading() is False  # not ready yet: a reload must not claim readiness
    notifier.start()
    try:
        await asyncio.sleep(0.2)
        assert drain(sock) == ["STATUS=starting"]  # once, not once per poll
        current["line"] = "1 live session"
        await asyncio.sleep(0.1)
        assert drain(sock) == ["STATUS=1 live session"]
        notifier.ready()
        notifier.ready()
        assert notifier.reloading() is True
        notifier.reloaded()
        notifier.stopping()
        sent = drain(sock)
        assert sent[0] == "READY=1\nSTATUS=1 live session" and len(sent) == 4
        assert sent[1].startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert sent[2].startswith("READY=1") and sent[3].startswith("STOPPING=1")
    finally:
        await notifier.aclose()


# -- what a reload is made of ---------------------------------------------------------------------


class TaggedProvider(Provider):
    """Yields its tag, a chunk at a time while a gate is open."""

    name = "aws"

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.gate = asyncio.Event()
        self.closed = False

    def check(self, language: str, voice_id: str, payload_type: str = "text") -> None:
        if self.closed:
            raise AssertionError("a closed provider was asked")

    async def synthesize(self, request: SynthesisRequest) -> AsyncIterator[AudioChunk]:
        for _ in range(2):
            await self.gate.wait()
            assert not self.closed, "a closed provider streamed"
            yield AudioChunk(self.tag.encode(), AudioFormat("ulaw", 8000))

    async def aclose(self) -> None:
        self.closed = True


REQ = SynthesisRequest(text="x", language="en-US", voice_id="")


async def test_a_say_in_flight_finishes_on_the_old_provider_and_new_says_use_the_new_one():
    registry = ProviderRegistry({"aws": (old := TaggedProvider("old"))}, {})
    slot = registry.get("aws")
    assert isinstance(slot, ProviderSlot)
    in_flight = slot.synthesize(REQ)
    old.gate.set()
    assert (await anext(in_flight)).data == b"old"
    slot.replace(new := TaggedProvider("new"))
    new.gate.set()
    assert [c.data async for c in slot.synthesize(REQ)] == [b"new", b"new"]
    assert (await anext(in_flight)).data == b"old"  # the say that had started goes on where it was
    await asyncio.sleep(0)
    assert not old.closed
    with pytest.raises(StopAsyncIteration):
        await anext(in_flight)
    await asyncio.sleep(0.01)
    assert old.closed and not new.closed  # closed once its last stream ended
    await registry.aclose()
    assert new.closed


async def test_an_idle_replaced_provider_is_closed_at_once():
    registry = ProviderRegistry({"aws": (old := TaggedProvider("old"))}, {})
    registry.get("aws").replace(TaggedProvider("new"))  # type: ignore[attr-defined]
    await asyncio.sleep(0.01)
    assert old.closed
    await registry.aclose()


AWS = {"access_key_id": "AKIDOLD", "secret_access_key": "old", "region": "eu-west-1"}


async def test_registry_reload_rebuilds_a_changed_provider_and_refuses_to_break_a_working_one():
    registry = ProviderRegistry.from_config({"piper": {"enabled": False}, "aws": AWS})
    slot = registry.get("aws")
    before = slot.inner  # type: ignore[attr-defined]
    assert await registry.reload({"piper": {"enabled": False}, "aws": AWS}) == []
    assert slot.inner is before  # type: ignore[attr-defined]

    # A misspelt key would leave aws unconfigured: refused, nothing changes.
    typo = {"acess_key_id": "AKIDNEW", "secret_access_key": "new", "region": "eu-west-1"}
    with pytest.raises(ConfigError, match="access_key_id"):
        await registry.reload({"piper": {"enabled": False}, "aws": typo})
    assert registry.get("aws").inner is before  # type: ignore[attr-defined]

    rotated = {**AWS, "access_key_id": "AKIDNEW", "secret_access_key": "new"}
    assert await registry.reload({"piper": {"enabled": False}, "aws": rotated}) == ["aws"]
    assert registry.get("aws") is slot and slot.inner is not before  # type: ignore[attr-defined]
    assert slot.inner.access_key_id == "AKIDNEW"  # type: ignore[attr-defined]

    # A deliberately removed section takes the provider away from new sessions.
    assert await registry.reload({"piper": {"enabled": False}}) == ["aws"]
    with pytest.raises(ProviderNotConfigured, match=r"\[aws\]"):
        registry.get("aws")
    await registry.aclose()


def test_differences_name_keys_and_provider_sections_never_values(tmp_path):
    old = load_config(None, {})
    new = load_config(None, {"SPEAKD_AUTH_JWT_SECRET": "s3cret", "SPEAKD_SERVER_PORT": "9", "SPEAKD_AWS_REGION": "x"})
    assert differences(old, new) == ["server.port", "auth.jwt_secret", "aws"]
    assert differences(old, load_config(None, {})) == []


def test_a_bad_log_level_is_a_config_error_naming_the_levels():
    with pytest.raises(ConfigError, match="debug, info, warning, error"):
        load_config(None, {"SPEAKD_LOG_LEVEL": "loud"})


@pytest.fixture
def restore_logging():
    """configure_logging is process-wide: put structlog and the root logger back afterwards."""
    saved, root = structlog.get_config(), logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)


def test_the_log_level_changes_for_loggers_already_in_use(capsys, restore_logging):
    configure_logging("info", "console")
    logger = structlog.get_logger("speakd.test")
    try:
        logger.debug("hidden_before")
        logger.info("shown_before")
        set_log_level("debug")
        logger.debug("shown_after")
        set_log_level("warning")
        logger.info("hidden_after")
        logger.warning("warned_after")
    finally:
        set_log_level("info")
    err = capsys.readouterr().err
    assert "shown_before" in err and "shown_after" in err and "warned_after" in err
    assert "hidden_before" not in err and "hidden_after" not in err
