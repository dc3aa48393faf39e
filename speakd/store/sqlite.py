"""Speaking records in SQLite.

Every write is committed before the call returns, so the API never answers about a record
that a crash could lose. WAL with synchronous=NORMAL survives a killed process (only a power
cut can lose the last commits). Queries run on one dedicated thread so a slow disk never
stalls the event loop (the sessions, the API, webhook delivery).

A store that cannot be written (its disk full, its file system read-only, an I/O error) raises
:class:`StoreUnwritable`, a 503 at the API: a request that needs a write is refused, nothing
already stored is touched (SQLite rolls the failed statement back). State that live sessions
produce on their own (say states, a session going active or stopped) is not refused but kept
in memory, newest per row, readable through this store, and written once the store takes
writes again (:meth:`SqliteStore.update_later`, :meth:`SqliteStore.update_say_later`).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import structlog

from speakd.errors import ServiceUnavailable
from speakd.store.records import FIELDS, NOT_YET, Speaking, Status
from speakd.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

# SQLite's primary result codes that mean "this store cannot be written now" (not a bug).
_UNWRITABLE = {
    sqlite3.SQLITE_FULL: "its disk is full",
    sqlite3.SQLITE_READONLY: "it is read-only",
    sqlite3.SQLITE_IOERR: "the disk reports an I/O error",
    sqlite3.SQLITE_CANTOPEN: "its files cannot be opened",
}
# How often writes kept in memory are tried again while the store refuses them.
RETRY_EVERY_S = 1.0


class StoreUnwritable(ServiceUnavailable):
    """The store refuses writes (disk full, read-only, I/O error): HTTP 503, retry later."""

    retry_after = 5


_SCHEMA = """
CREATE TABLE IF NOT EXISTS speakings (
    id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    reference_type TEXT NOT NULL,
    reference_id TEXT NOT NULL,
    language TEXT NOT NULL,
    provider TEXT NOT NULL,
    voice_id TEXT NOT NULL,
    direction TEXT NOT NULL,
    status TEXT NOT NULL,
    tm_create TEXT NOT NULL,
    tm_update TEXT NOT NULL,
    tm_delete TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS speakings_customer_create ON speakings (customer_id, tm_create);
CREATE INDEX IF NOT EXISTS speakings_status ON speakings (status);
CREATE TABLE IF NOT EXISTS says (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    say_id TEXT NOT NULL UNIQUE,
    speaking_id TEXT NOT NULL,
    text TEXT NOT NULL,
    payload_type TEXT NOT NULL,
    client_state TEXT NOT NULL DEFAULT '',
    command_id TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    error TEXT NOT NULL,
    heard_chars INTEGER NOT NULL,
    played_ms INTEGER NOT NULL,
    tm_queued TEXT NOT NULL,
    tm_play_start TEXT NOT NULL,
    tm_play_end TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS says_speaking ON says (speaking_id, seq);
CREATE TABLE IF NOT EXISTS webhook_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    customer_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    body TEXT NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS webhook_outbox_customer ON webhook_outbox (customer_id, seq);
CREATE TABLE IF NOT EXISTS health (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    checked REAL NOT NULL
);
"""

# How long the health check's write may wait for another writer's lock (the default is 5 s):
# the store's one thread is not held up by health checks for longer than this.
HEALTH_BUSY_TIMEOUT_MS = 500

# A webhook delivery waiting in the outbox: ``body`` is the exact JSON POSTed (signed as is),
# ``created`` the unix time it was queued (what give-up is measured from).
OUTBOX_FIELDS = ("event_id", "customer_id", "event_type", "body", "created", "attempts")

SAY_COLUMNS = (
    "say_id",
    "speaking_id",
    "text",
    "payload_type",
    "client_state",
    "command_id",
    "status",
    "error",
    "heard_chars",
    "played_ms",
    "tm_queued",
    "tm_play_start",
    "tm_play_end",
)

# Written when the say is queued, never after.
_SAY_SET_ONCE = ("say_id", "speaking_id", "text", "payload_type", "client_state", "command_id", "tm_queued")
_SPEAKING_COLS = tuple(f for f in FIELDS if f != "id")  # what an update writes
_SAY_COLS = tuple(f for f in SAY_COLUMNS if f not in _SAY_SET_ONCE)


def _insert_sql(table: str, fields: tuple[str, ...]) -> str:
    return f"INSERT INTO {table} ({', '.join(fields)}) VALUES ({', '.join('?' * len(fields))})"


def _update_sql(table: str, fields: tuple[str, ...], key: str) -> str:
    return f"UPDATE {table} SET {', '.join(f'{c} = ?' for c in fields)} WHERE {key} = ?"


_INSERT_SPEAKING = _insert_sql("speakings", FIELDS)
_INSERT_SAY = _insert_sql("says", SAY_COLUMNS)
_INSERT_OUTBOX = _insert_sql("webhook_outbox", OUTBOX_FIELDS)
_UPDATE_SPEAKING = _update_sql("speakings", _SPEAKING_COLS, "id")
_UPDATE_SAY = _update_sql("says", _SAY_COLS, "say_id")
_SELECT_OUTBOX = f"SELECT seq, {', '.join(OUTBOX_FIELDS)} FROM webhook_outbox"


def _update_speaking_args(row: dict[str, Any]) -> tuple:
    return (*(row[c] for c in _SPEAKING_COLS), row["id"])


def _update_say_args(row: dict[str, Any]) -> tuple:
    return (*(row[c] for c in _SAY_COLS), row["say_id"])


def _overlay(pending: dict[str, dict[str, Any]], key: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows as read, each replaced by its newer state still kept in memory (see update_later)."""
    return [pending.get(row[key], row) for row in rows]


# Columns added after a table was first created: (table, column, definition).
_ADDED_COLUMNS = (
    ("says", "client_state", "TEXT NOT NULL DEFAULT ''"),
    ("says", "command_id", "TEXT NOT NULL DEFAULT ''"),
)


def _add_missing_columns(db: sqlite3.Connection) -> None:
    """Bring a store written by an older speakd up to the current schema."""
    for table, column, definition in _ADDED_COLUMNS:
        present = {row["name"] for row in db.execute(f"PRAGMA table_info({table})")}
        if column not in present:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")


class SqliteStore:
    def __init__(self, path: str) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="speakd-store")
        self._db: sqlite3.Connection | None = None
        # Rows written later (id -> row), the newest state of each; see update_later.
        self._pending_speakings: dict[str, dict[str, Any]] = {}
        self._pending_says: dict[str, dict[str, Any]] = {}
        self._retry: asyncio.Task[None] | None = None

    async def __aenter__(self) -> SqliteStore:
        await self._run(self._open)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await cancel_and_wait(self._retry)
        if self.pending_writes:
            try:
                await self._write_pending()
            except StoreUnwritable as exc:
                log.error("store_writes_lost", rows=self.pending_writes, error=exc.message)
        await self._run(self._close)
        self._executor.shutdown(wait=True)

    def _open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        _add_missing_columns(db)
        self._db = db

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One explicit transaction (the connection autocommits otherwise); on the store's thread."""
        self.db.execute("BEGIN")
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

    async def _run(self, fn: Any, *args: Any) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as exc:
            why = _UNWRITABLE.get(getattr(exc, "sqlite_errorcode", 0) & 0xFF)
            if why is None:
                raise
            raise StoreUnwritable(
                f"speakd cannot write its store ({self.path}): {why} ({exc}); nothing was changed. "
                "Live sessions keep speaking; retry once the store can be written again"
            ) from None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    # -- writes -----------------------------------------------------------------------------

    async def insert(self, record: Speaking) -> None:
        row = record.to_dict()
        await self._run(self.db.execute, _INSERT_SPEAKING, tuple(row[f] for f in FIELDS))

    async def update(self, record: Speaking) -> None:
        row = record.to_dict()
        await self._superseding(self._pending_speakings, record.id, _UPDATE_SPEAKING, _update_speaking_args(row))

    async def insert_say(self, row: dict[str, Any]) -> None:
        await self._run(self.db.execute, _INSERT_SAY, tuple(row[f] for f in SAY_COLUMNS))

    async def update_say(self, row: dict[str, Any]) -> None:
        await self._superseding(self._pending_says, row["say_id"], _UPDATE_SAY, _update_say_args(row))

    async def _superseding(self, pending: dict[str, dict[str, Any]], key: str, sql: str, args: tuple) -> None:
        """A direct write of a row that may be kept for later: the kept (older) state must not
        be written over it afterwards, and must stay kept if this write is refused. Taking the
        kept row and queueing the write happen in one step, so the store's one thread sees
        every write in the order it was made."""
        kept = pending.pop(key, None)
        try:
            await self._run(self.db.execute, sql, args)
        except StoreUnwritable:
            if kept is not None:
                pending.setdefault(key, kept)
            raise

    # -- writes that live sessions make on their own ----------------------------------------

    @property
    def pending_writes(self) -> int:
        """Rows kept in memory because the store refused them."""
        return len(self._pending_speakings) + len(self._pending_says)

    async def update_later(self, record: Speaking) -> None:
        """``update``, kept and retried while the store refuses writes (never raises StoreUnwritable)."""
        self._pending_speakings[record.id] = record.to_dict()
        await self._write_pending_or_retry()

    async def update_say_later(self, row: dict[str, Any]) -> None:
        """``update_say``, kept and retried while the store refuses writes."""
        self._pending_says[row["say_id"]] = dict(row)
        await self._write_pending_or_retry()

    async def _write_pending_or_retry(self) -> None:
        if self._retry is not None:
            return  # the store is refusing writes: the retry loop writes this row with the others
        try:
            await self._write_pending()
        except StoreUnwritable as exc:
            log.warning("store_unwritable", error=exc.message, pending_rows=self.pending_writes)
            self._retry = asyncio.create_task(self._retry_pending(), name="speakd-store-retry")

    async def _retry_pending(self) -> None:
        while True:
            await asyncio.sleep(RETRY_EVERY_S)
            try:
                written = self.pending_writes
                await self._write_pending()
            except StoreUnwritable:
                continue
            if not self.pending_writes:
                log.info("store_writable_again", rows_written=written)
                self._retry = None
                return

    async def _write_pending(self) -> None:
        """Write every kept row in one transaction; a row replaced meanwhile stays kept."""
        speakings, says = dict(self._pending_speakings), dict(self._pending_says)

        def run() -> None:
            with self._transaction():
                self.db.executemany(_UPDATE_SPEAKING, [_update_speaking_args(row) for row in speakings.values()])
                self.db.executemany(_UPDATE_SAY, [_update_say_args(row) for row in says.values()])

        await self._run(run)
        for pending, written in ((self._pending_speakings, speakings), (self._pending_says, says)):
            for key, row in written.items():
                if pending.get(key) is row:
                    del pending[key]

    async def stop_unfinished(self, stamp: str) -> list[Speaking]:
        """Mark every session a previous run left initiating/active as stopped; return them."""

        def run() -> list[Speaking]:
            with self._transaction():
                rows = self.db.execute(
                    "SELECT * FROM speakings WHERE status IN (?, ?)", (Status.INITIATING, Status.ACTIVE)
                ).fetchall()
                self.db.execute(
                    "UPDATE speakings SET status = ?, tm_update = ? WHERE status IN (?, ?)",
                    (Status.STOPPED, stamp, Status.INITIATING, Status.ACTIVE),
                )
                # Says a crash left unfinished were cut by it.
                self.db.execute("UPDATE says SET status = 'interrupted' WHERE status IN ('queued', 'playing')")
            return [Speaking(**dict(r)) for r in rows]

        return await self._run(run)

    def write_health_row(self) -> asyncio.Future[None]:
        """A real write, as small as one can be: the one ``health`` row, committed.

        Returns the store thread's future, so a caller can stop waiting for it without
        cancelling it (the write is in the thread's queue either way)."""

        def run() -> None:
            (previous,) = self.db.execute("PRAGMA busy_timeout").fetchone()
            self.db.execute(f"PRAGMA busy_timeout = {HEALTH_BUSY_TIMEOUT_MS}")
            try:
                self.db.execute("INSERT OR REPLACE INTO health (id, checked) VALUES (1, ?)", (time.time(),))
            finally:
                self.db.execute(f"PRAGMA busy_timeout = {int(previous)}")

        return asyncio.get_running_loop().run_in_executor(self._executor, run)

    # -- webhook outbox ----------------------------------------------------------------------

    async def outbox_add(self, rows: list[dict[str, Any]]) -> list[int]:
        """Queue deliveries (one transaction, in order); return their ``seq``s."""

        def run() -> list[int]:
            with self._transaction():
                return [
                    int(self.db.execute(_INSERT_OUTBOX, tuple(row[f] for f in OUTBOX_FIELDS)).lastrowid or 0)
                    for row in rows
                ]

        return await self._run(run)

    async def outbox_pending(self) -> list[dict[str, Any]]:
        """Every delivery still waiting, oldest first (with its ``seq``)."""

        def run() -> list[dict[str, Any]]:
            return [dict(r) for r in self.db.execute(f"{_SELECT_OUTBOX} ORDER BY seq").fetchall()]

        return await self._run(run)

    async def outbox_head(self, customer_id: str) -> dict[str, Any] | None:
        """The customer's oldest waiting delivery."""

        def run() -> dict[str, Any] | None:
            sql = f"{_SELECT_OUTBOX} WHERE customer_id = ? ORDER BY seq LIMIT 1"
            row = self.db.execute(sql, (customer_id,)).fetchone()
            return dict(row) if row else None

        return await self._run(run)

    async def outbox_older(self, customer_id: str, created_before: float) -> list[dict[str, Any]]:
        """The customer's waiting deliveries queued before ``created_before``, oldest first."""

        def run() -> list[dict[str, Any]]:
            sql = f"{_SELECT_OUTBOX} WHERE customer_id = ? AND created < ? ORDER BY seq"
            return [dict(r) for r in self.db.execute(sql, (customer_id, created_before)).fetchall()]

        return await self._run(run)

    async def outbox_attempted(self, seq: int, attempts: int) -> None:
        await self._run(self.db.execute, "UPDATE webhook_outbox SET attempts = ? WHERE seq = ?", (attempts, seq))

    async def outbox_delete(self, seqs: list[int]) -> None:
        """Delivered or given up."""

        def run() -> None:
            with self._transaction():
                self.db.executemany("DELETE FROM webhook_outbox WHERE seq = ?", [(s,) for s in seqs])

        await self._run(run)

    # -- reads ------------------------------------------------------------------------------

    async def get(self, speaking_id: str) -> Speaking | None:
        def run() -> list[dict[str, Any]]:
            return [dict(r) for r in self.db.execute("SELECT * FROM speakings WHERE id = ?", (speaking_id,))]

        rows = _overlay(self._pending_speakings, "id", await self._run(run))
        return Speaking(**rows[0]) if rows else None

    async def list_says(self, speaking_id: str) -> list[dict[str, Any]]:
        """A session's says, oldest first."""

        def run() -> list[dict[str, Any]]:
            sql = f"SELECT {', '.join(SAY_COLUMNS)} FROM says WHERE speaking_id = ? ORDER BY seq"
            return [dict(r) for r in self.db.execute(sql, (speaking_id,)).fetchall()]

        return _overlay(self._pending_says, "say_id", await self._run(run))

    async def list(self, customer_id: str, page_size: int, before: str | None) -> list[Speaking]:
        """Newest first; ``before`` is the tm_create cursor of the previous page. Deleted ones left out."""

        def run() -> list[dict[str, Any]]:
            sql = "SELECT * FROM speakings WHERE customer_id = ? AND tm_delete = ?"
            args: list[Any] = [customer_id, NOT_YET]
            if before:
                sql += " AND tm_create < ?"
                args.append(before)
            sql += " ORDER BY tm_create DESC LIMIT ?"
            args.append(page_size)
            return [dict(r) for r in self.db.execute(sql, args).fetchall()]

        return [Speaking(**row) for row in _overlay(self._pending_speakings, "id", await self._run(run))]
