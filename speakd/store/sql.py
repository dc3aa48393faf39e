"""What the SQLite and PostgreSQL adapters share: the records' SQL, rows to records and back,
and the writes kept in memory while the store refuses them, with the loop that retries them.

An adapter supplies what differs: opening (with its migrations) and closing, three ways to run
SQL (:meth:`SqlStore._execute`, :meth:`SqlStore._fetch`, :meth:`SqlStore._transaction`), the
health write, and which of its engine's errors mean "cannot write now" (raised as
StoreUnwritable). The SQL here is the same in both dialects, with ``?`` placeholders (the
PostgreSQL adapter numbers them). Each adapter runs writes in the order they were called:
SQLite's one thread and PostgreSQL's write lock both queue in call order, which
:meth:`SqlStore._superseding` relies on.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Self

import structlog

from speakd.store.interface import StoreUnwritable
from speakd.store.liveness import LiveRun, RunLock, SoloRunLock
from speakd.store.records import (
    FIELDS,
    LIVE_STATUSES,
    NO_OWNER,
    NOT_YET,
    OUTBOX_FIELDS,
    SAY_COLUMNS,
    NodeAddress,
    Owner,
    Speaking,
    Status,
)
from speakd.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

# How often writes kept in memory are tried again while the store refuses them.
RETRY_EVERY_S = 1.0

Row = dict[str, Any]
# How long a node's heartbeat waits for another writer's lock before it gives up that beat.
HEARTBEAT_LOCK_WAIT_MS = 100

# Written when the say is queued, never after.
_SAY_SET_ONCE = (
    "say_id",
    "speaking_id",
    "text",
    "payload_type",
    "client_state",
    "command_id",
    "tm_queued",
    "interruptible",
    "volume",
    "lexicon",
)
_SPEAKING_COLS = tuple(f for f in FIELDS if f != "id")  # what an update writes
_SAY_COLS = tuple(f for f in SAY_COLUMNS if f not in _SAY_SET_ONCE)


def _insert_sql(table: str, fields: tuple[str, ...]) -> str:
    return f"INSERT INTO {table} ({', '.join(fields)}) VALUES ({', '.join('?' * len(fields))})"


def _update_sql(table: str, fields: tuple[str, ...], key: str) -> str:
    return f"UPDATE {table} SET {', '.join(f'{c} = ?' for c in fields)} WHERE {key} = ?"


# A new session's row: the spec's fields, then what is kept beside them (records.Owner, the key).
INSERT_SPEAKING = _insert_sql("speakings", (*FIELDS, "node_id", "run_id", "conflict_key"))
INSERT_SAY = _insert_sql("says", SAY_COLUMNS)
UPDATE_SPEAKING = _update_sql("speakings", _SPEAKING_COLS, "id")
UPDATE_SAY = _update_sql("says", _SAY_COLS, "say_id")
_INSERT_OUTBOX = _insert_sql("webhook_outbox", OUTBOX_FIELDS) + " RETURNING seq"
_SELECT_OUTBOX = f"SELECT seq, {', '.join(OUTBOX_FIELDS)} FROM webhook_outbox"
_SELECT_SPEAKING = f"SELECT {', '.join(FIELDS)} FROM speakings"
_INSERT_FLEET_EVENT = _insert_sql("fleet_events", ("node_id", "customer_id", "speaking_id", "body", "created"))
_SELECT_FLEET_EVENTS = "SELECT seq, node_id, customer_id, speaking_id, body, created FROM fleet_events"
_CLAIM_WEBHOOKS = (
    "INSERT INTO webhook_claims (customer_id, node_id, run_id, until) VALUES (?, ?, ?, ?) ON CONFLICT (customer_id) "
    "DO UPDATE SET node_id = excluded.node_id, run_id = excluded.run_id, until = excluded.until "
    "WHERE webhook_claims.until < ? OR webhook_claims.node_id = ? RETURNING customer_id"
)
_REGISTER_NODE = (
    "INSERT INTO nodes (id, url, run_id, started_at, last_seen, lock_key) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET url = excluded.url, run_id = excluded.run_id, "
    "started_at = excluded.started_at, last_seen = excluded.last_seen, lock_key = excluded.lock_key"
)
# Fenced writes (see SqlStore.fence): a session's state, or a say's, written only while the
# session's row still names the writing run; each returns what it matched.
_FENCED_UPDATE_SPEAKING = f"{UPDATE_SPEAKING} AND run_id = ? RETURNING id AS written"
_FENCED_UPDATE_SAY = (
    f"{UPDATE_SAY} AND EXISTS (SELECT 1 FROM speakings WHERE speakings.id = says.speaking_id "
    "AND speakings.run_id = ?) RETURNING say_id AS written"
)
_UNDO_FENCED_SAY = (
    "DELETE FROM says WHERE say_id = ? AND NOT EXISTS (SELECT 1 FROM speakings WHERE speakings.id = ? "
    "AND speakings.run_id = ?) RETURNING say_id"
)
# Other nodes' runs owning live sessions, with their lock keys (0: a run that holds none).
_LIVE_RUNS = (
    "SELECT DISTINCT s.node_id, s.run_id, n.lock_key FROM speakings s JOIN nodes n "
    "ON n.id = s.node_id AND n.run_id = s.run_id WHERE s.status IN (?, ?) AND s.run_id <> ? AND n.lock_key > 0"
)
# A lost run's sessions ended (what the update matched is what this node won: another node
# ending them at the same time matches nothing), their rows naming no run from then on.
_INTERRUPT_LOST_SAYS = (
    f"UPDATE says SET status = 'interrupted' WHERE status IN ('queued', 'playing') AND speaking_id IN "
    f"(SELECT id FROM speakings WHERE run_id = ? AND status IN (?, ?)) RETURNING {', '.join(SAY_COLUMNS)}"
)
_STOP_LOST_SESSIONS = (
    "UPDATE speakings SET status = ?, tm_update = ?, run_id = '' WHERE run_id = ? AND status IN (?, ?) "
    f"RETURNING {', '.join(FIELDS)}"
)
# How long ending a lost run's sessions waits for a row lock (a write the lost run left open).
LOST_RUN_LOCK_WAIT_MS = 1000
_NODE_SEEN = "UPDATE nodes SET last_seen = ? WHERE id = ? AND run_id = ? RETURNING id"
_LIST_NODES = (
    "SELECT n.id, n.url, n.last_seen, (SELECT COUNT(*) FROM speakings s WHERE s.node_id = n.id "
    "AND s.status IN (?, ?)) AS live_sessions FROM nodes n ORDER BY n.id"
)
# Where requests for other nodes' sessions are carried (speakd.api.carry): a live session's
# owner while that run is still its node's, the nodes seen lately, and a reference's last node.
_LIVE_OWNER = (
    "SELECT n.id, n.url, n.asterisk FROM speakings s JOIN nodes n ON n.id = s.node_id AND n.run_id = s.run_id "
    "WHERE s.id = ? AND s.status IN (?, ?)"
)
_NODES_SEEN_SINCE = "SELECT id, url, asterisk FROM nodes WHERE last_seen > ? ORDER BY id"
_LAST_NODE_OF = (
    "SELECT node_id FROM speakings WHERE reference_type = ? AND reference_id = ? AND node_id <> '' "
    "ORDER BY tm_create DESC LIMIT 1"
)
_SET_ASTERISK = "UPDATE nodes SET asterisk = ? WHERE id = ? AND run_id = ?"
# A customer's lexicon, made or its entries replaced (tm_create is the stamp given iff it was made).
_PUT_LEXICON = (
    "INSERT INTO lexicons (customer_id, name, entries, tm_create, tm_update) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (customer_id, name) DO UPDATE SET entries = excluded.entries, tm_update = excluded.tm_update "
    "RETURNING tm_create"
)
_SELECT_LEXICON = "SELECT name, entries, tm_create, tm_update FROM lexicons"
# A node's sessions, with those from before nodes (owned by none): what a node cleans up at start.
_MINE = "node_id IN (?, '')"
# The one row of ``health``, written again: what a health check writes.
WRITE_HEALTH = (
    "INSERT INTO health (id, checked) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET checked = excluded.checked"
)


def _update_speaking_args(row: Row) -> tuple:
    return (*(row[c] for c in _SPEAKING_COLS), row["id"])


def _update_say_args(row: Row) -> tuple:
    return (*(row[c] for c in _SAY_COLS), row["say_id"])


# Told the sessions whose rows another node took from this store's run (see SqlStore.fence).
FencedHandler = Callable[[set[str]], None]


def _ignore_fenced(speaking_ids: set[str]) -> None:
    return None


def _overlay(pending: dict[str, Row], key: str, rows: list[Row]) -> list[Row]:
    """Rows as read, each replaced by its newer state still kept in memory (see update_later)."""
    return [pending.get(row[key], row) for row in rows]


@dataclass(frozen=True)
class Step:
    """One statement of a transaction, run once for each tuple of ``args``; ``rows``: what it
    returns is wanted (a SELECT, a RETURNING)."""

    sql: str
    args: Sequence[tuple[Any, ...]]
    rows: bool = False


class SqlStore(abc.ABC):
    """A :class:`speakd.store.interface.Store` over SQL; the subclass is the engine's adapter."""

    def __init__(self) -> None:
        # Rows written later (id -> row), the newest state of each; see update_later.
        self._pending_speakings: dict[str, Row] = {}
        self._pending_says: dict[str, Row] = {}
        self._retry: asyncio.Task[None] | None = None
        # The run whose sessions this store writes, once fenced (see fence), and who hears of
        # the sessions another node took from it.
        self._fence: str | None = None
        self._on_fenced: FencedHandler = _ignore_fenced

    # -- what an adapter supplies ----------------------------------------------------------------

    @abc.abstractmethod
    async def _open(self) -> None:
        """Connect, and bring the schema to the latest version (speakd.store.schema)."""

    @abc.abstractmethod
    async def _close(self) -> None: ...

    @abc.abstractmethod
    async def _execute(self, sql: str, args: tuple[Any, ...] = ()) -> None:
        """One statement, committed."""

    @abc.abstractmethod
    async def _fetch(self, sql: str, args: tuple[Any, ...] = ()) -> list[Row]: ...

    @abc.abstractmethod
    async def _transaction(self, steps: Sequence[Step], lock_wait_ms: int | None = None) -> list[list[Row]]:
        """The steps in one transaction, all or nothing; the rows each returned (empty if not wanted).
        ``lock_wait_ms``: wait at most this long for another writer's lock (else the engine's usual)."""

    @abc.abstractmethod
    def write_health_row(self) -> asyncio.Future[None]: ...

    # -- opening and closing ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self._open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await cancel_and_wait(self._retry)
        if self.pending_writes:
            try:
                await self._write_pending()
            except StoreUnwritable as error:
                log.error("store_writes_lost", rows=self.pending_writes, error=error.message)
        await self._close()

    # -- writes ----------------------------------------------------------------------------------

    async def insert(self, record: Speaking, owner: Owner = NO_OWNER, conflict_key: str = "") -> None:
        if self._pending_speakings:  # a stop still kept must reach the store before its index judges this
            await self._write_pending()
        row = record.to_dict()
        await self._execute(INSERT_SPEAKING, (*(row[f] for f in FIELDS), owner.node_id, owner.run_id, conflict_key))

    async def update(self, record: Speaking) -> None:
        step = Step(UPDATE_SPEAKING, [_update_speaking_args(record.to_dict())])  # not fenced: see fence
        await self._superseding(self._pending_speakings, record.id, step, {})

    async def insert_say(self, row: Row) -> None:
        insert = Step(INSERT_SAY, [tuple(row[f] for f in SAY_COLUMNS)])
        if self._fence is None:
            await self._transaction([insert])
            return
        # Fenced too: taken back in the same transaction if the session is no longer the run's.
        undo = Step(_UNDO_FENCED_SAY, [(row["say_id"], row["speaking_id"], self._fence)], rows=True)
        _, undone = await self._transaction([insert, undo])
        if undone:
            self._tell_fenced({row["speaking_id"]})

    async def update_say(self, row: Row) -> None:
        await self._superseding(self._pending_says, row["say_id"], *self._says_step([row]))

    async def _superseding(self, pending: dict[str, Row], key: str, step: Step, sessions: dict[str, str]) -> None:
        """A direct write of a row that may be kept for later: the kept (older) state must not
        be written over it afterwards, and must stay kept if this write is refused. Taking the
        kept row and queueing the write happen in one step, so the adapter sees every write in
        the order it was made. ``sessions``: those the step's rows are for (see _fenced)."""
        kept = pending.pop(key, None)
        try:
            written = await self._transaction([step])
        except StoreUnwritable:
            if kept is not None:
                pending.setdefault(key, kept)
            raise
        self._fenced([sessions], written)

    # -- fencing: a run writes only the sessions it still owns -----------------------------------

    def fence(self, run_id: str, on_fenced: FencedHandler) -> None:
        """From now on, the sessions' own writes through this store (update_later, update_say,
        update_say_later) change a session's row, or its says', only while the row names
        ``run_id``: once another node ended the sessions of a run it found lost, that run's late
        writes match nothing, and ``on_fenced`` is told the sessions they were for. ``update``
        (a record the API changed: a delete) is written whoever owns the row."""
        self._fence = run_id
        self._on_fenced = on_fenced

    def _speakings_step(self, rows: Iterable[Row]) -> tuple[Step, dict[str, str]]:
        """Sessions' rows as written by their run; the sessions they are for, by key written."""
        rows = list(rows)
        args = [_update_speaking_args(row) for row in rows]
        sessions = {row["id"]: row["id"] for row in rows}
        if self._fence is None:
            return Step(UPDATE_SPEAKING, args), sessions
        return Step(_FENCED_UPDATE_SPEAKING, [(*a, self._fence) for a in args], rows=True), sessions

    def _says_step(self, rows: Iterable[Row]) -> tuple[Step, dict[str, str]]:
        rows = list(rows)
        args = [_update_say_args(row) for row in rows]
        sessions = {row["say_id"]: row["speaking_id"] for row in rows}
        if self._fence is None:
            return Step(UPDATE_SAY, args), sessions
        return Step(_FENCED_UPDATE_SAY, [(*a, self._fence) for a in args], rows=True), sessions

    def _fenced(self, sessions: Sequence[dict[str, str]], results: Sequence[list[Row]]) -> None:
        """Tell on_fenced the sessions whose fenced writes matched nothing."""
        if self._fence is None:
            return
        lost = set()
        for of_key, written in zip(sessions, results, strict=True):
            matched = {row["written"] for row in written}
            lost |= {session for key, session in of_key.items() if key not in matched}
        if lost:
            self._tell_fenced(lost)

    def _tell_fenced(self, lost: set[str]) -> None:
        log.warning("store_writes_fenced", speaking_ids=sorted(lost), run_id=self._fence)
        self._on_fenced(lost)

    async def fenced_off(self, speaking_ids: Iterable[str]) -> set[str]:
        """Those of these sessions whose rows no longer name this store's fenced run (another
        node ended them); none before the store is fenced."""
        ids = list(speaking_ids)
        if self._fence is None or not ids:
            return set()
        step = Step("SELECT id FROM speakings WHERE id = ? AND run_id = ?", [(i, self._fence) for i in ids], rows=True)
        (owned,) = await self._transaction([step])
        return set(ids) - {row["id"] for row in owned}

    # -- runs of other nodes -----------------------------------------------------------------------

    def run_lock(self) -> RunLock:
        """The lock this node's run holds while it lives (speakd.store.liveness): an engine
        that other nodes can share gives its own; this one is the node's alone."""
        return SoloRunLock()

    async def live_runs(self, own_run_id: str) -> list[LiveRun]:
        """Other runs that own live sessions and hold a run lock (its key in their node's row)."""
        rows = await self._fetch(_LIVE_RUNS, (*LIVE_STATUSES, own_run_id))
        return [LiveRun(row["node_id"], row["run_id"], int(row["lock_key"])) for row in rows]

    async def end_lost_run(self, run_id: str, stamp: str) -> list[tuple[Speaking, list[Row]]]:
        """The lost run's live sessions stopped and their unfinished says interrupted, in one
        transaction; the rows no longer name the run, so its late writes match nothing (fence).
        Each session this call ended (none if another node ended them first), with its says
        that it interrupted."""
        says, stopped = await self._transaction(
            [
                Step(_INTERRUPT_LOST_SAYS, [(run_id, *LIVE_STATUSES)], rows=True),
                Step(_STOP_LOST_SESSIONS, [(Status.STOPPED, stamp, run_id, *LIVE_STATUSES)], rows=True),
            ],
            lock_wait_ms=LOST_RUN_LOCK_WAIT_MS,
        )
        return [(Speaking(**row), [say for say in says if say["speaking_id"] == row["id"]]) for row in stopped]

    async def stop_unfinished(self, node_id: str, stamp: str) -> list[Speaking]:
        live = f"status IN (?, ?) AND {_MINE}"
        # Says a crash left unfinished were cut by it.
        interrupt = (
            "UPDATE says SET status = 'interrupted' WHERE status IN ('queued', 'playing') "
            f"AND speaking_id IN (SELECT id FROM speakings WHERE {_MINE})"
        )
        rows, _, _ = await self._transaction(
            [
                Step(f"{_SELECT_SPEAKING} WHERE {live}", [(*LIVE_STATUSES, node_id)], rows=True),
                Step(
                    f"UPDATE speakings SET status = ?, tm_update = ? WHERE {live}",
                    [(Status.STOPPED, stamp, *LIVE_STATUSES, node_id)],
                ),
                Step(interrupt, [(node_id,)]),
            ]
        )
        return [Speaking(**row) for row in rows]

    # -- nodes -----------------------------------------------------------------------------------

    async def register_node(self, owner: Owner, url: str, stamp: str, lock_key: int = 0) -> None:
        await self._execute(_REGISTER_NODE, (owner.node_id, url, owner.run_id, stamp, stamp, lock_key))

    async def node_seen(self, owner: Owner, stamp: str) -> bool:
        # Brief: a heartbeat held up by another writer's lock would hold up the writes queued behind it.
        step = Step(_NODE_SEEN, [(stamp, owner.node_id, owner.run_id)], rows=True)
        (seen,) = await self._transaction([step], lock_wait_ms=HEARTBEAT_LOCK_WAIT_MS)
        return bool(seen)

    async def list_nodes(self) -> list[Row]:
        return [
            {**row, "live_sessions": int(row["live_sessions"])} for row in await self._fetch(_LIST_NODES, LIVE_STATUSES)
        ]

    async def set_node_asterisk(self, owner: Owner, name: str) -> None:
        await self._execute(_SET_ASTERISK, (name, owner.node_id, owner.run_id))

    async def nodes_seen_since(self, stamp: str) -> list[NodeAddress]:
        return [NodeAddress(**row) for row in await self._fetch(_NODES_SEEN_SINCE, (stamp,))]

    async def live_owner(self, speaking_id: str) -> NodeAddress | None:
        rows = await self._fetch(_LIVE_OWNER, (speaking_id, *LIVE_STATUSES))
        return NodeAddress(**rows[0]) if rows else None

    async def last_node_of(self, reference_type: str, reference_id: str) -> str:
        rows = await self._fetch(_LAST_NODE_OF, (reference_type, reference_id))
        return rows[0]["node_id"] if rows else ""

    # -- writes that live sessions make on their own ---------------------------------------------

    @property
    def pending_writes(self) -> int:
        """Rows kept in memory because the store refused them."""
        return len(self._pending_speakings) + len(self._pending_says)

    async def update_later(self, record: Speaking) -> None:
        self._pending_speakings[record.id] = record.to_dict()
        await self._write_pending_or_retry()

    async def update_say_later(self, row: Row) -> None:
        self._pending_says[row["say_id"]] = dict(row)
        await self._write_pending_or_retry()

    async def _write_pending_or_retry(self) -> None:
        if self._retry is not None:
            return  # the store is refusing writes: the retry loop writes this row with the others
        try:
            await self._write_pending()
        except StoreUnwritable as error:
            log.warning("store_unwritable", error=error.message, pending_rows=self.pending_writes)
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
        steps = [self._speakings_step(speakings.values()), self._says_step(says.values())]
        steps = [(step, sessions) for step, sessions in steps if step.args]
        matched = await self._transaction([step for step, _ in steps])
        self._fenced([sessions for _, sessions in steps], matched)  # a fenced row is done with too
        for pending, written in ((self._pending_speakings, speakings), (self._pending_says, says)):
            for key, row in written.items():
                if pending.get(key) is row:
                    del pending[key]

    # -- webhook outbox --------------------------------------------------------------------------

    async def outbox_add(self, rows: list[Row]) -> list[int]:
        args = [tuple(row[f] for f in OUTBOX_FIELDS) for row in rows]
        (added,) = await self._transaction([Step(_INSERT_OUTBOX, args, rows=True)])
        return [int(row["seq"]) for row in added]

    async def outbox_pending(self) -> list[Row]:
        return await self._fetch(f"{_SELECT_OUTBOX} ORDER BY seq")

    async def outbox_head(self, customer_id: str) -> Row | None:
        rows = await self._fetch(f"{_SELECT_OUTBOX} WHERE customer_id = ? ORDER BY seq LIMIT 1", (customer_id,))
        return rows[0] if rows else None

    async def outbox_older(self, customer_id: str, created_before: float) -> list[Row]:
        sql = f"{_SELECT_OUTBOX} WHERE customer_id = ? AND created < ? ORDER BY seq"
        return await self._fetch(sql, (customer_id, float(created_before)))

    async def outbox_count(self) -> int:
        (row,) = await self._fetch("SELECT COUNT(*) AS n FROM webhook_outbox")
        return int(row["n"])

    async def outbox_attempted(self, seq: int, attempts: int) -> None:
        await self._execute("UPDATE webhook_outbox SET attempts = ? WHERE seq = ?", (attempts, seq))

    async def outbox_delete(self, seqs: list[int]) -> None:
        if seqs:
            await self._transaction([Step("DELETE FROM webhook_outbox WHERE seq = ?", [(s,) for s in seqs])])

    # -- lexicons --------------------------------------------------------------------------------

    async def lexicon_put(self, customer_id: str, name: str, entries: str, stamp: str) -> bool:
        """Write the customer's lexicon ``name`` (made, or its entries replaced); True if made."""
        step = Step(_PUT_LEXICON, [(customer_id, name, entries, stamp, stamp)], rows=True)
        ((row,),) = await self._transaction([step])
        return row["tm_create"] == stamp

    async def lexicon_get(self, customer_id: str, name: str) -> Row | None:
        rows = await self._fetch(f"{_SELECT_LEXICON} WHERE customer_id = ? AND name = ?", (customer_id, name))
        return rows[0] if rows else None

    async def lexicon_list(self, customer_id: str) -> list[Row]:
        return await self._fetch(f"{_SELECT_LEXICON} WHERE customer_id = ? ORDER BY name", (customer_id,))

    async def lexicon_delete(self, customer_id: str, name: str) -> bool:
        sql = "DELETE FROM lexicons WHERE customer_id = ? AND name = ? RETURNING name"
        (deleted,) = await self._transaction([Step(sql, [(customer_id, name)], rows=True)])
        return bool(deleted)

    # -- reads -----------------------------------------------------------------------------------

    async def get(self, speaking_id: str) -> Speaking | None:
        rows = await self._fetch(f"{_SELECT_SPEAKING} WHERE id = ?", (speaking_id,))
        rows = _overlay(self._pending_speakings, "id", rows)
        return Speaking(**rows[0]) if rows else None

    async def list_says(self, speaking_id: str) -> list[Row]:
        sql = f"SELECT {', '.join(SAY_COLUMNS)} FROM says WHERE speaking_id = ? ORDER BY seq"
        return _overlay(self._pending_says, "say_id", await self._fetch(sql, (speaking_id,)))

    async def list(self, customer_id: str, page_size: int, before: str | None) -> list[Speaking]:
        sql = f"{_SELECT_SPEAKING} WHERE customer_id = ? AND tm_delete = ?"
        args: list[Any] = [customer_id, NOT_YET]
        if before:
            sql += " AND tm_create < ?"
            args.append(before)
        sql += " ORDER BY tm_create DESC LIMIT ?"
        args.append(page_size)
        rows = _overlay(self._pending_speakings, "id", await self._fetch(sql, tuple(args)))
        return [Speaking(**row) for row in rows]

    # -- fleet: events shared between nodes, webhook delivery claims ------------------------------

    async def fleet_events_add(self, node_id: str, rows: list[Row], *also: Step) -> None:
        """This node's events (``customer_id``, ``speaking_id``, ``body``, ``created``), in order,
        with ``also`` (e.g. a notification, a prune) in the same transaction."""
        args = [(node_id, row["customer_id"], row["speaking_id"], row["body"], row["created"]) for row in rows]
        await self._transaction([Step(_INSERT_FLEET_EVENT, args), *also])

    async def fleet_events_cursors(self) -> dict[str, int]:
        """Each writing node's newest event (its ``seq``): where a reader starts."""
        rows = await self._fetch("SELECT node_id, MAX(seq) AS seq FROM fleet_events GROUP BY node_id")
        return {row["node_id"]: int(row["seq"]) for row in rows}

    async def fleet_events_after(self, node_id: str, cursors: dict[str, int], limit: int = 1000) -> list[Row]:
        """Other nodes' events after each one's cursor (a node without one: all of its), by seq.
        Each node's events commit in seq order (one writer each), so a per-node cursor skips
        none; across nodes they may commit out of order, which one global cursor would skip."""
        after = "0"
        args: list[Any] = [node_id]
        if cursors:
            after = f"CASE node_id {' '.join('WHEN ? THEN ?' for _ in cursors)} ELSE 0 END"
            args += [value for item in cursors.items() for value in item]
        sql = f"{_SELECT_FLEET_EVENTS} WHERE node_id <> ? AND seq > {after} ORDER BY seq LIMIT ?"
        return await self._fetch(sql, (*args, limit))

    @staticmethod
    def fleet_events_prune_step(node_id: str, created_before: float) -> Step:
        """A node's own events older than ``created_before``, deleted (by that node's writer)."""
        return Step("DELETE FROM fleet_events WHERE node_id = ? AND created < ?", [(node_id, float(created_before))])

    async def webhook_claim(self, owner: Owner, customer_ids: list[str], until: float, now: float) -> set[str]:
        """Claim (or renew) delivery of these customers' webhooks for ``owner`` until ``until``; a
        claim is taken only if it is free, expired at ``now``, or the node's own (this run or a
        previous, dead run of it). The customers now held (one atomic upsert each)."""
        if not customer_ids:
            return set()
        args = [(c, owner.node_id, owner.run_id, float(until), float(now), owner.node_id) for c in customer_ids]
        (held,) = await self._transaction([Step(_CLAIM_WEBHOOKS, args, rows=True)])
        return {row["customer_id"] for row in held}

    async def webhook_release(self, owner: Owner) -> list[str]:
        """The run's claims given up (at its end); the customers they were for."""
        step = Step("DELETE FROM webhook_claims WHERE run_id = ? RETURNING customer_id", [(owner.run_id,)], rows=True)
        (released,) = await self._transaction([step])
        return sorted(row["customer_id"] for row in released)
