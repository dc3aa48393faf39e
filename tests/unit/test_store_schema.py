"""The store's schema is versioned on both engines: a new store starts at the latest version,
newer migrations are applied at start in one transaction (all or nothing), a store written by
a newer speakd is refused, and a SQLite file written before versions existed opens with all
its data.

tests/unit/data/store-before-versions.sqlite3 was written by speakd/store/sqlite.py as it was
at commit 361de5d (the last release without schema versions), through its own API: three
speakings (stopped, active, stopped and deleted), says of every state with and without
client_state/command_id, two webhook deliveries and the health row.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from speakd.store import schema
from speakd.store.interface import StoreNotOpened
from speakd.store.records import NOT_YET, Speaking
from speakd.store.sqlite import SqliteStore

BEFORE_VERSIONS = Path(__file__).parent / "data" / "store-before-versions.sqlite3"
CUSTOMER = "5e4a0680-804e-11ec-8477-2fea5968d85b"


def _extra_migration(*statements: str) -> tuple[schema.Migration, ...]:
    return (*schema.MIGRATIONS, schema.Migration(schema.LATEST + 1, "a test's migration", statements))


async def test_a_new_store_starts_at_the_latest_version(engine):
    async with engine.store():
        pass
    async with engine.store():  # opening again applies nothing more
        pass
    assert await engine.rows("SELECT version, description FROM schema_version") == [
        (m.version, m.description) for m in schema.MIGRATIONS
    ]


async def test_a_newer_migration_is_applied_once_at_start(engine, monkeypatch):
    async with engine.store() as store:
        await store.outbox_add([{"event_id": "e", "customer_id": "c", "event_type": "t", "body": "{}",
                                 "created": 1.0, "attempts": 0}])  # fmt: skip
    monkeypatch.setattr(schema, "MIGRATIONS", _extra_migration(
        "CREATE TABLE peers (id TEXT PRIMARY KEY, seen {real} NOT NULL)",
        "ALTER TABLE webhook_outbox ADD COLUMN claimed_by TEXT NOT NULL DEFAULT ''",
    ))  # fmt: skip
    monkeypatch.setattr(schema, "LATEST", schema.LATEST + 1)
    for _ in range(2):
        async with engine.store() as store:
            assert [r["event_id"] for r in await store.outbox_pending()] == ["e"]
    assert [v for (v,) in await engine.rows("SELECT version FROM schema_version ORDER BY version")] == list(
        range(1, schema.LATEST + 1)
    )
    assert await engine.rows("SELECT event_id, claimed_by FROM webhook_outbox") == [("e", "")]
    assert await engine.rows("SELECT id FROM peers") == []


async def test_a_failing_migration_leaves_the_store_as_it_was(engine, monkeypatch):
    async with engine.store():
        pass
    monkeypatch.setattr(schema, "MIGRATIONS", _extra_migration(
        "CREATE TABLE peers (id TEXT PRIMARY KEY)",
        "ALTER TABLE no_such_table ADD COLUMN x TEXT",
    ))  # fmt: skip
    monkeypatch.setattr(schema, "LATEST", schema.LATEST + 1)
    with pytest.raises(Exception, match="no_such_table"):
        async with engine.store():
            pass
    monkeypatch.undo()
    assert await engine.rows("SELECT MAX(version) FROM schema_version") == [(schema.LATEST,)]
    async with engine.store() as store:  # the table of the failed migration's first statement is not there
        await engine.execute("CREATE TABLE peers (id TEXT PRIMARY KEY)")
        assert await store.get("x") is None


async def test_a_store_of_a_newer_speakd_is_refused(engine):
    async with engine.store():
        pass
    newer = schema.LATEST + 7
    await engine.execute(f"INSERT INTO schema_version VALUES ({newer}, 'a newer one', '2099-01-01 00:00:00.000000')")
    with pytest.raises(StoreNotOpened) as refused:
        async with engine.store():
            pass
    message = refused.value.message
    assert f"schema version {newer}" in message and f"the {schema.LATEST} this speakd knows" in message
    assert engine.where.split(" at ")[-1] in message and "does not downgrade" in message


async def test_a_sqlite_file_written_before_versions_opens_with_all_its_data(tmp_path):
    path = tmp_path / "speakd.sqlite3"
    shutil.copy(BEFORE_VERSIONS, path)
    with sqlite3.connect(path) as db:
        before = {table: db.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
                  for table in ("speakings", "says", "webhook_outbox", "health")}  # fmt: skip
    assert before["speakings"] and before["says"] and before["webhook_outbox"] and before["health"]

    async with SqliteStore(str(path)) as store:
        stopped = await store.get("0b5e6c1e-0000-4000-8000-000000000001")
        assert stopped == Speaking(
            id="0b5e6c1e-0000-4000-8000-000000000001", customer_id=CUSTOMER, reference_type="call",
            reference_id="call-1", language="en-US", provider="piper", voice_id="", direction="out",
            status="stopped", tm_create="2026-05-01 10:00:00.000001", tm_update="2026-05-01 10:00:00.000001",
            tm_delete=NOT_YET,
        )  # fmt: skip
        listed = await store.list(CUSTOMER, 10, None)  # the deleted one left out, newest first
        assert [r.reference_id for r in listed] == ["call-2", "call-1"]
        says = await store.list_says(stopped.id)
        assert [(s["say_id"], s["status"], s["client_state"], s["command_id"]) for s in says] == [
            ("say-1", "played", "state-1", "cmd-1"), ("say-2", "interrupted", "", ""),
        ]  # fmt: skip
        assert says[0]["text"] == "Hello number 1, with ünïcode" and says[0]["played_ms"] == 480
        assert [(r["event_id"], r["attempts"], r["created"]) for r in await store.outbox_pending()] == [
            ("evt-1", 2, 1778000000.25), ("evt-2", 0, 1778000001.5),
        ]  # fmt: skip
        # It is written as before: the active session a crash left is stopped, its says cut.
        # ... by whichever node opens it: rows from before nodes are owned by none.
        assert [r.reference_id for r in await store.stop_unfinished("pbx-1", "2026-06-01 00:00:00.000000")] == [
            "call-2"
        ]
    with sqlite3.connect(path) as db:
        after = {table: db.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall() for table in before}
        assert db.execute("SELECT version FROM schema_version").fetchall() == [
            (v,) for v in range(1, schema.LATEST + 1)
        ]
        assert set(db.execute("SELECT node_id, run_id, conflict_key FROM speakings").fetchall()) == {("", "", "")}
        after["speakings"] = [row[: len(before["speakings"][0])] for row in after["speakings"]]  # the columns before
        columns = [c[1] for c in db.execute("PRAGMA table_info(says)")]
        added = {tuple(row[columns.index(c)] for c in ("spoken_by", "interruptible", "volume", "lexicon"))
                 for row in after["says"]}  # fmt: skip
        assert added == {("[]", 1, 0.0, "")}  # v4: no one named; v5: interruptible, no volume change, no lexicon
        after["says"] = [row[: len(before["says"][0])] for row in after["says"]]
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert after["webhook_outbox"] == before["webhook_outbox"] and after["health"] == before["health"]
    # Only the active session's row and its says changed.
    assert [row for row in after["speakings"] if row[3] != "call-2"] == [
        row for row in before["speakings"] if row[3] != "call-2"
    ]
    assert [row for row in after["says"] if row[2] == stopped.id] == [
        row for row in before["says"] if row[2] == stopped.id
    ]
    assert [row[7] for row in after["says"] if row[2] != stopped.id] == ["interrupted", "interrupted"]


async def test_a_sqlite_file_from_before_client_state_gets_the_columns(tmp_path):
    """Older still: its says have no client_state or command_id (added without versions then)."""
    path = tmp_path / "speakd.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE says (seq INTEGER PRIMARY KEY AUTOINCREMENT, say_id TEXT NOT NULL UNIQUE, "
            "speaking_id TEXT NOT NULL, text TEXT NOT NULL, payload_type TEXT NOT NULL, status TEXT NOT NULL, "
            "error TEXT NOT NULL, heard_chars INTEGER NOT NULL, played_ms INTEGER NOT NULL, "
            "tm_queued TEXT NOT NULL, tm_play_start TEXT NOT NULL, tm_play_end TEXT NOT NULL)"
        )
        db.execute("INSERT INTO says VALUES (1, 'y', 's', 'hi', 'text', 'played', '', 2, 300, 't', 't', 't')")
    async with SqliteStore(str(path)) as store:
        (say,) = await store.list_says("s")
        assert (say["say_id"], say["client_state"], say["command_id"], say["played_ms"]) == ("y", "", "", 300)
