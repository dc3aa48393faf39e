"""This speakd among the nodes sharing one store: its row in the store's ``nodes`` table.

At start the node registers (its id, the URL other nodes reach its API at, and a new run id:
a restarted node is a new run, told apart from what its earlier run left), then writes
``last_seen`` every :data:`HEARTBEAT_S` while it runs. The sessions it makes carry its
:class:`~speakd.store.records.Owner`. Operators list the nodes (``GET /v1.0/nodes``) with each
one's live sessions, counted in the store.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, Self

import structlog

from speakd.store.interface import Store
from speakd.store.records import Owner, now_stamp
from speakd.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

# How often a running node writes its last_seen.
HEARTBEAT_S = 3.0


class NodeRegistry:
    """This node's registration and heartbeat (``async with``: registered on entry, the
    heartbeat cancelled and awaited on exit), and the list of every node."""

    def __init__(self, store: Store, node_id: str, url: str, lock_key: int = 0) -> None:
        self.store = store
        self.owner = Owner(node_id, str(uuid.uuid4()))
        self.url = url
        self.lock_key = lock_key  # the run lock's (speakd.store.liveness), taken before registering
        self._heartbeat: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self.store.register_node(self.owner, self.url, now_stamp(), self.lock_key)
        log.info("node_registered", url=self.url, run_id=self.owner.run_id, lock_key=self.lock_key)
        self._heartbeat = asyncio.create_task(self._beat(), name="speakd-node-heartbeat")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await cancel_and_wait(self._heartbeat)

    async def _beat(self) -> None:
        failing = taken = False  # logged when it starts, not at every beat
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                seen = await self.store.node_seen(self.owner, now_stamp())
            except Exception as exc:  # the store down, locked, or anything else: the next beat tries again
                if not failing:
                    log.warning("node_heartbeat_failed", error=getattr(exc, "message", None) or repr(exc))
                failing = True
                continue
            if failing:
                log.info("node_heartbeat_written")
            failing = False
            if not seen and not taken:
                log.error(
                    "node_id_taken",
                    error=f"another speakd registered as node '{self.owner.node_id}' after this one: "
                    "give each speakd sharing the store its own [node] id",
                )
            taken = not seen

    async def nodes(self) -> list[dict[str, Any]]:
        """Every node of the store: ``id``, ``url``, ``tm_last_seen``, ``live_sessions``, by id."""
        rows = await self.store.list_nodes()
        return [
            {"id": r["id"], "url": r["url"], "tm_last_seen": r["last_seen"], "live_sessions": r["live_sessions"]}
            for r in rows
        ]
