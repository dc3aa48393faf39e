"""PostgreSQL going away under a running store, as a full disk does for SQLite: writes refused
with 503 naming the server, live sessions' state kept and written once it is back, the store
reconnecting by itself (no restart of speakd). And what start-up says when it cannot begin."""

from __future__ import annotations

import asyncio
import socket

import pytest
import structlog
from harness.postgres import ROLE_PASSWORD, PostgresServer
from harness.stores import PostgresEngine

from speakd.store import health, schema
from speakd.store import sql as store_sql
from speakd.store.interface import StoreNotOpened, StoreUnwritable
from speakd.store.postgres import PostgresStore
from speakd.store.records import NOT_YET, Speaking, Status


def _record(speaking_id: str) -> Speaking:
    stamp = "2026-01-01 00:00:00.000000"
    return Speaking(id=speaking_id, customer_id="c", reference_type="call", reference_id=speaking_id,
                    language="en-US", provider="piper", voice_id="", direction="out", status=Status.INITIATING,
                    tm_create=stamp, tm_update=stamp, tm_delete=NOT_YET)  # fmt: skip


def _say(status: str) -> dict:
    return {"say_id": "y", "speaking_id": "s-1", "text": "hello", "payload_type": "text", "client_state": "",
            "command_id": "", "status": status, "error": "", "heard_chars": 0, "played_ms": 0,
            "tm_queued": "2026-01-01 00:00:00.000000", "tm_play_start": "", "tm_play_end": "",
            "spoken_by": "[]", "provider_failures": "[]",
            "interruptible": True, "volume": 0.0, "lexicon": ""}  # fmt: skip


@pytest.fixture
def database(postgres: PostgresServer) -> PostgresEngine:
    return PostgresEngine(postgres, postgres.new_database())


@pytest.mark.parametrize("fault", ["stop", "crash", "kill"])
async def test_a_server_gone_and_back_refuses_then_catches_up_without_a_restart(database, fault, monkeypatch):
    monkeypatch.setattr(store_sql, "RETRY_EVERY_S", 0.05)
    monkeypatch.setattr(health, "STORE_CHECK_EVERY_S", 0.0)
    server = database.server
    with structlog.testing.capture_logs() as logs:
        async with database.store() as store:
            record = _record("s-1")
            await store.insert(record)
            await store.insert_say(_say("queued"))
            getattr(server, fault)()  # stop: a clean shutdown; crash: -m immediate; kill: SIGKILL

            with pytest.raises(StoreUnwritable) as refused:
                await store.insert(_record("s-2"))
            message = refused.value.message
            assert refused.value.status == 503
            assert f"PostgreSQL at 127.0.0.1:{server.port} is unreachable" in message, message
            assert ROLE_PASSWORD not in message
            writable, why = await health.StoreCheck(store).writable()
            assert not writable and "is unreachable" in why
            # The live session's state is not refused: kept, and written later.
            record.status = Status.ACTIVE
            await store.update_later(record)
            await store.update_say_later(_say("playing"))
            await store.update_say_later(_say("played"))
            assert store.pending_writes == 2

            server.start()
            async with asyncio.timeout(10):
                while store.pending_writes:
                    await asyncio.sleep(0.05)
            await store.insert(_record("s-2"))  # the same store object, connected again
            assert (await store.get("s-2")).id == "s-2"
            assert await health.StoreCheck(store).writable() == (True, "")
    stored = await database.rows("SELECT id, status FROM speakings ORDER BY id")
    assert stored == [("s-1", "active"), ("s-2", "initiating")]
    assert await database.rows("SELECT status FROM says") == [("played",)]
    events = [entry["event"] for entry in logs]
    assert "store_unwritable" in events and "store_writable_again" in events and "store_writes_lost" not in events


async def test_a_server_that_is_not_there_at_start_is_named(postgres):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = postgres.url("speakd").replace(f":{postgres.port}/", f":{port}/")
    with pytest.raises(StoreNotOpened, match=rf"PostgreSQL at 127\.0\.0\.1:{port} is unreachable"):
        async with PostgresStore(url):
            pass


async def test_a_refused_login_is_named_at_start_without_the_password(database):
    url = database.url.replace("p%40ss", "wrong")
    with pytest.raises(StoreNotOpened) as refused:
        async with PostgresStore(url):
            pass
    message = refused.value.message
    assert "password authentication failed" in message and f"127.0.0.1:{database.server.port}" in message
    assert "wrong" not in message


async def test_nodes_starting_at_once_migrate_the_store_once(database):
    stores = [database.store() for _ in range(4)]
    await asyncio.gather(*(store.__aenter__() for store in stores))
    for store in stores:
        await store.__aexit__(None, None, None)
    assert await database.rows("SELECT version FROM schema_version") == [(m.version,) for m in schema.MIGRATIONS]
