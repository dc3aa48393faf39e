"""The daemon: owns every long-lived resource and task, in the order they depend on each other.

Start: store -> this run's lock (held to the end: other nodes watch it) -> this node registered (and
its heartbeat) -> providers (Piper loads) -> ARI client ->
media paths (the RTP pacer process, if rtp) -> event bus and its ways out (the fleet link: events to
and from the other nodes sharing the store; webhooks deliver what the last run left; ARI user events)
-> ARI commands -> this run's writes fenced, this node's stale records stopped -> the other runs
watched (speakd.sessions.liveness) -> ARI events task -> HTTP -> FastAGI (if [agi] listen).
With systemd (``Type=notify``): READY=1 once the API listens and ARI is connected (the first
connection may come after the API is up: until then the API answers and creates are 503);
STATUS= with the live sessions and the ARI connection; WATCHDOG=1 from the event loop;
STOPPING=1 at the shutdown trigger. SIGHUP reloads credentials and the log level
(:mod:`speakd.reload`).
Stop (on the shutdown trigger): FastAGI stops taking connections, ARI commands stop, live sessions are
stopped (their Asterisk objects removed; an AGI script waiting for a say reports it interrupted) while
the API still answers, their last events go out (WebSocket clients, ARI), AGI connections and HTTP
stop, the tasks are cancelled and awaited, then the resources close in reverse order (the webhooks
before the store: their queue goes into the outbox while it is still open).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from aiohttp import web

from speakd.agi import AgiScripts, AgiServer
from speakd.api import create_app
from speakd.api.auth import Authenticator
from speakd.api.carry import Carrier
from speakd.api.events_ws import EventHub
from speakd.ari.client import AriClient
from speakd.ari_commands import AriCommands
from speakd.config import Config
from speakd.events import EventBus
from speakd.events.ari_user_events import AriUserEventSink
from speakd.events.fleet import FleetEventSink
from speakd.events.webhooks import WebhookSink
from speakd.media.loudness import VoiceLevels
from speakd.metrics import Metrics
from speakd.providers import ProviderRegistry
from speakd.providers.cache import open_cache
from speakd.providers.fallback import Failover, FailoverSettings
from speakd.reload import ConfigReloader
from speakd.sessions.liveness import LivenessWatch
from speakd.sessions.media import MediaPaths
from speakd.sessions.nodes import NodeRegistry
from speakd.sessions.peers import Peers
from speakd.sessions.prompts import PromptRenderer
from speakd.sessions.service import SpeakingService
from speakd.store import open_store
from speakd.systemd_notify import ServiceNotifier
from speakd.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

ShutdownTrigger = Callable[[], Awaitable[None]]


def signal_trigger() -> ShutdownTrigger:
    async def wait() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    return wait


# glibc's malloc parameters (mallopt), and what speakd sets them to.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
# Blocks from this size up get pages of their own, given back when freed. Fixed: glibc otherwise
# raises it (up to 32 MB) each time such a block is freed, and Piper's tensors (1-10 MB) then come
# from heaps that keep their peak (four long says at once: 284 MB over loaded at the peak, 224 MB
# kept). 1 MB, not less: Piper's smaller tensors stay in the heap, whose freed pages its workers
# give back after each sentence (piper_model.return_freed_heap); 256 kB cost Piper a tenth more
# CPU in fresh pages, 2 MB and up let the heap's peak grow (184 MB).
MMAP_THRESHOLD_BYTES = 1024 * 1024
MALLOC_ARENAS = 1  # one heap for all threads (glibc's default: 8 per core, each keeping its peak)


def limit_malloc() -> None:
    """Keep resident memory near what is in use. Called before any thread exists (heaps are
    handed to threads as they start); with another C library, nothing."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_ARENA_MAX, MALLOC_ARENAS)
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    mallopt(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD_BYTES)  # free heap above this goes back at once


def set_priority(nice: int) -> None:
    """Run at ``nice`` if allowed. Called before any thread exists: threads inherit it."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if nice >= current:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
        log.info("cpu_priority", nice=nice)
    except OSError as exc:
        log.warning(
            "cpu_priority",
            nice=current,
            reason=f"{exc}; grant CAP_SYS_NICE or set Nice={nice} in the systemd unit",
        )


@dataclass
class DaemonStatus:
    """What ``systemctl status`` shows (systemd's STATUS=): cheap, read once a second."""

    ari_url: str
    phase: str = "starting"  # -> "listening" (API up) -> "stopping"
    service: SpeakingService | None = None
    ari: AriClient | None = None

    def line(self) -> str:
        if self.phase == "starting" or self.service is None or self.ari is None:
            return "starting"
        live = self.service.live_count
        sessions = f"{live} live session{'' if live == 1 else 's'}"
        if self.phase == "stopping":
            return f"stopping: ending {sessions}"
        if self.ari.connected.is_set():
            return f"{sessions}; connected to Asterisk"
        return f"{sessions}; not connected to Asterisk (ARI {self.ari_url}), retrying"


async def _ready_when_connected(ari: AriClient, notifier: ServiceNotifier) -> None:
    await ari.connected.wait()
    notifier.ready()


async def run(
    config: Config, shutdown_trigger: ShutdownTrigger | None = None, config_path: str | os.PathLike[str] | None = None
) -> None:
    """Run until the shutdown trigger; ``config_path`` is the file SIGHUP reads again."""
    shutdown_trigger = shutdown_trigger or signal_trigger()
    loop = asyncio.get_running_loop()
    # SIGHUP from now on asks for a reload (its default action would end the process); the
    # reload itself runs once everything it touches exists.
    reload_wanted = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, reload_wanted.set)
    status = DaemonStatus(config.ari.url)
    notifier = ServiceNotifier.from_environ(status.line)
    limit_malloc()
    set_priority(config.server.nice)
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(loop.remove_signal_handler, signal.SIGHUP)
        notifier.start()
        stack.push_async_callback(notifier.aclose)  # last: the watchdog is fed until the very end
        store = await stack.enter_async_context(open_store(config.store))
        # Held until the store closes (after every session is stopped): other nodes see this run live.
        run_lock = await stack.enter_async_context(store.run_lock())
        node_url = config.node.url_with(config.server)
        # Registered before the stale sessions are stopped; its heartbeat ends before the store closes.
        nodes = await stack.enter_async_context(NodeRegistry(store, config.node.id, node_url, run_lock.key))
        metrics = Metrics(config.node.id, node_url)
        providers = ProviderRegistry.from_config(config.providers)
        providers.wrap(metrics.measure_provider)
        # Outermost: a hit asks no provider and counts in no provider's metrics.
        cache = await open_cache(config.cache)
        if cache is not None:
            providers.wrap(cache.wrap)
            metrics.watch_cache(cache)
        stack.push_async_callback(providers.aclose)
        await providers.start()

        ari = await stack.enter_async_context(
            AriClient(
                config.ari.url,
                config.ari.username,
                config.ari.password,
                config.ari.app,
                request_timeout=config.ari.request_timeout,
                max_backoff=config.ari.reconnect_max_backoff,
            )
        )
        media = await stack.enter_async_context(
            MediaPaths(
                ari,
                mode=config.media.transport,
                codec=config.media.codec,
                rtp_bind=(config.rtp.bind_host, config.rtp.port),
                rtp_external_host=config.rtp.external_host,
                realtime_priority=config.rtp.realtime_priority,
                on_pacer_stats=metrics.observe_pacer_stats,
            )
        )
        events = EventBus()
        hub = EventHub()
        events.add_sink(hub)
        events.add_sink(metrics)
        # The other nodes' sessions' events for this node's WebSocket clients, and this node's for
        # theirs (a store no other node shares: nothing); also whose webhooks this node delivers.
        fleet = store.fleet(nodes.owner)
        fleet_events = FleetEventSink(fleet, hub)
        await stack.enter_async_context(fleet)
        events.add_sink(await stack.enter_async_context(fleet_events))
        # On the bus before recover() (its speaking_stopped events are delivered too); closed
        # after everything in this block, so the events of service.shutdown() reach the
        # outbox, and before the store closes.
        webhooks = await stack.enter_async_context(WebhookSink.from_config(store, config.webhooks, fleet))
        events.add_sink(webhooks)
        user_events = AriUserEventSink(ari, config.ari.app)
        if config.ari.user_events:
            events.add_sink(user_events)
        user_events.start()
        stack.push_async_callback(user_events.aclose)  # after the sessions' last events (on leaving the stack)
        service = SpeakingService(
            store=store,
            ari=ari,
            providers=providers,
            media=media,
            owner_variable=config.auth.customer_variable,
            events=events,
            lead_ms=config.media.lead_ms,
            mark_every_ms=config.media.mark_every_ms,
            levels=VoiceLevels(config.media.loudness_dbfs),
            owner=nodes.owner,
            peers=Peers(store, nodes.owner),
            failover=metrics.watch_failover(Failover(FailoverSettings.of(config.tts), providers.get))
            if config.tts.fallback
            else None,
        )
        commands = AriCommands(
            service,
            user_events.raise_event,
            operator_customer_id=config.ari.operator_customer_id,
            default_provider=config.tts.default_provider,
        )
        service.user_event_handler = commands.offer
        service.on_flush_confirmed = metrics.flush_to_silence.observe
        service.on_underrun = metrics.say_underruns.inc
        metrics.watch(service, webhooks, fleet_events)
        commands.start()
        stack.push_async_callback(commands.aclose)
        # Where other nodes share the store, one may end this run's sessions if it finds it lost:
        # this run then writes only the sessions it still owns. Alone, every write is plain.
        if run_lock.shared:
            store.fence(nodes.owner.run_id, service.stop_fenced)
        await service.recover()
        await stack.enter_async_context(
            LivenessWatch(
                store,
                run_lock,
                nodes.owner,
                live_ids=lambda: [live.id for live in service.sessions],
                stop_fenced=service.stop_fenced,
                publish_lost=service.publish_lost,
            )
        )

        status.service, status.ari = service, ari
        tasks = [
            asyncio.create_task(ari.run_events(service.on_event, service.on_ari_connected), name="speakd-ari-events"),
        ]
        agi: AgiServer | None = None
        if config.agi.listen:
            scripts = AgiScripts(
                service, default_customer=config.agi.customer_id, default_provider=config.tts.default_provider
            )
            agi = AgiServer(*config.agi.address(), scripts.run)
        authenticator = Authenticator(config.auth.access_keys, config.auth.jwt_secret)
        # Requests for other nodes' sessions go to them on its connections; closed after HTTP stops.
        carrier = await stack.enter_async_context(Carrier(config.node.id))
        reloader = ConfigReloader(config_path, config, authenticator, providers, notifier, reload_wanted)
        reloader.start()
        stack.push_async_callback(reloader.aclose)  # before the providers close (LIFO)
        runner = web.AppRunner(
            create_app(
                service,
                authenticator,
                config.tts.default_provider,
                hub,
                metrics,
                nodes,
                carrier,
                PromptRenderer(providers, cache, config.media.codec, service.lexicons),  # type: ignore[arg-type]
            ),
            access_log=None,
            handle_signals=False,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, config.server.host, config.server.port)
            await site.start()
            if agi is not None:
                await agi.start()
            status.phase = "listening"
            tasks.append(asyncio.create_task(_ready_when_connected(ari, notifier), name="speakd-systemd-ready"))
            log.info(
                "speakd_ready",
                listen=f"{config.server.host}:{config.server.port}",
                media_transport=config.media.transport,
                ari=config.ari.url,
                app=config.ari.app,
                providers=providers.names(),
                default_provider=config.tts.default_provider,
                agi=f"{agi.host}:{agi.bound_port}" if agi is not None else "off",  # the real port, also for :0
            )
            await shutdown_trigger()
            status.phase = "stopping"
            notifier.stopping()
            log.info("speakd_stopping")
        finally:
            if agi is not None:
                agi.stop_listening()
            # Sessions first, while the API still answers (creates are refused meanwhile), so
            # event clients get each session's speaking_stopped before their socket closes.
            await commands.aclose()
            await service.shutdown()  # says a script waits for end here: it reports and returns
            if agi is not None:
                await agi.aclose()
            await hub.aclose()
            await runner.shutdown()
            await runner.cleanup()
            await cancel_and_wait(*tasks)
        log.info("speakd_stopped")
