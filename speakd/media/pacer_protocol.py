"""The control protocol between the daemon and its RTP pacer process: pure, no I/O.

Frames on a SOCK_STREAM socketpair: a 4-byte big-endian length (of what follows), one opcode
byte, then the opcode's body. Stream ids are the daemon's, unsigned 32-bit, never reused
within one pacer process. Text (hosts, mark ids, reasons) is UTF-8.

The child imports this module, so it imports nothing beyond the standard library's cheapest
parts: the pacer's start-up stays fast.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

_HEAD = struct.Struct("!IB")  # length of (opcode + body), opcode
_ID = struct.Struct("!I")
_ADD = struct.Struct("!IHB")  # stream id, port, payload type; then the host
_READY = struct.Struct("!BB")  # realtime obtained, priority; then the reason if not
_STATS = struct.Struct("!ffIII")  # window max late, max late, stalls, send errors, sub-ticks

# Far above any real message (a whole minute of G.711 is 480 KB): a length beyond it means
# the stream is corrupt, not that a huge message is coming.
MAX_MESSAGE = 4 * 1024 * 1024

# daemon -> pacer
ADD, AUDIO, MARK, FLUSH, REMOVE = 1, 2, 3, 4, 5
# pacer -> daemon
READY, MARK_PLAYED, REMOVED, XOFF, XON, STATS, DRAINED = 64, 65, 66, 67, 68, 69, 70


class ProtocolError(Exception):
    """The byte stream does not hold valid frames."""


# -- messages ---------------------------------------------------------------------------------


class Add(NamedTuple):
    stream_id: int
    host: str
    port: int
    payload_type: int


class Audio(NamedTuple):
    stream_id: int
    data: bytes  # whole frames, any count


class Mark(NamedTuple):
    stream_id: int
    mark_id: str


class Flush(NamedTuple):
    stream_id: int


class Remove(NamedTuple):
    stream_id: int


class Ready(NamedTuple):
    realtime: bool
    priority: int
    reason: str  # why real-time priority was not obtained ("" if it was)


class MarkPlayed(NamedTuple):
    stream_id: int
    mark_id: str


class Removed(NamedTuple):
    """The stream is gone: the pacer sends none of its packets any more."""

    stream_id: int


class Xoff(NamedTuple):
    stream_id: int


class Xon(NamedTuple):
    stream_id: int


class Drained(NamedTuple):
    """The stream ran out of audio: the far end has played all it was sent (the marks in it
    reported first) and gets nothing more for now. Once at the end of each talkspurt."""

    stream_id: int


class Stats(NamedTuple):
    window_max_late_ms: float  # since the previous Stats
    max_late_ms: float  # since the pacer started
    stalls: int  # frame periods skipped, in total
    send_errors: int  # sendto failures, in total
    subticks: int  # sub-ticks run, in total


Message = Add | Audio | Mark | Flush | Remove | Ready | MarkPlayed | Removed | Xoff | Xon | Drained | Stats


# -- encoding ---------------------------------------------------------------------------------


def _frame(opcode: int, body: bytes) -> bytes:
    if len(body) + 1 > MAX_MESSAGE:
        raise ValueError(f"message of {len(body)} bytes is over the {MAX_MESSAGE} limit: split it")
    return _HEAD.pack(len(body) + 1, opcode) + body


def encode(message: Message) -> bytes:
    match message:
        case Audio(stream_id, data):
            return _frame(AUDIO, _ID.pack(stream_id) + data)
        case Mark(stream_id, mark_id):
            return _frame(MARK, _ID.pack(stream_id) + mark_id.encode())
        case MarkPlayed(stream_id, mark_id):
            return _frame(MARK_PLAYED, _ID.pack(stream_id) + mark_id.encode())
        case Add(stream_id, host, port, payload_type):
            return _frame(ADD, _ADD.pack(stream_id, port, payload_type) + host.encode())
        case Flush(stream_id):
            return _frame(FLUSH, _ID.pack(stream_id))
        case Remove(stream_id):
            return _frame(REMOVE, _ID.pack(stream_id))
        case Removed(stream_id):
            return _frame(REMOVED, _ID.pack(stream_id))
        case Xoff(stream_id):
            return _frame(XOFF, _ID.pack(stream_id))
        case Xon(stream_id):
            return _frame(XON, _ID.pack(stream_id))
        case Drained(stream_id):
            return _frame(DRAINED, _ID.pack(stream_id))
        case Ready(realtime, priority, reason):
            return _frame(READY, _READY.pack(realtime, priority) + reason.encode())
        case Stats(window, worst, stalls, errors, subticks):
            return _frame(STATS, _STATS.pack(window, worst, stalls, errors, subticks & 0xFFFFFFFF))
    raise TypeError(f"not a pacer message: {message!r}")


# -- decoding ---------------------------------------------------------------------------------


# Messages that are a stream id alone.
_STREAM_ONLY: dict[int, type[Flush | Remove | Removed | Xoff | Xon | Drained]] = {
    FLUSH: Flush,
    REMOVE: Remove,
    REMOVED: Removed,
    XOFF: Xoff,
    XON: Xon,
    DRAINED: Drained,
}


def _decode(opcode: int, body: bytes) -> Message:
    try:
        if opcode in (AUDIO, MARK, MARK_PLAYED, *_STREAM_ONLY):
            (stream_id,) = _ID.unpack_from(body)
            rest = body[_ID.size :]
            if opcode == AUDIO:
                return Audio(stream_id, rest)
            if opcode == MARK:
                return Mark(stream_id, rest.decode())
            if opcode == MARK_PLAYED:
                return MarkPlayed(stream_id, rest.decode())
            if rest:
                raise ProtocolError(f"opcode {opcode}: {len(rest)} unexpected bytes")
            return _STREAM_ONLY[opcode](stream_id)
        if opcode == ADD:
            stream_id, port, payload_type = _ADD.unpack_from(body)
            return Add(stream_id, body[_ADD.size :].decode(), port, payload_type)
        if opcode == READY:
            realtime, priority = _READY.unpack_from(body)
            return Ready(bool(realtime), priority, body[_READY.size :].decode())
        if opcode == STATS:
            if len(body) != _STATS.size:
                raise ProtocolError(f"STATS of {len(body)} bytes")
            return Stats(*_STATS.unpack(body))
    except (struct.error, UnicodeDecodeError) as exc:
        raise ProtocolError(f"opcode {opcode}: {exc}") from None
    raise ProtocolError(f"unknown opcode {opcode}")


class Decoder:
    """Turns a byte stream, read in pieces of any size, back into messages."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        """Add what was read; return every message it completes, in order."""
        self._buffer += data
        messages: list[Message] = []
        buffer = self._buffer
        pos = 0
        while len(buffer) - pos >= _HEAD.size:
            length, opcode = _HEAD.unpack_from(buffer, pos)
            if not 1 <= length <= MAX_MESSAGE:
                raise ProtocolError(f"frame length {length}")
            end = pos + 4 + length
            if len(buffer) < end:
                break
            messages.append(_decode(opcode, bytes(buffer[pos + _HEAD.size : end])))
            pos = end
        del buffer[:pos]
        return messages

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buffer)
