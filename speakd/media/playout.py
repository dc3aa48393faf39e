"""A session's playout: feed the transport with a bounded lead and learn what was played.

Synthesis appends audio (and boundaries such as "say X starts here") as fast as the provider
delivers; the feeder task hands it to the transport only while the audio queued at the far
end (the *lead*) is under ``lead_ms``. A mark follows every ``mark_every_ms`` of audio; each
processed mark tells where playout is. Between marks the position advances with the clock
(Asterisk plays in real time) but never past the next unconfirmed mark, so a stalled far end
is never taken for played.

Positions are milliseconds on the session's *playout timeline*: the amount of audio sent
since the session started. Time in which nothing plays does not advance it.

``flush`` bumps the generation (audio of an older generation is refused at ``put``), drops
everything not yet sent, tells the transport to drop what it holds, and forgets pending
marks: a mark still pending at the flush counts as not played. With ``on_flush_confirmed``,
a flush of audio in flight is followed by a mark of its own: the far end reports it once it
has applied the flush (chan_websocket and the pacer report a mark on an empty queue at once),
so from then on nothing sent before the flush can play (bar the one frame being played).

A *holding* boundary (the end of a must-play say) lets nothing after it leave until the far
end has played up to it: audio after it is then always here, never at the far end, and
``flush_after`` can drop it without touching what plays before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from speakd.config import MediaConfig
from speakd.media.rtp import FRAME_MS, FRAME_SAMPLES
from speakd.media.transport import MediaTransport
from speakd.tasks import cancel_and_wait

BYTES_PER_MS = FRAME_SAMPLES // FRAME_MS  # G.711 at 8 kHz: 8 bytes per ms

# Audio synthesized and not yet played (here and at the far end), at most: synthesis waits for
# playout beyond it, so what a session holds does not grow with the length or number of its says.
# Seconds, not a say: a busy host's say is held until this much is ready (speakd.sessions.session).
MAX_AHEAD_MS = 10_000

# A boundary's callback gets the wall-clock time (time.time()) at which playout reached it.
BoundaryCallback = Callable[[float], None]


@dataclass(slots=True)
class _Audio:
    data: bytes
    on_sent: Callable[[int], None] | None  # gets the timeline position of the audio's start


@dataclass(slots=True, eq=False)
class _Boundary:
    callback: BoundaryCallback
    hold: bool = False  # nothing after it is sent until the far end has played up to it


class Playout:
    def __init__(
        self,
        *,
        lead_ms: int = MediaConfig.lead_ms,
        mark_every_ms: int = MediaConfig.mark_every_ms,
        max_ahead_ms: int = MAX_AHEAD_MS,
        on_flush_confirmed: Callable[[float], None] | None = None,
    ) -> None:
        self.lead_ms = lead_ms
        # Gets the seconds from a flush of audio in flight to the far end confirming it.
        self.on_flush_confirmed = on_flush_confirmed
        self.mark_every_bytes = max(FRAME_SAMPLES, mark_every_ms * BYTES_PER_MS // FRAME_SAMPLES * FRAME_SAMPLES)
        self.max_ahead_ms = max_ahead_ms
        # What may wait here: the bound less what the far end may hold (the lead and one mark's audio).
        far_end_ms = lead_ms + self.mark_every_bytes // BYTES_PER_MS
        self.max_pending_bytes = max(self.mark_every_bytes, (max_ahead_ms - far_end_ms) * BYTES_PER_MS)
        self.generation = 0
        self.transport: MediaTransport | None = None
        self._pending: deque[_Audio | _Boundary] = deque()
        self._pending_bytes = 0
        self._sent_ms = 0
        # Marks sent and not yet played: (mark id, timeline position, boundary callback).
        self._marks: deque[tuple[str, int, BoundaryCallback | None]] = deque()
        self._mark_ids = itertools.count()
        # The mark of a holding boundary sent and not yet played: no audio leaves meanwhile.
        self._hold_mark: str | None = None
        # The last confirmed position and when (monotonic) it was confirmed.
        self._anchor_ms = 0
        self._anchor_at = time.monotonic()
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._feeder: asyncio.Task[None] | None = None
        # Called with the timeline position (ms) at which the far end ran out of audio: where a
        # say ended, or where one ran dry (the caller heard a hole there).
        self.on_drained: Callable[[int], None] | None = None
        self._drained_at: int | None = None  # where it was last reported

    # -- lifecycle --------------------------------------------------------------------------

    def attach(self, transport: MediaTransport) -> None:
        """Start feeding ``transport`` (audio put before this waits for it)."""
        self.transport = transport
        transport.on_mark = self._on_mark
        transport.on_drained = self._on_far_end_drained
        self._feeder = asyncio.create_task(self._feed(), name="speakd-playout")

    async def aclose(self) -> None:
        await cancel_and_wait(self._feeder)
        self._feeder = None

    # -- synthesis side ---------------------------------------------------------------------

    async def put(self, generation: int, data: bytes, on_sent: Callable[[int], None] | None = None) -> bool:
        """Queue whole frames; waits until they fit under :attr:`max_ahead_ms` (they go alone into
        an empty buffer, whatever their size). False if ``generation`` is stale."""
        while (
            self._pending_bytes
            and self._pending_bytes + len(data) > self.max_pending_bytes
            and generation == self.generation
        ):
            self._space.clear()
            await self._space.wait()
        if generation != self.generation:
            return False
        self._pending.append(_Audio(data, on_sent))
        self._pending_bytes += len(data)
        self._wake.set()
        return True

    def boundary(self, generation: int, callback: BoundaryCallback, hold: bool = False) -> object | None:
        """Call ``callback`` when playout reaches this point (never, if flushed first). ``hold``:
        send nothing after it until the far end has played up to it. Returns the boundary (for
        ``flush_after``), or None if ``generation`` is stale."""
        if generation != self.generation:
            return None
        boundary = _Boundary(callback, hold)
        self._pending.append(boundary)
        self._wake.set()
        return boundary

    def flush_after(self, boundary: object) -> int:
        """Drop everything after a holding ``boundary`` (what is before it plays on, and it is
        still reached); the generation moves on. Returns the timeline position reached (ms)."""
        reached = self.position()
        self.generation += 1
        # Still here, or sent already: then what follows it is all here (it holds), none of it sent.
        while self._pending and self._pending[-1] is not boundary:
            if isinstance(dropped := self._pending.pop(), _Audio):
                self._pending_bytes -= len(dropped.data)
        self._space.set()
        return reached

    def flush(self) -> int:
        """Drop everything not yet played; returns the timeline position reached (ms)."""
        reached = self.position()
        in_flight = self.buffered_ms() > 0
        self.generation += 1
        self._pending.clear()
        self._pending_bytes = 0
        self._marks.clear()
        self._hold_mark = None
        if self.transport is not None:
            self.transport.flush()
        # Whatever was sent is played or dropped now: the far end's queue is empty.
        self._anchor_ms, self._anchor_at = self._sent_ms, time.monotonic()
        self._space.set()
        if in_flight and self.transport is not None and (report := self.on_flush_confirmed) is not None:
            flushed_at = self._anchor_at
            self._send_mark(lambda _wall: report(time.monotonic() - flushed_at))
        return reached

    # -- positions --------------------------------------------------------------------------

    def position(self) -> int:
        """The timeline position played by now (ms)."""
        limit = self._marks[0][1] if self._marks else self._sent_ms
        elapsed = int((time.monotonic() - self._anchor_at) * 1000)
        return min(self._anchor_ms + elapsed, limit)

    @property
    def lead_now_ms(self) -> int:
        return self._sent_ms - self.position()

    def buffered_ms(self) -> int:
        """Audio not yet played: at the far end and still here."""
        return self.lead_now_ms + self._pending_bytes // BYTES_PER_MS

    def _on_mark(self, mark_id: str) -> None:
        # Marks are played in order: one played means every earlier one was too.
        if not any(m[0] == mark_id for m in self._marks):
            return  # flushed, or not ours
        now_wall, now = time.time(), time.monotonic()
        while self._marks:
            current, position, callback = self._marks.popleft()
            if current == self._hold_mark:
                self._hold_mark = None
            self._anchor_ms, self._anchor_at = position, now
            if callback is not None:
                callback(now_wall)
            if current == mark_id:
                break
        self._wake.set()

    def _on_far_end_drained(self) -> None:
        # Every piece sent is followed by a mark, reported before the far end runs out: the last
        # one reported is where it did (after a flush, the flush's position). A second report
        # there (chan_websocket's is asked for again when audio went since) is the same gap.
        if self.on_drained is not None and self._anchor_ms != self._drained_at:
            self._drained_at = self._anchor_ms
            self.on_drained(self._anchor_ms)

    # -- the feeder -------------------------------------------------------------------------

    def _send_mark(self, callback: BoundaryCallback | None) -> str:
        assert self.transport is not None
        mark_id = f"m{next(self._mark_ids)}"
        self._marks.append((mark_id, self._sent_ms, callback))
        self.transport.mark(mark_id)
        return mark_id

    async def _feed(self) -> None:
        transport = self.transport
        assert transport is not None
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._hold_mark is not None:  # nothing leaves (not even a mark) until it is played, or flushed
                self._wake.clear()
                await self._wake.wait()
                continue
            entry = self._pending[0]
            if isinstance(entry, _Boundary):
                self._pending.popleft()
                mark_id = self._send_mark(entry.callback)
                if entry.hold:
                    self._hold_mark = mark_id
                continue
            if not transport.writable.is_set():
                await transport.writable.wait()
                continue
            if self.lead_now_ms >= self.lead_ms:
                # Woken by the next played mark (or a flush); the timeout covers a far end
                # that plays without confirming (marks are at most mark_every_ms apart).
                self._wake.clear()
                # (asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel.)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.mark_every_bytes / BYTES_PER_MS / 1000):
                        await self._wake.wait()
                continue
            piece = entry.data[: self.mark_every_bytes]
            if len(piece) < len(entry.data):
                entry.data = entry.data[len(piece) :]
            else:
                self._pending.popleft()
            self._pending_bytes -= len(piece)
            if not self._marks and self.position() >= self._sent_ms:
                # The far end's queue ran dry: this audio starts playing now, not when the
                # timeline would say (silence does not advance it).
                self._anchor_ms, self._anchor_at = self._sent_ms, time.monotonic()
            if entry.on_sent is not None:
                entry.on_sent(self._sent_ms)
                entry.on_sent = None
            transport.send_audio(piece)
            self._sent_ms += len(piece) // BYTES_PER_MS
            self._send_mark(None)
            if self._pending_bytes < self.max_pending_bytes:
                self._space.set()
