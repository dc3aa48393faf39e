"""Events across a fleet: two speakd nodes on one PostgreSQL (the tests' own server), both on the
sandbox's Asterisk 1. A customer's /v1.0/ws client on either node receives every event of its
sessions on both nodes, each once, in the order a client on the owning node sees them; another
customer's client receives none of them. A customer's webhook endpoint receives each event once
(by X-Speakd-Event-Id) while both nodes run, across a restart of the node delivering it, and
after that node is killed.
PostgreSQL restarted while a session's events flow: the other node's client still gets them
all, once, in order."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
import pytest_asyncio
from conftest_helpers import wait_for
from harness.daemon import CUSTOMER_A, CUSTOMER_B, KEY_A, KEY_B, Api, SpeakdProcess
from harness.events import WsEvents
from harness.postgres import postgres, postgres_server  # noqa: F401 (fixtures)
from harness.webhooks import WebhookReceiver, webhook_section

pytestmark = pytest.mark.asyncio(loop_scope="session")

SECRET = "whsec-fleet-0123456789"
ALL_OF_A = f"customer_id:{CUSTOMER_A}:speaking:*"
ALL_OF_B = f"customer_id:{CUSTOMER_B}:speaking:*"


class Fleet:
    def __init__(self, a: SpeakdProcess, b: SpeakdProcess) -> None:
        self.a, self.b = a, b
        self.api_a, self.api_b = Api(a.base), Api(b.base)


class SlowReceiver(WebhookReceiver):
    """An endpoint taking 0.2 s per POST: two nodes delivering one customer's rows would overlap
    on the same row (each reads the oldest, POSTs it, deletes it), and it would arrive twice."""

    async def _handle(self, request):
        await asyncio.sleep(0.2)
        return await super()._handle(request)


@pytest_asyncio.fixture(loop_scope="session")
async def receiver():
    async with SlowReceiver(SECRET) as r:
        yield r


@pytest_asyncio.fixture(loop_scope="session")
async def fleet(ari_settings, tmp_path, postgres, receiver):  # noqa: F811
    url = postgres.new_database()
    args = (ari_settings["url"], ari_settings["user"], ari_settings["password"])
    hooks = webhook_section(receiver.url, SECRET, CUSTOMER_A)
    nodes = []
    for name in ("a", "b"):
        daemon = SpeakdProcess(tmp_path / name, *args, store_url=url, transport="websocket")
        daemon.extra_config += f'{hooks}\n[node]\nid = "node-{name}"\n'
        daemon.workdir.mkdir()
        await daemon.start()  # a first: it takes the webhook claim
        nodes.append(daemon)
    fleet = Fleet(*nodes)
    yield fleet
    for api in (fleet.api_a, fleet.api_b):
        await api.close()
    for daemon in nodes:
        await daemon.stop()


async def _session(api: Api, channel_id: str, *texts: str) -> str:
    """A session on the node ``api`` talks to: says played one after the other, then stopped."""
    sid = await api.start_session(channel_id, direction="out")
    say_ids = [(await api.say(sid, text)).body["say_id"] for text in texts]
    await _wait_played(api, sid, say_ids[-1])
    assert (await api.stop(sid)).status == 200
    return sid


async def _wait_played(api: Api, sid: str, say_id: str, timeout: float = 30.0) -> None:
    async def played():
        reply = await api.request("GET", f"/speakings/{sid}/says")
        if reply.status != 200:
            return None
        return next((i for i in reply.body["result"] if i["say_id"] == say_id and i["status"] == "played"), None)

    await wait_for(played, timeout=timeout, interval=0.1, what=f"say {say_id} played")


@contextlib.asynccontextmanager
async def _client(base: str, key: str, topic: str):
    async with WsEvents(base, key) as ws:
        assert (await ws.subscribe([topic]))["type"] == "subscribed"
        yield ws


async def test_events_of_either_nodes_sessions_reach_both_nodes_clients_once_in_order(
    fleet, receiver, make_two_party_call
):
    async with (
        _client(fleet.a.base, KEY_A, ALL_OF_A) as on_a,
        _client(fleet.b.base, KEY_A, ALL_OF_A) as on_b,
        _client(fleet.b.base, KEY_B, ALL_OF_B) as other_customer,
    ):
        on_a.name, on_b.name = "client on a", "client on b"
        # The endpoint down meanwhile: both nodes' rows wait in the one outbox, and once it is back
        # a node delivering rows it does not hold would POST them too (retrying every second).
        await receiver.set_mode("down")
        sessions = []
        for api in (fleet.api_a, fleet.api_b):  # a session owned by each node
            call = await make_two_party_call()
            sid = await _session(api, call.channel_id, "The first sentence is here.", "And a second one.")
            sessions.append(sid)
            for ws in (on_a, on_b):
                await ws.wait_stopped(sid)
        await receiver.set_mode("healthy")
        for sid in sessions:
            await receiver.wait_stopped(sid, timeout=20)
        await asyncio.sleep(2.0)  # anything late (a duplicate) would arrive by now
        for sid in sessions:
            owner_view = on_a.of(sid) if sid == sessions[0] else on_b.of(sid)
            assert [e["event_type"] for e in owner_view][:2] == ["speaking_created", "speaking_started"]
            assert len(owner_view) == 7  # created, started, two says' started+finished, stopped
            assert on_a.of(sid) == on_b.of(sid), "the other node's client: every event, once, in order"
            assert receiver.of(sid) == owner_view, "the webhook: each event once, in order"
        assert other_customer.events == []
        assert len(on_a.events) == len(on_b.events) == 14
    assert receiver.duplicates == 0 and len(receiver.ids) == 14


async def test_each_webhook_event_once_across_a_restart_and_a_death_of_the_delivering_node(
    fleet, receiver, make_two_party_call
):
    """Node a (started first) holds the customer's claim; it restarts while node b's sessions run;
    then b, which took the claim, is killed."""
    async with _client(fleet.b.base, KEY_A, ALL_OF_A) as on_b:
        call = await make_two_party_call()
        first = await _session(fleet.api_b, call.channel_id, "Before the restart.")
        await receiver.wait_stopped(first, timeout=15)

        # a stops (giving up its claim): b delivers b's own events from now on.
        assert await fleet.a.stop() == 0
        second = await _session(fleet.api_b, call.channel_id, "While node a is away.")
        await receiver.wait_stopped(second, timeout=15)

        # a back: b still holds the claim; a's sessions' rows wake b.
        await fleet.a.start()
        third = await _session(fleet.api_a, call.channel_id, "Node a is back.")
        await receiver.wait_stopped(third, timeout=15)
        await on_b.wait_stopped(third, timeout=15)
        await asyncio.sleep(1.0)
        for sid in (first, second, third):
            assert receiver.of(sid) == on_b.of(sid) and len(on_b.of(sid)) == 5
    assert receiver.duplicates == 0 and len(receiver.ids) == 15

    # b, holding the claim, dies (kill -9: nothing given up): its lease lapses and a takes it.
    fleet.b.kill9()
    async with _client(fleet.a.base, KEY_A, ALL_OF_A) as on_a:
        fourth = await _session(fleet.api_a, call.channel_id, "Node b is gone.")
        await on_a.wait_stopped(fourth)
        await receiver.wait_stopped(fourth, timeout=30)  # the lease (12 s) and a claim round (4 s)
        await asyncio.sleep(1.0)
        assert receiver.of(fourth) == on_a.of(fourth) and len(on_a.of(fourth)) == 5
    assert receiver.duplicates == 0 and len(receiver.ids) == 20
    assert "fleet_events_write_failed" not in fleet.a.log_text() + fleet.b.log_text()


async def test_postgresql_restarted_while_events_flow(fleet, postgres, make_two_party_call):  # noqa: F811
    texts = [f"Sentence number {n} of a session that outlives its database restart." for n in range(1, 5)]
    async with _client(fleet.a.base, KEY_A, ALL_OF_A) as on_a, _client(fleet.b.base, KEY_A, ALL_OF_A) as on_b:
        call = await make_two_party_call()
        sid = await fleet.api_a.start_session(call.channel_id, direction="out")
        say_ids = [(await fleet.api_a.say(sid, text)).body["say_id"] for text in texts]
        await on_a.wait_for(lambda _: len(on_a.of(sid)) >= 3, 15, "the first say started")
        await asyncio.to_thread(postgres.restart)  # while the says play and their events happen
        await _wait_played(fleet.api_a, sid, say_ids[-1], timeout=60)

        async def stopped():
            reply = await fleet.api_a.stop(sid)  # refused (503) until the store is back
            return reply if reply.status == 200 else None

        await wait_for(stopped, timeout=30, interval=0.5, what="the stop taken")
        await on_a.wait_stopped(sid)
        await on_b.wait_stopped(sid, timeout=30)
        await asyncio.sleep(1.0)
        assert len(on_a.of(sid)) == 2 + 2 * len(texts) + 1
        assert on_b.of(sid) == on_a.of(sid), "every event once, in order, across the restart"
    log_b = fleet.b.log_text()
    assert log_b.count("fleet_listener_lost") == 1 and log_b.count("fleet_listener_back") == 1
