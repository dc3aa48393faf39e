"""The run lock on PostgreSQL (speakd.store.liveness): a session-level advisory lock
``(LOCK_SPACE, key)`` held on a connection of its own (not the pool's: the lock belongs to one
session), which PostgreSQL releases the moment that session ends.

A killed process's connection is closed by its kernel: the lock is free at once. A host that
vanishes without a word is found by the server's TCP keepalives on this connection
(:data:`speakd.store.postgres.DEAD_CLIENT_SETTINGS`), which end the session within about 12 s.

The key is new for each run: one more than any in the ``nodes`` table (so no dead run listed
there shares it), or the next one free. It is kept across reconnects: when the server
restarts (every lock is free then), the holder connects again by itself and takes the same key
again, retrying every :data:`RETRY_S` while the server is away or still holds the old session's
lock. The connection is pinged every :data:`PING_EVERY_S`; one that fails or stays silent for
:data:`PING_TIMEOUT_S` is dropped and replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection
from typing import Self

import asyncpg
import structlog

from speakd.store.interface import StoreNotOpened, StoreUnwritable
from speakd.store.liveness import LocksSeen
from speakd.store.postgres import (
    CONNECT_TIMEOUT_S,
    DEAD_CLIENT_SETTINGS,
    LOCK_SPACE,
    MIGRATION_LOCK,
    PostgresStore,
    unwritable_why,
)
from speakd.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

PING_EVERY_S = 2.0
PING_TIMEOUT_S = 5.0
RETRY_S = 1.0

_FIRST_FREE_KEY = f"SELECT GREATEST(COALESCE(MAX(lock_key), 0), {MIGRATION_LOCK}) + 1 FROM nodes"
_TRY_LOCK = "SELECT pg_try_advisory_lock($1, $2::int)"
# Advisory locks of two int4 keys show classid = key 1, objid = key 2, objsubid = 2 in pg_locks,
# which lists every database's: only this one's count.
_LOOK = (
    "SELECT EXTRACT(EPOCH FROM now() - pg_postmaster_start_time())::float8 AS up_s, ARRAY("
    "SELECT objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2 "
    "AND classid = $1::bigint::oid AND objid::bigint = ANY($2::bigint[]) "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())) AS held"
)


class _NotFree(Exception):
    """The run's key is still held (by this run's previous session, not yet ended by the server)."""


class PostgresRunLock:
    shared = True

    def __init__(self, store: PostgresStore) -> None:
        self.store = store
        self.key = 0
        self._connection: asyncpg.Connection | None = None
        self._since: float | None = None
        self._using = asyncio.Lock()  # one statement at a time on the connection
        self._dropped = asyncio.Event()  # the server ended the session
        self._task: asyncio.Task[None] | None = None

    @property
    def held_since(self) -> float | None:
        return self._since

    async def __aenter__(self) -> Self:
        try:
            await self._take()  # a first take chooses a key that is free: never _NotFree
        except Exception as exc:
            why = unwritable_why(exc)
            if why is None:
                raise
            raise StoreNotOpened(f"PostgreSQL at {self.store.server} {why}: {exc or type(exc).__name__}") from None
        self._task = asyncio.create_task(self._hold(), name="speakd-run-lock")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        await self._drop()  # the lock is released with the session

    async def look(self, keys: Collection[int]) -> LocksSeen:
        connection = self._connection
        if connection is None or self._since is None:
            raise StoreUnwritable(f"PostgreSQL at {self.store.server}: this node does not hold its run lock now")
        try:
            async with self._using:
                row = await connection.fetchrow(_LOOK, LOCK_SPACE, list(keys), timeout=PING_TIMEOUT_S)
        except Exception as exc:
            if (why := unwritable_why(exc)) is None and not isinstance(exc, asyncpg.InterfaceError):
                raise
            raise StoreUnwritable(f"PostgreSQL at {self.store.server} {why or 'dropped the run lock'}") from None
        return LocksSeen({int(key) for key in row["held"]}, float(row["up_s"]))

    # -- taking and holding ------------------------------------------------------------------------

    async def _take(self) -> None:
        """Connect and take the key (the first time: choose it); _NotFree if another session holds it."""
        connection = await asyncpg.connect(
            self.store.url, timeout=CONNECT_TIMEOUT_S, command_timeout=PING_TIMEOUT_S,
            server_settings=DEAD_CLIENT_SETTINGS,
        )  # fmt: skip
        try:
            taken = await self._lock(connection)
        except BaseException:
            connection.terminate()
            raise
        if not taken:
            connection.terminate()
            raise _NotFree
        self._dropped.clear()
        connection.add_termination_listener(lambda _: self._dropped.set())
        self._connection = connection
        self._since = asyncio.get_running_loop().time()

    async def _lock(self, connection: asyncpg.Connection) -> bool:
        if self.key == 0:
            key = await connection.fetchval(_FIRST_FREE_KEY)
            while not await connection.fetchval(_TRY_LOCK, LOCK_SPACE, key):
                key += 1  # another run starting now took it
            self.key = key
            return True
        return bool(await connection.fetchval(_TRY_LOCK, LOCK_SPACE, self.key))

    async def _drop(self) -> None:
        self._since = None
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed():
            try:
                await asyncio.wait_for(connection.close(), PING_TIMEOUT_S)
            except Exception:
                connection.terminate()

    async def _hold(self) -> None:
        lost_because = ""  # logged once when lost, once when taken again
        while True:
            try:
                if self._connection is None:
                    await self._take()
                    log.info("run_lock_taken_again", key=self.key, was_lost_because=lost_because)
                    lost_because = ""
                await self._ping()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not lost_because:
                    lost_because = unwritable_why(exc) or ("still held" if isinstance(exc, _NotFree) else repr(exc))
                    log.warning("run_lock_lost", key=self.key, server=self.store.server, why=lost_because)
                await self._drop()
                await asyncio.sleep(RETRY_S)

    async def _ping(self) -> None:
        """Wait a ping's interval (or the end of the session), then ping; raises once it is gone."""
        assert self._connection is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._dropped.wait(), PING_EVERY_S)
        if self._dropped.is_set() or self._connection.is_closed():
            raise ConnectionResetError("the server ended the run lock's session")
        async with self._using:
            await self._connection.fetchval("SELECT 1", timeout=PING_TIMEOUT_S)
