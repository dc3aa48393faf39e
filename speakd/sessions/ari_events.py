"""ARI events into the sessions: the handlers, named after the events they handle, and the
one table (:meth:`AriEventHandlers.table`) that says which event goes to which.

Every event first resolves what setup waits for (:class:`~speakd.ari.events.EventWaiters`)
and is offered to the targets that judge events themselves (a conference ends when its last
participant leaves); then its handler, if the table has one, runs. Events of a type not in the
table are not handled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from speakd.ari.events import event_object_ids
from speakd.events import StopReason
from speakd.sessions.live import LiveSession

if TYPE_CHECKING:
    from speakd.sessions.service import SpeakingService

Handler = Callable[[dict[str, Any]], None]


class AriEventHandlers:
    def __init__(self, service: SpeakingService) -> None:
        self.service = service
        self.table: Mapping[str, Handler] = {
            "StasisEnd": self.on_stasis_end,
            "ChannelHangupRequest": self.on_channel_hangup_request,
            "ChannelDestroyed": self.on_channel_destroyed,
            "BridgeDestroyed": self.on_bridge_destroyed,
            "ChannelUserevent": self.on_channel_userevent,
        }

    async def on_event(self, event: dict[str, Any]) -> None:
        service = self.service
        service.waiters.resolve(event)
        for _, live in self._watchers(event):  # targets that judge events themselves (conferences)
            if detail := live.target.on_event(event):
                service.stop_soon(live.id, live.target.ended_reason, detail)
        handler = self.table.get(event.get("type", ""))
        if handler is not None:
            handler(event)

    def on_stasis_end(self, event: dict[str, Any]) -> None:
        self._end_watchers(event, "channel left speakd")

    def on_channel_hangup_request(self, event: dict[str, Any]) -> None:
        self._end_watchers(event, "hangup")

    def on_channel_destroyed(self, event: dict[str, Any]) -> None:
        self._end_watchers(event, "channel destroyed")

    def on_bridge_destroyed(self, event: dict[str, Any]) -> None:
        self._end_watchers(event, "bridge destroyed")

    def on_channel_userevent(self, event: dict[str, Any]) -> None:
        # Operators' commands (speakd.ari_commands); the handler must not block.
        if self.service.user_event_handler is not None:
            self.service.user_event_handler(event)

    def _end_watchers(self, event: dict[str, Any], why: str) -> None:
        """Stop the sessions watching an object the event says has ended."""
        for object_id, live in self._watchers(event):
            if object_id == live.target.media_id:
                # speakd's own media channel, ended by someone else: its media path broke (the
                # media connection closing makes Asterisk hang it up, maybe before speakd sees the
                # close). A party's hangup ends the session through the call's channels instead.
                self.service.stop_soon(
                    live.id, StopReason.ERROR, f"media channel: {why} ({object_id})", asterisk_may_be_gone=True
                )
            else:
                self.service.stop_soon(live.id, live.target.ended_reason, f"{why} ({object_id})")

    def _watchers(self, event: dict[str, Any]) -> Iterator[tuple[str, LiveSession]]:
        """Each object the event is about that a live session watches, with that session."""
        for object_id in event_object_ids(event):
            for live in self.service.sessions.watching(object_id):
                yield object_id, live
