"""Catching up with Asterisk after speakd could not see it.

:func:`reconcile` runs on every ARI (re)connect, before speakd reports itself connected: events
may have been missed meanwhile, so live sessions whose objects are gone are stopped, and objects
speakd made that no live session owns (a crashed run's) are removed. :func:`stop_stale_sessions`
runs once at start-up: sessions a previous run of this node left unfinished are stopped in the
store (their objects go at the first connect).
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from speakd.ari.errors import AriError
from speakd.events import StopReason
from speakd.sessions.live import LiveSessions, SessionState
from speakd.sessions.targets import AttachContext, cleanup_call, hang_up_and_wait, is_own_object
from speakd.store.interface import Store
from speakd.store.records import Speaking, Status, now_stamp

log = structlog.get_logger(__name__)

StopSoon = Callable[[str, StopReason, str], None]
# (record, event source, reason, detail): the speaking_stopped event of a stale session.
PublishStopped = Callable[[Speaking, str, StopReason, str], None]


async def reconcile(ctx: AttachContext, sessions: LiveSessions, stop_soon: StopSoon) -> None:
    """End sessions whose objects are gone; remove our orphans."""
    ari = ctx.ari
    try:
        channels = {c["id"] for c in await ari.get("channels")}
        bridges = {b["id"] for b in await ari.get("bridges")}
    except AriError as exc:
        log.warning("reconcile_failed", error=str(exc))
        return
    present = channels | bridges
    for live in sessions:
        if live.state is not SessionState.ACTIVE:  # still attaching, or already stopping
            continue
        if missing := [i for i in live.target.watched_ids if i not in present]:
            # Its objects went while speakd could not see Asterisk (a restart takes them all).
            detail = f"gone while ARI was disconnected: {', '.join(sorted(missing))}"
            stop_soon(live.id, StopReason.ASTERISK_GONE, detail)
        elif detail := await live.target.reconcile(ari):
            stop_soon(live.id, live.target.ended_reason, f"{detail} (seen on reconnect)")
    mine = sessions.watched_ids()
    orphans = [("bridges", b) for b in bridges if is_own_object(ctx.app, b) and b not in mine]
    orphans += [("channels", c) for c in channels if is_own_object(ctx.app, c) and c not in mine]
    if not orphans:
        return
    async with ctx.media.changing():  # among them media channels
        for kind, object_id in orphans:
            if kind == "channels":
                removed = await hang_up_and_wait(ctx, object_id, "orphan channel")
            else:
                removed = await cleanup_call(ari.delete(f"{kind}/{object_id}"), f"orphan bridge {object_id}")
            if removed:
                log.info("orphan_removed", kind=kind, id=object_id)


async def stop_stale_sessions(store: Store, node_id: str, publish: PublishStopped) -> None:
    """Sessions a previous run of this node left unfinished (and those from before nodes):
    stopped in the store, and a speaking_stopped each. Other nodes' live sessions are theirs."""
    for record in await store.stop_unfinished(node_id, now_stamp()):
        log.info("stale_session_stopped", speaking_id=record.id, was=record.status)
        record.status = Status.STOPPED
        source = f"channel:{record.reference_id}" if record.reference_type == "call" else ""
        publish(record, source, StopReason.ERROR, "speakd restarted")
