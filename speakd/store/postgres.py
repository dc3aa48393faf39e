"""Speaking records in PostgreSQL (``[store] url = "postgresql://user:password@host:port/db"``).

The driver is asyncpg, imported here only: asyncio-native (no thread per query), one package
with its own pool, LISTEN/NOTIFY and termination callbacks on a connection, binary wheels.

Connections come from a small pool. Reads run side by side; writes run one at a time in the
order they were called (a lock held from taking a connection to the commit), as SQLite's one
thread runs them, which the kept writes rely on (speakd.store.sql). The records are the same
as SQLite's, their times the same text (speakd.store.schema).

A server that is down, restarting, read-only or out of disk makes a statement raise
StoreUnwritable naming it ("PostgreSQL at host:port is unreachable: ..."), a 503 at the API;
state of live sessions is kept and written by the retry loop once the server answers. The
pool replaces a connection the server closed the next time one is taken, so the store
reconnects by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import structlog

from speakd.store import schema
from speakd.store.interface import AlreadyLive, StoreNotOpened, StoreRefused, StoreUnwritable
from speakd.store.liveness import RunLock
from speakd.store.postgres_events import PostgresLink
from speakd.store.records import Owner, now_stamp
from speakd.store.sql import WRITE_HEALTH, Row, SqlStore, Step
from speakd.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

# How long connecting, and then one statement, may take before the server counts as unreachable.
CONNECT_TIMEOUT_S = 5.0
STATEMENT_TIMEOUT_S = 5.0
POOL_SIZE = 4
# How long the health check's write may wait for a row lock another node holds.
HEALTH_LOCK_TIMEOUT_MS = 500
# speakd's advisory locks are (LOCK_SPACE, n): 'spkd' in ASCII; n = 1 serializes migrations.
LOCK_SPACE = 0x73706B64
MIGRATION_LOCK = 1
# Set by every connection speakd makes: the server ends a session whose client went silent
# without a word (a host gone, a network dropped) in about 12 s (keepalive probes from 5 s idle,
# every 2 s; abort once 10 s pass unanswered), not the kernel's default two hours. That frees
# a lost run's lock (speakd.store.postgres_liveness) and the row locks of a write it left open.
DEAD_CLIENT_SETTINGS = {
    "tcp_keepalives_idle": "5",
    "tcp_keepalives_interval": "2",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "10000",
}

# Errors that mean the server cannot be reached now (a 503 says "is unreachable").
_UNREACHABLE = (
    OSError,  # refused, reset, no route, unknown host
    TimeoutError,  # no answer within CONNECT_TIMEOUT_S / STATEMENT_TIMEOUT_S
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08: the connection failed or was lost
    asyncpg.CannotConnectNowError,  # starting up or shutting down
    asyncpg.AdminShutdownError,  # stopped, or restarting, while connected
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
)


def unwritable_why(exc: BaseException) -> str | None:
    """What ``exc`` says of the server, if it means the store takes no write now; else None."""
    if isinstance(exc, asyncpg.ReadOnlySQLTransactionError):
        return "is read-only (a standby, or default_transaction_read_only is on)"
    if isinstance(exc, asyncpg.DiskFullError):
        return "has no room left on its disk"
    if isinstance(exc, _UNREACHABLE):
        return "is unreachable"
    return None


def server_of(url: str) -> str:
    """Where ``url``'s server is, for messages: ``host:port`` (never the password)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or urllib.parse.parse_qs(parts.query).get("host", ["localhost"])[0]
    port = parts.port or 5432  # a port that is no number: refused by the config (StoreConfig.problems)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@functools.lru_cache(maxsize=256)
def numbered(sql: str) -> str:
    """``?`` placeholders (speakd.store.sql's, never inside a literal) as PostgreSQL's ``$1, $2, ...``."""
    parts = sql.split("?")
    return parts[0] + "".join(f"${n}{part}" for n, part in enumerate(parts[1:], 1))


def _detail(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__  # a timeout has no message


async def _nothing_to_reset(connection: asyncpg.Connection) -> None:
    """The pool's reset of a connection given back: speakd sets no session state on pooled
    connections, so the round trip of asyncpg's default reset is saved."""


class PostgresStore(SqlStore):
    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.server = server_of(url)
        self._pool: asyncpg.Pool | None = None
        self._writing = asyncio.Lock()  # writes in the order they were called
        self._health: asyncio.Task[None] | None = None

    def _message(self, why: str, exc: BaseException) -> str:
        return (
            f"PostgreSQL at {self.server} {why}: {_detail(exc)}. speakd cannot write its store; "
            "live sessions keep speaking: retry once it is back"
        )

    # -- opening and closing ---------------------------------------------------------------------

    async def _open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self.url,
                # Connections are made when first needed and kept: no floor for the pool to
                # restore in the background (it logs a traceback per try while the server is down).
                min_size=0,
                max_size=POOL_SIZE,
                max_inactive_connection_lifetime=0,
                timeout=CONNECT_TIMEOUT_S,
                command_timeout=STATEMENT_TIMEOUT_S,
                reset=_nothing_to_reset,
                server_settings=DEAD_CLIENT_SETTINGS,
            )
            async with self._pool.acquire() as connection, connection.transaction():
                await self._migrate(connection)
        except BaseException as exc:
            await self._close()
            if isinstance(exc, asyncpg.PostgresError | OSError | TimeoutError):
                why = unwritable_why(exc) or "refused speakd"
                raise StoreNotOpened(f"PostgreSQL at {self.server} {why}: {_detail(exc)}") from None
            raise

    async def _migrate(self, connection: asyncpg.Connection) -> None:
        # Held to the commit: a second speakd starting now waits, then finds the schema current.
        await connection.execute("SELECT pg_advisory_xact_lock($1, $2)", LOCK_SPACE, MIGRATION_LOCK)
        await connection.execute(schema.CREATE_VERSION_TABLE)
        current = await connection.fetchval(schema.READ_VERSION)
        for migration in schema.pending(current, f"PostgreSQL at {self.server}"):
            for statement in migration.sql(schema.POSTGRES):
                await connection.execute(statement)
            record = numbered(schema.RECORD_VERSION)
            await connection.execute(record, migration.version, migration.description, now_stamp())
            log.info("store_migrated", version=migration.version, server=self.server)

    async def _close(self) -> None:
        if self._health is not None and not self._health.done():  # a finished one was its check's to read
            await cancel_and_wait(self._health)
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), CONNECT_TIMEOUT_S)
            except (TimeoutError, *_UNREACHABLE):
                self._pool.terminate()
            self._pool = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("store is not open")
        return self._pool

    @contextlib.asynccontextmanager
    async def _connection(self, *, write: bool) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection (for a write: in turn); the server's failures as StoreUnwritable."""
        try:
            async with self._writing if write else contextlib.nullcontext():
                connection = await self.pool.acquire(timeout=CONNECT_TIMEOUT_S)
                try:
                    yield connection
                finally:
                    # A connection that died after its work is replaced on the next acquire;
                    # its work is done, so that failure is not this statement's.
                    with contextlib.suppress(Exception):
                        await self.pool.release(connection)
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name == schema.ONE_LIVE_PER_CALL:
                raise AlreadyLive(str(exc)) from None
            raise
        except Exception as exc:
            why = unwritable_why(exc)
            if why is None:
                raise
            raise StoreUnwritable(self._message(why, exc)) from None

    # -- running SQL ---------------------------------------------------------------------------

    async def _execute(self, sql: str, args: tuple[Any, ...] = ()) -> None:
        async with self._connection(write=True) as connection:
            await connection.execute(numbered(sql), *args)

    async def _fetch(self, sql: str, args: tuple[Any, ...] = ()) -> list[Row]:
        async with self._connection(write=False) as connection:
            return [dict(row) for row in await connection.fetch(numbered(sql), *args)]

    async def _transaction(self, steps: Sequence[Step], lock_wait_ms: int | None = None) -> list[list[Row]]:
        async with self._connection(write=True) as connection, connection.transaction():
            if lock_wait_ms is not None:
                await connection.execute(f"SET LOCAL lock_timeout = {int(lock_wait_ms)}")
            results: list[list[Row]] = []
            for step in steps:
                sql = numbered(step.sql)
                if step.rows:
                    results.append([dict(row) for args in step.args for row in await connection.fetch(sql, *args)])
                else:
                    await connection.executemany(sql, step.args)
                    results.append([])
            return results

    def fleet(self, owner: Owner) -> PostgresLink:
        return PostgresLink(self, owner)

    def run_lock(self) -> RunLock:
        from speakd.store.postgres_liveness import PostgresRunLock  # it imports this module's settings

        return PostgresRunLock(self)

    def write_health_row(self) -> asyncio.Future[None]:
        """The store's own task (one at a time: a check that stopped waiting gets it again)."""
        if self._health is None or self._health.done():
            self._health = asyncio.create_task(self._write_health_row(), name="speakd-store-health")
        return self._health

    async def _write_health_row(self) -> None:
        try:
            async with self._connection(write=True) as connection, connection.transaction():
                await connection.execute(f"SET LOCAL lock_timeout = {HEALTH_LOCK_TIMEOUT_MS}")
                await connection.execute(numbered(WRITE_HEALTH), time.time())
        except asyncpg.PostgresError as exc:
            raise StoreRefused(str(exc)) from exc
