"""What a node shares with the other nodes of its store beyond records: its sessions' events
(for the other nodes' WebSocket clients) and who delivers each customer's webhooks.

One protocol, :class:`FleetLink`, two adapters side by side: :class:`SoloLink` for a store
only one node uses (SQLite: nothing to share, every customer's webhooks are this node's) and
:class:`speakd.store.postgres_events.PostgresLink` (the ``fleet_events`` table with
LISTEN/NOTIFY, and claims in ``webhook_claims``). A store gives its own with ``store.fleet(owner)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol, Self

Row = dict[str, Any]
# Called with other nodes' events (rows of fleet_events), each once, in order per writing node.
EventsHandler = Callable[[list[Row]], None]
# Called when another node wrote webhook rows for a customer; None: claims may have come free
# (a node gave its up), or wake-ups been missed (the link was away).
WakeHandler = Callable[[str | None], None]


class FleetLink(Protocol):
    """``async with`` it: listening to the other nodes from entry to exit."""

    # Whether other nodes share the store (else events need not be written for them).
    shared: bool

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...

    def on_events(self, handler: EventsHandler) -> None:
        """Where the other nodes' events go (set before entering)."""

    def on_webhook_wake(self, handler: WakeHandler) -> None:
        """Where wake-ups for this node's webhook deliveries go."""

    async def add_events(self, rows: list[Row]) -> None:
        """This node's events (``customer_id``, ``speaking_id``, ``body``, ``created``), in order,
        committed and announced to the other nodes; StoreUnwritable while the store is down."""

    async def claim_webhooks(self, customer_ids: Iterable[str], lease_s: float) -> set[str]:
        """Take or renew delivery of these customers' webhooks for ``lease_s`` seconds; those
        this run now holds (a customer another live node holds is not taken)."""

    async def release_webhooks(self) -> None:
        """Give up this run's claims (at its end), waking the other nodes to take them."""

    async def wake_webhooks(self, customer_ids: Iterable[str]) -> None:
        """Tell the holders of these customers' claims that rows are waiting for them."""


class SoloLink:
    """A store no other node shares: nothing to send or hear; every claim is this node's."""

    shared = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def on_events(self, handler: EventsHandler) -> None:
        return None

    def on_webhook_wake(self, handler: WakeHandler) -> None:
        return None

    async def add_events(self, rows: list[Row]) -> None:
        return None

    async def claim_webhooks(self, customer_ids: Iterable[str], lease_s: float) -> set[str]:
        return set(customer_ids)

    async def release_webhooks(self) -> None:
        return None

    async def wake_webhooks(self, customer_ids: Iterable[str]) -> None:
        return None
