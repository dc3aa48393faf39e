"""Webhooks without Asterisk: signing, backoff, the outbox, ordering and isolation per customer,
give-up, restart. Endpoints are the harness's WebhookReceiver on 127.0.0.1, which verifies every
signature itself."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time

import pytest
import structlog
from harness.daemon import free_port
from harness.webhooks import WebhookReceiver

from speakd.config import ConfigError, WebhookTarget, load_config
from speakd.events.model import Event, EventType
from speakd.events.webhooks import WebhookSink, backoff_delay, encode, sign
from speakd.store.sqlite import SqliteStore

SECRET_A, SECRET_B = "whsec-a", "whsec-b"


def event(customer: str, n: int, kind: EventType = EventType.SAY_FINISHED) -> Event:
    return Event(kind, f"2025-06-15 14:30:00.{n:06d}", customer, "sp-1", {"speaking_id": "sp-1", "say_id": f"s{n}"})


async def until(check, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.01)


@pytest.fixture
async def store(tmp_path):
    async with SqliteStore(str(tmp_path / "s.sqlite3")) as s:
        yield s


def sink_for(store, targets: dict[str, WebhookTarget], **kw) -> WebhookSink:
    kw = {"request_timeout": 0.5, "first_backoff": 0.05, "max_backoff": 0.2, "give_up_after": 60.0, **kw}
    return WebhookSink(store, targets, **kw)


# -- signing, backoff --------------------------------------------------------------------------


def test_signature_is_hmac_sha256_of_timestamp_dot_body():
    body = b'{"event_type":"speaking_created"}'
    # Computed once with Python's hmac, outside speakd: the documented format, pinned.
    pinned = "sha256=bbf29ac8995ea8b23b47900ef003e16444bdfd52f85cb5c3391340bb5af4374c"
    assert sign("whsec-test", 1700000000, body) == pinned
    assert sign("whsec-test", "1700000000", body) == pinned
    reference = hmac.new(b"other", b"1700000001." + body, hashlib.sha256).hexdigest()
    assert sign("other", 1700000001, body) == f"sha256={reference}"
    assert sign("whsec-test", 1700000001, body) != pinned  # the timestamp is signed too


def test_backoff_doubles_up_to_the_cap_with_jitter():
    top = [backoff_delay(n, first=1.0, cap=30.0, rand=lambda: 1.0) for n in range(1, 9)]
    assert top == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    low = [backoff_delay(n, first=1.0, cap=30.0, rand=lambda: 0.0) for n in range(1, 9)]
    assert low == [t / 2 for t in top]  # jitter: 50-100 % of the step
    assert backoff_delay(10_000, first=1.0, cap=300.0) <= 300.0  # no overflow far out
    samples = {backoff_delay(3, first=1.0, cap=30.0) for _ in range(50)}
    assert len(samples) > 1 and all(2.0 <= s <= 4.0 for s in samples)


# -- the outbox in the store -------------------------------------------------------------------


def row(customer: str, n: int, created: float = 1000.0) -> dict:
    return {
        "event_id": f"{customer}-{n}",
        "customer_id": customer,
        "event_type": "speaking_say_finished",
        "body": json.dumps({"n": n}),
        "created": created + n,
        "attempts": 0,
    }


async def test_outbox_store_methods(tmp_path):
    path = str(tmp_path / "o.sqlite3")
    async with SqliteStore(path) as store:
        seqs = await store.outbox_add([row("a", 1), row("b", 1), row("a", 2), row("a", 3)])
        assert seqs == sorted(seqs) and len(set(seqs)) == 4
        assert (await store.outbox_head("a"))["event_id"] == "a-1"
        assert (await store.outbox_head("b"))["event_id"] == "b-1"
        assert await store.outbox_head("c") is None
        await store.outbox_attempted(seqs[0], 3)
        assert (await store.outbox_head("a"))["attempts"] == 3
        assert [r["event_id"] for r in await store.outbox_older("a", 1002.5)] == ["a-1", "a-2"]
        await store.outbox_delete([seqs[0]])
        assert (await store.outbox_head("a"))["event_id"] == "a-2"
    async with SqliteStore(path) as store:  # committed: a new process sees the same rows
        pending = await store.outbox_pending()
        assert [r["event_id"] for r in pending] == ["b-1", "a-2", "a-3"]
        assert pending[1]["body"] == '{"n": 2}' and pending[1]["created"] == 1002.0


# -- the sink ------------------------------------------------------------------------------------


async def test_events_arrive_signed_in_order_and_only_for_customers_with_a_webhook(store):
    async with WebhookReceiver(SECRET_A) as receiver:
        sink = sink_for(store, {"a": WebhookTarget(receiver.url, SECRET_A)})
        async with sink:
            for n in range(20):
                sink.offer(event("a", n))
                sink.offer(event("nobody", n))  # no webhook: not even queued
            assert sink._queue.qsize() == 20
            await receiver.wait_for(lambda evs: len(evs) == 20, 5, "20 events")
            await until(lambda: sink._customers["a"].idle, what="idle")
            assert await store.outbox_pending() == []
        assert [e["data"]["say_id"] for e in receiver.events] == [f"s{n}" for n in range(20)]
        assert receiver.events[0] == event("a", 0).envelope()
        assert receiver.duplicates == 0


async def test_a_dead_endpoint_delays_only_its_own_customer(store):
    async with WebhookReceiver(SECRET_A, "a") as a, WebhookReceiver(SECRET_B, "b") as b:
        await a.set_mode("down")
        sink = sink_for(store, {"a": WebhookTarget(a.url, SECRET_A), "b": WebhookTarget(b.url, SECRET_B)})
        async with sink:
            for n in range(10):
                sink.offer(event("a", n))
                sink.offer(event("b", n))
            await b.wait_for(lambda evs: len(evs) == 10, 2, "b's events while a is down")
            assert [e["data"]["say_id"] for e in b.events] == [f"s{n}" for n in range(10)]
            await until(lambda: sink._customers["a"].failures >= 2, what="a failing")
            # b's rows go once b has answered (just after it has the event); a's 10 stay, waiting.
            deadline = time.monotonic() + 5
            while len(pending := await store.outbox_pending()) != 10 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert len(pending) == 10 and {row["customer_id"] for row in pending} == {"a"}, pending
            await a.set_mode("healthy")
            await a.wait_for(lambda evs: len(evs) == 10, 5, "a's events once it is back")
        assert [e["data"]["say_id"] for e in a.events] == [f"s{n}" for n in range(10)]
        assert await store.outbox_pending() == []


async def test_a_hanging_endpoint_is_bounded_by_the_request_timeout_and_retried(store):
    async with WebhookReceiver(SECRET_A) as receiver:
        await receiver.set_mode("hanging")
        with structlog.testing.capture_logs() as logs:
            async with sink_for(store, {"a": WebhookTarget(receiver.url, SECRET_A)}, request_timeout=0.3) as sink:
                sink.offer(event("a", 1))
                sink.offer(event("a", 2))
                await until(lambda: receiver.posts["hanging"] >= 2, what="two hanging attempts")
                await receiver.set_mode("failing")
                await until(lambda: receiver.posts["failing"] >= 1, what="a 500")
                await receiver.set_mode("healthy")
                await receiver.wait_for(lambda evs: len(evs) == 2, 5, "both events")
        assert [e["data"]["say_id"] for e in receiver.events] == ["s1", "s2"]
        failed = [e for e in logs if e["event"] == "webhook_attempt_failed"]
        assert any("no answer within 0.3 s" in e["error"] for e in failed)
        assert any(e["error"] == "HTTP 500" for e in failed)
        assert [e["attempts"] for e in failed] == list(range(1, len(failed) + 1))  # all on the first event
        assert any(e["event"] == "webhook_recovered" for e in logs)


async def test_given_up_after_the_configured_time_with_a_warning(store):
    async with WebhookReceiver(SECRET_A) as receiver:
        await receiver.set_mode("failing")
        with structlog.testing.capture_logs() as logs:
            async with sink_for(store, {"a": WebhookTarget(receiver.url, SECRET_A)}, give_up_after=0.3) as sink:
                for n in range(3):
                    sink.offer(event("a", n))
                await until(lambda: sum(e["event"] == "webhook_given_up" for e in logs) == 3, what="3 given up")
                assert await store.outbox_pending() == []
                await receiver.set_mode("healthy")
                sink.offer(event("a", 9))  # the endpoint is back: new events flow again
                await receiver.wait_for(lambda evs: len(evs) == 1, 5, "the event after the give-up")
        given_up = [e for e in logs if e["event"] == "webhook_given_up"]
        assert {e["customer_id"] for e in given_up} == {"a"}
        assert [e["event_type"] for e in given_up] == ["speaking_say_finished"] * 3
        assert given_up[0]["attempts"] >= 2 and given_up[0]["log_level"] == "warning"
        assert all(e["event_id"] for e in given_up)
        assert receiver.events[0]["data"]["say_id"] == "s9"


async def test_what_a_run_leaves_in_the_outbox_the_next_run_delivers_first(tmp_path):
    path = str(tmp_path / "r.sqlite3")
    async with WebhookReceiver(SECRET_A) as receiver:
        await receiver.set_mode("down")
        targets = {"a": WebhookTarget(receiver.url, SECRET_A)}
        async with SqliteStore(path) as store:
            sink = sink_for(store, targets)
            await sink.start()
            for n in range(5):
                sink.offer(event("a", n))
            await sink.aclose()  # straight away: the queue is drained into the outbox on close
            sink.offer(event("a", 99))  # after close: dropped (with a warning), never raises
            assert len(await store.outbox_pending()) == 5
        await receiver.set_mode("healthy")
        async with SqliteStore(path) as store, sink_for(store, targets) as sink:
            sink.offer(event("a", 5))  # an event of the new run (e.g. recover()) comes after them
            await receiver.wait_for(lambda evs: len(evs) == 6, 5, "the left events")
            await until(lambda: sink._customers["a"].idle, what="idle")
            assert await store.outbox_pending() == []
    assert [e["data"]["say_id"] for e in receiver.events] == [f"s{n}" for n in range(6)]


async def test_on_close_an_answering_endpoint_still_gets_what_was_just_offered(store):
    async with WebhookReceiver(SECRET_A) as receiver:
        sink = sink_for(store, {"a": WebhookTarget(receiver.url, SECRET_A)})
        await sink.start()
        await until(lambda: sink._customers["a"].idle, what="idle")
        for n in range(3):  # e.g. the speaking_stopped of sessions stopped by the shutdown
            sink.offer(event("a", n))
        await sink.aclose()
        assert [e["data"]["say_id"] for e in receiver.events] == ["s0", "s1", "s2"]
        assert await store.outbox_pending() == []


async def test_rows_of_customers_no_longer_configured_are_dropped_at_start(store):
    await store.outbox_add([row("gone", 1), row("a", 1)])
    with structlog.testing.capture_logs() as logs:
        async with sink_for(store, {"a": WebhookTarget(f"http://127.0.0.1:{free_port()}/x", SECRET_A)}):
            pass
    assert [r["customer_id"] for r in await store.outbox_pending()] == ["a"]
    assert [(e["customer_id"], e["dropped"]) for e in logs if e["event"] == "webhook_outbox_unconfigured"] == [
        ("gone", 1)
    ]


async def test_offer_never_blocks_a_full_queue_drops_with_a_warning(store):
    sink = sink_for(store, {"a": WebhookTarget("http://127.0.0.1:9/x", SECRET_A)}, queue_events=3)
    with structlog.testing.capture_logs() as logs:
        started = time.perf_counter()
        for n in range(10):  # not started: nothing empties the queue
            sink.offer(event("a", n))
        assert time.perf_counter() - started < 0.05
    assert sink._queue.qsize() == 3
    assert sum(e["event"] == "webhook_event_dropped" for e in logs) == 7


def test_the_body_is_the_envelope():
    e = event("a", 1)
    assert json.loads(encode(e)) == e.envelope()


# -- config --------------------------------------------------------------------------------------


def write(tmp_path, text: str):
    path = tmp_path / "speakd.toml"
    path.write_text(text)
    return path


def test_webhooks_config(tmp_path):
    path = write(
        tmp_path,
        """
[webhooks]
request_timeout = 3
give_up_after = 3600
[webhooks.customers."c-1"]
url = "https://hooks.example.com/speakd"
secret = "s1"
""",
    )
    config = load_config(path, environ={"SPEAKD_WEBHOOKS_MAX_BACKOFF": "60"})
    assert config.webhooks.targets() == {"c-1": WebhookTarget("https://hooks.example.com/speakd", "s1")}
    assert (config.webhooks.request_timeout, config.webhooks.give_up_after) == (3.0, 3600.0)
    assert config.webhooks.max_backoff == 60.0
    assert load_config(None, environ={}).webhooks.customers == {}


@pytest.mark.parametrize(
    ("text", "env", "words"),
    [
        ('[webhooks.customers.c1]\nurl = "ftp://x/y"\nsecret = "s"\n', {}, ["webhooks.customers.c1.url", "http"]),
        ('[webhooks.customers.c1]\nurl = "https:///nohost"\nsecret = "s"\n', {}, ["webhooks.customers.c1.url"]),
        ('[webhooks.customers.c1]\nsecret = "s"\n', {}, ["webhooks.customers.c1.url"]),
        ('[webhooks.customers.c1]\nurl = "http://x/y"\nsecret = ""\n', {}, ["webhooks.customers.c1.secret"]),
        ('[webhooks.customers.c1]\nurl = "http://x/y"\n', {}, ["webhooks.customers.c1.secret"]),
        ('[webhooks.customers.c1]\nurl = "http://x"\nsecret = "s"\nsecet = "t"\n', {}, ["unknown", "secet"]),
        ('[webhooks]\ncustomers = { c1 = "http://x" }\n', {}, ["webhooks.customers.c1", "table"]),
        ("", {"SPEAKD_WEBHOOKS_CUSTOMERS": "c1=http://x"}, ["webhooks.customers.c1", "config file"]),
        ("[webhooks]\nrequest_timeout = 0\n", {}, ["webhooks.request_timeout"]),
        ("[webhooks]\nfirst_backoff = 10\nmax_backoff = 5\n", {}, ["webhooks.max_backoff", "first_backoff"]),
        ("[webhooks]\nurl = 'http://x'\n", {}, ["unknown key", "url"]),
    ],
)
def test_webhooks_config_errors_name_the_key(tmp_path, text, env, words):
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), environ=env)
    for word in words:
        assert word in str(caught.value)
