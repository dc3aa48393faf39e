"""Speaking events, as clients receive them, checked against what the party heard.

Every scenario is checked on every way out (``ways``): the WebSocket, a customer webhook (a
local receiver verifying every signature) and a second ARI application watching the call's
channel (``ChannelUserevent``s, whose variables are all strings): the same sequence, in order,
on each. Say events take their timestamps from played positions: they
equal the say item's ``tm_play_start``/``tm_play_end``, which test_played_positions.py checks
against the recordings.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
import pytest_asyncio
from harness.ari_user_events import AriUserEvents
from harness.audio import render_piper
from harness.daemon import CUSTOMER_A, CUSTOMER_B, KEY_A, KEY_B, Api, SpeakdProcess
from harness.events import EventLog, WsEvents
from harness.hearing import GREETING, LONG, assert_heard, assert_heard_text_within_a_word, where_speech_stops
from harness.webhooks import WebhookReceiver, webhook_section

pytestmark = pytest.mark.asyncio(loop_scope="session")

SECOND = "And this is the second thing I wanted to say."
ALL_OF_A = f"customer_id:{CUSTOMER_A}:speaking:*"


SECRET = "whsec-events-0123456789"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def receiver():
    async with WebhookReceiver(SECRET) as receiver:
        yield receiver


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def operator(ari):
    async with AriUserEvents(ari) as operator:
        yield operator


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def daemon(ari_settings, tmp_path_factory, receiver):
    daemon = SpeakdProcess(
        tmp_path_factory.mktemp("speakd-events"),
        ari_settings["url"],
        ari_settings["user"],
        ari_settings["password"],
        transport="websocket",
        extra_config=webhook_section(receiver.url, SECRET, CUSTOMER_A),
    )
    await daemon.start()
    yield daemon
    await daemon.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def api(daemon):
    client = Api(daemon.base)
    yield client
    await client.close()


@pytest_asyncio.fixture(loop_scope="session")
async def ways(daemon, receiver, operator):
    """Every way out, each following all of customer A's events (the operator: of calls it watches)."""
    async with WsEvents(daemon.base, KEY_A) as ws:
        assert (await ws.subscribe([ALL_OF_A]))["type"] == "subscribed"
        yield [ws, receiver, operator]
    receiver.assert_all_signed()


@pytest.fixture
def watched_call(make_two_party_call, operator):
    """A call whose channel the operator's ARI application watches."""

    async def make():
        call = await make_two_party_call()
        await operator.watch(f"channel:{call.channel_id}")
        return call

    return make


async def says_of(api: Api, speaking_id: str) -> dict[str, dict]:
    reply = await api.request("GET", f"/speakings/{speaking_id}/says")
    assert reply.status == 200, reply
    return {item["say_id"]: item for item in reply.body["result"]}


def by_type(events: list[dict], event_type: str) -> list[dict]:
    return [e for e in events if e["event_type"] == event_type]


def assert_in_time_order(events: list[dict], way: EventLog) -> None:
    stamps = [e["timestamp"] for e in events]
    assert stamps == sorted(stamps), f"{way.name}: timestamps out of order: {stamps}"


@pytest.mark.by_ear
async def test_two_says_played_through(api, ways, watched_call):
    call = await watched_call()
    speaking_id = await api.start_session(call.channel_id, direction="out")
    first = (await api.say(speaking_id, GREETING, client_state="first-state")).body["say_id"]
    second = (await api.say(speaking_id, SECOND, client_state="second-state")).body["say_id"]
    for way in ways:
        await way.wait_for(
            lambda _, way=way: ("speaking_say_finished", second) in way.sequence(speaking_id),
            30,
            "the second say to finish",
        )
    await asyncio.sleep(1.0)  # MixMonitor drops what it has not written when the call ends
    assert (await api.stop(speaking_id)).status == 200
    says = await says_of(api, speaking_id)

    for way in ways:
        events = await way.wait_stopped(speaking_id)
        assert way.sequence(speaking_id) == [
            ("speaking_created", ""),
            ("speaking_started", ""),
            ("speaking_say_started", first),
            ("speaking_say_finished", first),
            ("speaking_say_started", second),
            ("speaking_say_finished", second),
            ("speaking_stopped", ""),
        ], way.name
        assert_in_time_order(events, way)
        for event in events:
            assert event["topic"] == f"customer_id:{CUSTOMER_A}:speaking:{speaking_id}"
        created, started, *say_events, stopped = events
        assert created["data"]["status"] == "initiating" and started["data"]["status"] == "active"
        assert stopped["data"]["status"] == "stopped" and stopped["data"]["reason"] == "stop"
        for event in say_events:
            data = event["data"]
            say = says[data["say_id"]]
            assert data["speaking_id"] == speaking_id
            assert data["client_state"] == {first: "first-state", second: "second-state"}[data["say_id"]]
            assert data["text"] == say["text"]
            # Timing from played positions, not from when the audio was sent.
            key = "tm_play_start" if event["event_type"] == "speaking_say_started" else "tm_play_end"
            assert event["timestamp"] == say[key], (way.name, event, say)
        assert by_type(events, "speaking_say_finished")[0]["data"]["heard_text"] == GREETING

    recording = await call.recording("alice")
    assert_heard(recording, render_piper(GREETING), "alice (first say)")
    assert_heard(recording, render_piper(SECOND), "alice (second say)")


@pytest.mark.by_ear
async def test_flush_mid_say_reports_what_was_heard(api, ways, watched_call):
    call = await watched_call()
    speaking_id = await api.start_session(call.channel_id, direction="out")
    cut = (await api.say(speaking_id, LONG, client_state="long")).body["say_id"]
    for way in ways:
        await way.wait_for(
            lambda _, way=way: ("speaking_say_started", cut) in way.sequence(speaking_id), 30, "the say to start"
        )
    await asyncio.sleep(2.6)
    assert (await api.flush(speaking_id)).status == 200
    await asyncio.sleep(1.5)
    assert (await api.stop(speaking_id)).status == 200
    say = (await says_of(api, speaking_id))[cut]
    recording = await call.recording("alice")
    _, stopped_at = where_speech_stops(recording, LONG, say["played_ms"])

    for way in ways:
        events = await way.wait_stopped(speaking_id)
        assert way.sequence(speaking_id) == [
            ("speaking_created", ""),
            ("speaking_started", ""),
            ("speaking_say_started", cut),
            ("speaking_say_interrupted", cut),
            ("speaking_stopped", ""),
        ], way.name
        assert_in_time_order(events, way)
        (interrupted,) = by_type(events, "speaking_say_interrupted")
        data = interrupted["data"]
        assert data["reason"] == "flush" and data["client_state"] == "long"
        assert (data["heard_text"], str(data["heard_chars"])) == (say["heard_text"], str(say["heard_chars"]))
        assert_heard_text_within_a_word(LONG, data["heard_text"], int(data["heard_chars"]), stopped_at)


async def test_hangup_mid_say(api, ways, watched_call):
    call = await watched_call()
    speaking_id = await api.start_session(call.channel_id, direction="out")
    cut = (await api.say(speaking_id, LONG)).body["say_id"]
    queued = (await api.say(speaking_id, SECOND)).body["say_id"]
    for way in ways:
        await way.wait_for(
            lambda _, way=way: ("speaking_say_started", cut) in way.sequence(speaking_id), 30, "the say to start"
        )
    await asyncio.sleep(1.0)
    await call.hangup()

    for way in ways:
        events = await way.wait_stopped(speaking_id, timeout=10)
        assert way.sequence(speaking_id) == [
            ("speaking_created", ""),
            ("speaking_started", ""),
            ("speaking_say_started", cut),
            ("speaking_say_interrupted", cut),
            ("speaking_say_interrupted", queued),
            ("speaking_stopped", ""),
        ], way.name
        assert_in_time_order(events, way)
        first, second = by_type(events, "speaking_say_interrupted")
        assert first["data"]["reason"] == second["data"]["reason"] == "hangup"
        assert 0 < int(first["data"]["heard_chars"]) < len(LONG) and int(second["data"]["heard_chars"]) == 0
        assert by_type(events, "speaking_stopped")[0]["data"]["reason"] == "hangup"


async def test_a_customer_never_receives_another_customers_events(api, daemon, ways, watched_call):
    async with WsEvents(daemon.base, KEY_B, name="customer B") as b:
        # Every way of asking for A's events is refused with a message; B's own are allowed.
        for topics in (
            [f"customer_id:{CUSTOMER_A}:speaking:*"],
            ["customer_id:*"],
            ["*"],
            [f"customer_id:{CUSTOMER_A}*"],
            [f"customer_id:{CUSTOMER_B}:speaking:*", f"customer_id:{CUSTOMER_A}:speaking:speaking_created"],
        ):
            reply = await b.subscribe(topics)
            assert reply["type"] == "error" and reply["message"], (topics, reply)
        reply = await b.subscribe([f"customer_id:{CUSTOMER_B}:speaking:*"])
        assert reply == {"type": "subscribed", "topics": [f"customer_id:{CUSTOMER_B}:speaking:*"]}
        for bad in ("not json", '{"type": "shout"}', '{"type": "subscribe", "topics": "x"}'):
            reply = await b.send(bad)
            assert reply["type"] == "error" and reply["message"], (bad, reply)

        call = await watched_call()
        speaking_id = await api.start_session(call.channel_id, direction="out")
        say_id = (await api.say(speaking_id, GREETING)).body["say_id"]
        for way in ways:
            await way.wait_for(
                lambda _, way=way: ("speaking_say_finished", say_id) in way.sequence(speaking_id), 30, "the say"
            )
        assert (await api.stop(speaking_id)).status == 200
        await ways[0].wait_stopped(speaking_id)
        await asyncio.sleep(0.3)
        assert b.events == [], "customer B received customer A's events"


async def test_event_type_topics_deliver_each_event_once(api, daemon, watched_call):
    """Issue 12: every event is also on customer_id:<id>:speaking:<event type>."""
    async with (
        WsEvents(daemon.base, KEY_A, name="finished only") as finished,
        WsEvents(daemon.base, KEY_A, name="overlapping") as overlapping,
    ):
        await finished.subscribe([f"customer_id:{CUSTOMER_A}:speaking:speaking_say_finished"])
        call = await watched_call()
        speaking_id = await api.start_session(call.channel_id, direction="out")
        # Matched through both topics (its id, and the type), and through the wildcard: once.
        await overlapping.subscribe(
            [
                f"customer_id:{CUSTOMER_A}:speaking:{speaking_id}",
                f"customer_id:{CUSTOMER_A}:speaking:speaking_say_finished",
                ALL_OF_A,
            ]
        )
        say_id = (await api.say(speaking_id, GREETING)).body["say_id"]
        await finished.wait_for(lambda events: len(events) == 1, 30, "the say to finish")
        assert (await api.stop(speaking_id)).status == 200
        await overlapping.wait_stopped(speaking_id)
        await asyncio.sleep(0.3)
        assert [(e["event_type"], e["data"]["say_id"]) for e in finished.events] == [("speaking_say_finished", say_id)]
        assert finished.events[0]["topic"] == f"customer_id:{CUSTOMER_A}:speaking:{speaking_id}"
        assert overlapping.sequence(speaking_id) == [
            ("speaking_say_started", say_id),
            ("speaking_say_finished", say_id),
            ("speaking_stopped", ""),
        ]
        # Unsubscribing stops them.
        reply = await finished.unsubscribe([f"customer_id:{CUSTOMER_A}:speaking:speaking_say_finished"])
        assert reply == {"type": "subscribed", "topics": []}


async def test_a_websocket_without_credentials_is_refused(daemon):
    async with aiohttp.ClientSession() as http, http.get(f"{daemon.base}/v1.0/ws") as resp:
        assert resp.status == 401
        body = await resp.json()
        assert body["error"]["reason"] and body["error"]["message"]


async def test_shutdown_tells_event_clients_and_closes_their_sockets(ari_settings, tmp_path, make_two_party_call):
    daemon = SpeakdProcess(
        tmp_path, ari_settings["url"], ari_settings["user"], ari_settings["password"], transport="websocket"
    )
    await daemon.start()
    try:
        async with WsEvents(daemon.base, KEY_A) as ws:
            await ws.subscribe([ALL_OF_A])
            api = Api(daemon.base)
            try:
                call = await make_two_party_call()
                speaking_id = await api.start_session(call.channel_id, direction="out")
                say_id = (await api.say(speaking_id, LONG)).body["say_id"]
                await ws.wait_for(lambda _: ("speaking_say_started", say_id) in ws.sequence(speaking_id), 30, "start")
            finally:
                await api.close()
            assert await daemon.stop() == 0, "speakd should exit cleanly with an event client connected"
            events = ws.of(speaking_id)
            assert [e["event_type"] for e in events[-2:]] == ["speaking_say_interrupted", "speaking_stopped"]
            assert events[-2]["data"]["reason"] == events[-1]["data"]["reason"] == "shutdown"
            await ws.wait_for(lambda _: ws.closed is not None, 5, "the socket to close")
            assert ws.closed == (1001, "speakd is shutting down")
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            await daemon.stop()
