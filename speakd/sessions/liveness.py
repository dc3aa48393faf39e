"""Nodes that die: watching the other runs' locks, ending a lost run's sessions, and finding
out that this run was itself declared lost.

Every :data:`CHECK_EVERY_S` a node asks the store which other runs own live sessions and
whether each still holds its run lock (speakd.store.liveness). A run whose lock stays free over
:data:`LOST_AFTER_S` (two checks at least) is lost: its process was killed (the lock is free at
once) or its host vanished (the server ends its session by TCP keepalives). This node then ends
that run's sessions in one fenced transaction (speakd.store: ``end_lost_run``); the node whose
transaction matched the rows publishes, for each session, its interrupted says and its
``speaking_stopped`` with reason ``node_lost``: once, through its bus (its WebSocket clients, the
other nodes', the webhook outbox).

No false positives: a server restart frees every lock at once, so nothing is judged until the
server has been up for :data:`SETTLE_S` (the others take theirs again by then); a blip of one
connection is retaken in milliseconds, well inside :data:`LOST_AFTER_S`; and a stalled process
keeps its lock (its connection lives in the kernel), so a busy host is never lost for being slow.

This run's side: when its lock is taken again after a break, the sessions it still has live
are checked against the store; those another node ended meanwhile are stopped here without
writing their rows (``stop_fenced``), as are those whose writes the store found fenced.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any, Self

import structlog

from speakd.store.interface import Store
from speakd.store.liveness import LiveRun, RunLock
from speakd.store.records import Owner, Speaking, now_stamp
from speakd.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

CHECK_EVERY_S = 2.0
# A run's lock free at every check over this long is lost (a retake after a blip takes ms).
LOST_AFTER_S = 3.0
# Nothing is judged until the server has been up this long: after a restart the others
# notice at once (the server closed their sessions), or within their lock's ping interval and
# timeout (7 s) when it vanished silently, and take their locks again (retried every second).
SETTLE_S = 10.0

# (record, interrupted says' rows, detail): publish the events of a session this node ended.
PublishLost = Callable[[Speaking, list[dict[str, Any]], str], None]


class LivenessWatch:
    """``async with`` it, once this node's run lock is held and its sessions fenced; the
    watching task is cancelled and awaited on exit."""

    def __init__(
        self,
        store: Store,
        run_lock: RunLock,
        owner: Owner,
        *,
        live_ids: Callable[[], Iterable[str]],
        stop_fenced: Callable[[set[str]], None],
        publish_lost: PublishLost,
    ) -> None:
        self.store = store
        self.run_lock = run_lock
        self.owner = owner
        self.live_ids = live_ids
        self.stop_fenced = stop_fenced
        self.publish_lost = publish_lost
        self._taken_at: float | None = run_lock.held_since
        self._fence_check_due = False
        self._free_since: dict[LiveRun, float] = {}
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        if self.run_lock.shared:  # alone on its store: nobody to watch, nobody to lose it
            self._task = asyncio.create_task(self._watch(), name="speakd-liveness")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await cancel_and_wait(self._task)

    async def _watch(self) -> None:
        failing = False  # logged when it starts, not at every check
        while True:
            await asyncio.sleep(CHECK_EVERY_S)
            try:
                await self.check()
            except Exception as exc:  # the store down, a lock timeout: the next check tries again
                if not failing:
                    log.warning("liveness_check_failed", error=getattr(exc, "message", None) or repr(exc))
                failing = True
                continue
            if failing:
                log.info("liveness_check_working")
            failing = False

    async def check(self) -> None:
        """One round: this run's own sessions if its lock was taken again, then the others'."""
        now = asyncio.get_running_loop().time()
        held_since = self.run_lock.held_since
        if held_since != self._taken_at:  # lost, or taken again: what was seen of the others is stale
            self._free_since.clear()
            self._fence_check_due |= held_since is not None
            self._taken_at = held_since
        if held_since is None:
            return
        if self._fence_check_due:
            if fenced := await self.store.fenced_off(self.live_ids()):
                self.stop_fenced(fenced)
            self._fence_check_due = False
        runs = await self.store.live_runs(self.owner.run_id)
        seen = await self.run_lock.look({run.lock_key for run in runs})
        if seen.server_up_s < SETTLE_S:  # just (re)started: every lock was free, the runs are taking theirs
            self._free_since.clear()
            return
        self._free_since = {run: self._free_since.get(run, now) for run in runs if run.lock_key not in seen.held}
        for run, since in list(self._free_since.items()):
            if now - since >= LOST_AFTER_S:
                await self._end(run)
                del self._free_since[run]

    async def _end(self, run: LiveRun) -> None:
        ended = await self.store.end_lost_run(run.run_id, now_stamp())
        detail = f"node '{run.node_id}' was lost (its run {run.run_id} no longer holds its lock)"
        log.warning("node_lost", lost_node_id=run.node_id, lost_run_id=run.run_id, sessions_ended=len(ended))
        for record, says in ended:
            self.publish_lost(record, says, detail)
