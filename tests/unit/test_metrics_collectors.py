"""Metrics without Asterisk: the event sink, the provider wrapper, the live collector, the
playout's flush confirmation, the store check and the webhook backlog."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import deque
from types import SimpleNamespace

import pytest
from harness.fakes import SinkTransport
from harness.webhooks import WebhookReceiver
from prometheus_client.parser import text_string_to_metric_families

from speakd.audio import AudioFormat
from speakd.config import WebhookTarget
from speakd.errors import ProviderError
from speakd.events.model import Event, EventType, StopReason
from speakd.events.webhooks import WebhookSink
from speakd.media import pacer_protocol
from speakd.media.playout import BYTES_PER_MS, Playout
from speakd.metrics import Metrics
from speakd.providers.base import AudioChunk, Provider, SynthesisRequest
from speakd.store import health as ops
from speakd.store.records import stamp_of
from speakd.store.sqlite import SqliteStore

T0 = 1_750_000_000.0  # unix seconds


def samples(metrics: Metrics) -> dict[tuple[str, frozenset], float]:
    body, _ = metrics.exposition("")
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[sample.name, frozenset(sample.labels.items())] = sample.value
    return out


def get(metrics: Metrics, name: str, **labels: str) -> float:
    return samples(metrics)[name, frozenset(labels.items())]


def session_event(kind: EventType, at: float, speaking_id: str = "sp-1", **data: str) -> Event:
    return Event(kind, stamp_of(at), "cust", speaking_id, {"id": speaking_id, **data})


def say_event(kind: EventType, at: float, queued: float, speaking_id: str = "sp-1", **data: str) -> Event:
    status = {
        EventType.SAY_STARTED: "playing",
        EventType.SAY_FINISHED: "played",
        EventType.SAY_FAILED: "failed",
        EventType.SAY_INTERRUPTED: "interrupted",
    }[kind]
    body = {"speaking_id": speaking_id, "status": status, "tm_queued": stamp_of(queued), **data}
    return Event(kind, stamp_of(at), "cust", speaking_id, body)


# -- the event sink ------------------------------------------------------------------------------


def test_sessions_and_says_are_counted_by_reason_and_final_status():
    metrics = Metrics()
    # Every stop reason and final status is there from the start, at 0.
    for reason in StopReason:
        assert get(metrics, "speakd_sessions_stopped_total", reason=str(reason)) == 0
    for status in ("played", "interrupted", "failed"):
        assert get(metrics, "speakd_says_total", status=status) == 0

    metrics.offer(session_event(EventType.SPEAKING_CREATED, T0))
    metrics.offer(session_event(EventType.SPEAKING_STARTED, T0))
    metrics.offer(say_event(EventType.SAY_STARTED, T0 + 1, T0))
    metrics.offer(say_event(EventType.SAY_FINISHED, T0 + 2, T0))
    metrics.offer(say_event(EventType.SAY_FAILED, T0 + 3, T0 + 2.5, error="boom"))
    metrics.offer(say_event(EventType.SAY_INTERRUPTED, T0 + 4, T0 + 3.5, reason="hangup"))
    metrics.offer(session_event(EventType.SPEAKING_STOPPED, T0 + 4, reason="hangup"))

    assert get(metrics, "speakd_sessions_created_total") == 1
    assert get(metrics, "speakd_sessions_stopped_total", reason="hangup") == 1
    assert get(metrics, "speakd_sessions_stopped_total", reason="stop") == 0
    assert get(metrics, "speakd_says_total", status="played") == 1
    assert get(metrics, "speakd_says_total", status="failed") == 1
    assert get(metrics, "speakd_says_total", status="interrupted") == 1


def test_time_to_first_audio_counts_only_says_asked_of_an_idle_session():
    metrics = Metrics()
    ttfa = metrics.time_to_first_audio
    # A: asked of a fresh session, first audio 0.3 s later.
    metrics.offer(say_event(EventType.SAY_STARTED, T0 + 0.3, T0))
    # B: asked while A was unfinished; it starts when A ends: that is A's length, not B's latency.
    metrics.offer(say_event(EventType.SAY_FINISHED, T0 + 2.0, T0))
    metrics.offer(say_event(EventType.SAY_STARTED, T0 + 2.02, T0 + 0.1))
    metrics.offer(say_event(EventType.SAY_FINISHED, T0 + 4.0, T0 + 0.1))
    # C: asked after B ended (and after a flush cut nothing): idle again.
    metrics.offer(say_event(EventType.SAY_STARTED, T0 + 5.25, T0 + 5.0))
    # D cuts C (stop: all): the cut is D's own doing, so D counts as asked of an idle session.
    metrics.offer(say_event(EventType.SAY_INTERRUPTED, T0 + 6.01, T0 + 5.0, reason="stop_all"))
    metrics.offer(say_event(EventType.SAY_STARTED, T0 + 6.2, T0 + 6.0))
    assert ttfa._sum.get() == pytest.approx(0.3 + 0.25 + 0.2, abs=1e-3)
    assert get(metrics, "speakd_say_time_to_first_audio_seconds_count") == 3
    assert get(metrics, "speakd_say_time_to_first_audio_seconds_bucket", le="0.25") == 2

    # Another session is judged on its own; a stopped session's state is forgotten.
    metrics.offer(say_event(EventType.SAY_STARTED, T0 + 6.5, T0 + 6.0, speaking_id="sp-2"))
    assert get(metrics, "speakd_say_time_to_first_audio_seconds_count") == 4
    metrics.offer(session_event(EventType.SPEAKING_STOPPED, T0 + 7, reason="stop"))
    assert "sp-1" not in metrics._busy_until


def test_two_daemons_in_one_process_count_apart():
    one, two = Metrics(), Metrics()  # no "duplicated timeseries": each has its own registry
    one.offer(session_event(EventType.SPEAKING_CREATED, T0))
    assert get(one, "speakd_sessions_created_total") == 1
    assert get(two, "speakd_sessions_created_total") == 0


def test_pacer_reports_feed_the_lateness_histogram():
    metrics = Metrics()
    metrics.observe_pacer_stats(pacer_protocol.Stats(12.0, 12.0, 0, 0, 200))
    metrics.observe_pacer_stats(pacer_protocol.Stats(0.5, 12.0, 0, 0, 400))
    assert get(metrics, "speakd_rtp_pacer_lateness_seconds_count") == 2
    assert get(metrics, "speakd_rtp_pacer_lateness_seconds_bucket", le="0.001") == 1
    assert get(metrics, "speakd_rtp_pacer_lateness_seconds_bucket", le="0.01") == 1
    assert get(metrics, "speakd_rtp_pacer_lateness_seconds_bucket", le="0.02") == 2


# -- the provider wrapper --------------------------------------------------------------------------

PCM = AudioFormat("pcm_s16le", 8000)


class ScriptedProvider(Provider):
    name = "scripted"
    supports_ssml = True

    def __init__(self) -> None:
        self.fail_after: int | None = None  # chunks before raising ProviderError
        self.first_delay = 0.05

    def check(self, language: str, voice_id: str, payload_type: str = "text") -> None:
        if language != "en-US":
            raise ValueError(language)

    async def synthesize(self, request: SynthesisRequest):
        await asyncio.sleep(self.first_delay)
        for n in range(3):
            if self.fail_after == n:
                raise ProviderError("scripted failure")
            yield AudioChunk(b"\0" * 320, PCM)


async def drain(provider: Provider, stop_after: int | None = None) -> int:
    got = 0
    agen = provider.synthesize(SynthesisRequest("hi", "en-US", ""))
    try:
        async for _ in agen:
            got += 1
            if got == stop_after:
                break
    finally:
        await agen.aclose()
    return got


async def test_providers_are_timed_to_their_first_audio_and_their_failures_counted_by_stage():
    metrics = Metrics()
    inner = ScriptedProvider()
    provider = metrics.measure_provider(inner)
    assert provider.name == "scripted" and provider.supports_ssml
    provider.check("en-US", "")  # delegated, also when it refuses
    with pytest.raises(ValueError):
        provider.check("xx", "")

    assert await drain(provider) == 3
    assert get(metrics, "speakd_provider_first_byte_seconds_count", provider="scripted") == 1
    assert get(metrics, "speakd_provider_first_byte_seconds_sum", provider="scripted") >= 0.04

    inner.fail_after = 0
    with pytest.raises(ProviderError):
        await drain(provider)
    inner.fail_after = 2
    with pytest.raises(ProviderError):
        await drain(provider)
    assert get(metrics, "speakd_provider_errors_total", provider="scripted", stage="before_audio") == 1
    assert get(metrics, "speakd_provider_errors_total", provider="scripted", stage="mid_stream") == 1

    # A flush or stop (the consumer closing, or its task cancelled) is no failure of the provider.
    inner.fail_after = None
    assert await drain(provider, stop_after=1) == 1
    inner.first_delay = 10
    task = asyncio.create_task(drain(provider))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert get(metrics, "speakd_provider_errors_total", provider="scripted", stage="before_audio") == 1
    assert get(metrics, "speakd_provider_errors_total", provider="scripted", stage="mid_stream") == 1
    assert get(metrics, "speakd_provider_first_byte_seconds_count", provider="scripted") == 3


# -- what is live, at scrape time -------------------------------------------------------------------


def fake_session(status: str, queued: int = 0, buffered_ms: int = 0, attached: bool = True):
    playout = SimpleNamespace(transport=object() if attached else None, buffered_ms=lambda: buffered_ms)
    return SimpleNamespace(record=SimpleNamespace(status=status), queue=deque(range(queued)), playout=playout)


def fake_service(sessions, *, connected=True, connects=1, pacer=None):
    ari = SimpleNamespace(connected=asyncio.Event(), connects=connects)
    if connected:
        ari.connected.set()
    return SimpleNamespace(live_sessions=lambda: sessions, ari=ari, media=SimpleNamespace(pacer=pacer))


async def test_live_state_is_read_at_scrape_time():
    sessions = [
        fake_session("initiating", queued=2),
        fake_session("active", queued=5, buffered_ms=40),
        fake_session("active", buffered_ms=1200),
        fake_session("active"),  # nothing in flight: not in the lead histogram
    ]
    metrics = Metrics()
    metrics.watch(fake_service(sessions, connects=3))
    assert get(metrics, "speakd_sessions", status="initiating") == 1
    assert get(metrics, "speakd_sessions", status="active") == 3
    assert get(metrics, "speakd_says_queued") == 7
    assert get(metrics, "speakd_says_queued_max_per_session") == 5
    assert get(metrics, "speakd_media_lead_seconds_bucket", le="0.02") == 0
    assert get(metrics, "speakd_media_lead_seconds_bucket", le="0.04") == 1
    assert get(metrics, "speakd_media_lead_seconds_bucket", le="1.0") == 1
    assert get(metrics, "speakd_media_lead_seconds_bucket", le="1.5") == 2
    assert get(metrics, "speakd_media_lead_seconds_bucket", le="+Inf") == 2
    assert get(metrics, "speakd_media_lead_seconds_gcount") == 2
    assert get(metrics, "speakd_media_lead_seconds_gsum") == pytest.approx(1.24)
    assert get(metrics, "speakd_ari_connected") == 1
    assert get(metrics, "speakd_ari_reconnects_total") == 2
    assert ("speakd_rtp_pacer_stalls_total", frozenset()) not in samples(metrics)  # no pacer: no pacer metrics
    assert ("speakd_webhook_backlog", frozenset()) not in samples(metrics)
    assert ("speakd_fleet_events_dropped_total", frozenset()) not in samples(metrics)

    # The state changes; the next scrape reads it anew.
    sessions.clear()
    pacer = SimpleNamespace(realtime=True, max_late_ms=3.5, stalls=4, send_errors=1, starts=2)
    metrics = Metrics()
    webhooks = SimpleNamespace(backlog=12, endpoints_failing=1, dropped=3)
    fleet_events = SimpleNamespace(dropped=2)
    metrics.watch(fake_service(sessions, connected=False, connects=0, pacer=pacer), webhooks, fleet_events)  # type: ignore[arg-type]
    assert get(metrics, "speakd_sessions", status="active") == 0
    assert get(metrics, "speakd_says_queued_max_per_session") == 0
    assert get(metrics, "speakd_media_lead_seconds_gcount") == 0
    assert get(metrics, "speakd_ari_connected") == 0
    assert get(metrics, "speakd_ari_reconnects_total") == 0
    assert get(metrics, "speakd_rtp_pacer_realtime") == 1
    assert get(metrics, "speakd_rtp_pacer_max_lateness_seconds") == pytest.approx(0.0035)
    assert get(metrics, "speakd_rtp_pacer_stalls_total") == 4
    assert get(metrics, "speakd_rtp_pacer_send_errors_total") == 1
    assert get(metrics, "speakd_rtp_pacer_starts_total") == 2
    assert get(metrics, "speakd_webhook_backlog") == 12
    assert get(metrics, "speakd_webhook_endpoints_failing") == 1
    assert get(metrics, "speakd_webhook_events_dropped_total") == 3
    assert get(metrics, "speakd_fleet_events_dropped_total") == 2


def test_openmetrics_is_served_when_asked_for():
    body, content_type = Metrics().exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")
    _, content_type = Metrics().exposition("*/*")
    assert content_type.startswith("text/plain; version=0.0.4")


# -- the playout's flush confirmation --------------------------------------------------------------


async def test_a_flush_of_audio_in_flight_is_timed_to_the_far_end_confirming_it():
    confirmed: list[float] = []
    sink = SinkTransport(speed=10)
    await sink.start()
    playout = Playout(on_flush_confirmed=confirmed.append)
    playout.attach(sink)
    try:
        assert await playout.put(playout.generation, b"A" * (2000 * BYTES_PER_MS))
        await asyncio.sleep(0.05)  # some of it sent, more held here
        playout.flush()
        # The far end reports the mark that follows its FLUSH: then nothing before it plays.
        await asyncio.wait_for(sink.wait_idle(), 5)
        assert len(confirmed) == 1 and confirmed[0] > 0
        flush_at = next(i for i, e in enumerate(sink.events) if e[0] == "flush")
        assert sink.events[flush_at + 1][0] == "mark"

        # Nothing in flight: nothing to confirm, no mark sent.
        events = len(sink.events)
        playout.flush()
        await asyncio.sleep(0.05)
        assert len(confirmed) == 1
        assert [e[0] for e in sink.events[events:]] == ["flush"]
    finally:
        await playout.aclose()
        await sink.aclose()


# -- the store check -------------------------------------------------------------------------------


async def test_the_store_check_writes_and_names_a_store_that_takes_no_write(tmp_path, monkeypatch):
    monkeypatch.setattr(ops, "STORE_CHECK_EVERY_S", 0.0)
    path = tmp_path / "s.sqlite3"
    async with SqliteStore(str(path)) as store:
        check = ops.StoreCheck(store)
        assert await check.writable() == (True, "")
        holder = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            holder.execute("BEGIN EXCLUSIVE")
            writable, why = await check.writable()
            assert not writable and "database is locked" in why
        finally:
            holder.close()
        assert await check.writable() == (True, "")
        assert store.db.execute("PRAGMA busy_timeout").fetchone()[0] == 5000  # put back after the check


async def test_a_hung_store_gets_one_check_at_a_time_and_answers_are_reused_for_a_second(monkeypatch):
    monkeypatch.setattr(ops, "STORE_CHECK_TIMEOUT_S", 0.05)
    loop = asyncio.get_running_loop()
    writes: list[asyncio.Future[None]] = []
    hung = True

    def write_health_row() -> asyncio.Future[None]:
        writes.append(loop.create_future())
        if not hung:
            writes[-1].set_result(None)
        return writes[-1]

    check = ops.StoreCheck(SimpleNamespace(write_health_row=write_health_row))  # type: ignore[arg-type]
    writable, why = await check.writable()
    assert not writable and "has not finished" in why
    assert await check.writable() == (writable, why)  # within a second: the same answer, no new write
    monkeypatch.setattr(ops, "STORE_CHECK_EVERY_S", 0.0)
    assert not (await check.writable())[0]
    assert len(writes) == 1  # the hung write is waited on again, not queued behind
    hung = False
    writes[0].set_result(None)
    assert await check.writable() == (True, "")
    assert len(writes) == 2  # a new write, once the hung one had finished


# -- the webhook backlog ---------------------------------------------------------------------------


async def test_the_webhook_backlog_counts_what_is_not_delivered_yet(tmp_path):
    def event(n: int) -> Event:
        return Event(EventType.SAY_FINISHED, stamp_of(T0 + n), "a", "sp-1", {"say_id": f"s{n}"})

    async with SqliteStore(str(tmp_path / "s.sqlite3")) as store, WebhookReceiver("secret") as receiver:
        await receiver.set_mode("down")
        targets = {"a": WebhookTarget(receiver.url, "secret")}
        sink = WebhookSink(store, targets, request_timeout=0.5, first_backoff=0.05, max_backoff=0.1)
        async with sink:
            for n in range(5):
                sink.offer(event(n))
            assert sink.backlog == 5  # in memory, then in the outbox
            await asyncio.sleep(0.2)
            assert sink.backlog == 5 and len(await store.outbox_pending()) == 5
            assert sink.endpoints_failing == 1
            await receiver.set_mode("healthy")
            await receiver.wait_for(lambda evs: len(evs) == 5, 5, "5 events")
            async with asyncio.timeout(5):
                while sink.backlog:
                    await asyncio.sleep(0.01)
            assert await store.outbox_pending() == []
            assert sink.endpoints_failing == 0
        # The next run counts what a previous one left in the outbox.
        await receiver.set_mode("down")
        async with WebhookSink(store, targets, request_timeout=0.5, first_backoff=0.05, max_backoff=0.1) as sink:
            sink.offer(event(9))
            await asyncio.sleep(0.1)
        async with WebhookSink(store, targets, request_timeout=0.5, first_backoff=0.05, max_backoff=0.1) as sink:
            assert sink.backlog == 1
