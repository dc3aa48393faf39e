"""Store writes that must happen together happen in one transaction (the connection autocommits
every statement otherwise: ``isolation_level=None``)."""

from __future__ import annotations

import sqlite3

import pytest

from speakd.store.records import NOT_YET, Speaking, Status
from speakd.store.sqlite import SqliteStore


async def test_stop_unfinished_is_all_or_nothing(tmp_path):
    stamp = "2026-01-01 00:00:00.000000"
    async with SqliteStore(str(tmp_path / "s.sqlite3")) as store:
        await store.insert(
            Speaking(
                id="s-1", customer_id="c", reference_type="call", reference_id="call-1", language="en-US",
                provider="piper", voice_id="", direction="out", status=Status.ACTIVE,
                tm_create=stamp, tm_update=stamp, tm_delete=NOT_YET,
            )
        )  # fmt: skip
        await store.insert_say(
            {"say_id": "y-1", "speaking_id": "s-1", "text": "hi", "payload_type": "text", "client_state": "",
             "command_id": "", "status": "playing", "error": "", "heard_chars": 0, "played_ms": 0,
             "tm_queued": stamp, "tm_play_start": "", "tm_play_end": ""}
        )  # fmt: skip
        # The last statement (the says) fails: the sessions' update before it must not stay.
        await store._run(
            store.db.execute, "CREATE TRIGGER refuse BEFORE UPDATE ON says BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
        with pytest.raises(sqlite3.IntegrityError, match="refused"):
            await store.stop_unfinished("2026-01-02 00:00:00.000000")
        assert not store.db.in_transaction
        record = await store.get("s-1")
        assert record is not None and record.status == Status.ACTIVE and record.tm_update == stamp
