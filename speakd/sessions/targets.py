"""Audio targets: what a session attaches to, and the Asterisk objects it makes to do so.

A target validates its reference (before any record is written), attaches (creates its
Asterisk objects and returns the media transport open into them), and detaches (removes every object it
made, whatever state setup reached). Every object id starts with ``<app>-<session id>`` so a
daemon restarted after a crash finds leftovers without any record of them.

ARI errors are translated to domain errors here, at the edge.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import re
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from typing import Any

import structlog

from speakd.ari.client import AriClient
from speakd.ari.errors import AriError, AriNotFound, AriUnavailable
from speakd.ari.events import EventWaiters
from speakd.errors import Conflict, NotFound, ServiceUnavailable, SpeakdError
from speakd.events.model import StopReason
from speakd.media.transport import MediaTransport
from speakd.sessions.media import MediaPaths
from speakd.sessions.peers import NoSuchReference

log = structlog.get_logger(__name__)

STASIS_TIMEOUT = 5.0
DESTROY_TIMEOUT = 2.0


class SetupFailed(SpeakdError):
    """Attaching to the target failed (the call went away, Asterisk refused, ...)."""


@dataclass
class AttachContext:
    ari: AriClient
    waiters: EventWaiters
    app: str
    media: MediaPaths


def unreachable(exc: AriError) -> ServiceUnavailable:
    return ServiceUnavailable(f"Asterisk is not reachable: {exc.message}")


@contextlib.contextmanager
def setup_errors(what: str, stalled: str, timeout: float) -> Iterator[None]:
    """Setup failures as SetupFailed: ``what`` (e.g. "call 'x'") went away, Asterisk refused, or
    ``stalled`` (what did not happen) within ``timeout`` seconds."""
    try:
        yield
    except AriNotFound as exc:
        raise SetupFailed(f"{what} went away during setup ({exc.message})") from None
    except AriError as exc:
        raise SetupFailed(f"Asterisk refused the session setup: {exc}") from None
    except TimeoutError:
        raise SetupFailed(f"{stalled} within {timeout:g} s") from None


def object_prefix(app: str, session_id: str) -> str:
    return f"{app}-{session_id}"


_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def is_own_object(app: str, object_id: str) -> bool:
    """Whether an Asterisk object id was made by a speakd using ``app``.

    The session UUID must follow the app name exactly, so app "speakd" never claims the
    objects of another speakd whose app is "speakd-2" on the same Asterisk.
    """
    return re.fullmatch(rf"{re.escape(app)}-{_UUID}(?:-[A-Za-z0-9;-]+)?", object_id) is not None


class Target(abc.ABC):
    reference_type: str

    def __init__(self, reference_id: str, direction: str, session_id: str, app: str) -> None:
        self.reference_id = reference_id
        self.direction = direction
        self.session_id = session_id
        self.prefix = object_prefix(app, session_id)
        # The ids of the objects a target makes (not every target makes a bridge).
        self.media_id = f"{self.prefix}-media"
        self.bridge_id = f"{self.prefix}-bridge"
        # Opened by attach(); the owner closes it (release_media) whatever setup reached.
        self.transport: MediaTransport | None = None
        self._subscriptions: list[str] = []  # the event sources subscribed to, until detach

    # Why the session stops when a watched object ends (a call hangs up; a conference ends).
    ended_reason = StopReason.HANGUP

    @property
    def event_source(self) -> str:
        """Where the session's events are raised as ARI user events: ``channel:<id>`` or ``bridge:<id>``."""
        return f"channel:{self.reference_id}"

    @property
    def conflict_key(self) -> str:
        """What "one active session per reference" is about (after validate()): two names of
        the same conference must clash."""
        return self.reference_id

    @abc.abstractmethod
    async def validate(self, ari: AriClient, customer_id: str, owner_variable: str) -> None:
        """Raise InvalidRequest/NotFound/Conflict if a session cannot attach now."""

    @abc.abstractmethod
    async def attach(self, ctx: AttachContext) -> MediaTransport:
        """Create the Asterisk objects; return the open media transport into them."""

    async def release_media(self) -> None:
        if self.transport is not None:
            await self.transport.aclose()

    @abc.abstractmethod
    async def detach(self, ctx: AttachContext) -> None:
        """Remove every object this target made. Idempotent; never raises for 'already gone'."""

    @property
    @abc.abstractmethod
    def watched_ids(self) -> set[str]:
        """Ids of the channels/bridges whose end ends the session."""

    def on_event(self, event: dict[str, Any]) -> str | None:
        """An ARI event about one of ``watched_ids``; return a reason to end the session, or None."""
        return None

    async def reconcile(self, ari: AriClient) -> str | None:
        """On an ARI reconnect (events may have been missed): a reason to end the session, or None."""
        return None

    async def _subscribe(self, ctx: AttachContext, source: str) -> None:
        """Receive the events of an object outside our app (``channel:<id>``/``bridge:<id>``)."""
        await ctx.ari.post(f"applications/{ctx.app}/subscription", eventSource=source)
        self._subscriptions.append(source)

    async def _unsubscribe(self, ctx: AttachContext) -> None:
        sources, self._subscriptions = self._subscriptions, []
        for source in sources:
            with contextlib.suppress(AriError):
                await ctx.ari.delete(f"applications/{ctx.app}/subscription", eventSource=source)

    async def _whisper_on(self, ctx: AttachContext, channel_id: str, snoop_id: str, what: str) -> None:
        """A snoop on ``channel_id`` whispering in ``direction``, bridged with the media channel
        (``what``: the channel, as setup errors name it)."""
        snoop_entered = ctx.waiters.expect("StasisStart", snoop_id)
        try:
            with setup_errors(what, "Asterisk did not hand the snoop/media channel to speakd", STASIS_TIMEOUT):

                async def snoop() -> None:
                    await ctx.ari.post(
                        f"channels/{channel_id}/snoop",
                        app=ctx.app,
                        snoopId=snoop_id,
                        whisper=self.direction,
                        spy="none",
                    )
                    await asyncio.wait_for(snoop_entered, STASIS_TIMEOUT)

                await self._bridge_with_media(ctx, snoop_id, snoop())
        finally:
            ctx.waiters.discard("StasisStart", snoop_id)

    async def _bridge_with_media(self, ctx: AttachContext, channel_id: str, make_channel: Awaitable[None]) -> None:
        """Our mixing bridge joining ``channel_id`` (made by ``make_channel``) and the
        ExternalMedia channel, all three made at once."""
        bridge = ctx.ari.post("bridges", type="mixing", bridgeId=self.bridge_id, name=self.prefix)
        await all_of(make_channel, create_external_media(ctx, self, self.media_id), bridge)
        await ctx.ari.post(f"bridges/{self.bridge_id}/addChannel", channel=f"{channel_id},{self.media_id}")

    async def _remove_bridged(self, ctx: AttachContext, channels: dict[str, str]) -> None:
        """Undo :meth:`_bridge_with_media` (``channels``: id -> what, besides the media channel)
        and any subscription."""
        await asyncio.gather(
            remove_and_wait(ctx, f"bridges/{self.bridge_id}", "bridge"),
            *(hang_up_and_wait(ctx, channel_id, what) for channel_id, what in channels.items()),
            hang_up_and_wait(ctx, self.media_id, "media channel"),
        )
        await self._unsubscribe(ctx)


async def all_of(*steps: Any) -> None:
    """Run setup steps at once and let every one finish before raising the first failure:
    an object (or media path) a step was still making when another failed would otherwise
    appear after teardown and be orphaned."""
    for result in await asyncio.gather(*steps, return_exceptions=True):
        if isinstance(result, BaseException):
            raise result


async def cleanup_call(coro: Any, what: str) -> bool:
    """Run a clean-up call; an object that is already gone is the goal, not an error.

    Returns True if the object existed (and was asked to go)."""
    try:
        await coro
    except AriNotFound:
        return False
    except AriError as exc:
        log.warning("cleanup_failed", what=what, error=str(exc))
        return False
    return True


async def hang_up_and_wait(ctx: AttachContext, channel_id: str, what: str) -> bool:
    """Hang a channel up and wait until it is gone (:func:`remove_and_wait`).

    Polling, not an event: a channel that already left our app (a snoop whose target hung
    up) is destroyed without a ChannelDestroyed reaching us.
    """
    return await remove_and_wait(ctx, f"channels/{channel_id}", what)


async def remove_and_wait(ctx: AttachContext, path: str, what: str) -> bool:
    """DELETE returns before the object is gone (a bridge lingers while its channels leave it):
    poll until ARI no longer lists it (bounded). True if this removed it and it went."""
    if not await cleanup_call(ctx.ari.delete(path), what):
        return False
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DESTROY_TIMEOUT
    while loop.time() < deadline:
        try:
            await ctx.ari.get(path)
        except AriNotFound:
            return True
        except AriError:
            break
        await asyncio.sleep(0.005)
    log.warning("cleanup_slow", what=what, path=path)
    return False


async def channel_owner(ari: AriClient, channel_id: str, variable: str) -> str:
    """The customer a channel names as its owner (``variable``), or "" if none."""
    if not variable:
        return ""
    try:
        reply = await ari.get(f"channels/{channel_id}/variable", variable=variable)
    except AriNotFound:
        return ""  # not set (or the channel is gone: the caller's own GET reports that)
    return (reply or {}).get("value", "") or ""


async def check_participants_owned(
    ari: AriClient, channel_ids: list[str], variable: str, customer_id: str, what: str
) -> None:
    """404 if any participant names another customer as its owner."""
    if not variable or not channel_ids:
        return
    owners = await asyncio.gather(*(channel_owner(ari, c, variable) for c in channel_ids))
    if any(owner and owner != customer_id for owner in owners):
        raise NotFound(f"{what} is not a conference of this customer")


async def create_external_media(ctx: AttachContext, target: Target, channel_id: str) -> None:
    """An ExternalMedia channel in our app with its media transport open (``target.transport``).

    A WebSocket media channel enters Stasis only once speakd has connected to it.
    """
    entered = ctx.waiters.expect("StasisStart", channel_id)
    try:
        async with ctx.media.changing():
            channel = await ctx.ari.post(
                "channels/externalMedia", app=ctx.app, channelId=channel_id, **ctx.media.external_media_params()
            )
        target.transport = await ctx.media.open(channel, speaking_id=target.session_id)
        await asyncio.wait_for(entered, STASIS_TIMEOUT)
    finally:
        ctx.waiters.discard("StasisStart", channel_id)


class CallTarget(Target):
    """A live call: ``reference_id`` is the Asterisk channel id of the call leg.

    A snoop channel on it whispers in ``direction`` (out: the party on that channel hears it;
    in: its bridged peer hears it; both), bridged with the ExternalMedia channel.

    Whisper audio is only mixed into frames that flow (asterisk#1966): a leg on which nothing
    is sent carries no whisper. Real phones send RTP continuously, including silence, so
    speakd adds nothing; an application holding a leg idle should play silence on it.
    """

    reference_type = "call"

    def __init__(self, reference_id: str, direction: str, session_id: str, app: str) -> None:
        super().__init__(reference_id, direction, session_id, app)
        self.snoop_id = f"{self.prefix}-snoop"

    @property
    def watched_ids(self) -> set[str]:
        return {self.reference_id, self.snoop_id, self.media_id, self.bridge_id}

    async def validate(self, ari: AriClient, customer_id: str, owner_variable: str) -> None:
        path = f"channels/{self.reference_id}"
        try:
            channel, owner = await asyncio.gather(ari.get(path), channel_owner(ari, self.reference_id, owner_variable))
        except AriNotFound:
            raise NoSuchReference(
                f"reference_id '{self.reference_id}' is not a live call: Asterisk has no channel with that id"
            ) from None
        except AriUnavailable as exc:
            raise unreachable(exc) from None
        if owner and owner != customer_id:
            # Another customer's call: indistinguishable from a call that does not exist.
            raise NotFound(f"reference_id '{self.reference_id}' is not a call of this customer")
        if channel.get("state") != "Up":
            raise Conflict(
                f"call '{self.reference_id}' is not answered (channel state {channel.get('state')!r}); "
                "create the session once the call is up"
            )

    async def attach(self, ctx: AttachContext) -> MediaTransport:
        # Events for the call leg (hangup) come only if we subscribe: it is not in our app.
        await self._subscribe(ctx, f"channel:{self.reference_id}")
        await self._whisper_on(ctx, self.reference_id, self.snoop_id, f"call '{self.reference_id}'")
        assert self.transport is not None
        return self.transport

    async def detach(self, ctx: AttachContext) -> None:
        await self._remove_bridged(ctx, {self.snoop_id: "snoop channel"})
