"""A session's media path into Asterisk: send audio, flush it, mark positions, hear back.

Both transports follow chan_websocket's model: audio handed over is queued at the far end
and played out at real time by something that does not share speakd's interpreter (Asterisk
itself for ``websocket``; speakd's pacer process for ``rtp``). A mark placed after some
audio comes back through :attr:`MediaTransport.on_mark` once that audio has been played;
``flush`` drops everything queued and the marks in it never come back. When the far end runs
out of audio (it played all it had, the marks in it reported first), :attr:`on_drained` is
called: at the end of a say, or where one ran dry mid-speech (a hole the caller hears).

Calls are synchronous and keep their order (``websocket``: a queue one writer task drains;
``rtp``: one write each to the pacer's control socket). ``flush`` also drops what has not
been sent yet, so audio handed over before a flush never reaches the wire after it.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable

from speakd.config import TransportKind


class MediaTransport(abc.ABC):
    kind: TransportKind

    def __init__(self) -> None:
        # Set by the owner before the first mark; called on the event loop.
        self.on_mark: Callable[[str], None] = _ignore
        # Called (on the event loop) each time the far end has run out of audio after some was sent.
        self.on_drained: Callable[[], None] = _nothing
        # Cleared while the far end asks us to hold off (chan_websocket MEDIA_XOFF).
        self.writable = asyncio.Event()
        self.writable.set()
        # Resolves with a reason when the far end goes away on its own (never on aclose()).
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect; raises :class:`TransportError` if the media path cannot be opened."""

    @abc.abstractmethod
    def send_audio(self, data: bytes) -> None:
        """Queue whole 20 ms frames of the session codec for playout (split as needed)."""

    @abc.abstractmethod
    def mark(self, mark_id: str) -> None:
        """Queue a mark after everything sent so far."""

    @abc.abstractmethod
    def flush(self) -> None:
        """Drop everything queued, here and at the far end; pending marks are never reported."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release the media path (idempotent). Does not resolve :attr:`closed`."""

    def _far_end_closed(self, reason: str) -> None:
        if not self.closed.done():
            self.closed.set_result(reason)


class TransportError(Exception):
    """The media path could not be opened or broke."""


def _ignore(_mark_id: str) -> None:
    return None


def _nothing() -> None:
    return None
