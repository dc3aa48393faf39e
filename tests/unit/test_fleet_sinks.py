"""Events and webhooks between nodes without Asterisk: an Event crosses to another node equal
(JSON both ways); the fleet sink writes nothing on a solo store, and on PostgreSQL brings one
node's events to the other's local sink once and in order, retrying a refused batch; two nodes'
webhook sinks on one outbox POST each event once (by its id), the holder of the customer's claim
doing it, the other waking it, and the claim moving when the holder stops or dies."""

from __future__ import annotations

import asyncio
import time

from harness.webhooks import WebhookReceiver

from speakd.config import WebhookTarget
from speakd.events import webhooks
from speakd.events.fleet import FleetEventSink
from speakd.events.model import Event, EventType, StopReason
from speakd.events.webhooks import WebhookSink
from speakd.store.fleet import SoloLink
from speakd.store.postgres import PostgresStore
from speakd.store.records import NOT_YET, Owner, Speaking, Status
from speakd.store.sqlite import SqliteStore

A = Owner("pbx-a", "run-a1")
B = Owner("pbx-b", "run-b1")
SECRET = "whsec-fleet"


def _speaking() -> Speaking:
    stamp = "2026-03-01 12:34:56.000001"
    return Speaking(
        id="s-1", customer_id="c1", reference_type="call", reference_id="chan-1", language="en-US",
        provider="piper", voice_id="", direction="out", status=Status.ACTIVE, tm_create=stamp, tm_update=stamp,
        tm_delete=NOT_YET,
    )  # fmt: skip


def event(n: int, customer: str = "c1", kind: EventType = EventType.SAY_FINISHED) -> Event:
    data = {"speaking_id": "s-1", "say_id": f"say-{n}", "text": 'héllo \u2603 "quoted"', "heard_chars": n}
    return Event(kind, f"2026-03-01 12:00:00.{n:06d}", customer, "s-1", data, "channel:chan-1")


class Collected:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def offer(self, event: Event) -> None:
        self.events.append(event)


async def _until(check, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.02)


def test_an_event_crosses_to_another_node_equal():
    record = _speaking()
    stopped = Event(
        EventType.SPEAKING_STOPPED, "2026-03-01 12:00:01.000000", "c1", "s-1",
        {**record.to_dict(), "reason": str(StopReason.HANGUP), "detail": ""}, "bridge:b-1",
    )  # fmt: skip
    for original in (stopped, *(event(n, kind=kind) for n, kind in enumerate(EventType))):
        copy = Event.from_json(original.to_json())
        assert copy == original and copy.source == original.source
        assert copy.envelope() == original.envelope() and copy.topics == original.topics
        assert type(copy.event_type) is EventType


async def test_on_a_solo_store_the_fleet_sink_writes_nothing(tmp_path):
    async with SqliteStore(str(tmp_path / "s.sqlite3")) as store:
        link = store.fleet(A)
        assert isinstance(link, SoloLink)
        async with link, FleetEventSink(link, Collected()) as sink:
            sink.offer(event(1))
            assert sink._queue.empty() and sink._writer is None
        assert await store.fleet_events_cursors() == {}


async def test_one_nodes_events_reach_the_others_local_sink_once_in_order(postgres):
    url = postgres.new_database()
    async with PostgresStore(url) as store_a, PostgresStore(url) as store_b:
        link_a, link_b = store_a.fleet(A), store_b.fleet(B)
        local_a, local_b = Collected(), Collected()
        sink_a, sink_b = FleetEventSink(link_a, local_a), FleetEventSink(link_b, local_b)
        async with link_a, link_b, sink_a, sink_b:
            await asyncio.wait_for(link_b.listening.wait(), 5)
            sent = [event(n, customer=f"c{n % 3}") for n in range(400)]
            for n, e in enumerate(sent):
                sink_a.offer(e)
                if n % 50 == 0:
                    await asyncio.sleep(0)  # several batches
            await _until(lambda: len(local_b.events) >= len(sent), what="b's sink receiving a's events")
            await asyncio.sleep(0.3)
            assert local_b.events == sent and local_a.events == []


class RefusingLink(SoloLink):
    """A link whose store refuses the first writes (as PostgreSQL does while it restarts)."""

    shared = True

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.written: list[str] = []

    async def add_events(self, rows: list[dict]) -> None:
        if self.refusals:
            self.refusals -= 1
            raise ConnectionError("refused")
        self.written.extend(row["body"] for row in rows)


async def test_a_refused_batch_is_written_again_in_order(monkeypatch):
    monkeypatch.setattr("speakd.events.fleet.RETRY_S", 0.01)
    link = RefusingLink(refusals=3)
    sent = [event(n) for n in range(50)]
    async with FleetEventSink(link, Collected()) as sink:
        for e in sent:
            sink.offer(e)
        await _until(lambda: len(link.written) == len(sent), what="the writes")
    assert [Event.from_json(body) for body in link.written] == sent


# -- webhooks: two nodes on one outbox -------------------------------------------------------------


def _sink(store: PostgresStore, owner: Owner, url: str) -> tuple[WebhookSink, object]:
    link = store.fleet(owner)
    sink = WebhookSink(store, {"c1": WebhookTarget(url, SECRET)}, request_timeout=2, first_backoff=0.05, fleet=link)
    return sink, link


async def test_two_nodes_post_each_webhook_event_once_and_the_claim_moves(postgres, monkeypatch):
    monkeypatch.setattr(webhooks, "CLAIM_RENEW_S", 0.5)
    monkeypatch.setattr(webhooks, "CLAIM_LEASE_S", 3.0)
    monkeypatch.setattr(webhooks, "CLAIM_MARGIN_S", 0.5)
    url = postgres.new_database()
    async with (
        WebhookReceiver(SECRET) as receiver,
        PostgresStore(url) as store_a,
        PostgresStore(url) as store_b,
        PostgresStore(url) as store_c,
    ):
        sink_a, link_a = _sink(store_a, A, receiver.url)
        sink_b, link_b = _sink(store_b, B, receiver.url)
        async with link_a, sink_a, link_b, sink_b:
            assert sink_a._holds(sink_a._customers["c1"]) and not sink_b._holds(sink_b._customers["c1"])
            await asyncio.wait_for(link_a.listening.wait(), 5)
            for n in range(30):  # both nodes' sessions: a delivers b's rows too, woken by b
                (sink_a if n % 2 else sink_b).offer(event(n))
            await receiver.wait_for(lambda evs: len(evs) == 30, 10, "30 events")
            # Each node's backlog is the shared outbox's (b wrote rows that a delivered).
            await _until(lambda: sink_a.backlog == sink_b.backlog == 0, timeout=3, what="no backlog")
            # a stops: its claim is given up and b takes it at once, delivering what b writes.
            await sink_a.aclose()
            await _until(lambda: sink_b._holds(sink_b._customers["c1"]), timeout=3, what="b taking the claim")
            for n in range(30, 40):
                sink_b.offer(event(n))
            await receiver.wait_for(lambda evs: len(evs) == 40, 10, "40 events")
        # A node that dies holding the claim: it lapses, and the other takes it at its next round.
        sink_c, link_c = _sink(store_c, Owner("pbx-c", "run-c1"), receiver.url)
        async with link_c, sink_c:
            # a's, as a run that died leaves it, lasting 2 s more.
            sql = "UPDATE webhook_claims SET node_id = 'pbx-a', run_id = 'run-a1', until = ? WHERE customer_id = 'c1'"
            await store_a._execute(sql, (time.time() + 2.0,))
            await _until(lambda: not sink_c._holds(sink_c._customers["c1"]), timeout=3, what="c losing it")
            await _until(lambda: sink_c._holds(sink_c._customers["c1"]), timeout=5, what="c taking the lapsed claim")
            sink_c.offer(event(40))
            await receiver.wait_for(lambda evs: len(evs) == 41, 10, "41 events")
    assert receiver.duplicates == 0 and len(set(receiver.ids)) == 41
    says = [e["data"]["say_id"] for e in receiver.events]
    assert sorted(says) == sorted(f"say-{n}" for n in range(41))


async def test_a_customer_without_a_webhook_here_keeps_its_rows_while_another_node_holds_it(postgres):
    url = postgres.new_database()
    async with WebhookReceiver(SECRET) as receiver, PostgresStore(url) as store_a, PostgresStore(url) as store_b:
        sink_a, link_a = _sink(store_a, A, receiver.url)
        async with link_a, sink_a:
            await receiver.set_mode("down")
            sink_a.offer(event(1))
            await _until(lambda: sink_a.backlog == 1 and sink_a._queue.empty(), what="the row written")
            # b has no webhook for c1: a holds c1, so b leaves its rows alone.
            async with WebhookSink(store_b, {}, fleet=store_b.fleet(B)):
                pass
            assert len(await store_b.outbox_pending()) == 1
        # Nobody holds c1 any more (a gave it up): the next node without its webhook drops the rows.
        async with WebhookSink(store_b, {}, fleet=store_b.fleet(B)):
            pass
        assert await store_b.outbox_pending() == []
