"""Nodes that die, in the store, on both engines: a lost run's sessions are ended in one fenced
transaction (stopped, their unfinished says interrupted, the rows naming no run) by exactly one
node; the lost run's late writes match nothing and say which sessions they were for; the other
runs owning live sessions are listed with their lock keys. On PostgreSQL, the run lock itself:
a key of its own per run, seen held while its connection lives, free once it is gone, taken
again by itself after the server restarts; and the watcher (speakd.sessions.liveness) ending a
run whose lock went, once, but not while the server is newly up (every lock was free then)."""

from __future__ import annotations

import asyncio
import math

import pytest

from speakd.sessions import liveness
from speakd.store.liveness import LiveRun, LocksSeen, SoloRunLock
from speakd.store.records import NOT_YET, Owner, Speaking, Status

A = Owner("pbx-a", "run-a1")
B = Owner("pbx-b", "run-b1")
STAMP = "2026-03-01 12:00:00.000000"
ENDED = "2026-03-01 12:00:09.000000"


def _record(n: int, status: str = Status.ACTIVE) -> Speaking:
    stamp = f"2026-03-0{n} 12:34:56.{n:06d}"
    return Speaking(
        id=f"s-{n}", customer_id="c", reference_type="call", reference_id=f"chan-{n}", language="en-US",
        provider="piper", voice_id="", direction="out", status=status, tm_create=stamp, tm_update=stamp,
        tm_delete=NOT_YET,
    )  # fmt: skip


def _say(say_id: str, speaking_id: str, status: str) -> dict:
    return {"say_id": say_id, "speaking_id": speaking_id, "text": "hi", "payload_type": "text", "client_state": "",
            "command_id": "", "status": status, "error": "", "heard_chars": 0, "played_ms": 0,
            "tm_queued": STAMP, "tm_play_start": NOT_YET, "tm_play_end": NOT_YET,
            "spoken_by": "[]", "provider_failures": "[]",
            "interruptible": True, "volume": 0.0, "lexicon": ""}  # fmt: skip


async def _two_runs(store) -> None:
    """Run A (lock key 7) with two live sessions and a stopped one; run B (key 8) with one."""
    await store.register_node(A, "http://pbx-a:8090", STAMP, 7)
    await store.register_node(B, "http://pbx-b:8090", STAMP, 8)
    await store.insert(_record(1), A, "chan-1")
    await store.insert(_record(2, Status.INITIATING), A, "chan-2")
    await store.insert(_record(3, Status.STOPPED), A, "chan-3")
    await store.insert(_record(4), B, "chan-4")
    for say_id, speaking_id, status in (
        ("a1", "s-1", "played"), ("a2", "s-1", "playing"), ("a3", "s-1", "queued"), ("c1", "s-3", "queued"),
        ("b1", "s-4", "playing"),
    ):  # fmt: skip
        await store.insert_say(_say(say_id, speaking_id, status))


async def test_the_runs_owning_live_sessions_are_listed_with_their_lock_keys(engine):
    async with engine.store() as store:
        await _two_runs(store)
        assert await store.live_runs(B.run_id) == [LiveRun("pbx-a", "run-a1", 7)]
        assert sorted(await store.live_runs("another run"), key=lambda run: run.lock_key) == [
            LiveRun("pbx-a", "run-a1", 7), LiveRun("pbx-b", "run-b1", 8),
        ]  # fmt: skip
        # A node restarted as a new run: its old run's sessions are its own start-up's to stop.
        await store.register_node(Owner("pbx-a", "run-a2"), "http://pbx-a:8090", STAMP, 9)
        assert await store.live_runs(B.run_id) == []
        # A run that holds no lock (a store of one node) is never watched.
        await store.register_node(B, "http://pbx-b:8090", STAMP, 0)
        assert await store.live_runs("another run") == []


async def test_a_lost_runs_sessions_are_ended_once_and_its_late_writes_match_nothing(engine):
    fenced: list[set[str]] = []
    async with engine.store() as a, engine.store() as b:
        await _two_runs(a)
        a.fence(A.run_id, fenced.append)

        ended = sorted(await b.end_lost_run(A.run_id, ENDED), key=lambda each: each[0].id)
        assert [(record.id, record.status, record.tm_update) for record, _ in ended] == [
            ("s-1", "stopped", ENDED), ("s-2", "stopped", ENDED),
        ]  # fmt: skip
        says = {record.id: sorted((say["say_id"], say["status"]) for say in rows) for record, rows in ended}
        assert says == {"s-1": [("a2", "interrupted"), ("a3", "interrupted")], "s-2": []}
        assert await b.end_lost_run(A.run_id, ENDED) == []  # nothing left for another node
        assert await b.live_runs(B.run_id) == []

        # Run A, not knowing yet, writes on: a session's state, a say's, now and kept for later.
        assert await a.fenced_off(["s-1", "s-2", "s-3"]) == {"s-1", "s-2"}
        await a.update_later(_record(1, Status.STOPPED))
        await a.update_say(_say("a2", "s-1", "played"))
        await a.update_say_later(_say("a3", "s-1", "playing"))
        assert fenced == [{"s-1"}, {"s-1"}, {"s-1"}] and a.pending_writes == 0
        await a.insert_say(_say("a4", "s-2", "queued"))  # taken back: s-2 is no longer run A's
        assert fenced[-1] == {"s-2"}
        fenced.pop()
        # Its own stopped session's rows are still its own to write.
        await a.update_say_later(_say("c1", "s-3", "interrupted"))
        assert len(fenced) == 3
        # A delete is the customer's, written whoever owned the session.
        deleted = _record(2, Status.STOPPED)
        deleted.tm_delete = ENDED
        await a.update(deleted)
    assert await engine.rows("SELECT id, status, run_id, tm_update, tm_delete FROM speakings ORDER BY id") == [
        ("s-1", "stopped", "", ENDED, NOT_YET),
        ("s-2", "stopped", "", _record(2).tm_update, ENDED),
        ("s-3", "stopped", "run-a1", _record(3).tm_update, NOT_YET),
        ("s-4", "active", "run-b1", _record(4).tm_update, NOT_YET),
    ]  # fmt: skip
    assert await engine.rows("SELECT say_id, status FROM says ORDER BY say_id") == [
        ("a1", "played"), ("a2", "interrupted"), ("a3", "interrupted"), ("b1", "playing"), ("c1", "interrupted"),
    ]  # fmt: skip


async def test_a_kept_write_found_fenced_when_the_store_is_back_is_dropped(engine, monkeypatch):
    from speakd.store import sql as store_sql

    monkeypatch.setattr(store_sql, "RETRY_EVERY_S", 0.05)
    fenced: list[set[str]] = []
    async with engine.store() as a, engine.store() as b:
        await _two_runs(a)
        a.fence(A.run_id, fenced.append)
        await engine.refuse_writes(a)
        await a.update_say_later(_say("a2", "s-1", "played"))  # kept: refused
        assert a.pending_writes == 1
        await engine.refuse_writes(a, on=False)
        await b.end_lost_run(A.run_id, ENDED)
        for _ in range(100):
            if not a.pending_writes:
                break
            await asyncio.sleep(0.05)
        assert a.pending_writes == 0 and fenced == [{"s-1"}]
    assert await engine.rows("SELECT status FROM says WHERE say_id = 'a2'") == [("interrupted",)]


async def test_two_nodes_ending_one_lost_run_at_once_end_each_session_once(engine):
    async with engine.store() as a, engine.store() as b, engine.store() as c:
        await _two_runs(a)
        results = await asyncio.gather(b.end_lost_run(A.run_id, ENDED), c.end_lost_run(A.run_id, ENDED))
    ids = [record.id for ended in results for record, _ in ended]
    assert sorted(ids) == ["s-1", "s-2"]
    interrupted = [say["say_id"] for ended in results for _, says in ended for say in says]
    assert sorted(interrupted) == ["a2", "a3"]


async def test_a_store_of_one_node_has_a_lock_of_its_own_that_no_one_watches(tmp_path):
    from speakd.store.sqlite import SqliteStore

    async with SqliteStore(str(tmp_path / "s.sqlite3")) as store, store.run_lock() as lock:
        assert isinstance(lock, SoloRunLock) and (lock.key, lock.shared) == (0, False)
        assert lock.held_since is not None and await lock.look({3, 4}) == LocksSeen({3, 4}, math.inf)


# -- PostgreSQL's run lock ---------------------------------------------------------------------------


@pytest.fixture
def pg(engine):
    """The engine, on PostgreSQL only (each test below parametrizes it so)."""
    assert engine.name == "postgresql"
    return engine


@pytest.mark.parametrize("engine", ["postgresql"], indirect=True)
async def test_each_run_holds_a_key_of_its_own_until_its_connection_goes(pg):
    async with pg.store() as store:
        await store.register_node(A, "http://pbx-a:8090", STAMP, 5)  # a key taken before
        async with store.run_lock() as first, store.run_lock() as second:
            assert first.shared and first.key == 6 and second.key == 7
            seen = await first.look({5, 6, 7})
            assert seen.held == {6, 7} and 0 < seen.server_up_s < 24 * 3600
            connection = second._connection
        assert await _held_elsewhere(pg, {6, 7}) == set()
        assert connection.is_closed()


@pytest.mark.parametrize("engine", ["postgresql"], indirect=True)
@pytest.mark.parametrize("fault", ["restart", "kill"])
async def test_the_lock_is_taken_again_by_itself_after_the_server_comes_back(pg, fault, monkeypatch):
    from speakd.store import postgres_liveness

    monkeypatch.setattr(postgres_liveness, "RETRY_S", 0.1)
    async with pg.store() as store, store.run_lock() as lock:
        taken = lock.held_since
        assert await _held_elsewhere(pg, {lock.key}) == {lock.key}
        if fault == "restart":
            pg.server.restart()
        else:
            pg.server.kill()
            pg.server.start()
        for _ in range(100):
            if lock.held_since not in (None, taken):
                break
            await asyncio.sleep(0.1)
        assert lock.held_since not in (None, taken)
        assert await _held_elsewhere(pg, {lock.key}) == {lock.key}


async def _held_elsewhere(pg, keys: set[int]) -> set[int]:
    """What a connection of the test's own sees held."""
    rows = await pg.rows(
        "SELECT objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2 "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    return {key for (key,) in rows} & keys


@pytest.mark.parametrize("engine", ["postgresql"], indirect=True)
async def test_the_watcher_ends_a_run_whose_lock_went_but_not_while_the_server_is_new(pg, monkeypatch):
    monkeypatch.setattr(liveness, "LOST_AFTER_S", 0.3)
    published: list[tuple[str, list[str], str]] = []
    async with pg.store() as store_b, store_b.run_lock() as lock_b:
        async with pg.store() as store_a, store_a.run_lock() as lock_a:
            await store_a.register_node(A, "http://pbx-a:8090", STAMP, lock_a.key)
            await store_a.insert(_record(1), A, "chan-1")
            await store_a.insert_say(_say("a1", "s-1", "playing"))
        # Run A is gone (its lock with its connection).
        watch = liveness.LivenessWatch(
            store_b, lock_b, B, live_ids=list, stop_fenced=lambda ids: None,
            publish_lost=lambda record, says, detail: published.append(
                (record.id, [say["say_id"] for say in says], detail)
            ),
        )  # fmt: skip
        # A server up for less than SETTLE_S: every lock was free lately, nothing is judged.
        monkeypatch.setattr(liveness, "SETTLE_S", 1e9)
        for _ in range(3):
            await watch.check()
            await asyncio.sleep(0.2)
        assert published == []
        monkeypatch.setattr(liveness, "SETTLE_S", 0.0)
        await watch.check()  # free, once
        assert published == []
        await asyncio.sleep(0.3)
        await watch.check()  # free over LOST_AFTER_S: lost
        assert published == [("s-1", ["a1"], "node 'pbx-a' was lost (its run run-a1 no longer holds its lock)")]
        await asyncio.sleep(0.3)
        await watch.check()  # ended once
        assert len(published) == 1
    assert await pg.rows("SELECT status, run_id FROM speakings") == [("stopped", "")]
