"""A second Asterisk beside the tests' own: the sandbox's instance 2 (speakd.sandbox), from the
same root, with its own ARI port, RTP ports, recordings, system name and entity id, and the same
test dialplan. The conftest's `second_asterisk` fixture brings it up once a session (and again
after a test crashed or stopped it) and stops it at the end if the session started it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from speakd import sandbox

INSTANCE = 2


@dataclass(frozen=True)
class SecondAsterisk:
    instance: int
    url: str  # HTTP base, without /ari
    user: str
    password: str
    system_name: str  # what /ari/asterisk/info reports as config.name
    entity_id: str  # ... and as system.entity_id
    rtp_ports: range

    @classmethod
    def of(cls, instance: int) -> SecondAsterisk:
        settings = sandbox.ari_settings(instance)
        return cls(
            instance,
            settings["url"],
            settings["user"],
            settings["password"],
            sandbox.system_name(instance),
            sandbox.entity_id(instance),
            sandbox.rtp_port_range(instance),
        )

    def pids(self) -> list[int]:
        state = sandbox.read_state(self.instance)
        return sandbox.instance_pids(Path(state["root"]), self.instance) if state else []

    def crash(self) -> None:
        sandbox.crash(self.instance)

    def stop(self) -> None:
        sandbox.stop(self.instance)

    def start(self) -> None:
        sandbox.start(self.instance)


def skip_reason(first_url: str) -> str | None:
    """Why the second Asterisk cannot run beside the Asterisk at ``first_url``; None if it can."""
    if first_url.rstrip("/") != sandbox.ari_settings(1)["url"]:
        return "SPEAKD_TEST_ARI_URL names an Asterisk other than the sandbox's: the second Asterisk is the sandbox's"
    if os.geteuid() != 0:
        return "the second sandbox Asterisk needs root (chroot, mount)"
    return None


@contextlib.contextmanager
def second_asterisk_for_session(first_url: str) -> Iterator[None]:
    """Skip where the second Asterisk cannot run; stop it afterwards if it was not up before
    (one another session started is left alone)."""
    reason = skip_reason(first_url)
    if reason:
        pytest.skip(reason)
    was_up = sandbox.is_up(INSTANCE)
    try:
        yield
    finally:
        if not was_up:
            sandbox.stop(INSTANCE)


def second_asterisk_up() -> SecondAsterisk:
    """Instance 2, up: started unless it runs with the current config (quick when it does)."""
    try:
        sandbox.start(INSTANCE)
    except sandbox.SandboxError as exc:
        pytest.fail(f"the second sandbox Asterisk did not come up: {exc}")
    return SecondAsterisk.of(INSTANCE)


def bound_ports(pids: list[int]) -> set[tuple[str, int]]:
    """(tcp|udp, port) of every listening TCP socket and bound UDP socket the processes hold."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("tcp", "tcp6", "udp", "udp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                listening = table.startswith("udp") or state == "0A"  # 0A: TCP_LISTEN
                if inode in inodes and listening:
                    ports.add((table.removesuffix("6"), int(local.rsplit(":", 1)[1], 16)))
    return ports
