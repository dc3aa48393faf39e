"""What the layers above use of a store, whichever engine keeps it (SQLite or PostgreSQL).

Every write is committed before the call returns, so the API never answers about a record
that a crash could lose. A store that cannot take a write now (a full disk, a read-only file
system, a PostgreSQL server that is down or restarting) raises :class:`StoreUnwritable`, a 503
at the API naming the cause: the request is refused and what was stored stays as it was. State
that live sessions produce on their own (say states, a session going active or stopped) is not
refused: ``update_later``/``update_say_later`` keep it in memory, newest per row, readable
through the store, and write it once the store takes writes again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any, Protocol, Self

from speakd.errors import ServiceUnavailable, SpeakdError
from speakd.store.fleet import FleetLink
from speakd.store.liveness import LiveRun, RunLock
from speakd.store.records import NO_OWNER, NodeAddress, Owner, Speaking


class StoreUnwritable(ServiceUnavailable):
    """The store refuses writes (disk full, read-only, unreachable): HTTP 503, retry later."""

    retry_after = 5


class StoreRefused(Exception):
    """The store's engine refused a statement; the message is the engine's (e.g. a lock held
    by another process)."""


class AlreadyLive(Exception):
    """An insert refused by the store's one-live-session-per-call index: another session (on
    any node sharing the store) is initiating or active on the same call or conference."""


class StoreNotOpened(SpeakdError):
    """The store cannot be opened at start (unreachable, or written by a newer speakd): speakd does not start."""


class Store(Protocol):
    """A store, opened and closed with ``async with``; ``__aexit__`` writes what is still kept."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...

    # -- speakings ---------------------------------------------------------------------------

    async def insert(self, record: Speaking, owner: Owner = NO_OWNER, conflict_key: str = "") -> None:
        """A new session of ``owner``. With a ``conflict_key`` (its target's), AlreadyLive if a
        live session on the same reference type and key is in the store."""

    async def update(self, record: Speaking) -> None:
        """Write it now, or raise StoreUnwritable (an older state kept for later stays kept)."""

    async def update_later(self, record: Speaking) -> None:
        """``update``, kept in memory and retried while the store refuses writes (never raises StoreUnwritable)."""

    async def get(self, speaking_id: str) -> Speaking | None: ...

    async def list(self, customer_id: str, page_size: int, before: str | None) -> list[Speaking]:
        """Newest first; ``before`` is the tm_create cursor of the previous page. Deleted ones left out."""

    async def stop_unfinished(self, node_id: str, stamp: str) -> list[Speaking]:
        """Mark the node's sessions that a previous run left initiating/active (and those from
        before nodes, owned by none) as stopped, their unfinished says interrupted, in one
        transaction; return them as they were. Other nodes' sessions are not touched."""

    # -- nodes ---------------------------------------------------------------------------------

    async def register_node(self, owner: Owner, url: str, stamp: str, lock_key: int = 0) -> None:
        """This node's row, made or taken over by its new run (``stamp``: started and seen;
        ``lock_key``: its run lock's, see run_lock)."""

    async def node_seen(self, owner: Owner, stamp: str) -> bool:
        """The run's heartbeat; False if the node's row now belongs to another run (a second
        process started with the same node id)."""

    async def list_nodes(self) -> list[dict[str, Any]]:
        """Every node: ``id``, ``url``, ``last_seen`` and ``live_sessions`` (its sessions
        initiating or active), by id."""

    # -- carrying requests to the node that owns a session (speakd.sessions.peers) ------------

    async def set_node_asterisk(self, owner: Owner, name: str) -> None:
        """The system name of the run's Asterisk (the prefix of its channel ids; '' if none)."""

    async def nodes_seen_since(self, stamp: str) -> list[NodeAddress]:
        """The nodes whose heartbeat is newer than ``stamp``, with their url and Asterisk, by id."""

    async def live_owner(self, speaking_id: str) -> NodeAddress | None:
        """The node whose current run owns the session, while it is initiating or active."""

    async def last_node_of(self, reference_type: str, reference_id: str) -> str:
        """The node of the newest session on this reference ('' if none)."""

    # -- liveness: runs that hold a lock while they live, and fencing --------------------------

    def run_lock(self) -> RunLock:
        """The lock this node's run holds while it lives (speakd.store.liveness; a SoloRunLock
        where no other node can share the store)."""

    async def live_runs(self, own_run_id: str) -> list[LiveRun]:
        """The other runs that own live sessions and hold a run lock, with its key."""

    async def end_lost_run(self, run_id: str, stamp: str) -> list[tuple[Speaking, list[dict[str, Any]]]]:
        """A lost run's live sessions stopped, their unfinished says interrupted, in one
        transaction; the rows then name no run. Each session this call ended, with the says
        it interrupted (nothing if another node ended them first)."""

    def fence(self, run_id: str, on_fenced: Callable[[set[str]], None]) -> None:
        """The sessions' own writes (update_later, update_say, update_say_later) change a row
        only while its session names ``run_id``; ``on_fenced`` is told the sessions whose
        writes matched nothing (another node ended them). ``update`` is not fenced."""

    async def fenced_off(self, speaking_ids: Iterable[str]) -> set[str]:
        """Those of these sessions whose rows no longer name the fenced run."""

    # -- says (rows of records.SAY_COLUMNS) ----------------------------------------------------

    async def insert_say(self, row: dict[str, Any]) -> None: ...

    async def update_say(self, row: dict[str, Any]) -> None: ...

    async def update_say_later(self, row: dict[str, Any]) -> None:
        """``update_say``, kept and retried while the store refuses writes."""

    async def list_says(self, speaking_id: str) -> list[dict[str, Any]]:
        """A session's says, oldest first."""

    # -- lexicons (rows: ``name``, ``entries`` as JSON text, ``tm_create``, ``tm_update``) -------

    async def lexicon_put(self, customer_id: str, name: str, entries: str, stamp: str) -> bool:
        """The customer's lexicon ``name`` made, or its entries replaced, at ``stamp``; True if made."""

    async def lexicon_get(self, customer_id: str, name: str) -> dict[str, Any] | None: ...

    async def lexicon_list(self, customer_id: str) -> list[dict[str, Any]]:
        """The customer's lexicons, by name."""

    async def lexicon_delete(self, customer_id: str, name: str) -> bool:
        """False if the customer has none of that name."""

    # -- webhook outbox (rows of records.OUTBOX_FIELDS, with their ``seq``) ---------------------

    async def outbox_add(self, rows: list[dict[str, Any]]) -> list[int]:
        """Queue deliveries (one transaction, in order); return their ``seq``s."""

    async def outbox_pending(self) -> list[dict[str, Any]]:
        """Every delivery still waiting, oldest first."""

    async def outbox_head(self, customer_id: str) -> dict[str, Any] | None:
        """The customer's oldest waiting delivery."""

    async def outbox_older(self, customer_id: str, created_before: float) -> list[dict[str, Any]]:
        """The customer's waiting deliveries queued before ``created_before``, oldest first."""

    async def outbox_count(self) -> int:
        """Deliveries waiting, of every customer (written by any node sharing the store)."""

    async def outbox_attempted(self, seq: int, attempts: int) -> None: ...

    async def outbox_delete(self, seqs: list[int]) -> None:
        """Delivered or given up."""

    # -- fleet -----------------------------------------------------------------------------------

    def fleet(self, owner: Owner) -> FleetLink:
        """What ``owner`` shares with the other nodes of this store: events and webhook claims
        (speakd.store.fleet; a SoloLink where no other node can share the store)."""

    # -- health --------------------------------------------------------------------------------

    def write_health_row(self) -> asyncio.Future[None]:
        """A real write, as small as one can be, committed. The future is the store's own: a
        caller may stop waiting without cancelling it. It fails with StoreUnwritable or
        StoreRefused when the store takes no write."""
