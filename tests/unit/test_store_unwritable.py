"""A store that refuses writes: 503 for requests, live state kept and written once it can be,
on both engines (tests/harness/stores.py makes each read-only). The full disk is tested for
real, on a tiny tmpfs, in tests/integration/test_store_faults.py; a PostgreSQL server that
goes away altogether in tests/unit/test_store_postgres.py.
"""

from __future__ import annotations

import asyncio

import pytest
import structlog

from speakd.store import sql as store_sql
from speakd.store.interface import StoreUnwritable
from speakd.store.records import NOT_YET, Speaking, Status


def _record(speaking_id: str = "s-1") -> Speaking:
    stamp = "2026-01-01 00:00:00.000000"
    return Speaking(
        id=speaking_id,
        customer_id="c",
        reference_type="call",
        reference_id="call-1",
        language="en-US",
        provider="piper",
        voice_id="",
        direction="out",
        status=Status.INITIATING,
        tm_create=stamp,
        tm_update=stamp,
        tm_delete=NOT_YET,
    )


def _say_row(say_id: str, status: str) -> dict:
    return {
        "say_id": say_id,
        "speaking_id": "s-1",
        "text": "hello",
        "payload_type": "text",
        "client_state": "",
        "command_id": "",
        "status": status,
        "error": "",
        "heard_chars": 0,
        "played_ms": 0,
        "tm_queued": "2026-01-01 00:00:00.000000",
        "tm_play_start": "",
        "tm_play_end": "",
        "spoken_by": "[]",
        "provider_failures": "[]",
        "interruptible": True,
        "volume": 0.0,
        "lexicon": "",
    }


@pytest.fixture
def fast_retry(monkeypatch):
    monkeypatch.setattr(store_sql, "RETRY_EVERY_S", 0.05)


async def test_refused_writes_are_503_and_change_nothing(engine):
    async with engine.store() as store:
        await store.insert(_record("s-1"))
        await engine.refuse_writes(store)
        with pytest.raises(StoreUnwritable) as refused:
            await store.insert(_record("s-2"))
        assert refused.value.status == 503 and refused.value.reason == "unavailable"
        assert engine.read_only_says in refused.value.message and engine.where in refused.value.message
        with pytest.raises(StoreUnwritable):
            await store.outbox_add([{"event_id": "e", "customer_id": "c", "event_type": "t", "body": "{}",
                                     "created": 1.0, "attempts": 0}])  # fmt: skip
        # Reads go on; what was stored before is all there.
        assert (await store.get("s-1")).status == Status.INITIATING
        assert await store.get("s-2") is None
        await engine.refuse_writes(store, False)
        await store.insert(_record("s-2"))  # writes resume at once
    assert await engine.rows("SELECT id FROM speakings ORDER BY id") == [("s-1",), ("s-2",)]
    assert await engine.rows("SELECT event_id FROM webhook_outbox") == []


async def test_live_state_is_kept_readable_and_written_when_the_store_takes_writes(engine, fast_retry):
    async with engine.store() as store:
        record = _record()
        await store.insert(record)
        await store.insert_say(_say_row("a", "queued"))
        await engine.refuse_writes(store)

        record.status = Status.ACTIVE
        await store.update_later(record)  # not refused
        await store.update_say_later(_say_row("a", "playing"))
        await store.update_say_later(_say_row("a", "played"))  # the newest state wins
        assert store.pending_writes == 2
        assert (await store.get("s-1")).status == Status.ACTIVE
        assert [r["status"] for r in await store.list_says("s-1")] == ["played"]
        assert [r.status for r in await store.list("c", 10, None)] == [Status.ACTIVE]
        await asyncio.sleep(0.2)  # a few retries, all refused
        assert store.pending_writes == 2
        assert await engine.rows("SELECT status FROM says") == [("queued",)]

        await engine.refuse_writes(store, False)
        async with asyncio.timeout(5):
            while store.pending_writes:
                await asyncio.sleep(0.02)
    assert await engine.rows("SELECT status FROM speakings") == [("active",)]
    assert await engine.rows("SELECT status FROM says") == [("played",)]


async def test_a_direct_write_is_not_overwritten_by_an_older_kept_state(engine, fast_retry):
    async with engine.store() as store:
        record = _record()
        await store.insert(record)
        await engine.refuse_writes(store)
        record.status = Status.STOPPED
        await store.update_later(record)
        record.tm_delete = "2026-01-02 00:00:00.000000"
        with pytest.raises(StoreUnwritable):
            await store.update(record)  # refused: the stopped state stays kept
        assert store.pending_writes == 1
        await engine.refuse_writes(store, False)
        await store.update(record)  # now the newest, deleted state; the kept one is dropped
        assert store.pending_writes == 0
        await asyncio.sleep(0.2)
    assert await engine.rows("SELECT status, tm_delete FROM speakings") == [("stopped", "2026-01-02 00:00:00.000000")]


async def test_rows_still_refused_at_close_are_logged_as_lost(engine, fast_retry):
    with structlog.testing.capture_logs() as logs:
        async with engine.store() as store:
            record = _record()
            await store.insert(record)
            await engine.refuse_writes(store)
            await store.update_later(record)
    lost = [entry for entry in logs if entry["event"] == "store_writes_lost"]
    assert lost and lost[0]["rows"] == 1
