"""Store writes that must happen together happen in one transaction, on both engines (each
statement commits on its own otherwise)."""

from __future__ import annotations

import pytest

from speakd.store.records import NOT_YET, Speaking, Status

STAMP = "2026-01-01 00:00:00.000000"


def _say(say_id: str, status: str) -> dict:
    return {"say_id": say_id, "speaking_id": "s-1", "text": "hi", "payload_type": "text", "client_state": "",
            "command_id": "", "status": status, "error": "", "heard_chars": 0, "played_ms": 0,
            "tm_queued": STAMP, "tm_play_start": "", "tm_play_end": "",
            "spoken_by": "[]", "provider_failures": "[]",
            "interruptible": True, "volume": 0.0, "lexicon": ""}  # fmt: skip


def _outbox(event_id: str) -> dict:
    return {"event_id": event_id, "customer_id": "c", "event_type": "t", "body": "{}", "created": 1.5, "attempts": 0}


async def test_stop_unfinished_is_all_or_nothing(engine):
    async with engine.store() as store:
        await store.insert(
            Speaking(
                id="s-1", customer_id="c", reference_type="call", reference_id="call-1", language="en-US",
                provider="piper", voice_id="", direction="out", status=Status.ACTIVE,
                tm_create=STAMP, tm_update=STAMP, tm_delete=NOT_YET,
            )
        )  # fmt: skip
        await store.insert_say(_say("y-1", "playing"))
        # The last statement (the says) fails: the sessions' update before it must not stay.
        await engine.execute(*engine.refuse_updates("says"))
        with pytest.raises(Exception, match="refused"):
            await store.stop_unfinished("node-1", "2026-01-02 00:00:00.000000")
        record = await store.get("s-1")
        assert record is not None and record.status == Status.ACTIVE and record.tm_update == STAMP
        await store.insert_say(_say("y-2", "queued"))  # the store goes on: no transaction was left open
    assert await engine.rows("SELECT status, tm_update FROM speakings") == [("active", STAMP)]
    assert await engine.rows("SELECT say_id, status FROM says ORDER BY seq") == [("y-1", "playing"), ("y-2", "queued")]


async def test_an_outbox_batch_is_queued_whole_or_not_at_all(engine):
    async with engine.store() as store:
        await store.outbox_add([_outbox("e-1")])
        with pytest.raises(Exception, match=r"(?i)unique"):  # e-1 again: the event ids are unique
            await store.outbox_add([_outbox("e-2"), _outbox("e-1")])
        assert [row["event_id"] for row in await store.outbox_pending()] == ["e-1"]
