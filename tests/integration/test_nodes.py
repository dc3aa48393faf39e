"""Nodes against real daemons: GET /v1.0/nodes (a credential needed; this node with its URL, last
seen and live sessions), node_id in the logs, the metrics and each session's row; and two nodes
on one PostgreSQL (the tests' own server): each lists both, a create on a call live on the other
node is 409 (the store's index: the second node's memory knows nothing of it), and a node's
restart stops only its own sessions."""

from __future__ import annotations

import asyncio
import json
import sqlite3

import aiohttp
import pytest
from harness.daemon import Api, SpeakdProcess
from harness.postgres import postgres, postgres_server  # noqa: F401 (fixtures)

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _node(daemon: SpeakdProcess, node_id: str) -> SpeakdProcess:
    daemon.extra_config += f'\n[node]\nid = "{node_id}"\n'
    return daemon


async def _nodes(api: Api) -> dict[str, dict]:
    reply = await api.request("GET", "/nodes")
    assert reply.status == 200, reply
    return {node["id"]: node for node in reply.body["result"]}


async def test_the_node_is_listed_logged_measured_and_owns_its_sessions(ari_settings, make_two_party_call, tmp_path):
    daemon = _node(SpeakdProcess(tmp_path, ari_settings["url"], ari_settings["user"], ari_settings["password"]), "n-1")
    await daemon.start()
    api = Api(daemon.base)
    try:
        refused = await api.as_customer(None).request("GET", "/nodes")
        assert refused.status == 401 and refused.body["error"]["reason"] == "unauthorized", refused

        (node,) = (await _nodes(api)).values()
        assert node["id"] == "n-1" and node["url"] == f"http://127.0.0.1:{daemon.port}"
        assert node["live_sessions"] == 0
        call = await make_two_party_call()
        speaking_id = await api.start_session(call.channel_id)
        await asyncio.sleep(3.5)  # a heartbeat
        later = (await _nodes(api))["n-1"]
        assert later["live_sessions"] == 1 and later["tm_last_seen"] > node["tm_last_seen"]
        body = (await api.get(speaking_id)).body
        assert "node_id" not in body and "run_id" not in body and "conflict_key" not in body

        async with aiohttp.ClientSession() as http, http.get(f"{daemon.base}/metrics") as scrape:
            assert f'speakd_node_info{{node_id="n-1",url="http://127.0.0.1:{daemon.port}"}} 1.0' in await scrape.text()
        assert (await api.stop(speaking_id)).status == 200
        assert (await _nodes(api))["n-1"]["live_sessions"] == 0
    finally:
        await api.close()
        assert await daemon.stop() == 0
    lines = [json.loads(line) for line in daemon.log_text().splitlines() if line.startswith("{")]
    assert lines and all(line.get("node_id") == "n-1" for line in lines)
    assert any(line.get("event") == "session_created" for line in lines)
    with sqlite3.connect(tmp_path / "speakd.sqlite3") as db:
        assert db.execute("SELECT node_id, conflict_key FROM speakings").fetchall() == [("n-1", call.channel_id)]


async def test_two_nodes_on_one_postgresql(ari_settings, make_two_party_call, tmp_path, postgres):  # noqa: F811
    url = postgres.new_database()
    args = (ari_settings["url"], ari_settings["user"], ari_settings["password"])
    a = _node(SpeakdProcess(tmp_path / "a", *args, store_url=url), "node-a")
    b = _node(SpeakdProcess(tmp_path / "b", *args, store_url=url), "node-b")
    for daemon in (a, b):
        daemon.workdir.mkdir()
        await daemon.start()
    api_a, api_b = Api(a.base), Api(b.base)
    try:
        for api in (api_a, api_b):
            assert set(await _nodes(api)) == {"node-a", "node-b"}
        call = await make_two_party_call()
        speaking_id = await api_a.start_session(call.channel_id)

        # Node b's own memory has no session on this call: the store refuses the second.
        conflict = await api_b.create(call.channel_id)
        assert conflict.status == 409 and conflict.body["error"]["reason"] == "conflict", conflict
        assert "already active on call" in conflict.message
        assert (await _nodes(api_b))["node-a"]["live_sessions"] == 1

        # Node b restarting stops its own leftovers only: node a's session lives on and speaks.
        assert await b.stop() == 0
        await b.start()
        assert (await api_a.get(speaking_id)).body["status"] == "active"
        assert (await api_a.say(speaking_id, "Still here.")).status == 200

        # Once it stops, the call takes a session from either node.
        assert (await api_a.stop(speaking_id)).status == 200
        other = await api_b.start_session(call.channel_id)
        assert (await _nodes(api_a))["node-b"]["live_sessions"] == 1
        assert (await api_b.stop(other)).status == 200
    finally:
        for api in (api_a, api_b):
            await api.close()
        for daemon in (a, b):
            await daemon.stop()
