"""One speaking session at run time: its say queue, its synthesis, its playout buffer.

Ordering and barge-in:

* ``say`` appends to the queue; one worker takes items in order and synthesizes each into
  the playout buffer. The worker moves on to the next item as soon as the current one is
  synthesized, so the next item is ready before the current one finishes playing: items
  play back to back with no gap.
* ``flush`` is synchronous: it empties the queue, bumps the buffer's generation (dropping
  every frame not yet sent) and cancels the synthesis in flight. When it returns, nothing
  synthesized before it can reach the call; the pacer's next tick sends nothing.
* Synthesis starts while the session is still initiating: a ``say`` sent then plays as soon
  as the RTP path exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

import structlog

from speakd.errors import ProviderError
from speakd.media.codec import Codec, FrameEncoder
from speakd.media.frames import FrameBuffer
from speakd.media.pacer import Pacer, RtpStream
from speakd.providers.base import Provider, SynthesisRequest
from speakd.sessions.model import Speaking

log = structlog.get_logger(__name__)

# 10 s of audio may be synthesized ahead of playout: enough to ride out a slow provider,
# little enough that a flushed backlog wasted little synthesis.
MAX_BUFFERED_FRAMES = 500
CONVERT_SLICE_BYTES = 8192


@dataclass
class SayItem:
    text: str
    payload_type: str = "text"
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    accepted_at: float = field(default_factory=time.monotonic)


class Session:
    def __init__(self, record: Speaking, provider: Provider, codec: Codec, pacer: Pacer, model: str = "") -> None:
        self.record = record
        self.provider = provider
        self.codec: Codec = codec
        self.model = model
        self.pacer = pacer
        self.frames = FrameBuffer(MAX_BUFFERED_FRAMES)
        self.queue: deque[SayItem] = deque()
        self.stream: RtpStream | None = None
        self.last_error = ""
        self.log = log.bind(speaking_id=record.id)
        self._queue_ready = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._current: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start_synthesis(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._run_queue(), name=f"speakd-synth-{self.record.id}")

    def start_playout(self, destination: tuple[str, int]) -> None:
        self.stream = RtpStream(destination, self.codec, self.frames)
        self.pacer.add(self.stream)

    async def close(self) -> int:
        """Stop synthesis and playout; returns how many say items were dropped unplayed."""
        dropped = len(self.queue) + (1 if self._current is not None else 0)
        if self.stream is not None:
            self.pacer.remove(self.stream)
        self.queue.clear()
        self.frames.flush()
        tasks = [task for task in (self._current, self._worker) if task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._current = self._worker = None
        return dropped

    # -- commands ---------------------------------------------------------------------------

    def say(self, text: str, payload_type: str = "text") -> SayItem:
        item = SayItem(text, payload_type)
        self.queue.append(item)
        self._queue_ready.set()
        self.log.info("say_queued", say_id=item.id, chars=len(text), queued=len(self.queue))
        return item

    def flush(self) -> dict[str, int]:
        dropped_items = len(self.queue) + (1 if self._current is not None else 0)
        self.queue.clear()
        dropped_frames = self.frames.flush()
        if self._current is not None:
            self._current.cancel()
        self.log.info("flushed", dropped_items=dropped_items, dropped_frames=dropped_frames)
        return {"dropped_items": dropped_items, "dropped_frames": dropped_frames}

    # -- synthesis --------------------------------------------------------------------------

    async def _run_queue(self) -> None:
        while True:
            while not self.queue:
                self._queue_ready.clear()
                await self._queue_ready.wait()
            item = self.queue.popleft()
            generation = self.frames.generation
            self._current = asyncio.create_task(self._synthesize(item, generation), name=f"speakd-say-{item.id}")
            try:
                # wait() does not raise when the item task alone is cancelled by a flush.
                await asyncio.wait({self._current})
            finally:
                if self._current is not None and self._current.done() and not self._current.cancelled():
                    self._current.exception()  # retrieved: logged inside _synthesize
                self._current = None

    async def _synthesize(self, item: SayItem, generation: int) -> None:
        request = SynthesisRequest(
            text=item.text,
            language=self.record.language,
            voice_id=self.record.voice_id,
            codec=self.codec,
            payload_type=item.payload_type,  # type: ignore[arg-type]
            model=self.model,
        )
        encoder = FrameEncoder(self.codec)
        first = True
        frames = 0
        try:
            async with contextlib.aclosing(self.provider.synthesize(request)) as chunks:
                async for chunk in chunks:
                    if first:
                        first = False
                        self.log.info(
                            "say_first_audio",
                            say_id=item.id,
                            latency_ms=round((time.monotonic() - item.accepted_at) * 1000, 1),
                        )
                        self.frames.mark(generation, self._mark_started(item))
                    # Convert in slices: a sentence-sized chunk at once would hold the GIL (and
                    # the loop) for milliseconds; slices let the loop and the pacer breathe.
                    for start in range(0, len(chunk.data), CONVERT_SLICE_BYTES):
                        piece = chunk.data[start : start + CONVERT_SLICE_BYTES]
                        for frame in encoder.feed(piece, chunk.format):
                            if not await self.frames.put(generation, frame):
                                return
                            frames += 1
                        await asyncio.sleep(0)
            for frame in encoder.finish():
                if not await self.frames.put(generation, frame):
                    return
                frames += 1
            self.frames.mark(generation, self._mark_finished(item, frames))
        except ProviderError as exc:
            self.last_error = exc.message
            self.log.error("say_failed", say_id=item.id, error=exc.message, frames_queued=frames)
        except asyncio.CancelledError:
            self.log.info("say_cancelled", say_id=item.id, frames_queued=frames)
            raise
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.log.exception("say_failed", say_id=item.id)

    def _mark_started(self, item: SayItem):
        def fire() -> None:
            self.log.info(
                "say_playing", say_id=item.id, latency_ms=round((time.monotonic() - item.accepted_at) * 1000, 1)
            )

        return fire

    def _mark_finished(self, item: SayItem, frames: int):
        def fire() -> None:
            self.log.info("say_played", say_id=item.id, duration_ms=frames * 20)

        return fire
