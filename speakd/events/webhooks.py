"""Customer webhooks: each event of a customer with a webhook is POSTed to its URL, signed.

Path of an event: ``offer`` (called by the bus where the event happens) puts it in a bounded
in-memory queue without waiting; the writer task moves it into the store's ``webhook_outbox``
table (committed); each customer's own delivery task POSTs that customer's rows oldest first,
one at a time, and deletes a row once its endpoint answered 2xx. So:

- nothing here runs on the audio path or in an API request: a dead or hanging endpoint costs
  only its customer's delivery task;
- one customer's events arrive in the order they happened; another customer's endpoint being
  down never delays them;
- delivery is at least once: a row is deleted only after a 2xx, so an answer lost to a
  timeout or a restart means the event is POSTed again (same ``X-Speakd-Event-Id``);
- a restart loses nothing: rows left in the outbox are delivered by the next run, first.

Nodes sharing a store (a fleet) share its outbox: a customer's rows are delivered by the one
node whose run holds that customer's claim (the store's fleet link, speakd.store.fleet), a
lease of :data:`CLAIM_LEASE_S` renewed every :data:`CLAIM_RENEW_S`, so each event is POSTed
once (at least once, as above: a node that dies mid-POST leaves its row to the next holder).
A node that writes rows for a customer another node holds wakes the holder; the claim of a
node that died expires and is taken by the next renewal round of a live node; a node that
stops gives its claims up. On a store of its own (SQLite), every claim is the node's.

A failed POST (no connection, no answer within ``request_timeout``, any status but 2xx;
redirects are not followed) is retried after ``first_backoff`` seconds, doubling up to
``max_backoff``, each wait jittered to 50-100 % of that. An event still undelivered when an
attempt at it fails ``give_up_after`` seconds after it happened is dropped with a warning
(``webhook_given_up``), and so are the events queued behind it that are as old.

Each POST carries the envelope ``{"event_type", "timestamp", "topic", "data"}`` as JSON and
the headers below; the signature is HMAC-SHA256 with the customer's secret over
``"<X-Speakd-Timestamp>.<body>"`` (the raw body bytes), hex, prefixed ``sha256=``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import math
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog

from speakd.config import WebhooksConfig, WebhookTarget
from speakd.events.bus import drain_and_stop, next_batch
from speakd.events.model import Event
from speakd.store.fleet import FleetLink, SoloLink
from speakd.store.interface import Store
from speakd.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

EVENT_ID_HEADER = "X-Speakd-Event-Id"
EVENT_TYPE_HEADER = "X-Speakd-Event-Type"
TIMESTAMP_HEADER = "X-Speakd-Timestamp"
SIGNATURE_HEADER = "X-Speakd-Signature"
SIGNATURE_PREFIX = "sha256="
USER_AGENT = "speakd-webhooks/1"

# Events waiting to be written to the outbox; the writer empties it in milliseconds, so only a
# store that stopped answering could fill it (then events are dropped, with a warning).
QUEUE_EVENTS = 10_000
WRITE_BATCH = 500
# On shutdown, endpoints that are answering get this long to take what is queued (the rest
# stays in the outbox for the next run).
SHUTDOWN_GRACE_S = 2.0
# On shutdown, how long the outbox writes may take before what is left is counted as lost.
DRAIN_TIMEOUT_S = 10.0
# Where nodes share the outbox: a customer's delivery claim lasts this long, and is renewed (and
# expired ones taken) this often.
CLAIM_LEASE_S = 12.0
CLAIM_RENEW_S = 4.0
# A claim counts as held until this long before its lease ends (a POST started must fit).
CLAIM_MARGIN_S = 2.0


def sign(secret: str, timestamp: str | int, body: bytes) -> str:
    """The ``X-Speakd-Signature`` value for a POST of ``body`` at ``timestamp`` (unix seconds)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return SIGNATURE_PREFIX + mac


def backoff_delay(failures: int, first: float, cap: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait after ``failures`` consecutive failed POSTs: ``first * 2**(failures-1)``,
    at most ``cap``, jittered to 50-100 % of that (so endpoints coming back are not hit in step)."""
    base = min(cap, first * 2.0 ** min(max(failures, 1) - 1, 60))
    return base * (0.5 + 0.5 * rand())


def encode(event: Event) -> str:
    return json.dumps(event.envelope(), separators=(",", ":"), ensure_ascii=False)


@dataclass
class _Customer:
    customer_id: str
    target: WebhookTarget
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    idle: bool = False  # waiting for rows: nothing in the outbox
    failures: int = 0  # consecutive failed POSTs: the endpoint is failing while > 0
    held_until: float = 0.0  # this run delivers the customer's rows until then (time.monotonic)
    task: asyncio.Task[None] | None = None


class WebhookSink:
    """The webhooks' side of the event bus; ``async with`` it (or ``start``/``aclose``)."""

    def __init__(
        self,
        store: Store,
        targets: dict[str, WebhookTarget],
        *,
        request_timeout: float = WebhooksConfig.request_timeout,
        first_backoff: float = WebhooksConfig.first_backoff,
        max_backoff: float = WebhooksConfig.max_backoff,
        give_up_after: float = WebhooksConfig.give_up_after,
        queue_events: int = QUEUE_EVENTS,
        clock: Callable[[], float] = time.time,
        fleet: FleetLink | None = None,
    ) -> None:
        self.store = store
        self.fleet: FleetLink = fleet or SoloLink()
        self.request_timeout = request_timeout
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self.give_up_after = give_up_after
        self.clock = clock
        self._customers = {c: _Customer(c, t) for c, t in targets.items()}
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(queue_events)
        self._http: aiohttp.ClientSession | None = None
        self._writer: asyncio.Task[None] | None = None
        self._claims: asyncio.Task[None] | None = None
        self._claim_now = asyncio.Event()  # a claim may have come free: try now, not at the next round
        self._closing = False
        self._dropped = 0
        # Rows in the outbox: counted as this sink writes and deletes them, not queried; where
        # other nodes share the outbox, also counted in the store at each claim round.
        self._outbox_rows = 0
        self._settling = asyncio.Event()  # set when a delivery task goes idle or starts failing

    @classmethod
    def from_config(cls, store: Store, config: WebhooksConfig, fleet: FleetLink | None = None) -> WebhookSink:
        return cls(
            store,
            config.targets(),
            request_timeout=config.request_timeout,
            first_backoff=config.first_backoff,
            max_backoff=config.max_backoff,
            give_up_after=config.give_up_after,
            fleet=fleet,
        )

    # -- the bus's side: never blocks, never raises ----------------------------------------

    def offer(self, event: Event) -> None:
        if event.customer_id not in self._customers:
            return
        row = {
            "event_id": str(uuid.uuid4()),
            "customer_id": event.customer_id,
            "event_type": str(event.event_type),
            "body": encode(event),
            "created": self.clock(),
            "attempts": 0,
        }
        if self._closing and self._writer is None:
            self._lost(row, "speakd is stopping")
            return
        try:
            self._queue.put_nowait(row)
        except asyncio.QueueFull:
            self._lost(row, f"more than {self._queue.maxsize} events waiting to be written to the outbox")

    # -- for metrics -----------------------------------------------------------------------

    @property
    def backlog(self) -> int:
        """Events not delivered yet: in the outbox (in a fleet: every node's), and waiting to be written to it."""
        return self._outbox_rows + self._queue.qsize()

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def endpoints_failing(self) -> int:
        return sum(c.failures > 0 for c in self._customers.values())

    def _lost(self, row: dict[str, Any], why: str) -> None:
        self._dropped += 1
        log.warning(
            "webhook_event_dropped",
            customer_id=row["customer_id"],
            event_type=row["event_type"],
            event_id=row["event_id"],
            reason=why,
        )

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> WebhookSink:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Deliver what a previous run left in the outbox, then what is offered from now on."""
        pending = await self.store.outbox_pending()
        # Rows of customers no node delivers (none holds their claim; taken for an instant here).
        unconfigured = {r["customer_id"] for r in pending if r["customer_id"] not in self._customers}
        unclaimed = await self.fleet.claim_webhooks(unconfigured, 0.0) if unconfigured else set()
        orphaned = [r for r in pending if r["customer_id"] in unclaimed]
        if orphaned:
            # The config no longer gives these customers a webhook: nowhere to deliver them.
            await self.store.outbox_delete([r["seq"] for r in orphaned])
            for customer in sorted({r["customer_id"] for r in orphaned}):
                log.warning(
                    "webhook_outbox_unconfigured",
                    customer_id=customer,
                    dropped=sum(r["customer_id"] == customer for r in orphaned),
                    reason="no webhook configured for this customer any more",
                )
        self._outbox_rows = sum(r["customer_id"] in self._customers for r in pending)
        self.fleet.on_webhook_wake(self._woken)
        await self._claim_round()
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.request_timeout),
            connector=aiohttp.TCPConnector(limit=0),  # one request at a time per customer already
            headers={"User-Agent": USER_AGENT},
        )
        for customer in self._customers.values():
            customer.task = asyncio.create_task(self._deliver(customer), name=f"speakd-webhook-{customer.customer_id}")
        self._writer = asyncio.create_task(self._write(), name="speakd-webhook-outbox")
        if self._customers:
            if self.fleet.shared:
                self._claims = asyncio.create_task(self._claim(), name="speakd-webhook-claims")
            log.info("webhooks_started", customers=len(self._customers), pending=self._outbox_rows)

    async def aclose(self) -> None:
        """Write every queued event to the outbox; give answering endpoints a moment; stop."""
        self._closing = True
        if self._writer is not None:
            if not await drain_and_stop(self._queue, self._writer, DRAIN_TIMEOUT_S):
                log.error("webhook_outbox_drain_timeout", lost=self._queue.qsize())
            self._writer = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SHUTDOWN_GRACE_S):
                while not all(c.idle or c.failures for c in self._customers.values()):
                    self._settling.clear()
                    await self._settling.wait()
        tasks = [c.task for c in self._customers.values() if c.task is not None]
        await cancel_and_wait(self._claims, *tasks)
        self._claims = None
        try:  # now, so another node takes them at once rather than when the leases end
            await self.fleet.release_webhooks()
        except Exception as exc:
            log.warning("webhook_claims_not_released", error=getattr(exc, "message", repr(exc)))
        if self._http is not None:
            await self._http.close()
            self._http = None

    # -- outbox writer ---------------------------------------------------------------------

    async def _write(self) -> None:
        while True:
            async with next_batch(self._queue, WRITE_BATCH) as batch:
                try:
                    await self.store.outbox_add(batch)
                    self._outbox_rows += len(batch)
                except Exception:
                    log.exception("webhook_outbox_write_failed", events=len(batch))
                    for row in batch:
                        self._lost(row, "the outbox could not be written")
            elsewhere = []
            for customer_id in {row["customer_id"] for row in batch}:
                customer = self._customers[customer_id]
                if not self._holds(customer):
                    elsewhere.append(customer_id)
                    continue
                customer.idle = False  # now, not when its task next runs: aclose's grace counts on it
                customer.wake.set()
            if elsewhere:
                await self._wake_elsewhere(elsewhere)

    async def _wake_elsewhere(self, customer_ids: list[str]) -> None:
        """Rows written for customers another node holds: that node is told (else it finds them
        at its next claim round)."""
        try:
            await self.fleet.wake_webhooks(customer_ids)
        except Exception as exc:
            log.warning("webhook_wake_failed", customers=len(customer_ids), error=getattr(exc, "message", repr(exc)))

    # -- claims: which customers this run delivers -------------------------------------------

    def _holds(self, customer: _Customer) -> bool:
        return customer.held_until > time.monotonic()

    def _woken(self, customer_id: str | None) -> None:
        """Another node wrote rows for ``customer_id``; None: claims may have come free, or
        wake-ups been missed."""
        if customer_id is None:
            self._claim_now.set()
            customers = list(self._customers.values())
        else:
            customers = [c for c in (self._customers.get(customer_id),) if c is not None]
        for customer in customers:
            if self._holds(customer):
                customer.wake.set()

    async def _claim_round(self) -> None:
        started = time.monotonic()
        held = await self.fleet.claim_webhooks(list(self._customers), CLAIM_LEASE_S)
        # A store no other node shares: the claims are this run's for good (no renewal).
        lease_end = started + CLAIM_LEASE_S - CLAIM_MARGIN_S if self.fleet.shared else math.inf
        if self.fleet.shared:
            self._outbox_rows = await self.store.outbox_count()
        for customer in self._customers.values():
            had = self._holds(customer)
            customer.held_until = lease_end if customer.customer_id in held else 0.0
            if customer.customer_id in held and (not had or (self.fleet.shared and customer.idle)):
                # Newly ours; or, with other writers, a look for rows whose wake-up was missed.
                customer.wake.set()

    async def _claim(self) -> None:
        failing = False
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._claim_now.wait(), CLAIM_RENEW_S)
            self._claim_now.clear()
            try:
                await self._claim_round()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store down: claims lapse as their leases end
                if not failing:
                    log.warning("webhook_claims_failed", error=getattr(exc, "message", repr(exc)))
                failing = True
                continue
            if failing:
                log.info("webhook_claims_renewed")
            failing = False

    # -- delivery, one task per customer ---------------------------------------------------

    async def _deliver(self, customer: _Customer) -> None:
        bound = log.bind(customer_id=customer.customer_id)
        while True:
            try:
                customer.wake.clear()  # before looking: a row written after the look sets it again
                row = await self.store.outbox_head(customer.customer_id) if self._holds(customer) else None
                if row is None:
                    customer.idle = True
                    self._settling.set()
                    await customer.wake.wait()
                    customer.idle = False
                    continue
                error = await self._post(customer.target, row)
                if error is None:
                    await self.store.outbox_delete([row["seq"]])
                    self._outbox_rows -= 1
                    if customer.failures:
                        bound.info("webhook_recovered", after_failures=customer.failures)
                    customer.failures = 0
                    bound.debug("webhook_delivered", event_id=row["event_id"], event_type=row["event_type"])
                    continue
                customer.failures += 1
                self._settling.set()
                attempts = row["attempts"] + 1
                if self.clock() - row["created"] >= self.give_up_after:
                    await self._give_up(bound, customer, row, attempts, error)
                else:
                    await self.store.outbox_attempted(row["seq"], attempts)
                delay = backoff_delay(customer.failures, self.first_backoff, self.max_backoff)
                bound.info(
                    "webhook_attempt_failed",
                    event_id=row["event_id"],
                    event_type=row["event_type"],
                    attempts=attempts,
                    error=error,
                    retry_in=round(delay, 3),
                )
                await asyncio.sleep(delay)
            except asyncio.CancelledError:
                raise
            except Exception:  # e.g. the store failed: try again later, never end the task
                bound.exception("webhook_delivery_failed")
                await asyncio.sleep(self.max_backoff)

    async def _give_up(self, bound: Any, customer: _Customer, row: dict[str, Any], attempts: int, error: str) -> None:
        """Drop ``row``, and the rows behind it that are as old: the endpoint is known to be failing."""
        cutoff = self.clock() - self.give_up_after
        behind = await self.store.outbox_older(customer.customer_id, cutoff)
        dropped = [row, *(r for r in behind if r["seq"] != row["seq"])]
        await self.store.outbox_delete([r["seq"] for r in dropped])
        self._outbox_rows -= len(dropped)
        for r in dropped:
            bound.warning(
                "webhook_given_up",
                event_id=r["event_id"],
                event_type=r["event_type"],
                attempts=attempts if r is row else r["attempts"],
                age_s=round(self.clock() - r["created"], 1),
                give_up_after=self.give_up_after,
                last_error=error,
                url=customer.target.url,
            )

    async def _post(self, target: WebhookTarget, row: dict[str, Any]) -> str | None:
        """POST one event; None if the endpoint took it (2xx), else what went wrong."""
        assert self._http is not None
        body = row["body"].encode()
        timestamp = str(int(self.clock()))
        headers = {
            "Content-Type": "application/json",
            EVENT_ID_HEADER: row["event_id"],
            EVENT_TYPE_HEADER: row["event_type"],
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(target.secret, timestamp, body),
        }
        try:
            async with self._http.post(target.url, data=body, headers=headers, allow_redirects=False) as resp:
                if 200 <= resp.status < 300:
                    return None
                return f"HTTP {resp.status}"
        except TimeoutError:
            return f"no answer within {self.request_timeout} s"
        except (aiohttp.ClientError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"
