"""Nodes in the store, on both engines: each session's row names its owner (node and run), a
node's start-up cleanup stops only its own sessions (and those from before nodes), the nodes
table lists each node with its live sessions, and one live session per call holds in the
store itself (the index that holds across nodes), while a stopped session does not block."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from speakd.store.interface import AlreadyLive
from speakd.store.records import NOT_YET, Owner, Speaking, Status

A = Owner("pbx-a", "run-a1")
B = Owner("pbx-b", "run-b1")
STAMP = "2026-03-01 12:00:00.000000"


def _record(n: int, status: str = Status.ACTIVE, reference_type: str = "call") -> Speaking:
    stamp = f"2026-03-0{n} 12:34:56.{n:06d}"
    return Speaking(
        id=f"s-{n}", customer_id="c", reference_type=reference_type, reference_id=f"chan-{n}", language="en-US",
        provider="piper", voice_id="", direction="out", status=status, tm_create=stamp, tm_update=stamp,
        tm_delete=NOT_YET,
    )  # fmt: skip


def _say(say_id: str, speaking_id: str, status: str) -> dict:
    return {"say_id": say_id, "speaking_id": speaking_id, "text": "hi", "payload_type": "text", "client_state": "",
            "command_id": "", "status": status, "error": "", "heard_chars": 0, "played_ms": 0,
            "tm_queued": STAMP, "tm_play_start": "", "tm_play_end": "",
            "spoken_by": "[]", "provider_failures": "[]",
            "interruptible": True, "volume": 0.0, "lexicon": ""}  # fmt: skip


async def test_a_session_row_keeps_its_owner_beside_the_spec_fields(engine):
    async with engine.store() as store:
        await store.insert(_record(1), A, "chan-1")
        assert await store.get("s-1") == _record(1)  # the record is the spec's, nothing more
    assert await engine.rows("SELECT id, node_id, run_id, conflict_key FROM speakings") == [
        ("s-1", "pbx-a", "run-a1", "chan-1")
    ]


async def test_a_second_live_session_on_one_call_is_refused_by_the_store(engine):
    async with engine.store() as store:
        await store.insert(_record(1, Status.INITIATING), A, "chan-x")
        for n, status in ((2, Status.INITIATING), (3, Status.ACTIVE)):
            with pytest.raises(AlreadyLive):  # from any node
                await store.insert(_record(n, status), B, "chan-x")
        # Another reference type with the same key, another key, or a stopped session: no clash.
        await store.insert(_record(4, reference_type="confbridge"), B, "chan-x")
        await store.insert(_record(5), B, "chan-y")
        await store.insert(_record(6, Status.STOPPED), B, "chan-x")
        # Once the live one stops, the call takes a new session.
        stopped = _record(1, Status.STOPPED)
        await store.update(stopped)
        await store.insert(_record(7, Status.INITIATING), B, "chan-x")
        with pytest.raises(AlreadyLive):
            await store.insert(_record(8, Status.INITIATING), A, "chan-x")
        assert await store.get("s-8") is None
        # A duplicate id is still the engine's own error (a caller's bug), not AlreadyLive.
        with pytest.raises(Exception, match=r"(?i)unique") as again:
            await store.insert(_record(5), B, "chan-z")
        assert not isinstance(again.value, AlreadyLive)
    rows = await engine.rows("SELECT id FROM speakings WHERE conflict_key = 'chan-x' AND status <> 'stopped'")
    assert sorted(rows) == [("s-4",), ("s-7",)]


async def test_concurrent_inserts_from_two_stores_on_one_call_give_one_session(engine):
    """Two nodes' stores (connections of their own) racing on one call: the store picks one."""
    async with engine.store() as store_a, engine.store() as store_b:
        results = await asyncio.gather(
            *(
                (store_a if n % 2 else store_b).insert(_record(n, Status.INITIATING), A if n % 2 else B, "chan-x")
                for n in range(1, 21)
            ),
            return_exceptions=True,
        )
    assert [type(r) for r in results if r is not None] == [AlreadyLive] * 19
    assert len(await engine.rows("SELECT id FROM speakings WHERE status = 'initiating'")) == 1


async def test_a_stop_kept_in_memory_reaches_the_store_before_a_new_insert(engine):
    async with engine.store() as store:
        await store.insert(_record(1), A, "chan-x")
        await engine.refuse_writes(store)
        await store.update_later(_record(1, Status.STOPPED))  # kept: the store refuses it
        await engine.refuse_writes(store, on=False)
        await store.insert(_record(2), A, "chan-x")  # the kept stop is written first
    assert await engine.rows("SELECT id, status FROM speakings ORDER BY id") == [("s-1", "stopped"), ("s-2", "active")]


async def test_start_up_cleanup_stops_only_this_nodes_sessions_and_those_from_before_nodes(engine):
    async with engine.store() as store:
        await store.insert(_record(1), A, "chan-1")
        await store.insert(_record(2, Status.INITIATING), B, "chan-2")
        await store.insert(_record(3))  # from before nodes: owned by none
        await store.insert(_record(4, Status.STOPPED), A, "chan-4")
        for say_id, speaking_id in (("a", "s-1"), ("b", "s-2"), ("c", "s-3")):
            await store.insert_say(_say(say_id, speaking_id, "playing"))
        stopped = await store.stop_unfinished("pbx-a", "2026-05-05 05:05:05.000005")
        assert sorted(r.id for r in stopped) == ["s-1", "s-3"]
    assert await engine.rows("SELECT id, status FROM speakings ORDER BY id") == [
        ("s-1", "stopped"), ("s-2", "initiating"), ("s-3", "stopped"), ("s-4", "stopped"),
    ]  # fmt: skip
    assert await engine.rows("SELECT say_id, status FROM says ORDER BY say_id") == [
        ("a", "interrupted"), ("b", "playing"), ("c", "interrupted"),
    ]  # fmt: skip


async def test_nodes_are_listed_with_their_live_sessions(engine):
    async with engine.store() as store:
        assert await store.list_nodes() == []
        await store.register_node(B, "http://pbx-b:8090", "2026-03-01 00:00:00.000001")
        await store.register_node(A, "http://pbx-a:8090", "2026-03-01 00:00:00.000002")
        await store.insert(_record(1), A, "chan-1")
        await store.insert(_record(2, Status.INITIATING), A, "chan-2")
        await store.insert(_record(3, Status.STOPPED), A, "chan-3")
        await store.insert(_record(4), B, "chan-4")
        assert await store.node_seen(A, "2026-03-01 00:00:09.000000")
        assert await store.list_nodes() == [
            {"id": "pbx-a", "url": "http://pbx-a:8090", "last_seen": "2026-03-01 00:00:09.000000", "live_sessions": 2},
            {"id": "pbx-b", "url": "http://pbx-b:8090", "last_seen": "2026-03-01 00:00:00.000001", "live_sessions": 1},
        ]  # fmt: skip

        # A new run of pbx-a (a restart, or a second process given the same id) takes the row over:
        # the old run's heartbeat no longer writes it, and says so.
        restarted = Owner("pbx-a", "run-a2")
        await store.register_node(restarted, "http://10.0.0.1:8090", "2026-03-01 00:01:00.000000")
        assert not await store.node_seen(A, "2026-03-01 00:01:01.000000")
        assert await store.node_seen(restarted, "2026-03-01 00:01:02.000000")
        (a, _) = await store.list_nodes()
        assert (a["url"], a["last_seen"]) == ("http://10.0.0.1:8090", "2026-03-01 00:01:02.000000")
    assert await engine.rows("SELECT id, run_id, started_at FROM nodes ORDER BY id") == [
        ("pbx-a", "run-a2", "2026-03-01 00:01:00.000000"), ("pbx-b", "run-b1", "2026-03-01 00:00:00.000001"),
    ]  # fmt: skip


@contextlib.asynccontextmanager
async def _nodes_locked(engine) -> AsyncIterator[None]:
    """Another writer holding the lock a heartbeat needs (SQLite: the database's; PostgreSQL: the rows')."""
    if engine.name == "sqlite":
        holder = sqlite3.connect(engine.path, timeout=0, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        return
    connection = await asyncpg.connect(engine.url)
    try:
        async with connection.transaction():
            await connection.execute("SELECT id FROM nodes FOR UPDATE")
            yield
    finally:
        await connection.close()


async def test_a_heartbeat_waits_only_briefly_for_another_writers_lock(engine):
    """It would hold up the writes queued behind it (the health check's among them)."""
    async with engine.store() as store:
        await store.register_node(A, "http://pbx-a:8090", STAMP)
        async with _nodes_locked(engine):
            started = time.monotonic()
            with pytest.raises(Exception, match=r"(?i)lock"):
                await store.node_seen(A, "2026-03-01 12:00:01.000000")
            assert time.monotonic() - started < 1.0
        assert await store.node_seen(A, "2026-03-01 12:00:02.000000")
