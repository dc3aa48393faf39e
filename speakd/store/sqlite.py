"""Speaking records in SQLite: the embedded default (``[store] path``).

WAL with synchronous=NORMAL survives a killed process (only a power cut can lose the last
commits). Queries run on one dedicated thread, in the order they were called, so a slow disk
never stalls the event loop (the sessions, the API, webhook delivery).

A store that cannot be written (its disk full, its file system read-only, an I/O error) raises
StoreUnwritable: nothing already stored is touched (SQLite rolls the failed statement back), and
reads go on. The rest (the records' SQL, the writes kept while refused) is :mod:`speakd.store.sql`.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import structlog

from speakd.store import schema
from speakd.store.fleet import SoloLink
from speakd.store.interface import AlreadyLive, StoreNotOpened, StoreRefused, StoreUnwritable
from speakd.store.records import Owner, now_stamp
from speakd.store.sql import WRITE_HEALTH, Row, SqlStore, Step

log = structlog.get_logger(__name__)

# SQLite's primary result codes that mean "this store cannot be written now" (not a bug).
_UNWRITABLE = {
    sqlite3.SQLITE_FULL: "its disk is full",
    sqlite3.SQLITE_READONLY: "it is read-only",
    sqlite3.SQLITE_IOERR: "the disk reports an I/O error",
    sqlite3.SQLITE_CANTOPEN: "its files cannot be opened",
}

# How long the health check's write may wait for another writer's lock (the default is 5 s):
# the store's one thread is not held up by health checks for longer than this.
HEALTH_BUSY_TIMEOUT_MS = 500

# Columns that speakd added to tables before the schema had versions, (table, column,
# definition): a store from then may miss them, and gets them as it is taken over at version 1.
UNVERSIONED_COLUMNS = (
    ("says", "client_state", "TEXT NOT NULL DEFAULT ''"),
    ("says", "command_id", "TEXT NOT NULL DEFAULT ''"),
)


class SqliteStore(SqlStore):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="speakd-store")
        self._db: sqlite3.Connection | None = None

    # -- opening and closing (on the store's thread) --------------------------------------------

    async def _open(self) -> None:
        try:
            await self._run(self._connect)
        except BaseException as exc:
            await self._close()
            if isinstance(exc, StoreUnwritable):
                raise StoreNotOpened(exc.message) from None
            raise

    async def _close(self) -> None:
        await self._run(self._disconnect)
        self._executor.shutdown(wait=True)

    def _connect(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        self._migrate()

    def _migrate(self) -> None:
        with self._transaction_block("BEGIN IMMEDIATE"):  # the write lock: one speakd upgrades at a time
            self.db.execute(schema.CREATE_VERSION_TABLE)
            (current,) = self.db.execute(schema.READ_VERSION).fetchone()
            for migration in schema.pending(current, self.path):
                for statement in migration.sql(schema.SQLITE):
                    self.db.execute(statement)
                if migration.version == 1:
                    self._add_unversioned_columns()
                self.db.execute(schema.RECORD_VERSION, (migration.version, migration.description, now_stamp()))
                log.info("store_migrated", version=migration.version, path=self.path)

    def _add_unversioned_columns(self) -> None:
        for table, column, definition in UNVERSIONED_COLUMNS:
            present = {row["name"] for row in self.db.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")

    def _disconnect(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    @contextlib.contextmanager
    def _transaction_block(self, begin: str = "BEGIN") -> Iterator[None]:
        """One explicit transaction (the connection autocommits otherwise); on the store's thread."""
        self.db.execute(begin)
        try:
            yield
            self.db.execute("COMMIT")  # inside: a COMMIT refused (disk full) leaves the transaction open
        except BaseException:
            # SQLite may have rolled back already (a full disk does): a second ROLLBACK would
            # hide the reason behind "no transaction is active".
            if self.db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self.db.execute("ROLLBACK")
            raise

    def _unwritable(self, exc: sqlite3.Error) -> StoreUnwritable | None:
        """``exc`` as StoreUnwritable if it means the store cannot be written now; else None."""
        why = _UNWRITABLE.get(getattr(exc, "sqlite_errorcode", 0) & 0xFF)
        if why is None:
            return None
        return StoreUnwritable(
            f"speakd cannot write its store ({self.path}): {why} ({exc}); nothing was changed. "
            "Live sessions keep speaking; retry once the store can be written again"
        )

    async def _run(self, fn: Any, *args: Any) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except sqlite3.IntegrityError as exc:
            # SQLite names an index's columns, not the index: the key is only in that one.
            if "speakings.conflict_key" in str(exc):
                raise AlreadyLive(str(exc)) from None
            raise
        except sqlite3.Error as exc:
            if (unwritable := self._unwritable(exc)) is None:
                raise
            raise unwritable from None

    # -- running SQL ---------------------------------------------------------------------------

    async def _execute(self, sql: str, args: tuple[Any, ...] = ()) -> None:
        await self._run(self.db.execute, sql, args)

    async def _fetch(self, sql: str, args: tuple[Any, ...] = ()) -> list[Row]:
        def run() -> list[Row]:
            return [dict(row) for row in self.db.execute(sql, args).fetchall()]

        return await self._run(run)

    async def _transaction(self, steps: Sequence[Step], lock_wait_ms: int | None = None) -> list[list[Row]]:
        def run() -> list[list[Row]]:
            with self._busy_timeout(lock_wait_ms), self._transaction_block():
                return [
                    [dict(row) for args in step.args for row in self.db.execute(step.sql, args).fetchall()]
                    for step in steps
                ]

        return await self._run(run)

    @contextlib.contextmanager
    def _busy_timeout(self, ms: int | None) -> Iterator[None]:
        """Wait at most ``ms`` for another writer's lock meanwhile (None: as usual); on the store's thread."""
        if ms is None:
            yield
            return
        (previous,) = self.db.execute("PRAGMA busy_timeout").fetchone()
        self.db.execute(f"PRAGMA busy_timeout = {ms}")
        try:
            yield
        finally:
            self.db.execute(f"PRAGMA busy_timeout = {int(previous)}")

    def fleet(self, owner: Owner) -> SoloLink:
        """A file on one host: no other node shares it."""
        return SoloLink()

    def write_health_row(self) -> asyncio.Future[None]:
        def run() -> None:
            with self._busy_timeout(HEALTH_BUSY_TIMEOUT_MS):
                try:
                    self.db.execute(WRITE_HEALTH, (time.time(),))
                except sqlite3.Error as exc:
                    raise self._unwritable(exc) or StoreRefused(str(exc)) from exc

        return asyncio.get_running_loop().run_in_executor(self._executor, run)
