"""Conference targets: speaking into an ARI mixing bridge or a dialplan ConfBridge room.

``reference_type: confbridge`` names a conference by ``reference_id``, resolved in this order:

1. an ARI bridge with that id (``GET /bridges/{id}``):
   * a Stasis mixing bridge (``bridge_class: stasis``, made by any ARI application) ->
     :class:`BridgeConferenceTarget`: the ExternalMedia channel joins it directly;
   * the bridge of a dialplan ConfBridge room (``creator: ConfBridge``) -> that room, as below;
   * any other bridge (a Dial()ed call, a holding bridge) -> 400;
2. else a live ConfBridge room of that name (its bridge shows in ``GET /bridges`` with
   ``creator: ConfBridge`` and ``name: <room>``) -> :class:`ConfBridgeTarget`: an announcer
   ``Local/<room>@speakd-confbridge/n`` whose ``;2`` half joins the room with the quiet
   ``speakd_announcer`` user profile, its ``;1`` half bridged with the ExternalMedia channel;
3. else 400. A conference with no participant in it is a 409.

With ``member`` (a participant's channel id, either kind), the session speaks to or through that
one participant (:class:`MemberTarget`); ``direction`` means for it what it means on a call.

How the end of a conference is seen (events, no polling):

* ARI bridge: speakd subscribes to the bridge; ``ChannelLeftBridge`` leaving only speakd's
  channel, or ``BridgeDestroyed``, ends the session.
* ConfBridge room: ARI cannot subscribe to a bridge outside Stasis ("Event source does not
  exist"), but Asterisk rewrites ``BRIDGEPEER`` on every member of a bridge whenever its
  membership changes (a comma list of the other members' channel names). speakd subscribes
  to its announcer's ``;2`` half and ends the session when no one but ConfBridge's own
  ``CBAnn/`` playback channel is left, so the announcer never keeps an empty room alive.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from speakd.ari.client import AriClient
from speakd.ari.errors import AriError, AriNotFound, AriUnavailable
from speakd.errors import Conflict, InvalidRequest
from speakd.events.model import StopReason
from speakd.media.transport import MediaTransport
from speakd.sessions.peers import NoSuchReference
from speakd.sessions.targets import (
    STASIS_TIMEOUT,
    AttachContext,
    SetupFailed,
    Target,
    check_participants_owned,
    create_external_media,
    hang_up_and_wait,
    is_own_object,
    setup_errors,
    unreachable,
)

log = structlog.get_logger(__name__)

ANNOUNCER_CONTEXT = "speakd-confbridge"
JOIN_TIMEOUT = 5.0
CONFBRIDGE_CREATOR = "ConfBridge"
CONFBRIDGE_PLAYBACK_PREFIX = "CBAnn/"  # ConfBridge's own announcement channel, a member of every room


class _ResolvedConference(Target):
    """A conference as :class:`ConferenceTarget` resolved it: :meth:`check` the bridge found,
    then :meth:`validate`."""

    reference_type = "confbridge"

    def __init__(self, reference_id: str, direction: str, session_id: str, app: str) -> None:
        super().__init__(reference_id, direction, session_id, app)
        self.participants: list[str] = []

    def check(self, bridge: dict[str, Any]) -> None:
        self.participants = list(bridge.get("channels") or [])
        if not self.participants:
            raise Conflict(
                f"conference '{self.reference_id}' has no participant; create the session once one has joined"
            )

    async def validate(self, ari: AriClient, customer_id: str, owner_variable: str) -> None:
        # The owner variable of the call legs, applied to the participants check() recorded.
        await check_participants_owned(
            ari, self.participants, owner_variable, customer_id, f"conference '{self.reference_id}'"
        )


class BridgeConferenceTarget(_ResolvedConference):
    """An ARI mixing bridge (made by any ARI application), ``reference_id``: the ExternalMedia
    channel joins it. The bridge is not ours: speakd never makes or deletes one here."""

    def __init__(self, reference_id: str, direction: str, session_id: str, app: str) -> None:
        super().__init__(reference_id, direction, session_id, app)
        self._joined: asyncio.Future[None] | None = None

    @property
    def watched_ids(self) -> set[str]:
        return {self.reference_id, self.media_id}

    def check(self, bridge: dict[str, Any]) -> None:
        if bridge.get("bridge_type") != "mixing":
            raise InvalidRequest(
                f"bridge '{self.reference_id}' is a {bridge.get('bridge_type')} bridge, not a conference (mixing)"
            )
        super().check(bridge)

    def _left_alone(self, bridge: dict[str, Any]) -> str | None:
        """Why the session ends if no one but speakd's media channel is in ``bridge``."""
        if set(bridge.get("channels") or []) <= {self.media_id}:
            return "conference has no participant left"
        return None

    def on_event(self, event: dict[str, Any]) -> str | None:
        kind = event.get("type")
        bridge = event.get("bridge") or {}
        if bridge.get("id") != self.reference_id or kind not in ("ChannelEnteredBridge", "ChannelLeftBridge"):
            return None
        joined = kind == "ChannelEnteredBridge" and (event.get("channel") or {}).get("id") == self.media_id
        if joined and self._joined is not None and not self._joined.done():
            self._joined.set_result(None)
        return self._left_alone(bridge)

    async def reconcile(self, ari: AriClient) -> str | None:
        try:
            bridge = await ari.get(f"bridges/{self.reference_id}")
        except AriError:
            return None  # gone: the watched-ids check ends the session; unreachable: try next time
        return self._left_alone(bridge)

    async def attach(self, ctx: AttachContext) -> MediaTransport:
        self._joined = asyncio.get_running_loop().create_future()
        conference = f"conference '{self.reference_id}'"
        with setup_errors(conference, f"the media channel did not join {conference}", STASIS_TIMEOUT):
            # The bridge is another app's: its events reach us only if we subscribe.
            await self._subscribe(ctx, f"bridge:{self.reference_id}")
            await create_external_media(ctx, self, self.media_id)
            await ctx.ari.post(f"bridges/{self.reference_id}/addChannel", channel=self.media_id)
            await asyncio.wait_for(self._joined, STASIS_TIMEOUT)
        assert self.transport is not None
        return self.transport

    async def detach(self, ctx: AttachContext) -> None:
        # Hanging up our channel takes it out of the bridge; the bridge is not ours to delete.
        await hang_up_and_wait(ctx, self.media_id, "media channel")
        await self._unsubscribe(ctx)


class ConfBridgeTarget(_ResolvedConference):
    """A dialplan ConfBridge room, joined by speakd's announcer Local channel."""

    def __init__(self, reference_id: str, direction: str, session_id: str, app: str, room: str) -> None:
        super().__init__(reference_id, direction, session_id, app)
        self.room = room
        self.conf_bridge_id = ""  # the room's bridge, as resolved (informational)
        self.announcer_id = f"{self.prefix}-announcer"  # ;1, in our app, bridged with the media
        self.member_id = f"{self.prefix}-announcer2"  # ;2, the participant inside the room
        self._joined: asyncio.Future[list[str]] | None = None

    @property
    def watched_ids(self) -> set[str]:
        return {self.announcer_id, self.member_id, self.media_id, self.bridge_id}

    def check(self, bridge: dict[str, Any]) -> None:
        self.conf_bridge_id = bridge["id"]
        super().check(bridge)

    def on_event(self, event: dict[str, Any]) -> str | None:
        if event.get("type") != "ChannelVarset" or event.get("variable") != "BRIDGEPEER":
            return None
        if (event.get("channel") or {}).get("id") != self.member_id:
            return None
        peers = [p for p in (event.get("value") or "").split(",") if p and not p.startswith(CONFBRIDGE_PLAYBACK_PREFIX)]
        if self._joined is not None and not self._joined.done():
            self._joined.set_result(peers)
        if not peers:
            return f"conference '{self.room}' has no participant left"
        return None

    async def reconcile(self, ari: AriClient) -> str | None:
        try:
            reply = await ari.get(f"channels/{self.member_id}/variable", variable="BRIDGEPEER")
        except AriError:
            return None
        return self.on_event(
            {
                "type": "ChannelVarset",
                "variable": "BRIDGEPEER",
                "value": (reply or {}).get("value", ""),
                "channel": {"id": self.member_id},
            }
        )

    async def attach(self, ctx: AttachContext) -> MediaTransport:
        self._joined = asyncio.get_running_loop().create_future()
        entered = ctx.waiters.expect("StasisStart", self.announcer_id)
        conference = f"conference '{self.room}'"
        try:
            with setup_errors(conference, f"speakd's announcer did not join {conference}", JOIN_TIMEOUT):

                async def announcer() -> None:
                    # Created, not yet dialled: we subscribe to the ;2 half before it joins the room,
                    # so its first BRIDGEPEER (= joined, and who is there) cannot be missed.
                    await ctx.ari.post(
                        "channels/create",
                        endpoint=f"Local/{self.room}@{ANNOUNCER_CONTEXT}/n",
                        app=ctx.app,
                        channelId=self.announcer_id,
                        otherChannelId=self.member_id,
                    )
                    await asyncio.wait_for(entered, STASIS_TIMEOUT)
                    await self._subscribe(ctx, f"channel:{self.member_id}")

                await self._bridge_with_media(ctx, self.announcer_id, announcer())
                await ctx.ari.post(f"channels/{self.announcer_id}/dial", timeout=int(JOIN_TIMEOUT))
                peers = await asyncio.wait_for(self._joined, JOIN_TIMEOUT)
        finally:
            ctx.waiters.discard("StasisStart", self.announcer_id)
        if not peers:
            # The room emptied between validation and the join: the announcer made a new one.
            raise SetupFailed(f"{conference} ended before speakd joined it")
        assert self.transport is not None
        return self.transport

    async def detach(self, ctx: AttachContext) -> None:
        await self._remove_bridged(
            ctx, {self.announcer_id: "announcer channel", self.member_id: "announcer channel (room side)"}
        )


class MemberTarget(_ResolvedConference):
    """One participant (``member``, its channel in the conference) of either kind: a snoop on its
    channel whispers in ``direction``, as on a call, bridged with the media channel; the
    conference's own bridge is left alone.

    * ``out``: the speech rides on what is written to the member (the mix it hears): only it hears.
    * ``in``: the speech rides on what the member sends into the conference. A conference mixer
      (softmix: ARI mixing bridges and ConfBridge rooms alike) never sends a member its own audio
      back, so every participant but the member hears it. A member muted in the conference
      (ConfBridge mute, ARI mute ``in``) mutes the speech with it.
    * ``both``: both, so everyone hears it.

    The member leaving the conference ends the session as a hangup does: Asterisk clears a
    channel's ``BRIDGEPEER`` when it leaves its bridge (seen on both kinds), and its hangup ends
    the snoop.
    """

    def __init__(self, reference_id: str, direction: str, session_id: str, app: str, member: str) -> None:
        super().__init__(reference_id, direction, session_id, app)
        self.member = member
        self.snoop_id = f"{self.prefix}-snoop"
        self.conf_bridge_id = reference_id  # the conference's bridge, as resolved
        self._app = app

    @property
    def watched_ids(self) -> set[str]:
        return {self.member, self.snoop_id, self.media_id, self.bridge_id}

    def check(self, bridge: dict[str, Any]) -> None:
        self.conf_bridge_id = bridge["id"]
        super().check(bridge)
        if self.member not in self.participants or is_own_object(self._app, self.member):
            raise InvalidRequest(
                f"member '{self.member}' is not a participant of conference '{self.reference_id}': "
                "name the channel id of a participant in it (GET /ari/bridges/{id} lists them as channels)"
            )

    def _left(self) -> str:
        return f"member '{self.member}' left conference '{self.reference_id}'"

    def on_event(self, event: dict[str, Any]) -> str | None:
        if (
            event.get("type") == "ChannelVarset"
            and event.get("variable") == "BRIDGEPEER"
            and not event.get("value")
            and (event.get("channel") or {}).get("id") == self.member
        ):
            return self._left()
        return None

    async def reconcile(self, ari: AriClient) -> str | None:
        try:
            bridge = await ari.get(f"bridges/{self.conf_bridge_id}")
        except AriNotFound:
            return self._left()
        except AriError:
            return None
        return None if self.member in (bridge.get("channels") or []) else self._left()

    async def attach(self, ctx: AttachContext) -> MediaTransport:
        # The member's channel is not in our app: its BRIDGEPEER and hangup come only if we subscribe.
        await self._subscribe(ctx, f"channel:{self.member}")
        await self._whisper_on(
            ctx, self.member, self.snoop_id, f"member '{self.member}' of conference '{self.reference_id}'"
        )
        assert self.transport is not None
        return self.transport

    async def detach(self, ctx: AttachContext) -> None:
        await self._remove_bridged(ctx, {self.snoop_id: "snoop channel"})


async def find_confbridge_room(ari: AriClient, room: str) -> dict[str, Any] | None:
    """The bridge of the live ConfBridge room named `room`, if any."""
    for bridge in await ari.get("bridges"):
        if bridge.get("creator") == CONFBRIDGE_CREATOR and bridge.get("name") == room:
            return bridge
    return None


class ConferenceTarget(Target):
    """``reference_type: confbridge``: resolves ``reference_id`` at validation (see the module doc)
    and then acts as the :class:`BridgeConferenceTarget` or :class:`ConfBridgeTarget` it found."""

    reference_type = "confbridge"

    def __init__(self, reference_id: str, direction: str, session_id: str, app: str, member: str = "") -> None:
        if direction != "both" and not member:
            raise InvalidRequest(
                f"'direction' must be 'both' on a conference (everyone in it hears the speech); got '{direction}'. "
                "To speak to one participant ('out') or to all but one ('in'), name it in 'member'"
            )
        super().__init__(reference_id, direction, session_id, app)
        self._app = app
        self.member = member
        # A member's session ends when it leaves, as a call's at its hangup.
        self.ended_reason = StopReason.HANGUP if member else StopReason.CONFERENCE_ENDED
        self.resolved: BridgeConferenceTarget | ConfBridgeTarget | MemberTarget | None = None

    def _inner(self) -> BridgeConferenceTarget | ConfBridgeTarget | MemberTarget:
        if self.resolved is None:
            raise RuntimeError("conference target used before validate()")
        return self.resolved

    @property
    def watched_ids(self) -> set[str]:
        return self.resolved.watched_ids if self.resolved is not None else set()

    @property
    def event_source(self) -> str:
        """The conference's own bridge (an ARI bridge, or the ConfBridge room's); a member's channel."""
        if self.member:
            return f"channel:{self.member}"
        if isinstance(self.resolved, ConfBridgeTarget) and self.resolved.conf_bridge_id:
            return f"bridge:{self.resolved.conf_bridge_id}"
        return f"bridge:{self.reference_id}"

    async def validate(self, ari: AriClient, customer_id: str, owner_variable: str) -> None:
        args = (self.reference_id, self.direction, self.session_id, self._app)
        try:
            try:
                bridge = await ari.get(f"bridges/{self.reference_id}")
            except AriNotFound:
                bridge = None
            if bridge is None:
                bridge = await find_confbridge_room(ari, self.reference_id)
                if bridge is None:
                    raise NoSuchReference(
                        f"no conference '{self.reference_id}': no ConfBridge room of that name is live"
                    )
                target: BridgeConferenceTarget | ConfBridgeTarget | MemberTarget = ConfBridgeTarget(
                    *args, room=self.reference_id
                )
            elif bridge.get("bridge_class") == "stasis":
                target = BridgeConferenceTarget(*args)
            elif bridge.get("creator") == CONFBRIDGE_CREATOR and bridge.get("name"):
                target = ConfBridgeTarget(*args, room=bridge["name"])
            else:
                raise InvalidRequest(
                    f"bridge '{self.reference_id}' is not a conference: neither an ARI (Stasis) bridge nor a "
                    "ConfBridge room; to speak into a call use reference_type 'call'"
                )
            if self.member:  # the same conference, spoken to or through one participant
                target = MemberTarget(*args, member=self.member)
            target.check(bridge)
            await target.validate(ari, customer_id, owner_variable)
        except AriUnavailable as exc:
            raise unreachable(exc) from None
        except AriNotFound:
            raise NoSuchReference(f"no conference '{self.reference_id}'") from None
        self.resolved = target

    @property
    def conflict_key(self) -> str:
        # A ConfBridge room named by its name or by its bridge id is one conference; a session
        # for the whole of it and one per member may be live at once.
        if isinstance(self.resolved, ConfBridgeTarget):
            key = f"room:{self.resolved.room}"
        elif isinstance(self.resolved, MemberTarget) and self.resolved.conf_bridge_id != self.reference_id:
            key = f"bridge:{self.resolved.conf_bridge_id}"  # a room named by its name: by its bridge
        else:
            key = f"bridge:{self.reference_id}"
        return f"{key}/member:{self.member}" if self.member else key

    def on_event(self, event: dict[str, Any]) -> str | None:
        return self.resolved.on_event(event) if self.resolved is not None else None

    async def reconcile(self, ari: AriClient) -> str | None:
        return await self.resolved.reconcile(ari) if self.resolved is not None else None

    async def attach(self, ctx: AttachContext) -> MediaTransport:
        return await self._inner().attach(ctx)

    async def release_media(self) -> None:
        if self.resolved is not None:
            await self.resolved.release_media()

    async def detach(self, ctx: AttachContext) -> None:
        if self.resolved is not None:
            await self.resolved.detach(ctx)
