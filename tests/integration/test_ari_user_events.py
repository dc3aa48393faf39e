"""ARI user events, both ways, against the sandbox Asterisk and the real daemon.

Out: an operator's ARI application (the test's own, a second application beside speakd's)
watches a call's channel, or a conference's bridge, and receives every speaking event as a
``ChannelUserevent``, in order, with the same content as the WebSocket's. In: the same
application sends ``speakd_say``/``speakd_flush``/``speakd_stop`` to speakd's application and is
heard on its channel; a refused command comes back as ``speakd_error``.
"""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio
from harness.ari_user_events import AriUserEvents
from harness.audio import render_piper
from harness.daemon import CUSTOMER_A, CUSTOMER_B, KEY_A, Api, SpeakdProcess
from harness.events import WsEvents
from harness.hearing import GREETING, LONG, assert_heard

from speakd.events.ari_user_events import flat

pytestmark = pytest.mark.asyncio(loop_scope="session")

OWNER = "SPEAKD_CUSTOMER_ID"
FIRST, SECOND = "The first sentence is here.", "And the second one follows it at once."


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def daemon(ari_settings, tmp_path_factory):
    """speakd on the websocket transport, with an operator customer (B) for channels naming none."""
    process = SpeakdProcess(
        tmp_path_factory.mktemp("speakd-ari-events"),
        ari_settings["url"],
        ari_settings["user"],
        ari_settings["password"],
        transport="websocket",
        env={"SPEAKD_ARI_OPERATOR_CUSTOMER_ID": CUSTOMER_B},
    )
    await process.start()
    yield process
    await process.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def api(daemon):
    client = Api(daemon.base)
    yield client
    await client.close()


@pytest_asyncio.fixture(loop_scope="session")
async def operator(ari):
    async with AriUserEvents(ari) as app:
        yield app


@pytest_asyncio.fixture(loop_scope="session")
async def ws(daemon):
    async with WsEvents(daemon.base, KEY_A) as client:
        assert (await client.subscribe([f"customer_id:{CUSTOMER_A}:speaking:*"]))["type"] == "subscribed"
        yield client


def assert_same_as_websocket(ari_events: list[dict], ws_events: list[dict]) -> None:
    """The same events, in the same order, with the same content (as strings)."""
    assert [e["event_type"] for e in ari_events] == [e["event_type"] for e in ws_events]
    for got, sent in zip(ari_events, ws_events, strict=True):
        assert (got["timestamp"], got["topic"]) == (sent["timestamp"], sent["topic"])
        expected = {k: flat(v) for k, v in sent["data"].items()}
        assert {k: v for k, v in got["data"].items() if k in expected} == expected, got["event_type"]


async def test_two_says_played_through(api, ws, operator, make_two_party_call):
    call = await make_two_party_call()
    await operator.watch(f"channel:{call.channel_id}")
    speaking_id = await api.start_session(call.channel_id, direction="out")
    first = (await api.say(speaking_id, FIRST, client_state="one")).body["say_id"]
    second = (await api.say(speaking_id, SECOND, client_state="two")).body["say_id"]
    await ws.wait_for(lambda _: ("speaking_say_finished", second) in ws.sequence(speaking_id), 30, "second say")
    assert (await api.stop(speaking_id)).status == 200
    events = await operator.wait_stopped(speaking_id)
    await ws.wait_stopped(speaking_id)

    assert operator.sequence(speaking_id) == [
        ("speaking_created", ""),
        ("speaking_started", ""),
        ("speaking_say_started", first),
        ("speaking_say_finished", first),
        ("speaking_say_started", second),
        ("speaking_say_finished", second),
        ("speaking_stopped", ""),
    ]
    assert_same_as_websocket(events, ws.of(speaking_id))
    # Raised on the call's channel: the application sees which channel it is about.
    assert set(operator.sources) == {f"channel:{call.channel_id}"}
    finished = [e for e in events if e["event_type"] == "speaking_say_finished"]
    assert [(e["data"]["client_state"], e["data"]["heard_text"]) for e in finished] == [("one", FIRST), ("two", SECOND)]
    assert events[-1]["data"]["reason"] == "stop"
    assert all(e["topic"] == f"customer_id:{CUSTOMER_A}:speaking:{speaking_id}" for e in events)


async def test_flush_mid_say(api, ws, operator, make_two_party_call):
    call = await make_two_party_call()
    await operator.watch(f"channel:{call.channel_id}")
    speaking_id = await api.start_session(call.channel_id, direction="out")
    cut = (await api.say(speaking_id, LONG)).body["say_id"]
    await operator.wait_type(speaking_id, "speaking_say_started")
    await asyncio.sleep(2.0)
    assert (await api.flush(speaking_id)).status == 200
    interrupted = await operator.wait_type(speaking_id, "speaking_say_interrupted")
    after = (await api.say(speaking_id, FIRST)).body["say_id"]
    await operator.wait_for(lambda _: ("speaking_say_finished", after) in operator.sequence(speaking_id), 30, "after")
    await api.stop(speaking_id)
    events = await operator.wait_stopped(speaking_id)
    await ws.wait_stopped(speaking_id)

    assert operator.sequence(speaking_id) == [
        ("speaking_created", ""),
        ("speaking_started", ""),
        ("speaking_say_started", cut),
        ("speaking_say_interrupted", cut),
        ("speaking_say_started", after),
        ("speaking_say_finished", after),
        ("speaking_stopped", ""),
    ]
    assert_same_as_websocket(events, ws.of(speaking_id))
    data = interrupted["data"]
    assert data["reason"] == "flush"
    assert data["heard_text"] and LONG.startswith(data["heard_text"]) and len(data["heard_text"]) < len(LONG)
    assert data["heard_chars"] == str(len(data["heard_text"]))


async def test_hangup_mid_say_still_reaches_the_application(api, ws, operator, make_two_party_call):
    call = await make_two_party_call()
    await operator.watch(f"channel:{call.channel_id}")
    speaking_id = await api.start_session(call.channel_id, direction="out")
    said = (await api.say(speaking_id, LONG)).body["say_id"]
    await operator.wait_type(speaking_id, "speaking_say_started")
    await asyncio.sleep(1.0)
    await call.hangup()
    events = await operator.wait_stopped(speaking_id)
    await ws.wait_stopped(speaking_id)

    assert operator.sequence(speaking_id) == [
        ("speaking_created", ""),
        ("speaking_started", ""),
        ("speaking_say_started", said),
        ("speaking_say_interrupted", said),
        ("speaking_stopped", ""),
    ]
    assert_same_as_websocket(events, ws.of(speaking_id))
    assert events[-2]["data"]["reason"] == "hangup" and events[-1]["data"]["reason"] == "hangup"
    # The channel had gone by then: raised without it, the variables say where it happened.
    assert events[-1]["data"]["source"] == f"channel:{call.channel_id}"
    assert set(operator.sources[:3]) == {f"channel:{call.channel_id}"}
    assert operator.sources[-1] in ("", f"channel:{call.channel_id}")  # "" in every sandbox run so far


async def test_a_conference_session_is_raised_on_its_bridge(api, ws, operator, mixing_conference):
    conf = await mixing_conference(n=2)
    await operator.watch(f"bridge:{conf.bridge_id}")
    speaking_id = await api.start_session(conf.bridge_id, reference_type="confbridge")
    said = (await api.say(speaking_id, FIRST)).body["say_id"]
    await operator.wait_type(speaking_id, "speaking_say_finished")
    await api.stop(speaking_id)
    events = await operator.wait_stopped(speaking_id)
    await ws.wait_stopped(speaking_id)

    assert operator.sequence(speaking_id) == [
        ("speaking_created", ""),
        ("speaking_started", ""),
        ("speaking_say_started", said),
        ("speaking_say_finished", said),
        ("speaking_stopped", ""),
    ]
    assert_same_as_websocket(events, ws.of(speaking_id))
    assert set(operator.sources) == {f"bridge:{conf.bridge_id}"}


async def test_an_application_that_does_not_watch_the_channel_gets_nothing(api, operator, make_two_party_call, ari):
    call = await make_two_party_call()
    async with AriUserEvents(ari) as bystander:
        await operator.watch(f"channel:{call.channel_id}")
        speaking_id = await api.start_session(call.channel_id, direction="out")
        await api.stop(speaking_id)
        await operator.wait_stopped(speaking_id)
        await asyncio.sleep(0.5)
        assert bystander.raw == []


# -- speakd driven by an operator's application ------------------------------------------------


@pytest.mark.by_ear
async def test_speakd_say_is_heard_on_the_applications_channel(daemon, operator, make_two_party_call):
    call = await make_two_party_call(variables={OWNER: CUSTOMER_A})
    await operator.watch(f"channel:{call.channel_id}")
    await operator.command(daemon.app, "speakd_say", call.channel_id, text=GREETING, direction="out", client_state="op")
    await operator.wait_for(lambda _: bool(operator.session_ids()), 10, "a session")
    [speaking_id] = operator.session_ids()
    finished = await operator.wait_type(speaking_id, "speaking_say_finished")
    assert finished["data"]["client_state"] == "op"
    assert finished["topic"] == f"customer_id:{CUSTOMER_A}:speaking:{speaking_id}"  # the channel's owner
    reference = render_piper(GREETING)
    assert_heard(await call.recording("alice"), reference, "alice")
    assert operator.errors == []


async def test_speakd_flush_and_stop(daemon, operator, make_two_party_call):
    call = await make_two_party_call()  # no owner: the operator customer (B) speaks
    await operator.watch(f"channel:{call.channel_id}")
    await operator.command(daemon.app, "speakd_say", call.channel_id, text=LONG, direction="out", command_id="c1")
    await operator.wait_for(lambda _: bool(operator.session_ids()), 10, "a session")
    [speaking_id] = operator.session_ids()
    started = await operator.wait_type(speaking_id, "speaking_say_started")
    assert started["topic"] == f"customer_id:{CUSTOMER_B}:speaking:{speaking_id}"
    assert started["data"]["command_id"] == "c1"
    await asyncio.sleep(1.0)
    await operator.command(daemon.app, "speakd_flush", call.channel_id)
    interrupted = await operator.wait_type(speaking_id, "speaking_say_interrupted")
    assert interrupted["data"]["reason"] == "flush"
    await operator.command(daemon.app, "speakd_say", call.channel_id, text=FIRST)  # the live session's
    await operator.wait_type(speaking_id, "speaking_say_finished")
    await operator.command(daemon.app, "speakd_stop", call.channel_id)
    stopped = (await operator.wait_stopped(speaking_id))[-1]
    assert stopped["data"]["reason"] == "stop"
    assert len(operator.session_ids()) == 1 and operator.errors == []


async def test_a_refused_command_comes_back_as_speakd_error(daemon, operator, make_two_party_call):
    call = await make_two_party_call(variables={OWNER: CUSTOMER_A})
    await operator.watch(f"channel:{call.channel_id}")
    await operator.command(daemon.app, "speakd_say", call.channel_id, text="  ", command_id="bad-1")
    error = await operator.wait_error()
    assert (error["command"], error["reason"], error["command_id"]) == ("speakd_say", "invalid_field", "bad-1")
    assert "'text' must not be empty" in error["message"]
    assert error["channel_id"] == call.channel_id
    operator.errors.clear()
    await operator.command(daemon.app, "speakd_stop", call.channel_id)
    error = await operator.wait_error()
    assert (error["command"], error["reason"]) == ("speakd_stop", "not_found")
    assert operator.events == []  # nothing was spoken
    assert "ari_command_refused" in daemon.log_text()


async def test_a_channel_naming_no_customer_is_refused_without_an_operator_customer(
    ari_settings, tmp_path, ari, make_two_party_call
):
    plain = SpeakdProcess(tmp_path, ari_settings["url"], ari_settings["user"], ari_settings["password"])
    await plain.start()
    try:
        call = await make_two_party_call()
        async with AriUserEvents(ari) as sender:  # it does not watch the channel: it names itself
            await sender.command(plain.app, "speakd_say", call.channel_id, text="Hello.", reply_app=sender.app)
            error = await sender.wait_error()
        assert (error["command"], error["reason"]) == ("speakd_say", "no_customer")
        assert OWNER in error["message"] and "operator_customer_id" in error["message"]
    finally:
        await plain.stop()
