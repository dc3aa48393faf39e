"""The other nodes sharing this node's store, as the service needs them to route requests.

A session lives on the node whose Asterisk has its call: commands for a session another node
owns are answered by that node, and a create goes to the node whose Asterisk has the channel.
The service only decides where a request belongs and says so with :class:`OwnedElsewhere` or
:class:`NoSuchReference` (its ``rounds``); the API carries it (speakd.api.carry).

Each node writes the system name of its Asterisk into its row on every ARI (re)connect:
Asterisk names the channels it makes ``<system name>-<epoch>.<n>``, so a channel id tells
which node's Asterisk has it without asking any (:func:`node_for_channel`). A conference, or
a channel without such a prefix, is looked for on the node of the reference's last session
first, then on every other live node at once.

:class:`SoloPeers` is the node alone (the default; nothing is ever elsewhere); :class:`Peers`
reads the store, keeping the list of live nodes for :data:`NODES_TTL_S`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import structlog

from speakd.ari.client import AriClient
from speakd.errors import InvalidRequest, ServiceUnavailable
from speakd.sessions.nodes import HEARTBEAT_S
from speakd.store.interface import Store, StoreUnwritable
from speakd.store.records import NodeAddress, Owner, stamp_of

log = structlog.get_logger(__name__)

# A node seen within this long is live (its heartbeat is every HEARTBEAT_S).
LIVE_WITHIN_S = 3 * HEARTBEAT_S + 1
# How long the list of live nodes is used before it is read again: a create reads it, and
# a node that just started or died is noticed this much later at most.
NODES_TTL_S = 2.0


class OwnedElsewhere(ServiceUnavailable):
    """The session (or call) belongs to another node: the API carries the request there. A way
    in that does not carry (the dialplan, a request already carried once) answers with this
    error, a 503 naming the node."""

    reason = "owned_elsewhere"
    retry_after = 1

    def __init__(self, what: str, node: NodeAddress) -> None:
        super().__init__(f"{what} is served by node '{node.id}' at {node.url}; send the request there")
        self.what = what
        self.node = node


class NoSuchReference(InvalidRequest):
    """This node's Asterisk has no such call or conference (a 400, as it always was). ``rounds``:
    the other nodes that may have it, asked in turn, each round's nodes at once (none: there is
    nowhere else to look)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.rounds: list[list[NodeAddress]] = []


def node_for_channel(channel_id: str, nodes: Sequence[NodeAddress]) -> NodeAddress | None:
    """The node whose Asterisk named this channel: the longest system name that leads the id
    followed by '-' (a name may lead another: 'pbx' and 'pbx-2'); None if no node's does."""
    named = [n for n in nodes if n.asterisk and channel_id.startswith(f"{n.asterisk}-")]
    return max(named, key=lambda n: len(n.asterisk), default=None)


def search_rounds(nodes: Sequence[NodeAddress], own_id: str, last_node: str) -> list[list[NodeAddress]]:
    """Where to look for a reference this node does not have: the node of its last session (if
    live and not this one), then every other live node."""
    others = [n for n in nodes if n.id != own_id]
    first = [n for n in others if n.id == last_node]
    rest = [n for n in others if n.id != last_node]
    return [r for r in (first, rest) if r]


class SoloPeers:
    """A node alone (a store no other node shares, or a service made without a fleet)."""

    async def owner_of(self, speaking_id: str) -> NodeAddress | None:
        """The other node that owns the session live, if any."""
        return None

    async def node_for_channel(self, channel_id: str) -> NodeAddress | None:
        """The other live node whose Asterisk named this channel, if any."""
        return None

    async def search_rounds(self, reference_type: str, reference_id: str) -> list[list[NodeAddress]]:
        """The other live nodes to ask for a reference this node does not have (see search_rounds)."""
        return []

    async def announce_asterisk(self, ari: AriClient) -> None:
        """Write the Asterisk's system name into this node's row (on every ARI connect)."""


class Peers(SoloPeers):
    """The nodes sharing ``store`` with ``owner``'s run."""

    def __init__(self, store: Store, owner: Owner) -> None:
        self.store = store
        self.owner = owner
        self._nodes: list[NodeAddress] = []
        self._read_at = -NODES_TTL_S
        self._reading = asyncio.Lock()  # one read for every create that finds the list old

    async def live_nodes(self) -> list[NodeAddress]:
        """Every live node, this one included (kept NODES_TTL_S; the last list while the store fails)."""
        if time.monotonic() - self._read_at < NODES_TTL_S:
            return self._nodes
        async with self._reading:
            if time.monotonic() - self._read_at >= NODES_TTL_S:
                try:
                    self._nodes = await self.store.nodes_seen_since(stamp_of(time.time() - LIVE_WITHIN_S))
                except StoreUnwritable as exc:  # the store's own refusal comes with the create's write
                    log.warning("nodes_unread", error=exc.message)
                self._read_at = time.monotonic()
        return self._nodes

    async def owner_of(self, speaking_id: str) -> NodeAddress | None:
        node = await self.store.live_owner(speaking_id)
        return node if node is not None and node.id != self.owner.node_id else None

    async def node_for_channel(self, channel_id: str) -> NodeAddress | None:
        node = node_for_channel(channel_id, await self.live_nodes())
        return node if node is not None and node.id != self.owner.node_id else None

    async def search_rounds(self, reference_type: str, reference_id: str) -> list[list[NodeAddress]]:
        nodes = await self.live_nodes()
        if all(n.id == self.owner.node_id for n in nodes):
            return []  # alone: no store read
        last = await self.store.last_node_of(reference_type, reference_id)
        return search_rounds(nodes, self.owner.node_id, last)

    async def announce_asterisk(self, ari: AriClient) -> None:
        try:
            info = await ari.get("asterisk/info")
            name = str(((info or {}).get("config") or {}).get("name") or "")
            await self.store.set_node_asterisk(self.owner, name)
        except Exception as exc:
            # Never in the way of the connect: the next one writes it; creates are searched meanwhile.
            log.warning("node_asterisk_unwritten", error=getattr(exc, "message", None) or repr(exc))
            return
        log.info("node_asterisk", asterisk=name)
