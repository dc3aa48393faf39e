"""How the nodes of a store tell a live run from a lost one: the lock each run holds while it lives.

One protocol, :class:`RunLock`, two adapters side by side: :class:`SoloRunLock` for a store only
one node uses (SQLite: no other node to watch, none to watch it) and
:class:`speakd.store.postgres_liveness.PostgresRunLock` (a session-level advisory lock on a
connection of its own, which PostgreSQL releases when that connection dies). A store gives its
own with ``store.run_lock()``; the run's key goes into its node's row (``nodes.lock_key``), so a
node that watches the others can ask whether each run owning live sessions still holds it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol, Self


@dataclass(frozen=True)
class LiveRun:
    """A run of another node that owns live sessions in the store, and the key of its lock."""

    node_id: str
    run_id: str
    lock_key: int


@dataclass(frozen=True)
class LocksSeen:
    """The run locks held, as the server sees them now."""

    held: set[int]
    # How long the server has been up: every lock was free when it started, and runs alive
    # then take theirs again within seconds.
    server_up_s: float


class RunLock(Protocol):
    """``async with`` it: taken on entry (the start fails if it cannot be), held (and taken
    again by itself after the store's server comes back) until exit."""

    # The run's key, written in its node's row; 0: none (the store is this node's alone).
    key: int
    # Whether other nodes share the store (and so are watched, and watch this one).
    shared: bool

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...

    @property
    def held_since(self) -> float | None:
        """The event loop's time this run last took its lock; None while it does not hold it."""

    async def look(self, keys: Collection[int]) -> LocksSeen:
        """Which of ``keys`` some run holds now, and since when the server has been up;
        StoreUnwritable if that cannot be told now (this run's own lock is not held)."""


class SoloRunLock:
    """A store no other node shares: the lock is this run's from start to end, nobody else's."""

    key = 0
    shared = False

    def __init__(self) -> None:
        self._since: float | None = None

    async def __aenter__(self) -> Self:
        self._since = asyncio.get_running_loop().time()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._since = None

    @property
    def held_since(self) -> float | None:
        return self._since

    async def look(self, keys: Collection[int]) -> LocksSeen:
        return LocksSeen(set(keys), math.inf)
