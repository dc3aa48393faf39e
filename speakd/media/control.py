"""chan_websocket's control protocol (Asterisk 22.6+/21.11+/20.16+), pure: no I/O.

Text messages in the default ``plain-text`` format are a command word followed by
``key:value`` pairs separated by spaces, e.g.
``MEDIA_MARK_PROCESSED correlation_id:m1`` or
``STATUS queue_length:179 xon_level:800 xoff_level:900 queue_full:false ...``.
Binary messages carry raw audio in the channel's format; one message over 65,500 bytes closes
the socket, so audio is split below that (on frame boundaries).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

MAX_MESSAGE_BYTES = 65_500

# Asterisk -> speakd
MEDIA_START = "MEDIA_START"
MEDIA_MARK_PROCESSED = "MEDIA_MARK_PROCESSED"
MEDIA_XOFF = "MEDIA_XOFF"
MEDIA_XON = "MEDIA_XON"
QUEUE_DRAINED = "QUEUE_DRAINED"
# speakd -> Asterisk
FLUSH_MEDIA = "FLUSH_MEDIA"
# Asks for one QUEUE_DRAINED: sent at the first tick of chan_websocket's timer that finds its
# queue empty (after the marks before it are reported); the request is then used up.
REPORT_QUEUE_DRAINED = "REPORT_QUEUE_DRAINED"


@dataclass(frozen=True, slots=True)
class ControlMessage:
    command: str
    params: dict[str, str] = field(default_factory=dict)


def parse(text: str) -> ControlMessage:
    """Parse one text message; unknown commands parse too (the caller ignores them)."""
    command, _, rest = text.strip().partition(" ")
    params: dict[str, str] = {}
    for token in rest.split():
        key, sep, value = token.partition(":")
        if sep:
            params[key] = value
    return ControlMessage(command, params)


def mark_media(correlation_id: str) -> str:
    if not correlation_id or any(c.isspace() for c in correlation_id):
        raise ValueError(f"a mark id must be non-empty and without spaces, not {correlation_id!r}")
    return f"MARK_MEDIA correlation_id:{correlation_id}"


def split_audio(data: bytes, frame_bytes: int, limit: int = MAX_MESSAGE_BYTES) -> Iterator[bytes]:
    """``data`` in messages of at most ``limit`` bytes, each a whole number of frames."""
    step = max(frame_bytes, limit - limit % frame_bytes)
    for start in range(0, len(data), step):
        yield data[start : start + step]
