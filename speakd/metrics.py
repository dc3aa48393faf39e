"""Prometheus metrics: one registry per daemon, served at ``GET /metrics``.

Nothing here runs on the audio path beyond a counter increment or a histogram observation:

* what is *live* (sessions, queued says, buffered audio, ARI, pacer totals, the webhook backlog)
  is read when Prometheus scrapes, by :class:`_LiveCollector`, from the objects that own it;
* what *happened* comes from where it happens: the event bus (sessions stopped, says' final
  statuses, time to first audio, all from played positions), a wrapper around each provider
  (time to first byte, errors), the playout's confirmation of a flush, the pacer's reports.

The registry is the daemon's own, not prometheus_client's global one, so several daemons (or
tests) in one process each count their own. Names follow Prometheus conventions: ``speakd_``,
base units (seconds) in the name, ``_total`` on counters, never a per-session or per-customer
label (their number is unbounded).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeHistogramMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from speakd.events.model import Event, EventType, InterruptReason, StopReason
from speakd.media import pacer_protocol
from speakd.providers.base import AudioChunk, DelegatingProvider, Provider, SynthesisRequest
from speakd.providers.fallback import BreakerState, Failover
from speakd.store.records import Status, seconds_of

if TYPE_CHECKING:
    from speakd.events.fleet import FleetEventSink
    from speakd.events.webhooks import WebhookSink
    from speakd.providers.cache import AudioCache
    from speakd.sessions.service import SpeakingService

# Seconds, for what a caller waits on: from one 20 ms frame to the 10 s a busy host may take.
LATENCY_BUCKETS = (
    0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75,
    1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
)  # fmt: skip
# The pacer's lateness: a frame period (20 ms) late already costs the cushion.
PACER_LATENESS_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.1, 0.2, 0.5, 1.0)
# Audio buffered ahead of playout: at most MAX_AHEAD_MS (speakd.media.playout), [media] lead_ms of it at the far end.
LEAD_BUCKETS = (0.02, 0.04, 0.1, 0.2, 0.5, 1.0, 1.5, 2.0, 5.0, 10.0, 30.0, 60.0)

# A say's last event: its data.status is the final status.
_FINAL_EVENTS = {EventType.SAY_FINISHED, EventType.SAY_FAILED, EventType.SAY_INTERRUPTED}
# Cuts made on behalf of a new say: that say plays as soon as it can, so it counts as asked of an idle session.
_CUT_FOR_NEW_SAY = {str(InterruptReason.STOP_ALL), str(InterruptReason.STOP_CURRENT)}


class Metrics:
    """The daemon's metrics. An :class:`~speakd.events.bus.EventSink` (``offer``)."""

    def __init__(self, node_id: str = "", node_url: str = "") -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        # Which node these are (its [node] id and url): one series, joined to the others by instance.
        Info("speakd_node", "This speakd among the nodes sharing its store", registry=registry).info(
            {"node_id": node_id, "url": node_url}
        )
        self.sessions_created = Counter(
            "speakd_sessions_created", "Speaking sessions created", registry=registry
        )  # fmt: skip
        self.sessions_stopped = Counter(
            "speakd_sessions_stopped", "Speaking sessions stopped, by why", ["reason"], registry=registry
        )
        for reason in StopReason:
            self.sessions_stopped.labels(reason=str(reason))
        self.says = Counter("speakd_says", "Says that reached a final status", ["status"], registry=registry)
        for status in ("played", "interrupted", "failed"):
            self.says.labels(status=status)
        self.time_to_first_audio = Histogram(
            "speakd_say_time_to_first_audio_seconds",
            "From a say being accepted while its session had nothing else to say, to its first audio played "
            "in the call (its played position)",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.flush_to_silence = Histogram(
            "speakd_flush_to_silence_seconds",
            "From a flush (or a say's stop) of audio in flight to the far end confirming it dropped its queue",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.say_underruns = Counter(
            "speakd_say_underruns",
            "Times a say's synthesis fell behind its playout, so the caller heard a gap (a host too busy "
            "for the synthesis asked of it)",
            registry=registry,
        )
        self.provider_first_byte = Histogram(
            "speakd_provider_first_byte_seconds",
            "From asking the provider for a say's audio to its first audio",
            ["provider"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.provider_errors = Counter(
            "speakd_provider_errors",
            "Syntheses that failed (after the provider's own retry), by provider and whether audio had come",
            ["provider", "stage"],
            registry=registry,
        )
        self.rtp_pacer_lateness = Histogram(
            "speakd_rtp_pacer_lateness_seconds",
            "The RTP pacer's worst lateness of a sub-tick in each second of pacing",
            buckets=PACER_LATENESS_BUCKETS,
            registry=registry,
        )
        # speaking id -> when its latest say became final (unix s): says asked before then waited on it.
        self._busy_until: dict[str, float] = {}

    # -- what is live, read at scrape time --------------------------------------------------------

    def watch(
        self,
        service: SpeakingService,
        webhooks: WebhookSink | None = None,
        fleet_events: FleetEventSink | None = None,
    ) -> None:
        """Report the live state of ``service`` (its ARI client and media paths too), ``webhooks``
        and ``fleet_events`` (the events shared with the other nodes)."""
        self.registry.register(_LiveCollector(service, webhooks, fleet_events))

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """The scrape body and its content type: OpenMetrics if the scraper asks for it, else text 0.0.4."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    # -- the event bus: where a session or a say changed ------------------------------------------

    def offer(self, event: Event) -> None:
        kind = event.event_type
        if kind is EventType.SPEAKING_CREATED:
            self.sessions_created.inc()
        elif kind is EventType.SPEAKING_STOPPED:
            self.sessions_stopped.labels(reason=event.data.get("reason", "")).inc()
            self._busy_until.pop(event.speaking_id, None)
        elif kind is EventType.SAY_STARTED:
            queued = seconds_of(event.data["tm_queued"])
            # Only a say asked of a session with nothing else to say: one queued behind others
            # would measure how long they played.
            if queued >= self._busy_until.get(event.speaking_id, 0.0):
                self.time_to_first_audio.observe(max(0.0, seconds_of(event.timestamp) - queued))
        elif kind in _FINAL_EVENTS:
            self.says.labels(status=event.data["status"]).inc()
            if event.data.get("reason") not in _CUT_FOR_NEW_SAY:
                ended = seconds_of(event.timestamp)
                self._busy_until[event.speaking_id] = max(ended, self._busy_until.get(event.speaking_id, 0.0))

    # -- hooks for the producers ---------------------------------------------------------------------

    def observe_pacer_stats(self, stats: pacer_protocol.Stats) -> None:
        self.rtp_pacer_lateness.observe(stats.window_max_late_ms / 1000)

    def measure_provider(self, provider: Provider) -> Provider:
        return _MeasuredProvider(provider, self)

    def watch_failover(self, failover: Failover) -> Failover:
        """Count the says ``failover`` moves on from a provider, and report its breakers at scrape time."""
        failovers = Counter(
            "speakd_provider_failovers",
            "Says that went on with the next provider of [tts] fallback, by the provider that failed and "
            "whether it had given audio (before_audio, mid_say)",
            ["provider", "stage"],
            registry=self.registry,
        )
        failover.on_failover = lambda provider, stage: failovers.labels(provider=provider, stage=stage).inc()
        self.registry.register(_BreakerCollector(failover))
        return failover

    def watch_cache(self, cache: AudioCache) -> None:
        """Report the audio cache's hits, misses and size at scrape time."""
        self.registry.register(_CacheCollector(cache))


class _MeasuredProvider(DelegatingProvider):
    """A provider as sessions see it, timing its first audio and counting its failures."""

    def __init__(self, inner: Provider, metrics: Metrics) -> None:
        super().__init__(inner)
        self._first_byte = metrics.provider_first_byte.labels(provider=inner.name)
        self._errors = metrics.provider_errors
        for stage in ("before_audio", "mid_stream"):
            self._errors.labels(provider=inner.name, stage=stage)

    async def synthesize(self, request: SynthesisRequest) -> AsyncIterator[AudioChunk]:
        asked = time.monotonic()
        audio = False
        try:
            async with contextlib.aclosing(self.inner.synthesize(request)) as chunks:
                async for chunk in chunks:
                    if not audio and chunk.data:
                        audio = True
                        self._first_byte.observe(time.monotonic() - asked)
                    yield chunk
        except Exception:  # a cancel (flush, stop) or the consumer closing is not a failure
            self._errors.labels(provider=self.name, stage="mid_stream" if audio else "before_audio").inc()
            raise


class _CacheCollector:
    """The audio cache, read at scrape time (its counters are its own: plain integers)."""

    def __init__(self, cache: AudioCache) -> None:
        self.cache = cache

    def collect(self) -> Iterable[Metric]:
        cache = self.cache
        yield CounterMetricFamily(
            "speakd_cache_hits", "Syntheses served from the audio cache (no provider asked)", cache.hits
        )
        yield CounterMetricFamily(
            "speakd_cache_misses",
            "Syntheses the audio cache did not have (the provider asked; says with cache false not counted)",
            cache.misses,
        )
        yield CounterMetricFamily(
            "speakd_cache_evictions", "Audio cache entries removed to stay within [cache] max_mb", cache.evictions
        )
        yield GaugeMetricFamily("speakd_cache_bytes", "Bytes the audio cache's entries take on disk", cache.bytes)
        yield GaugeMetricFamily("speakd_cache_entries", "Entries in the audio cache", cache.entries)


class _BreakerCollector:
    """Each provider's circuit breaker, one series per state (1: the state it is in)."""

    def __init__(self, failover: Failover) -> None:
        self.failover = failover

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "speakd_provider_breaker_state",
            "Each provider's circuit breaker: 1 for the state it is in (closed: used; open: skipped after "
            "[tts] breaker_failures failures in a row; half_open: the next say tries it)",
            labels=["provider", "state"],
        )
        for provider, current in self.failover.states().items():
            for state in BreakerState:
                family.add_metric([provider, str(state)], int(state is current))
        yield family


class _LiveCollector:
    """Reads the live state when Prometheus scrapes (on the event loop: no locks needed)."""

    def __init__(
        self, service: SpeakingService, webhooks: WebhookSink | None, fleet_events: FleetEventSink | None
    ) -> None:
        self.service = service
        self.webhooks = webhooks
        self.fleet_events = fleet_events

    def collect(self) -> Iterable[Metric]:
        service = self.service
        sessions = service.live_sessions()

        by_status = GaugeMetricFamily("speakd_sessions", "Live speaking sessions, by status", labels=["status"])
        for status in (Status.INITIATING, Status.ACTIVE):
            by_status.add_metric([str(status)], sum(s.record.status == status for s in sessions))
        yield by_status

        queued = [len(s.queue) for s in sessions]
        yield GaugeMetricFamily("speakd_says_queued", "Says waiting to be synthesized, all sessions", sum(queued))
        yield GaugeMetricFamily(
            "speakd_says_queued_max_per_session",
            "The most says waiting in any one session (a say is refused at 100)",
            max(queued, default=0),
        )

        # Audio ahead of the played position (at the far end and held here), per session that has some.
        buffered = sorted(
            ms / 1000 for s in sessions if s.playout.transport is not None and (ms := s.playout.buffered_ms())
        )
        buckets = [(str(bound), float(sum(b <= bound for b in buffered))) for bound in LEAD_BUCKETS]
        yield GaugeHistogramMetricFamily(
            "speakd_media_lead_seconds",
            "Now, for each session with audio in flight: audio buffered ahead of what has played "
            "(a gauge histogram: take quantiles of the buckets as they are, never their rate)",
            buckets=[*buckets, ("+Inf", float(len(buffered)))],
            gsum_value=sum(buffered),
        )

        yield GaugeMetricFamily(
            "speakd_ari_connected", "1 while the ARI events WebSocket is connected", int(service.ari.connected.is_set())
        )
        yield CounterMetricFamily(
            "speakd_ari_reconnects", "ARI connections made after the first", max(0, service.ari.connects - 1)
        )

        pacer = service.media.pacer
        if pacer is not None:
            yield GaugeMetricFamily(
                "speakd_rtp_pacer_realtime", "1 if the RTP pacer runs with SCHED_FIFO priority", int(pacer.realtime)
            )
            yield GaugeMetricFamily(
                "speakd_rtp_pacer_max_lateness_seconds",
                "The RTP pacer's worst lateness of a sub-tick since speakd started",
                pacer.max_late_ms / 1000,
            )
            yield CounterMetricFamily(
                "speakd_rtp_pacer_stalls", "Frame periods the RTP pacer skipped because it ran late", pacer.stalls
            )
            yield CounterMetricFamily(
                "speakd_rtp_pacer_send_errors", "RTP packets that failed to send", pacer.send_errors
            )
            yield CounterMetricFamily("speakd_rtp_pacer_starts", "RTP pacer processes started", pacer.starts)

        if self.webhooks is not None:
            yield GaugeMetricFamily(
                "speakd_webhook_backlog",
                "Webhook events not delivered yet: in the outbox plus waiting to be written to it",
                self.webhooks.backlog,
            )
            yield GaugeMetricFamily(
                "speakd_webhook_endpoints_failing",
                "Customers' webhook endpoints whose last attempt failed",
                self.webhooks.endpoints_failing,
            )
            yield CounterMetricFamily(
                "speakd_webhook_events_dropped",
                "Webhook events dropped before reaching the outbox (a store that stopped answering)",
                self.webhooks.dropped,
            )
        if self.fleet_events is not None:
            yield CounterMetricFamily(
                "speakd_fleet_events_dropped",
                "Events dropped before reaching the store the other nodes read them from (a store not answering)",
                self.fleet_events.dropped,
            )
