"""Any node answers any call for any session: two speakd on one PostgreSQL (the tests' own server),
node-a beside the sandbox's Asterisk 1, node-b beside its Asterisk 2 (system name
"speakd-sandbox-2", so the channels there are named "speakd-sandbox-2-..."). A create sent to
node-a for a call on Asterisk 2 is made by node-b and heard on the call; every verb and the
/stream sent to node-a for node-b's session gets node-b's answer (status and body, errors too);
50 creates for one call split over both nodes give one 201 and 49 409; node-b killed: node-a
answers 503 naming it. The two daemons serve every test of the module."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio
from conftest import leftovers
from conftest_helpers import wait_for
from harness.ari import Ari
from harness.audio import render_piper
from harness.calls import TwoPartyCall, new_test_id, start_confbridge_room, start_two_party_call
from harness.daemon import KEY_B, Api, SpeakdProcess
from harness.hearing import assert_heard, assert_not_heard
from harness.postgres import PostgresServer, postgres_server  # noqa: F401 (fixture)
from harness.second_asterisk import SecondAsterisk, second_asterisk_up
from harness.stream import StreamClient

pytestmark = pytest.mark.asyncio(loop_scope="session")

TEXT = "The other node carried this sentence here."


class Fleet:
    def __init__(self, a: SpeakdProcess, b: SpeakdProcess, second: SecondAsterisk, database: str) -> None:
        self.a, self.b, self.second = a, b, second
        self.api_a, self.api_b = Api(a.base), Api(b.base)
        self.database = database

    def node_of(self, server: PostgresServer, speaking_id: str) -> str:
        return server.psql(f"SELECT node_id FROM speakings WHERE id = '{speaking_id}'", self.database).strip()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def fleet(ari_settings, _second_asterisk_session, postgres_server, tmp_path_factory):  # noqa: F811
    second = second_asterisk_up()
    url = postgres_server.new_database()
    database = url.rsplit("/", 1)[1]
    root = tmp_path_factory.mktemp("fleet-carry")
    nodes = []
    for name, (ari_url, user, password) in (
        ("a", (ari_settings["url"], ari_settings["user"], ari_settings["password"])),
        ("b", (second.url, second.user, second.password)),
    ):
        daemon = SpeakdProcess(root / name, ari_url, user, password, store_url=url, transport="websocket")
        daemon.extra_config += f'\n[node]\nid = "node-{name}"\n'
        daemon.workdir.mkdir()
        await daemon.start()
        nodes.append(daemon)
    fleet = Fleet(*nodes, second, database)
    yield fleet
    for api in (fleet.api_a, fleet.api_b):
        await api.close()
    for daemon in nodes:
        await daemon.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def second_call(fleet) -> AsyncIterator:
    """`await second_call(named=True)`: a call on Asterisk 2, its id led by the system name
    (as Asterisk names its own channels) or not; hung up at the end."""
    made: list[TwoPartyCall] = []

    async def make(named: bool = True) -> TwoPartyCall:
        ari = Ari(fleet.second.url, fleet.second.user, fleet.second.password)
        test_id = f"{fleet.second.system_name}-{new_test_id()}" if named else new_test_id()
        call = await start_two_party_call(ari, test_id=test_id)
        made.append(call)
        return call

    yield make
    for call in made:
        await call.hangup()
        await call.ari.close()


def _shape(body: object) -> object:
    """What two answers to the same request share whichever node gave them: the keys, with
    an error's reason and status."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return {"error": (body["error"]["status"], body["error"]["reason"])}
    if isinstance(body, dict):
        return {k: _shape(v) if isinstance(v, dict | list) else type(v).__name__ for k, v in body.items()}
    if isinstance(body, list):
        return [_shape(v) for v in body[:1]]
    return type(body).__name__


async def _session_on_b(fleet: Fleet, call: TwoPartyCall) -> str:
    return await fleet.api_b.start_session(call.channel_id, direction="out")


@pytest.mark.by_ear
async def test_a_create_sent_to_the_node_without_the_call_is_heard_on_the_call(fleet, second_call, postgres_server):  # noqa: F811
    call = await second_call()
    created = await fleet.api_a.create(call.channel_id, direction="out")
    assert created.status == 201, created
    speaking_id = created.body["id"]
    assert fleet.node_of(postgres_server, speaking_id) == "node-b"
    await fleet.api_a.wait_status(speaking_id, "active")
    said = await fleet.api_a.say(speaking_id, TEXT)
    assert said.status == 200, said
    reference = render_piper(TEXT)
    await asyncio.sleep(len(reference) / 8000 + 1.0)
    assert_heard(await call.recording("alice"), reference, "alice")
    assert_not_heard(await call.recording("bob"), "bob")
    await fleet.api_a.wait_status(speaking_id, "stopped")  # the hangup, seen by node-b, read by node-a


async def test_a_create_for_an_unnamed_channel_or_none_is_looked_for_on_the_other_node(
    fleet,
    second_call,
    postgres_server,  # noqa: F811
):
    call = await second_call(named=False)  # no system name leads its id: node-a asks node-b
    created = await fleet.api_a.create(call.channel_id, direction="out")
    assert created.status == 201, created
    assert fleet.node_of(postgres_server, created.body["id"]) == "node-b"
    # Asked again: node-b (the call's last node) answers that the call has a live session.
    again = await fleet.api_a.create(call.channel_id)
    assert again.status == 409 and again.body["error"]["reason"] == "conflict", again
    assert (await fleet.api_a.stop(created.body["id"])).status == 200
    # No node has it: today's answer.
    for api in (fleet.api_a, fleet.api_b):
        missing = await api.create("no-such-channel-4711")
        assert missing.status == 400 and "Asterisk has no channel" in missing.message, missing
    named_missing = await fleet.api_a.create(f"{fleet.second.system_name}-no-such-channel")
    assert named_missing.status == 400 and "Asterisk has no channel" in named_missing.message, named_missing


async def test_a_conference_on_the_other_nodes_asterisk_is_found_there(fleet, postgres_server):  # noqa: F811
    ari = Ari(fleet.second.url, fleet.second.user, fleet.second.password)
    room = await start_confbridge_room(ari, n=1)
    try:
        created = await fleet.api_a.create(room.room, reference_type="confbridge", direction="both")
        assert created.status == 201, created
        assert fleet.node_of(postgres_server, created.body["id"]) == "node-b"
        await fleet.api_a.wait_status(created.body["id"], "active")
        assert (await fleet.api_a.stop(created.body["id"])).body["status"] == "stopped"
    finally:
        await room.hangup()
        await ari.close()
    missing = await fleet.api_a.create("no-such-room-4711", reference_type="confbridge", direction="both")
    assert missing.status == 400 and "no conference 'no-such-room-4711'" in missing.message, missing


async def test_every_verb_gets_the_owners_answer_from_either_node(fleet, second_call):
    call = await second_call()
    sid = await _session_on_b(fleet, call)
    a, b = fleet.api_a, fleet.api_b
    path = f"/speakings/{sid}"

    async def both(method: str, sub: str, **kwargs) -> tuple:
        via_a = await a.request(method, f"{path}{sub}", **kwargs)
        via_b = await b.request(method, f"{path}{sub}", **kwargs)
        assert via_a.status == via_b.status, (via_a, via_b)
        assert _shape(via_a.body) == _shape(via_b.body), (via_a, via_b)
        return via_a, via_b

    said, _ = await both("POST", "/say", json={"text": "One.", "command_id": "c-1"})
    assert said.status == 200 and said.body["status"] == "active"
    bad, _ = await both("POST", "/say", json={"text": 5})  # refused by node-b, as node-b words it
    assert bad.status == 400 and "string" in bad.message
    unknown_field, _ = await both("POST", "/say", data=b"{not json", headers={"Content-Type": "application/json"})
    assert unknown_field.status == 400
    says, says_b = await both("GET", "/says", params={})
    assert says.body == says_b.body and says.body["result"][0]["text"] == "One."
    flushed, _ = await both("POST", "/flush")
    assert flushed.status == 200
    other_customer = await a.as_customer(KEY_B).request("POST", f"{path}/flush")
    assert other_customer.status == 404, other_customer

    # The carried request keeps its id: the client's answer names the one node-b logged.
    say_url = f"{fleet.a.base}/v1.0{path}/say?accesskey={a.accesskey}"
    async with aiohttp.ClientSession() as http, http.post(say_url, json={}) as reply:
        assert reply.status == 400
        assert (await reply.json())["error"]["request_id"] == reply.headers["X-Request-Id"]
        request_id = reply.headers["X-Request-Id"]
    assert request_id in fleet.b.log_text()

    # A request already carried once is answered where it arrived: never carried again.
    carried = await a.request("POST", f"{path}/flush", headers={"X-Speakd-Carried-By": "node-x"})
    assert carried.status == 503 and carried.body["error"]["reason"] == "owned_elsewhere", carried
    assert "node-b" in carried.message and fleet.b.base in carried.message

    # The stream: text in, messages out, through node-a; a second one at once is node-b's 409.
    async with StreamClient(fleet.a.base, sid) as stream:
        await stream.send({"type": "text", "text": "Streamed through the other node. "})
        await stream.send({"type": "flush", "nonce": "n-1"})
        assert (await stream.expect("flush_complete"))["nonce"] == "n-1"
        async with aiohttp.ClientSession() as http:
            for base in (fleet.a.base, fleet.b.base):
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await http.ws_connect(f"{base}/v1.0{path}/stream?accesskey={a.accesskey}")
                assert refused.value.status == 409
            async with http.get(f"{fleet.a.base}/v1.0{path}/stream?accesskey={a.accesskey}",
                                headers={"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                                         "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) as plain:  # fmt: skip
                body = await plain.json()
                assert plain.status == 409 and body["error"]["reason"] == "conflict", body
        await stream.send({"type": "finish"})
        await stream.expect("played")
        await asyncio.wait_for(_closed(stream), 5)
        assert stream.close_code == 1000  # node-b's close, passed on
    streamed = (await a.request("GET", f"{path}/says")).body["result"]
    assert any(item["text"].startswith("Streamed through") for item in streamed), streamed

    # A protocol error from the client: node-b's error message, then its close.
    async with StreamClient(fleet.a.base, sid) as stream:
        await stream.send("not json")
        error = await stream.expect("error")
        assert "JSON" in error["message"] or "json" in error["message"], error
        await asyncio.wait_for(_closed(stream), 5)

    # The client closing first: node-b is told (its stream ends, and the next one is welcome there).
    stream_url = f"{path}/stream?accesskey={a.accesskey}"
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{fleet.a.base}/v1.0{stream_url}")
        assert (await ws.receive_json())["type"] == "ready"
        await ws.close(code=4001)

        async def opens_on_b() -> bool:
            try:
                direct = await http.ws_connect(f"{fleet.b.base}/v1.0{stream_url}")
            except aiohttp.WSServerHandshakeError:
                return False
            await direct.close()
            return True

        await wait_for(opens_on_b, timeout=3, what="node-b's stream closed by the client's close")

    stopped, again = await both("POST", "/stop")
    assert stopped.body["status"] == again.body["status"] == "stopped"
    # Stopped: any node answers from the store.
    late, _ = await both("POST", "/say", json={"text": "Too late."})
    assert late.status == 400 and "stopped" in late.message
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{fleet.a.base}/v1.0{path}/stream?accesskey={a.accesskey}")
        assert refused.value.status == 400
    deleted = await a.delete(sid)
    assert deleted.status == 200 and deleted.body["tm_delete"] != "9999-01-01 00:00:00.000000"


async def _closed(stream: StreamClient) -> None:
    while stream.close_code is None:
        await asyncio.sleep(0.02)


async def test_fifty_creates_for_one_call_over_both_nodes_give_one_session(fleet, second_call):
    call = await second_call()
    apis = [fleet.api_a, fleet.api_b] * 25
    replies = await asyncio.gather(*(api.create(call.channel_id) for api in apis))
    statuses = sorted(r.status for r in replies)
    assert statuses == [201] + [409] * 49, [(r.status, r.body) for r in replies if r.status not in (201, 409)]
    (created,) = [r for r in replies if r.status == 201]
    assert all(r.body["error"]["reason"] == "conflict" for r in replies if r.status == 409)
    await fleet.api_a.wait_status(created.body["id"], "active")
    assert (await fleet.api_a.stop(created.body["id"])).status == 200


async def test_the_owner_unreachable_is_a_503_naming_it(fleet, second_call):
    call = await second_call()
    sid = await _session_on_b(fleet, call)
    fleet.b.kill9()
    try:
        a = fleet.api_a
        path = f"/speakings/{sid}"
        for reply in (
            await a.say(sid, "Is anyone there?"),
            await a.flush(sid),
            await a.request("GET", f"{path}/says"),
            await a.stop(sid),
            await a.delete(sid),
        ):
            assert reply.status == 503, reply
            assert reply.body["error"]["reason"] == "node_unreachable", reply
            assert "node-b" in reply.message and fleet.b.base in reply.message, reply
            assert "within 10 s" in reply.message
        stream_url = f"{fleet.a.base}/v1.0{path}/stream?accesskey={a.accesskey}"
        async with aiohttp.ClientSession() as http, http.get(stream_url) as plain:
            assert plain.status == 503 and "node-b" in (await plain.json())["error"]["message"]
        assert (await a.get(sid)).status == 200  # reads come from the store
    finally:
        await fleet.b.start()  # removes what its killed run left in Asterisk 2
    ari = Ari(fleet.second.url, fleet.second.user, fleet.second.password)
    try:
        await wait_for(lambda: _none_left(ari, fleet.b.app), timeout=10, what="node-b's leftovers removed")
    finally:
        await ari.close()


async def _none_left(ari: Ari, app: str) -> bool:
    return not await leftovers(ari, app)
