"""What nodes share through the store beyond records, on both engines: the events table (each
writer's rows read after a cursor per writing node, a node's own rows never read back, old rows
pruned by their writer) and webhook claims (taken only when free, expired or the node's own;
given up at the run's end). Then the links: SQLite's solo link shares nothing and holds every
claim; PostgreSQL's hears another node's events once and in order, with bodies past NOTIFY's
8000 bytes, and catches up after the server restarts."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from speakd.store.fleet import SoloLink
from speakd.store.postgres import PostgresStore
from speakd.store.postgres_events import PostgresLink
from speakd.store.records import Owner
from speakd.store.sql import SqlStore

A = Owner("pbx-a", "run-a1")
A2 = Owner("pbx-a", "run-a2")  # pbx-a restarted
B = Owner("pbx-b", "run-b1")


def _rows(*bodies: str, customer: str = "c1", created: float | None = None) -> list[dict]:
    at = time.time() if created is None else created
    return [{"customer_id": customer, "speaking_id": "s-1", "body": body, "created": at} for body in bodies]


async def _bodies(store: SqlStore, reader: str, cursors: dict[str, int]) -> list[tuple[str, str]]:
    return [(row["node_id"], row["body"]) for row in await store.fleet_events_after(reader, cursors)]


async def test_each_node_reads_the_others_events_after_its_cursor_for_each_writer(engine):
    async with engine.store() as store:
        await store.fleet_events_add("pbx-a", _rows("a1", "a2"))
        await store.fleet_events_add("pbx-b", _rows("b1"))
        start = await store.fleet_events_cursors()
        assert set(start) == {"pbx-a", "pbx-b"} and start["pbx-a"] < start["pbx-b"]
        assert await _bodies(store, "pbx-c", start) == []  # nothing after the start

        await store.fleet_events_add("pbx-a", _rows("a3"))
        await store.fleet_events_add("pbx-b", _rows("b2", "b3"))
        await store.fleet_events_add("pbx-c", _rows("c1"))  # a node that wrote nothing before
        assert await _bodies(store, "pbx-c", start) == [("pbx-a", "a3"), ("pbx-b", "b2"), ("pbx-b", "b3")]
        # Its own rows are never read back; a node without a cursor is read from its first row.
        assert await _bodies(store, "pbx-a", {"pbx-b": start["pbx-b"]}) == [
            ("pbx-b", "b2"),
            ("pbx-b", "b3"),
            ("pbx-c", "c1"),
        ]
        # Each writer's cursor counts for its rows only: b's later cursor skips none of a's.
        b3 = max(row["seq"] for row in await store.fleet_events_after("pbx-x", {}) if row["body"] == "b3")
        assert await _bodies(store, "pbx-c", {"pbx-a": start["pbx-a"], "pbx-b": b3}) == [("pbx-a", "a3")]
        page = await store.fleet_events_after("pbx-c", {}, limit=2)
        assert [row["body"] for row in page] == ["a1", "a2"]
        row = page[0]
        assert set(row) == {"seq", "node_id", "customer_id", "speaking_id", "body", "created"}


async def test_a_writer_prunes_only_its_own_old_events(engine):
    async with engine.store() as store:
        old = time.time() - 120
        await store.fleet_events_add("pbx-a", _rows("a-old", created=old))
        await store.fleet_events_add("pbx-b", _rows("b-old", created=old))
        await store.fleet_events_add("pbx-a", _rows("a-new"), store.fleet_events_prune_step("pbx-a", time.time() - 60))
    assert sorted(await engine.rows("SELECT body FROM fleet_events")) == [("a-new",), ("b-old",)]


async def test_an_event_batch_is_all_or_nothing(engine):
    async with engine.store() as store:
        with pytest.raises(Exception, match=r"(?i)null|constraint"):
            await store.fleet_events_add("pbx-a", [*_rows("a1"), {**_rows("a2")[0], "body": None}])
    assert await engine.rows("SELECT body FROM fleet_events") == []


async def test_a_webhook_claim_is_taken_only_when_free_expired_or_the_nodes_own(engine):
    now = time.time()
    async with engine.store() as store:
        assert await store.webhook_claim(A, ["c1", "c2"], now + 12, now) == {"c1", "c2"}
        assert await store.webhook_claim(B, ["c1", "c2", "c3"], now + 12, now) == {"c3"}  # a's are live
        assert await store.webhook_claim(A, ["c1"], now + 24, now) == {"c1"}  # renewed
        # Once c2's lease has ended, another node takes it; c1's, renewed, still holds.
        later = now + 13
        assert await store.webhook_claim(B, ["c1", "c2"], later + 12, later) == {"c2"}
        # A restarted node takes its dead run's claims at once.
        assert await store.webhook_claim(A2, ["c1"], now + 12, now) == {"c1"}
        assert await store.webhook_claim(A, [], now + 12, now) == set()
        # The run's end gives its claims up, and only its own.
        assert await store.webhook_release(B) == ["c2", "c3"]
        assert await store.webhook_claim(A2, ["c2", "c3"], now + 12, now) == {"c2", "c3"}
    assert sorted(await engine.rows("SELECT customer_id, node_id, run_id FROM webhook_claims")) == [
        ("c1", "pbx-a", "run-a2"),
        ("c2", "pbx-a", "run-a2"),
        ("c3", "pbx-a", "run-a2"),
    ]


async def test_racing_claims_from_two_stores_give_each_customer_one_holder(engine):
    customers = [f"c{n}" for n in range(20)]
    now = time.time()
    async with engine.store() as store_a, engine.store() as store_b:
        held = await asyncio.gather(
            *(
                (store_a if n % 2 else store_b).webhook_claim(A if n % 2 else B, customers, now + 12, now)
                for n in range(6)
            )
        )
    a = set().union(*held[1::2])
    b = set().union(*held[0::2])
    assert a | b == set(customers) and not a & b


async def test_the_outbox_count_is_every_writers_rows(engine):
    def row(n: int, customer: str) -> dict:
        return {"event_id": f"e{n}", "customer_id": customer, "event_type": "speaking_created", "body": "{}",
                "created": 1000.0 + n, "attempts": 0}  # fmt: skip

    async with engine.store() as store_a, engine.store() as store_b:
        assert await store_a.outbox_count() == 0
        seqs = await store_a.outbox_add([row(1, "c1"), row(2, "c2")])
        await store_b.outbox_add([row(3, "c1")])
        assert await store_a.outbox_count() == await store_b.outbox_count() == 3
        await store_b.outbox_delete(seqs)
        assert await store_a.outbox_count() == 1


async def test_the_solo_link_shares_nothing_and_every_claim_is_its_own(tmp_path):
    from speakd.store.sqlite import SqliteStore

    async with SqliteStore(str(tmp_path / "s.sqlite3")) as store, store.fleet(A) as link:
        assert isinstance(link, SoloLink) and not link.shared
        await link.add_events(_rows("a1"))
        assert await link.claim_webhooks(["c1", "c2"], 12) == {"c1", "c2"}
        await link.wake_webhooks(["c1"])
        await link.release_webhooks()
        assert await store.fleet_events_cursors() == {}
        assert await store._fetch("SELECT * FROM webhook_claims") == []


# -- PostgreSQL's link: two nodes' links on one database ---------------------------------------


async def _until(check, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.02)


async def test_postgres_links_hear_each_others_events_once_in_order_past_notifys_limit(postgres):
    url = postgres.new_database()
    async with PostgresStore(url) as store_a, PostgresStore(url) as store_b:
        await store_a.fleet_events_add("pbx-a", _rows("before the start"))
        heard_a: list[str] = []
        heard_b: list[str] = []
        link_a, link_b = store_a.fleet(A), store_b.fleet(B)
        link_a.on_events(lambda rows: heard_a.extend(row["body"] for row in rows))
        link_b.on_events(lambda rows: heard_b.extend(row["body"] for row in rows))
        woken: list[str | None] = []
        link_b.on_webhook_wake(woken.append)
        async with link_a, link_b:
            assert isinstance(link_b, PostgresLink) and link_b.shared
            await asyncio.wait_for(link_b.listening.wait(), 5)
            big = json.dumps({"text": "x" * 20_000})
            sent = [f"e{n}" for n in range(300)] + [big]
            await asyncio.gather(*(link_a.add_events(_rows(*sent[n : n + 7])) for n in range(0, len(sent), 7)))
            await _until(lambda: len(heard_b) >= len(sent), what="b hearing a's events")
            await asyncio.sleep(0.3)  # nothing more comes
            assert heard_b == sent and heard_a == []  # a never hears its own

            await link_a.wake_webhooks(["c9"])
            await _until(lambda: "c9" in woken, what="the wake-up")
            assert await link_b.claim_webhooks(["c9"], 12) == {"c9"}
            assert await link_a.claim_webhooks(["c9"], 12) == set()
            await link_b.release_webhooks()
            assert await link_a.claim_webhooks(["c9"], 12) == {"c9"}


async def test_a_postgres_link_catches_up_after_the_server_restarts(postgres, capsys):
    url = postgres.new_database()
    async with PostgresStore(url) as store_a, PostgresStore(url) as store_b:
        heard: list[str] = []
        link_a, link_b = store_a.fleet(A), store_b.fleet(B)
        link_b.on_events(lambda rows: heard.extend(row["body"] for row in rows))
        async with link_a, link_b:
            await asyncio.wait_for(link_b.listening.wait(), 5)
            await link_a.add_events(_rows("e0"))
            await _until(lambda: heard == ["e0"], what="the first event")
            await asyncio.to_thread(postgres.restart)
            # Written before b's listener is back: b reads it when it reconnects, not by a NOTIFY.
            await _until_written(link_a, _rows("e1", "e2"))
            await _until(lambda: heard == ["e0", "e1", "e2"], timeout=15, what="catching up")
            await link_a.add_events(_rows("e3"))
            await _until(lambda: heard[-1:] == ["e3"], what="listening again")
            await asyncio.sleep(0.3)
            assert heard == ["e0", "e1", "e2", "e3"]
    logged = capsys.readouterr().out  # each link (both listen) logged the loss once, and its return
    assert logged.count("fleet_listener_lost") == 2 and logged.count("fleet_listener_back") == 2


async def _until_written(link: PostgresLink, rows: list[dict], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await link.add_events(rows)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
