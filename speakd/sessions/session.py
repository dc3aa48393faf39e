"""One speaking session at run time: its say queue, its synthesis, its playout.

Ordering and barge-in:

* ``say`` appends to the queue; one worker takes items in order and synthesizes each into the
  playout. It moves on to the next item as soon as the current one is synthesized, so the
  next item is ready before the current one finishes playing: items play back to back.
* ``flush`` is synchronous: it empties the queue, bumps the playout's generation (audio not
  yet played is dropped here and at the far end) and cancels the synthesis in flight. When it
  returns, nothing synthesized before it can reach the call.
* A must-play say (``interruptible`` false) is not cut by a flush or a stop of says: one that
  plays (or is being readied) plays on, and ones still queued stay queued; the says around them
  are dropped as usual. Its end holds the playout (speakd.media.playout), so what follows it is
  never at the far end before it has played, and is dropped from here alone. Only the session's
  end (``close``) cuts it.
* Synthesis starts while the session is still initiating: a ``say`` sent then plays as soon
  as the media path exists.
* Every say's state is written to the store in order by one writer task; ``close`` drains it,
  so a session reads stopped only once its says' final states are stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable

import structlog

from speakd.audio import Codec
from speakd.errors import InvalidRequest, ProviderError
from speakd.events.model import EventType, InterruptReason, StopReason
from speakd.media.codec import FrameEncoder
from speakd.media.loudness import Leveler, VoiceLevels
from speakd.media.playout import Playout
from speakd.media.rtp import FRAME_MS
from speakd.media.transport import MediaTransport
from speakd.providers.base import Provider, SynthesisRequest
from speakd.providers.fallback import Failover
from speakd.sessions.says import SayItem, SayStatus
from speakd.store.records import Speaking, stamp_of
from speakd.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

# Stored final says a live session keeps in memory (about 3 kB and the text each): the last ones
# a client or the dialplan asks about, answered while the store is unreachable.
KEPT_FINAL_SAYS = 50

CONVERT_SLICE_BYTES = 8192
PUT_FRAMES = 10
# Underrun protection: synthesis this much faster than real time starts playing at once;
# slower, a say is held until what is buffered covers the rest with this margin, at a rate
# SLOWDOWN times slower than so far: on a busy host the sessions' sentences start together
# (each a front before its audio), so a say's rate dips below its average just when it must not
# (the busy-host test: 8 says at 1.3 times real time, Piper's share for each, held 1.9 s at
# half again slower: 1 of 8 ran dry at its last sentence; held twice slower, none in 8 runs).
FAST_ENOUGH = 1.5
UNDERRUN_MARGIN = 1.3
SLOWDOWN = 2.0
TYPICAL_CHARS_PER_S = 14

SaveSay = Callable[[SayItem], Awaitable[None]]
# (event type, say, when it happened as a stamp, extra data): a say's events, as they happen.
SayEvent = Callable[[EventType, SayItem, str, dict[str, str]], None]


def safe_to_start(
    produced_ms: float,
    elapsed_ms: float,
    chunk_gap_ms: float,
    total_chars: int,
    chars_done: int | None,
    share_rate: float = 0.0,
) -> bool:
    """Whether a say can start playing without running dry, synthesis going on as so far.

    Audio comes in chunks (Piper: a sentence each), so the buffer B must outlast the wait
    for the next one (taken to be like the last wait, ``chunk_gap_ms``). And playing consumes
    audio at real time while synthesis adds it at ``rate``: B lasts while the remaining R is
    synthesized iff B >= R * (1/rate - 1), here with ``rate`` taken SLOWDOWN times lower than
    so far and B with UNDERRUN_MARGIN to spare. On an idle host every provider is far faster than
    real time and both hold with the first chunk; on an overloaded one the say starts later
    instead of stuttering. ``share_rate``: the provider's guess of the rate it can keep up for
    this say from now on (0: none); the rate so far is no guide when the say's first chunks went
    before other sessions' (the busy-host test: says released at 1.7 times real time ran dry at
    their second sentence, eight sessions then sharing two workers).
    """
    if produced_ms < UNDERRUN_MARGIN * chunk_gap_ms:
        return False
    rate = produced_ms / max(elapsed_ms, 1.0)
    if share_rate > 0:
        rate = min(rate, share_rate)
    if rate >= FAST_ENOUGH:
        return True
    if chars_done is None:  # no alignment: assume a typical speaking rate
        chars_done = min(total_chars, int(produced_ms * TYPICAL_CHARS_PER_S / 1000))
    remaining_ms = produced_ms * max(0, total_chars - chars_done) / max(chars_done, 1)
    return produced_ms >= UNDERRUN_MARGIN * remaining_ms * (SLOWDOWN / rate - 1)


class Session:
    def __init__(
        self,
        record: Speaking,
        provider: Provider,
        codec: Codec,
        playout: Playout,
        save_say: SaveSay,
        model: str = "",
        say_event: SayEvent | None = None,
        on_underrun: Callable[[], None] | None = None,
        failover: Failover | None = None,
        levels: VoiceLevels | None = None,
    ) -> None:
        self.record = record
        self.provider = provider
        # The one loudness every say is brought to, learned per voice; None: audio as sent.
        self.levels = levels
        # Where a say goes on when its provider fails ([tts] fallback); None: the provider alone.
        self.failover = failover
        self.codec: Codec = codec
        self.model = model
        self.lexicon = ""  # the lexicon its says go through unless they name another ('' for none)
        self.playout = playout
        self.queue: deque[SayItem] = deque()
        # This session's says, oldest first: every one not final yet, and the last KEPT_FINAL_SAYS
        # whose final state is stored, as that record alone (no word marks or run-time state).
        # The API answers from here while the store is unreachable; once older ones are
        # forgotten (says_forgotten), the whole list is the store's.
        self.says: dict[str, SayItem] = {}
        self.says_forgotten = 0
        self._stored_final: deque[str] = deque()  # ids of the kept stored records, oldest first
        self.log = log.bind(speaking_id=record.id)
        self._save_say = save_say
        self._say_event = say_event or (lambda *_: None)
        self._on_underrun = on_underrun or (lambda: None)
        # The say last handed to the playout (and its generation): the far end running out of
        # audio inside it is a gap the caller hears in the middle of it.
        self._feeding: tuple[SayItem, int] | None = None
        playout.on_drained = self._on_drained
        self._in_playout: list[SayItem] = []  # taken from the queue, not final yet
        # The playout boundary at the end of each must-play say handed to it whole (flush_after).
        self._protected_ends: dict[SayItem, object] = {}
        self._queue_ready = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._current: asyncio.Task[None] | None = None
        self._dirty: deque[SayItem] = deque()
        self._dirty_ready = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False

    # -- lifecycle --------------------------------------------------------------------------

    def start_synthesis(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._run_queue(), name=f"speakd-synth-{self.record.id}")
            self._writer = asyncio.create_task(self._write_says(), name=f"speakd-says-{self.record.id}")

    def start_playout(self, transport: MediaTransport) -> None:
        self.playout.attach(transport)

    async def close(self, reason: StopReason = StopReason.STOP) -> int:
        """Stop synthesis and playout; returns how many say items were dropped unplayed."""
        self.playout.on_flush_confirmed = None  # the media path goes next: a stop's silence is not a flush's
        dropped = self._interrupt_all(reason, protect=False)
        await cancel_and_wait(self._current, self._worker)
        self._current = self._worker = None
        await self.playout.aclose()
        if self._writer is not None:
            # The final states are stored before the session reads stopped.
            self._closing = True
            self._dirty_ready.set()
            await self._writer
            self._writer = None
        return dropped

    # -- commands ---------------------------------------------------------------------------

    def new_say(self, text: str, payload_type: str = "text", client_state: str = "", command_id: str = "") -> SayItem:
        return SayItem(self.record.id, text, payload_type, client_state=client_state, command_id=command_id)

    def enqueue(self, item: SayItem) -> None:
        """Queue a say whose record is already stored."""
        self.says[item.say_id] = item
        self.queue.append(item)
        self._queue_ready.set()
        self.log.info("say_queued", say_id=item.say_id, chars=len(item.text), queued=len(self.queue))

    def flush(self, reason: InterruptReason = InterruptReason.FLUSH) -> list[SayItem]:
        """Cut what plays and drop what waits, bar must-play says: those it left, in play order."""
        dropped = self._interrupt_all(reason, protect=True)
        protected = [*self._in_playout, *self.queue]
        self.log.info(
            "flushed", dropped_items=dropped, reason=str(reason), protected=[item.say_id for item in protected]
        )
        return protected

    def interrupt_current(self) -> None:
        """Cut the say playing now (or being readied to play); the says queued after it stay.
        A must-play say is not cut: then this changes nothing.

        The playout holds audio of the next says too (synthesis runs ahead): it is dropped with
        the current say's, and those says go back to the head of the queue to be synthesized again.
        """
        if not self._in_playout:
            return
        current, *after = self._in_playout
        if not current.interruptible:
            self.log.info("current_say_protected", say_id=current.say_id)
            return
        reached = self.playout.flush()
        if self._current is not None:
            self._current.cancel()
        self._in_playout.clear()
        self._interrupted(current, reached, InterruptReason.STOP_CURRENT)
        for item in reversed(after):
            item.reset_synthesis()
            self._protected_ends.pop(item, None)
            self.queue.appendleft(item)
        self._queue_ready.set()
        self.log.info("current_say_interrupted", say_id=current.say_id, requeued=len(after))

    def _interrupt_all(self, reason: str, protect: bool) -> int:
        """Cut what plays and drop what waits: each say's final state says what was heard.
        ``protect``: must-play says are left (see the module's doc); returns how many were cut."""
        says = [*self._in_playout, *self.queue]
        kept = [item for item in says if protect and not item.interruptible]
        playing_on = self._in_playout[0] if self._in_playout and self._in_playout[0] in kept else None
        if playing_on is None:
            reached = self.playout.flush()
            if self._current is not None:
                self._current.cancel()
        elif (end := self._protected_ends.get(playing_on)) is not None:
            # Synthesized whole: what follows its end goes, and so does the next say's synthesis.
            reached = self.playout.flush_after(end)
            if self._current is not None:
                self._current.cancel()
        else:  # still being synthesized: nothing after it is in the playout yet
            reached = self.playout.position()
        cut = [item for item in says if item not in kept]
        self._in_playout[:] = [playing_on] if playing_on is not None else []
        self.queue.clear()
        for item in kept:
            if item is not playing_on:  # its audio (synthesized ahead) went with the flush
                item.reset_synthesis()
                self._protected_ends.pop(item, None)
                self.queue.append(item)
        if self.queue:
            self._queue_ready.set()
        for item in cut:
            self._interrupted(item, reached, reason)
        return len(cut)

    def _interrupted(self, item: SayItem, reached: int, reason: str) -> None:
        played = 0 if item.start_ms is None else max(0, min(reached - item.start_ms, item.synthesized_ms))
        item.played_ms = played
        item.heard_chars = item.chars_heard_by(played)
        at = time.time()
        if played:
            item.tm_play_end = stamp_of(at)
        item.status = SayStatus.INTERRUPTED
        item.ready.set()
        self._protected_ends.pop(item, None)
        self._changed(item)
        self._say_event(EventType.SAY_INTERRUPTED, item, stamp_of(at), {"reason": str(reason)})
        self.log.info("say_interrupted", say_id=item.say_id, played_ms=played, heard_chars=item.heard_chars)

    # -- storing say states -----------------------------------------------------------------

    def _changed(self, item: SayItem) -> None:
        self._dirty.append(item)
        self._dirty_ready.set()

    async def _write_says(self) -> None:
        while True:
            while not self._dirty:
                if self._closing:
                    return
                self._dirty_ready.clear()
                await self._dirty_ready.wait()
            item = self._dirty[0]
            try:
                await self._save_say(item)
            except Exception:
                self.log.exception("say_save_failed", say_id=item.say_id)
            else:
                if item.final and self._dirty.count(item) == 1 and self.says.get(item.say_id) is item:
                    self._keep_stored(item)
            self._dirty.popleft()

    def _keep_stored(self, item: SayItem) -> None:
        """``item``'s last state is stored: keep that record alone, and forget the oldest such
        record beyond KEPT_FINAL_SAYS (a session's memory does not grow with the says it played)."""
        self.says[item.say_id] = SayItem.from_row(item.row())
        self._stored_final.append(item.say_id)
        while len(self._stored_final) > KEPT_FINAL_SAYS:
            del self.says[self._stored_final.popleft()]
            self.says_forgotten += 1

    # -- synthesis --------------------------------------------------------------------------

    async def _run_queue(self) -> None:
        while True:
            while not self.queue:
                self._queue_ready.clear()
                await self._queue_ready.wait()
            item = self.queue.popleft()
            self._in_playout.append(item)
            generation = self.playout.generation
            self._current = asyncio.create_task(self._synthesize(item, generation), name=f"speakd-say-{item.say_id}")
            try:
                # wait() does not raise when the item task alone is cancelled by a flush.
                await asyncio.wait({self._current})
            finally:
                if self._current is not None and self._current.done() and not self._current.cancelled():
                    self._current.exception()  # retrieved: logged inside _synthesize
                self._current = None

    async def _synthesize(self, item: SayItem, generation: int) -> None:
        leveler = Leveler(self.levels, item.volume) if self.levels is not None else None
        encoder = FrameEncoder(self.codec, leveler)
        started = time.monotonic()
        held: list[bytes] = []  # synthesized, not yet handed to the playout
        released = False
        last_chunk_at, chunk_gap_ms, share_rate = started, 0.0, 0.0
        # Audio taken in (ms): where the next chunk starts in the say. Not synthesized_ms plus what
        # the encoder holds: the resampler holds some back too (soxr gives its output in blocks:
        # up to 76 ms of Piper's 22.05 kHz).
        fed_ms = float(item.synthesized_ms)

        def deadline() -> float:
            """When this say's next audio is needed to play on without a gap; inf while
            nothing of the session plays (for providers that schedule by it)."""
            buffered = self.playout.buffered_ms()
            if released or buffered:
                return time.monotonic() + buffered / 1000
            return math.inf

        def started_at(position: int) -> None:
            item.start_ms = position
            self.log.info("say_first_sent", say_id=item.say_id)  # bench/first_audio.py times it

        async def hand_over(frames: list[bytes]) -> bool:
            """Give audio to the playout once playing it cannot run dry; False if flushed."""
            nonlocal released
            held.extend(frames)
            item.synthesized_ms += len(frames) * FRAME_MS
            if not held:
                return True
            on_sent = None
            if not released:
                elapsed_ms = (time.monotonic() - started) * 1000
                chars_done = item.word_marks[-1][1] if item.word_marks else None
                # Held while playing could run dry, but never more than the playout's bound ahead.
                ahead_ms = len(held) * FRAME_MS + self.playout.buffered_ms()
                if (
                    not item.synthesized
                    and ahead_ms < self.playout.max_ahead_ms
                    and not safe_to_start(
                        item.synthesized_ms, elapsed_ms, chunk_gap_ms, len(item.text), chars_done, share_rate
                    )
                ):
                    return True
                if len(held) > len(frames):
                    self.log.info("say_held", say_id=item.say_id, held_ms=len(held) * FRAME_MS)
                released = True
                self._feeding = (item, generation)
                on_sent = started_at
                self.playout.boundary(generation, lambda at: self._say_started(item, at))
            # A few frames a put: the playout takes each under its bound (what was held can be seconds).
            parts = [b"".join(held[i : i + PUT_FRAMES]) for i in range(0, len(held), PUT_FRAMES)]
            held.clear()
            for part in parts:
                if not await self.playout.put(generation, part, on_sent):
                    return False
                on_sent = None
            return True

        request = SynthesisRequest(
            text=item.spoken_text,
            language=self.record.language,
            voice_id=self.record.voice_id,
            codec=self.codec,
            payload_type=item.payload_type,  # type: ignore[arg-type]
            model=self.model,
            deadline=deadline,
            cache=item.cache,
        )
        if self.failover is not None:
            chunks = self.failover.synthesize(
                self.provider, request, item.text_stream, item.spoken, item.provider_failed
            )
        elif item.text_stream is not None:
            chunks = item.text_stream.synthesize(request)
        else:
            chunks = self.provider.synthesize(request)
        try:
            async with contextlib.aclosing(chunks):  # type: ignore[type-var]
                async for chunk in chunks:
                    now = time.monotonic()
                    # How long the next chunk may take: like this one, or what the provider says.
                    last_chunk_at, chunk_gap_ms = now, max((now - last_chunk_at) * 1000, chunk.next_in_ms)
                    share_rate = chunk.share_rate
                    if not item.synthesized_ms and not encoder.pending_ms:
                        self.log.info(
                            "say_first_audio",
                            say_id=item.say_id,
                            latency_ms=round((time.monotonic() - started) * 1000, 1),
                        )
                        if self.failover is None:  # (failover names each provider as it speaks)
                            item.spoken(self.provider.name, self._voice())
                    if leveler is not None and item.spoken_by:  # each voice its gain (fallbacks too)
                        leveler.voice = (item.spoken_by[-1]["provider"], item.spoken_by[-1]["voice_id"])
                    rate = chunk.format.sample_rate
                    for chars, sample in chunk.marks:
                        item.add_word_mark(int(fed_ms + sample * 1000 / rate), chars)
                    fed_ms += len(chunk.data) * 1000 / (chunk.format.bytes_per_sample * rate)
                    # Convert in slices: a sentence-sized chunk at once would hold the loop
                    # for milliseconds; slices let it breathe.
                    for start in range(0, len(chunk.data), CONVERT_SLICE_BYTES):
                        piece = chunk.data[start : start + CONVERT_SLICE_BYTES]
                        if not await hand_over(encoder.feed(piece, chunk.format)):
                            return
                        await asyncio.sleep(0)
            tail = encoder.finish()
        except ProviderError as exc:
            item.error, tail = exc.message, []
            self.log.error("say_failed", say_id=item.say_id, error=exc.message, synthesized_ms=item.synthesized_ms)
        except asyncio.CancelledError:
            self.log.info("say_cancelled", say_id=item.say_id, synthesized_ms=item.synthesized_ms)
            raise
        except Exception as exc:
            item.error, tail = f"{type(exc).__name__}: {exc}", []
            self.log.exception("say_crashed", say_id=item.say_id)
        item.synthesized = True
        self.log.info(
            "say_synthesized",
            say_id=item.say_id,
            synthesized_ms=item.synthesized_ms,
            took_ms=round((time.monotonic() - started) * 1000),
        )
        if not await hand_over(tail):
            return
        item.ready.set()
        if released:  # the say ends (played, or failed after what it had) when playout gets there
            end = self.playout.boundary(generation, lambda at: self._say_ended(item, at), hold=not item.interruptible)
            if end is not None and not item.interruptible:
                self._protected_ends[item] = end
        else:  # no audio at all
            self._ran_its_course(item, stamp_of(time.time()))

    def _on_drained(self, position: int) -> None:
        """The far end ran out of audio at timeline ``position``: a say ran dry unless that is
        before its audio or at its end."""
        if self._feeding is None:
            return
        item, generation = self._feeding
        if generation != self.playout.generation:  # flushed
            self._feeding = None
            return
        if item.start_ms is None or position <= item.start_ms:
            return
        if item.synthesized and position >= item.start_ms + item.synthesized_ms:
            self._feeding = None
            return
        self.log.warning(
            "say_underrun",
            say_id=item.say_id,
            at_ms=position - item.start_ms,
            synthesized_ms=item.synthesized_ms,
            synthesized=item.synthesized,
        )
        self._on_underrun()

    def _voice(self) -> str:
        """The voice this session's says are spoken with (its default for the language if it named none)."""
        try:
            return self.provider.voice_for(self.record.language, self.record.voice_id, self.model)
        except InvalidRequest:
            return self.record.voice_id

    # -- played positions (called when playout reaches a say's boundaries) -------------------

    def _say_started(self, item: SayItem, at: float) -> None:
        item.status = SayStatus.PLAYING
        item.tm_play_start = stamp_of(at)
        self._changed(item)
        self._say_event(EventType.SAY_STARTED, item, item.tm_play_start, {})
        self.log.info("say_playing", say_id=item.say_id)

    def _say_ended(self, item: SayItem, at: float) -> None:
        item.tm_play_end = stamp_of(at)
        item.played_ms = item.synthesized_ms
        item.heard_chars = item.chars_heard_by(item.played_ms)
        self._ran_its_course(item, item.tm_play_end)
        # A failed say's partial audio has played out: not "say_played" (it was not).
        event = "say_failed_played_out" if item.error else "say_played"
        self.log.info(event, say_id=item.say_id, duration_ms=item.played_ms)

    def _ran_its_course(self, item: SayItem, at: str) -> None:
        """A say not cut: failed if its synthesis failed, else played."""
        self._finish(item, SayStatus.FAILED if item.error else SayStatus.PLAYED, at)

    def _finish(self, item: SayItem, status: SayStatus, at: str) -> None:
        item.status = status
        item.ready.set()
        if status is SayStatus.PLAYED:
            item.heard_chars = len(item.text)
        with contextlib.suppress(ValueError):
            self._in_playout.remove(item)
        self._protected_ends.pop(item, None)
        self._changed(item)
        failed = status is SayStatus.FAILED
        self._say_event(EventType.SAY_FAILED if failed else EventType.SAY_FINISHED, item, at, {})
