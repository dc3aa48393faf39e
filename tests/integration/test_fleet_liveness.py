"""Nodes that die, with two speakd nodes on one PostgreSQL (the tests' own server), both on the
sandbox's Asterisk 1, each with its own ARI application.

- kill -9 of node A mid-say: within 10 s a /v1.0/ws client on node B sees the session's
  ``speaking_stopped`` with reason ``node_lost`` (and its say interrupted), B answers it stopped
  with the say interrupted, and lists A with no live session; A started again removes the snoop
  and media channels its dead run left in Asterisk.
- A node's process stalled for 8 s (SIGSTOP, its connections up) is not lost.
- A host vanishing without a word (no FIN): node A frozen (SIGSTOP) and its PostgreSQL packets
  dropped (iptables on lo; root only): node_lost within 30 s; A thawed finds it was declared
  lost, stops the session without writing its rows (the store keeps B's ending) and its
  Asterisk objects go.
- PostgreSQL restarted, or stopped for 5 s, mid-say with a session on A and B watching: the say
  is heard whole, its final state is in the store, and no session is declared node_lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from conftest import leftovers
from conftest_helpers import wait_for
from harness.audio import render_piper
from harness.daemon import CUSTOMER_A, KEY_A, Api, SpeakdProcess
from harness.events import WsEvents
from harness.hearing import GREETING, LONG, assert_heard
from harness.postgres import postgres, postgres_server  # noqa: F401 (fixtures)

from speakd.sessions import liveness

pytestmark = pytest.mark.asyncio(loop_scope="session")

ALL_OF_A = f"customer_id:{CUSTOMER_A}:speaking:*"


class Fleet:
    def __init__(self, url: str, a: SpeakdProcess, b: SpeakdProcess) -> None:
        self.url = url
        self.a, self.b = a, b
        self.api_a, self.api_b = Api(a.base), Api(b.base)

    async def stored(self, sql: str) -> list[tuple]:
        """What the server has, read by a connection of the test's own."""
        connection = await asyncpg.connect(self.url)
        try:
            return [tuple(row) for row in await connection.fetch(sql)]
        finally:
            await connection.close()


@pytest_asyncio.fixture(loop_scope="session")
async def fleet(ari_settings, tmp_path, postgres):  # noqa: F811
    url = postgres.new_database()
    args = (ari_settings["url"], ari_settings["user"], ari_settings["password"])
    nodes = []
    for name in ("a", "b"):
        daemon = SpeakdProcess(tmp_path / name, *args, store_url=url, transport="websocket")
        daemon.extra_config += f'\n[node]\nid = "node-{name}"\n'
        daemon.workdir.mkdir()
        nodes.append(daemon)
    fleet = Fleet(url, *nodes)
    try:
        for daemon in nodes:
            await daemon.start()
        # A server just started (or restarted by an earlier test) is not judged on yet: every
        # lock was free a moment ago (speakd.sessions.liveness.SETTLE_S).
        (up_s,) = await fleet.stored("SELECT EXTRACT(EPOCH FROM now() - pg_postmaster_start_time())::float8")
        await asyncio.sleep(max(0.0, liveness.SETTLE_S + 1.0 - up_s[0]))
        yield fleet
    finally:
        for api in (fleet.api_a, fleet.api_b):
            await api.close()
        for daemon in nodes:
            if daemon.proc is not None and daemon.proc.poll() is None:
                os.kill(daemon.proc.pid, signal.SIGCONT)  # a test that failed while it was frozen
            await daemon.stop()


async def says(api: Api, speaking_id: str) -> list[dict]:
    reply = await api.request("GET", f"/speakings/{speaking_id}/says")
    assert reply.status == 200, reply
    return reply.body["result"]


async def _nodes(api: Api) -> dict[str, dict]:
    reply = await api.request("GET", "/nodes")
    assert reply.status == 200, reply
    return {node["id"]: node for node in reply.body["result"]}


async def _speaking_on_a(fleet: Fleet, make_two_party_call, ari) -> tuple[str, str]:
    """A session on node A with a long say playing, and its objects in Asterisk: (id, say id)."""
    call = await make_two_party_call()
    speaking_id = await fleet.api_a.start_session(call.channel_id, direction="out")
    say_id = (await fleet.api_a.say(speaking_id, LONG)).body["say_id"]

    async def playing():
        return [s["status"] for s in await says(fleet.api_a, speaking_id)] == ["playing"]

    await wait_for(playing, timeout=15, interval=0.05, what="the say playing")
    assert await leftovers(ari, fleet.a.app), "node A's snoop/media channels should be in Asterisk"
    return speaking_id, say_id


def _node_lost(ws: WsEvents, speaking_id: str) -> list[dict]:
    return [
        e for e in ws.of(speaking_id) if e["event_type"] == "speaking_stopped" and e["data"]["reason"] == "node_lost"
    ]


async def _ended_by_b(fleet: Fleet, ws: WsEvents, speaking_id: str, say_id: str) -> None:
    """What B shows of A's session once B ended it."""
    interrupted = [e for e in ws.of(speaking_id) if e["event_type"] == "speaking_say_interrupted"]
    assert [(e["data"]["say_id"], e["data"]["reason"]) for e in interrupted] == [(say_id, "node_lost")]
    assert (await fleet.api_b.get(speaking_id)).body["status"] == "stopped"
    assert [(s["say_id"], s["status"]) for s in await says(fleet.api_b, speaking_id)] == [(say_id, "interrupted")]
    assert (await _nodes(fleet.api_b))["node-a"]["live_sessions"] == 0


async def test_a_node_killed_mid_say_is_found_lost_by_the_other_within_10_s(fleet, make_two_party_call, ari):
    speaking_id, say_id = await _speaking_on_a(fleet, make_two_party_call, ari)
    async with WsEvents(fleet.b.base, KEY_A) as ws:
        await ws.subscribe([ALL_OF_A])
        fleet.a.kill9()
        killed = time.monotonic()
        await ws.wait_for(lambda _: _node_lost(ws, speaking_id), 10.0, "speaking_stopped (node_lost) on node B")
        took = time.monotonic() - killed
        (stopped,) = _node_lost(ws, speaking_id)
        assert "node 'node-a' was lost" in stopped["data"]["detail"], stopped
        await _ended_by_b(fleet, ws, speaking_id, say_id)
    print(f"node_lost seen on node B {took:.1f} s after kill -9 of node A")
    assert "node_lost" in fleet.b.log_text()

    # Node A's dead run left its channels in Asterisk; started again, it removes them.
    assert await leftovers(ari, fleet.a.app)
    await fleet.a.start()
    await wait_for(lambda: _no_leftovers(ari, fleet.a.app), timeout=15, interval=0.2, what="node A's leftovers gone")
    assert await fleet.stored("SELECT status, run_id FROM speakings") == [("stopped", "")]


async def _no_leftovers(ari, app: str) -> bool:
    return not await leftovers(ari, app)


# -- a host that vanishes without a word ------------------------------------------------------------


def _ports_to(pid: int, port: int) -> list[int]:
    """The local ports of ``pid``'s TCP connections to ``port`` on 127.0.0.1."""
    sockets = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if (target := os.readlink(fd)).startswith("socket:["):
                sockets.add(target[len("socket:[") : -1])
    ports = []
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if inode in sockets and int(remote.rpartition(":")[2], 16) == port:
            ports.append(int(local.rpartition(":")[2], 16))
    return ports


@contextlib.contextmanager
def _dropped(ports: list[int]):
    """Every packet on lo to or from these ports dropped, as a network that went away would."""
    rule = ["INPUT", "-i", "lo", "-p", "tcp", "-m", "multiport", "--ports", ",".join(map(str, ports))]
    rule += ["-m", "comment", "--comment", f"speakd-test-{uuid.uuid4().hex[:8]}", "-j", "DROP"]
    subprocess.run(["iptables", "-I", *rule], check=True)
    try:
        yield
    finally:
        subprocess.run(["iptables", "-D", *rule], check=True)


def _can_drop_packets() -> bool:
    """Root, iptables, and the right to change its rules here (a container may lack NET_ADMIN)."""
    if os.geteuid() != 0 or shutil.which("iptables") is None:
        return False
    return subprocess.run(["iptables", "-L", "INPUT", "-n"], capture_output=True, check=False).returncode == 0


@pytest.mark.skipif(not _can_drop_packets(), reason="needs root, iptables and the right to change its rules")
async def test_a_node_whose_host_vanishes_is_lost_within_30_s_and_fenced_when_back(
    fleet,
    make_two_party_call,
    ari,
    postgres_server,  # noqa: F811
):
    speaking_id, say_id = await _speaking_on_a(fleet, make_two_party_call, ari)
    pid = fleet.a.proc.pid
    async with WsEvents(fleet.b.base, KEY_A) as ws:
        await ws.subscribe([ALL_OF_A])
        os.kill(pid, signal.SIGSTOP)  # first: a running node would reconnect past the rule
        try:
            ports = _ports_to(pid, postgres_server.port)
            assert ports, "node A has no connection to PostgreSQL"
            with _dropped(ports):
                frozen = time.monotonic()
                await ws.wait_for(lambda _: _node_lost(ws, speaking_id), 30.0, "node_lost on node B")
                took = time.monotonic() - frozen
                await _ended_by_b(fleet, ws, speaking_id, say_id)
                ended = await fleet.stored("SELECT status, run_id, tm_update FROM speakings")
        finally:
            os.kill(pid, signal.SIGCONT)
        print(f"node_lost seen on node B {took:.1f} s after node A's host went silent")

        # Thawed, node A finds its session was ended by another node: it stops it without
        # writing (the store keeps B's ending, the say interrupted) and removes its objects.
        await wait_for(
            lambda: "session_fenced" in fleet.a.log_text(), timeout=20, interval=0.2, what="node A fencing its session"
        )
        await wait_for(lambda: _no_leftovers(ari, fleet.a.app), timeout=15, interval=0.2, what="node A's objects gone")
        assert (await fleet.api_a.get(speaking_id)).body["status"] == "stopped"
        await asyncio.sleep(2.0)  # anything node A still wrote or published would be in by now
        assert await fleet.stored("SELECT status, run_id, tm_update FROM speakings") == ended
        assert await fleet.stored("SELECT status FROM says") == [("interrupted",)]
        assert len([e for e in ws.of(speaking_id) if e["event_type"] == "speaking_stopped"]) == 1
    assert "Traceback" not in fleet.a.log_text()


async def test_a_node_stalled_for_seconds_is_not_lost(fleet, make_two_party_call, ari):
    """A busy host's stall (here: the process frozen 8 s, its connections up): its kernel keeps
    its connections, so its lock stays held and no other node ends its sessions."""
    speaking_id, _ = await _speaking_on_a(fleet, make_two_party_call, ari)
    os.kill(fleet.a.proc.pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(8.0)
    finally:
        os.kill(fleet.a.proc.pid, signal.SIGCONT)
    await asyncio.sleep(2 * liveness.CHECK_EVERY_S + liveness.LOST_AFTER_S)
    assert (await fleet.api_b.get(speaking_id)).body["status"] == "active"
    assert (await fleet.api_a.say(speaking_id, "Still here.")).status == 200
    assert "node_lost" not in fleet.b.log_text() and "session_fenced" not in fleet.a.log_text()
    assert (await fleet.api_a.stop(speaking_id)).status == 200


# -- PostgreSQL restarted under two nodes ------------------------------------------------------------


@pytest.mark.by_ear
async def test_postgresql_down_for_5_s_mid_say_loses_nothing_and_no_node(
    fleet,
    make_two_party_call,
    postgres_server,  # noqa: F811
):
    """Down for 5 s, then back (a quick restart under two nodes is test_fleet_events')."""
    call = await make_two_party_call()
    api = fleet.api_a
    speaking_id = await api.start_session(call.channel_id, direction="out")
    assert (await api.say(speaking_id, GREETING)).status == 200
    assert (await api.say(speaking_id, LONG)).status == 200

    async def long_playing():
        return [s["status"] for s in await says(api, speaking_id)] == ["played", "playing"]

    await wait_for(long_playing, timeout=15, interval=0.05, what="the long say playing")
    await asyncio.sleep(1.0)
    postgres_server.stop()
    await asyncio.sleep(5.0)
    postgres_server.start()
    back = time.monotonic()

    async def written():
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            return await fleet.stored("SELECT status FROM says ORDER BY seq") == [("played",), ("played",)]
        return False

    await wait_for(written, timeout=len(render_piper(LONG)) / 8000 + 15, interval=0.2, what="the says' final states")
    # Past the time node B would need to judge node A lost (its own lock back and settled, then
    # A's free over two checks): the session is still live on A, and nobody said otherwise.
    await asyncio.sleep(max(0.0, back + 18.0 - time.monotonic()))
    assert (await fleet.api_b.get(speaking_id)).body["status"] == "active"
    assert await fleet.stored(f"SELECT status FROM speakings WHERE id = '{speaking_id}'") == [("active",)]
    assert (await api.stop(speaking_id)).status == 200

    recording = await call.recording("alice")
    assert_heard(recording, render_piper(GREETING), "alice (the say before the server went)")
    assert_heard(recording, render_piper(LONG), "alice (the say PostgreSQL was down under)")
    for daemon in (fleet.a, fleet.b):
        log = daemon.log_text()
        assert "node_lost" not in log and "session_fenced" not in log and "store_writes_fenced" not in log
        assert "run_lock_taken_again" in log, daemon.log_tail()
