"""The store keeps the same records on both engines: what is written is read back exactly (the
spec's text times, ids, numbers), pages come newest first, constraints hold, the outbox keeps
its order, and the health check writes."""

from __future__ import annotations

import pytest

from speakd.store import health
from speakd.store.interface import StoreUnwritable
from speakd.store.records import NOT_YET, Speaking, Status


def _record(n: int, customer: str = "c", status: str = Status.ACTIVE, deleted: bool = False) -> Speaking:
    stamp = f"2026-03-0{n} 12:34:56.{n:06d}"
    return Speaking(
        id=f"s-{n}", customer_id=customer, reference_type="call", reference_id=f"chan-{n}", language="en-US",
        provider="piper", voice_id="voice é", direction="both", status=status, tm_create=stamp, tm_update=stamp,
        tm_delete="2026-04-01 00:00:00.000000" if deleted else NOT_YET,
    )  # fmt: skip


def _say(say_id: str, speaking_id: str, status: str = "queued", **fields) -> dict:
    return {"say_id": say_id, "speaking_id": speaking_id, "text": "Grüße, 世界", "payload_type": "ssml",
            "client_state": "cs", "command_id": "", "status": status, "error": "", "heard_chars": 0, "played_ms": 0,
            "tm_queued": "2026-03-01 00:00:00.000001", "tm_play_start": "", "tm_play_end": "",
            "spoken_by": "[]", "provider_failures": "[]",
            "interruptible": True, "volume": 0.0, "lexicon": ""} | fields  # fmt: skip


def _outbox(event_id: str, customer: str, created: float) -> dict:
    body = '{"type": "speaking_started", "x": "ü"}'
    return {"event_id": event_id, "customer_id": customer, "event_type": "speaking_started", "body": body,
            "created": created, "attempts": 0}  # fmt: skip


async def test_speakings_read_back_as_written_and_page_newest_first(engine):
    async with engine.store() as store:
        for n in (2, 1, 4, 3):
            await store.insert(_record(n))
        await store.insert(_record(5, deleted=True))
        await store.insert(_record(6, customer="other"))
        assert await store.get("s-1") == _record(1)
        assert all(type(value) is str for value in (await store.get("s-1")).to_dict().values())
        assert await store.get("nope") is None

        first = await store.list("c", 2, None)
        assert [r.id for r in first] == ["s-4", "s-3"]
        second = await store.list("c", 2, first[-1].tm_create)
        assert [r.id for r in second] == ["s-2", "s-1"]
        assert await store.list("c", 2, second[-1].tm_create) == []

        changed = _record(1)
        changed.status, changed.tm_update = Status.STOPPED, "2026-03-09 00:00:00.000000"
        await store.update(changed)
    async with engine.store() as store:  # committed: a new store over the same data sees it
        assert await store.get("s-1") == changed


async def test_says_keep_their_order_and_every_column(engine):
    async with engine.store() as store:
        await store.insert(_record(1))
        for say_id in ("b", "a", "c"):
            await store.insert_say(_say(say_id, "s-1"))
        played = _say("a", "s-1", "played", heard_chars=9, played_ms=2_500_000_000, error="",
                      tm_play_start="2026-03-01 00:00:01.000000", tm_play_end="2026-03-01 00:00:02.000000")  # fmt: skip
        await store.update_say(played)
        says = await store.list_says("s-1")
        assert [s["say_id"] for s in says] == ["b", "a", "c"]
        assert says[1] == played
        assert await store.list_says("s-2") == []


async def test_unique_ids_hold(engine):
    async with engine.store() as store:
        await store.insert(_record(1))
        await store.insert_say(_say("a", "s-1"))
        with pytest.raises(Exception, match=r"(?i)unique") as again:
            await store.insert(_record(1))
        assert not isinstance(again.value, StoreUnwritable)  # a bug of the caller, not a 503
        with pytest.raises(Exception, match=r"(?i)unique"):
            await store.insert_say(_say("a", "s-1"))
        assert await store.get("s-1") == _record(1)


async def test_stop_unfinished_returns_the_sessions_as_they_were(engine):
    async with engine.store() as store:
        await store.insert(_record(1, status=Status.ACTIVE))
        await store.insert(_record(2, status=Status.INITIATING))
        await store.insert(_record(3, status=Status.STOPPED))
        await store.insert_say(_say("a", "s-1", "playing"))
        await store.insert_say(_say("b", "s-1", "queued"))
        await store.insert_say(_say("c", "s-3", "played"))
        stamp = "2026-05-05 05:05:05.000005"
        stopped = await store.stop_unfinished("node-1", stamp)
        assert sorted((r.id, r.status) for r in stopped) == [("s-1", "active"), ("s-2", "initiating")]
        assert await store.stop_unfinished("node-1", stamp) == []
    assert await engine.rows("SELECT id, status, tm_update FROM speakings ORDER BY id") == [
        ("s-1", "stopped", stamp), ("s-2", "stopped", stamp), ("s-3", "stopped", _record(3).tm_update),
    ]  # fmt: skip
    assert await engine.rows("SELECT say_id, status FROM says ORDER BY seq") == [
        ("a", "interrupted"), ("b", "interrupted"), ("c", "played"),
    ]  # fmt: skip


async def test_the_outbox_keeps_order_per_customer_and_survives_a_reopen(engine):
    async with engine.store() as store:
        seqs = await store.outbox_add([_outbox("e-1", "a", 100.25), _outbox("e-2", "b", 101.5)])
        seqs += await store.outbox_add([_outbox("e-3", "a", 102.75)])
        assert seqs == sorted(seqs) and len(set(seqs)) == 3
        head = await store.outbox_head("a")
        assert head == {"seq": seqs[0], **_outbox("e-1", "a", 100.25)}
        await store.outbox_attempted(seqs[0], 3)
        assert [r["event_id"] for r in await store.outbox_older("a", 102.75)] == ["e-1"]
        assert await store.outbox_head("nobody") is None
    async with engine.store() as store:
        pending = await store.outbox_pending()
        assert [(r["event_id"], r["attempts"], r["created"]) for r in pending] == [
            ("e-1", 3, 100.25), ("e-2", 0, 101.5), ("e-3", 0, 102.75),
        ]  # fmt: skip
        await store.outbox_delete([seqs[0], seqs[2]])
        await store.outbox_delete([])
        assert [r["event_id"] for r in await store.outbox_pending()] == ["e-2"]
        assert (await store.outbox_add([_outbox("e-4", "a", 103.0)]))[0] > seqs[2]  # never reused


async def test_the_health_check_writes_and_names_a_store_that_takes_no_write(engine, monkeypatch):
    monkeypatch.setattr(health, "STORE_CHECK_EVERY_S", 0.0)
    async with engine.store() as store:
        check = health.StoreCheck(store)
        assert await check.writable() == (True, "")
        assert len(await engine.rows("SELECT checked FROM health")) == 1
        await engine.refuse_writes(store)
        writable, why = await check.writable()
        assert not writable and engine.read_only_says in why
        await engine.refuse_writes(store, False)
        assert await check.writable() == (True, "")
