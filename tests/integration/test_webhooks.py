"""Customer webhooks against the sandbox Asterisk with the real daemon: the events of a real call
arrive signed and in order; an endpoint that is down or hangs delays neither the audio nor the
API, and gets its events once it is back, also across a speakd restart.

The receiver (harness/webhooks.py) verifies every POST's signature itself; a bad one fails the
test when the receiver closes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import time
from dataclasses import dataclass, field

import pytest
import pytest_asyncio
from conftest_helpers import wait_for
from harness.audio import render_piper
from harness.daemon import CUSTOMER_A, KEY_A, Api, SpeakdProcess
from harness.events import WsEvents
from harness.hearing import GREETING, assert_heard
from harness.webhooks import WebhookReceiver, webhook_section

pytestmark = pytest.mark.asyncio(loop_scope="session")

SECRET = "whsec-integration-0123456789"
REQUEST_TIMEOUT_S = 3.0  # what a hanging endpoint costs each POST: far above any API answer


def webhook_config(url: str) -> str:
    return webhook_section(url, SECRET, CUSTOMER_A, request_timeout=REQUEST_TIMEOUT_S)


def start_s(stamp: str) -> float:
    """Unix time of a spec timestamp (UTC, ``2025-06-15 14:30:00.123456``)."""
    return dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=dt.UTC).timestamp()


def one_say(say_id: str) -> list[tuple[str, str]]:
    return [
        ("speaking_created", ""),
        ("speaking_started", ""),
        ("speaking_say_started", say_id),
        ("speaking_say_finished", say_id),
        ("speaking_stopped", ""),
    ]


@pytest_asyncio.fixture(loop_scope="session")
async def receiver():
    async with WebhookReceiver(SECRET) as r:
        yield r


@pytest_asyncio.fixture(loop_scope="session")
async def daemon(ari_settings, receiver, tmp_path):
    d = SpeakdProcess(
        tmp_path,
        ari_settings["url"],
        ari_settings["user"],
        ari_settings["password"],
        transport="websocket",
        extra_config=webhook_config(receiver.url),
    )
    await d.start()
    yield d
    await d.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def api(daemon):
    client = Api(daemon.base)
    yield client
    await client.close()


async def wait_say(api: Api, sid: str, say_id: str, status: str, timeout: float = 20.0) -> dict:
    async def reached():
        reply = await api.request("GET", f"/speakings/{sid}/says")
        item = next(i for i in reply.body["result"] if i["say_id"] == say_id) if reply.status == 200 else None
        return item if item and item["status"] == status else None

    return await wait_for(reached, timeout=timeout, interval=0.05, what=f"say {say_id} {status}")


async def test_two_says_arrive_in_order_signed_as_over_the_websocket(api, receiver, make_two_party_call):
    call = await make_two_party_call()
    async with WsEvents(api.base, KEY_A) as ws:
        await ws.subscribe([f"customer_id:{CUSTOMER_A}:speaking:*"])
        sid = await api.start_session(call.channel_id, direction="out")
        first = (await api.say(sid, "The first sentence is here.")).body["say_id"]
        second = (await api.say(sid, "And the second one follows it at once.")).body["say_id"]
        await wait_say(api, sid, second, "played")
        assert (await api.stop(sid)).status == 200
        await ws.wait_stopped(sid)
        hooked = await receiver.wait_stopped(sid, timeout=10)
    expected = [
        ("speaking_created", ""),
        ("speaking_started", ""),
        ("speaking_say_started", first),
        ("speaking_say_finished", first),
        ("speaking_say_started", second),
        ("speaking_say_finished", second),
        ("speaking_stopped", ""),
    ]
    assert receiver.sequence(sid) == expected
    assert ws.sequence(sid) == expected
    assert hooked == ws.of(sid), "the webhook POSTs exactly the envelopes the WebSocket sends"
    assert hooked[-1]["data"]["reason"] == "stop"
    assert hooked[3]["data"]["heard_text"] == "The first sentence is here."
    assert receiver.duplicates == 0
    receiver.assert_all_signed()


@dataclass
class Run:
    """One session with one say, timed as a client sees it."""

    sid: str = ""
    say_id: str = ""
    api_s: dict[str, float] = field(default_factory=dict)  # each API verb's answer time
    play_delay_s: float = 0.0  # say request -> the say's tm_play_start

    @property
    def slowest_answer(self) -> float:
        return max(self.api_s.values())


async def timed(run: Run, name: str, request):
    started = time.monotonic()
    reply = await request
    run.api_s[name] = time.monotonic() - started
    return reply


async def speak_once(api: Api, call) -> Run:
    run = Run()
    created = await timed(run, "create", api.create(call.channel_id, direction="out"))
    assert created.status == 201, created
    run.sid = created.body["id"]
    await api.wait_status(run.sid, "active")
    asked = time.time()
    said = await timed(run, "say", api.say(run.sid, GREETING))
    assert said.status == 200, said
    run.say_id = said.body["say_id"]
    await timed(run, "get", api.get(run.sid))
    item = await wait_say(api, run.sid, run.say_id, "played")
    run.play_delay_s = start_s(item["tm_play_start"]) - asked
    await timed(run, "says", api.request("GET", f"/speakings/{run.sid}/says"))
    assert (await timed(run, "stop", api.stop(run.sid))).status == 200
    return run


@pytest.mark.by_ear
@pytest.mark.parametrize("fault", ["down", "hanging"])
async def test_an_endpoint_down_or_hanging_delays_neither_audio_nor_api(
    api, daemon, receiver, make_two_party_call, fault
):
    reference = render_piper(GREETING)

    healthy_call = await make_two_party_call()
    healthy = await speak_once(api, healthy_call)
    await receiver.wait_stopped(healthy.sid, timeout=10)

    await receiver.set_mode(fault)
    faulty_call = await make_two_party_call()
    faulty = await speak_once(api, faulty_call)
    # The endpoint really was failing while the session ran: the daemon was trying it.
    if fault == "hanging":
        assert receiver.posts["hanging"] >= 1
    else:
        assert '"webhook_attempt_failed"' in daemon.log_text()
    assert receiver.of(faulty.sid) == []

    timings = f"healthy {healthy}\n{fault} {faulty}"
    # A hanging POST costs REQUEST_TIMEOUT_S: an answer waiting on it would show it whole.
    for verb, seconds in faulty.api_s.items():
        assert seconds < max(3 * healthy.api_s[verb], healthy.api_s[verb] + 0.5), f"{verb} slowed\n{timings}"
    assert faulty.play_delay_s < healthy.play_delay_s + 0.5, f"the say started late\n{timings}"
    for call in (healthy_call, faulty_call):
        assert_heard(await call.recording("alice"), reference, "alice")

    await receiver.set_mode("healthy")
    events = await receiver.wait_stopped(faulty.sid, timeout=REQUEST_TIMEOUT_S + 10)
    assert receiver.sequence(faulty.sid) == one_say(faulty.say_id)
    assert receiver.sequence(healthy.sid) == one_say(healthy.say_id)
    assert events[-1]["data"]["reason"] == "stop"
    receiver.assert_all_signed()


def outbox_rows(daemon: SpeakdProcess) -> list[tuple[str, str]]:
    with sqlite3.connect(daemon.workdir / "speakd.sqlite3") as db:
        return db.execute("SELECT customer_id, event_type FROM webhook_outbox ORDER BY seq").fetchall()


@pytest.mark.parametrize("how", ["sigterm", "kill9"])
async def test_events_left_in_the_outbox_are_delivered_after_a_restart(api, daemon, receiver, make_two_party_call, how):
    await receiver.set_mode("down")
    call = await make_two_party_call()
    sid = await api.start_session(call.channel_id, direction="out")
    say_id = (await api.say(sid, "Said while the webhook endpoint was down.")).body["say_id"]
    await wait_say(api, sid, say_id, "played")
    await wait_for(lambda: '"webhook_attempt_failed"' in daemon.log_text(), what="a failed POST")
    # The session is still live: a SIGTERM stops it (reason shutdown), and that last event too
    # must reach the outbox before the store closes; after a kill -9 the next run's recovery
    # reports it (reason error).
    if how == "sigterm":
        assert await daemon.stop() == 0
        assert outbox_rows(daemon) == [(CUSTOMER_A, t) for t, _ in one_say(say_id)], (
            "every event of the session waits in the outbox"
        )
    else:
        await asyncio.sleep(0.3)  # the outbox write is milliseconds behind the event
        daemon.kill9()
        assert [t for _, t in outbox_rows(daemon)] == [t for t, _ in one_say(say_id)][:-1]
    assert receiver.of(sid) == []

    await receiver.set_mode("healthy")
    await daemon.start()  # same config, same store
    events = await receiver.wait_stopped(sid, timeout=10)
    assert receiver.sequence(sid) == one_say(say_id)
    assert events[-1]["data"]["reason"] == ("shutdown" if how == "sigterm" else "error")
    assert receiver.duplicates == 0
    await wait_for(lambda: outbox_rows(daemon) == [], what="the outbox to empty")
    receiver.assert_all_signed()
