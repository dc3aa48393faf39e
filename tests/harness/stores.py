"""The store's own tests run on both engines: the ``engine`` fixture is parametrized sqlite /
postgresql, and gives each test an empty store's worth of data (a file; a new database on the
session's PostgreSQL server) with what a test needs around the store: opening it (again),
making the engine refuse writes and take them again, and a connection of the test's own to
read what is really stored (not the store's memory).

Refusing writes is a read-only engine on both: SQLite's ``PRAGMA query_only`` on the store's
own connection (a read-only file cannot be made for root, the CI user), PostgreSQL's
``default_transaction_read_only`` for every session (as a standby is). A server that goes away
altogether is PostgreSQL's own test (tests/unit/test_store_postgres.py).
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from harness.postgres import PostgresServer
from speakd.store.postgres import PostgresStore
from speakd.store.sqlite import SqliteStore


class SqliteEngine:
    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)  # what a refusal names
        self.read_only_says = "read-only"

    def store(self) -> SqliteStore:
        return SqliteStore(str(self.path))

    async def refuse_writes(self, store: SqliteStore, on: bool = True) -> None:
        await store._run(store.db.execute, f"PRAGMA query_only = {'ON' if on else 'OFF'}")

    async def rows(self, sql: str) -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(self.path)) as db:
            return [tuple(row) for row in db.execute(sql).fetchall()]

    async def execute(self, *statements: str) -> None:
        with contextlib.closing(sqlite3.connect(self.path, isolation_level=None)) as db:
            for statement in statements:
                db.execute(statement)

    def refuse_updates(self, table: str) -> list[str]:
        """DDL that makes every UPDATE of ``table`` fail with "refused"."""
        return [f"CREATE TRIGGER refuse BEFORE UPDATE ON {table} BEGIN SELECT RAISE(ABORT, 'refused'); END"]


class PostgresEngine:
    name = "postgresql"

    def __init__(self, server: PostgresServer, url: str) -> None:
        self.server = server
        self.url = url
        self.where = f"PostgreSQL at {server.host}:{server.port}"
        self.read_only_says = "is read-only"

    def store(self) -> PostgresStore:
        return PostgresStore(self.url)

    async def refuse_writes(self, store: PostgresStore, on: bool = True) -> None:
        self.server.set_read_only(on)

    async def rows(self, sql: str) -> list[tuple[Any, ...]]:
        connection = await asyncpg.connect(self.url)
        try:
            return [tuple(row) for row in await connection.fetch(sql)]
        finally:
            await connection.close()

    async def execute(self, *statements: str) -> None:
        connection = await asyncpg.connect(self.url)
        try:
            for statement in statements:
                await connection.execute(statement)
        finally:
            await connection.close()

    def refuse_updates(self, table: str) -> list[str]:
        return [
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$",
            f"CREATE TRIGGER refuse BEFORE UPDATE ON {table} FOR EACH ROW EXECUTE FUNCTION refuse()",
        ]


Engine = SqliteEngine | PostgresEngine


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path) -> Engine:
    if request.param == "sqlite":
        return SqliteEngine(tmp_path / "s.sqlite3")
    server: PostgresServer = request.getfixturevalue("postgres")
    return PostgresEngine(server, server.new_database())
