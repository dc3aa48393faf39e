"""A client's text stream into a speaking session (``GET /v1.0/speakings/{id}/stream``).

Text arrives in small pieces (an LLM's tokens); the chunker turns it into sentences (or a first
clause) and each becomes one say of the session, so speech starts at the first complete
sentence while the model is still writing, and each sentence gets its own events and its own
"what was heard". Says are per chunk, not per flush: a barge-in then reports what was heard
sentence by sentence, and a sentence plays as soon as it is complete instead of when the
client flushes. Where the provider has streaming text input, every chunk of the stream goes
over one provider connection (``TextStream``), so prosody carries over and no sentence pays
for a connection.

Client messages: ``text`` (append), ``flush`` (speak everything buffered now), ``reset`` (drop
what is buffered and cut what plays: barge-in), ``finish`` (speak what is left, close once it
has played). Server messages: ``ready``, ``flush_complete``/``reset_complete`` with the
client's ``nonce`` (reset's with ``heard_text``: what the caller heard of the text since the
previous reset, and ``protected_says``: the must-play says it did not cut), ``timestamps``
(per say, once played: its words on the call's timeline), ``played`` (a finish is done),
``error`` (then the socket closes).

This module has no socket: the WebSocket handler feeds it messages and sends what ``send``
is given.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from speakd.errors import SpeakdError, either
from speakd.parsing import load_json_object
from speakd.providers.base import TextStream
from speakd.sessions.chunker import TextChunker
from speakd.sessions.says import SayItem, SayStatus
from speakd.store.records import seconds_of, stamp_of
from speakd.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]
# Queue a chunk as a say of the session: (text, text_stream) -> the say.
QueueChunk = Callable[[str, TextStream | None], Awaitable[SayItem]]
# Cut what plays and drop what is queued (the session's flush): the must-play says it left.
CutSession = Callable[[], list[SayItem]]
# The say once it is final.
WaitFinal = Callable[[SayItem], Awaitable[SayItem]]

MESSAGE_TYPES = ("text", "flush", "reset", "finish")  # what a client sends
MAX_MESSAGE_CHARS = 16_384
# Text held without a place to cut it (one endless word): beyond this the client is told so.
MAX_BUFFERED_CHARS = 20_000


class StreamProtocolError(Exception):
    """A client message that is not one of the protocol's; the message says what to send."""


def error_message(message: str, reason: str = "") -> dict[str, Any]:
    """The ``error`` message of speakd's WebSockets (this stream's, the events'): ``reason`` where
    the error has one."""
    return {"type": "error", "message": message} | ({"reason": reason} if reason else {})


def parse_message(raw: str) -> dict[str, Any]:
    try:
        message = load_json_object(raw, "the message")
    except ValueError as exc:
        raise StreamProtocolError(f'{exc}; e.g. {{"type": "text", "text": "Hello"}}') from None
    kind = message.get("type")
    if kind == "text":
        if not isinstance(message.get("text"), str):
            raise StreamProtocolError("a 'text' message needs 'text': a string")
    elif kind in ("flush", "reset"):
        nonce = message.get("nonce")
        if nonce is not None and (isinstance(nonce, bool) or not isinstance(nonce, int | str)):
            raise StreamProtocolError(f"'nonce' of a '{kind}' message is a number or a string")
    elif kind != "finish":
        raise StreamProtocolError(f"'type' must be {either(MESSAGE_TYPES)}")
    return message


class SpeakingStream:
    def __init__(
        self,
        *,
        speaking_id: str,
        queue_chunk: QueueChunk,
        cut: CutSession,
        wait_final: WaitFinal,
        send: Send,
        close: Callable[[], Awaitable[None]],
        chunker: TextChunker,
        text_stream: TextStream | None = None,
        timestamps: bool = False,
    ) -> None:
        self.speaking_id = speaking_id
        self._queue_chunk = queue_chunk
        self._cut = cut
        self._wait_final = wait_final
        self._send = send
        self._close = close
        self._chunker = chunker
        self._text_stream = text_stream
        self._timestamps = timestamps
        # The says the follower has not seen final yet, in order, each with the reset it came
        # after; of those it has, only what was heard is kept (memory does not grow with says).
        self._says: collections.deque[tuple[int, SayItem]] = collections.deque()
        self._resets = 0
        # What was heard of the says final since the last reset (a reset's, and a finish's,
        # heard_text): one turn of a conversation, not the whole stream's.
        self._heard_since_reset: list[str] = []
        self._said = asyncio.Event()  # a say was added (wakes the follower)
        self._finishing = False
        self._timer_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.log = log.bind(speaking_id=speaking_id)

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._release_on_time(), name=f"speakd-stream-timer-{self.speaking_id}"),
            asyncio.create_task(self._follow_says(), name=f"speakd-stream-follow-{self.speaking_id}"),
        ]
        await self._send({"type": "ready", "speaking_id": self.speaking_id, "timestamps": self._timestamps})

    async def handle(self, raw: str) -> None:
        """One client message. Raises StreamProtocolError (send it, then close) or SpeakdError."""
        if len(raw) > MAX_MESSAGE_CHARS:
            raise StreamProtocolError(f"a message is at most {MAX_MESSAGE_CHARS} characters; send text in pieces")
        if self._finishing:
            raise StreamProtocolError("the stream is finishing: nothing more can be sent on it")
        message = parse_message(raw)
        kind = message["type"]
        if kind == "text":
            await self._queue(self._chunker.feed(message["text"], time.monotonic()))
            if len(self._chunker.buffered) > MAX_BUFFERED_CHARS:
                raise StreamProtocolError(
                    f"more than {MAX_BUFFERED_CHARS} characters buffered with no place to cut them; "
                    "send sentences, or flush"
                )
            self._timer_wake.set()
        elif kind == "flush":
            await self._queue(self._chunker.flush())
            await self._all_ready()
            await self._send({"type": "flush_complete", "nonce": message.get("nonce")})
        elif kind == "reset":
            dropped = self._chunker.reset()
            # Every say queued or playing reads interrupted now, with what was heard; must-play ones play on.
            protected = self._cut()
            heard = " ".join([*self._heard_since_reset, *self._heard_of(self._resets)])
            self._resets += 1
            self._heard_since_reset = []
            self.log.info("stream_reset", dropped_chars=len(dropped), heard_chars=len(heard))
            await self._send(
                {
                    "type": "reset_complete",
                    "nonce": message.get("nonce"),
                    "heard_text": heard,
                    "protected_says": [item.say_id for item in protected],
                }
            )
        else:  # finish: the follower sends "played" once the last say is final
            await self._queue(self._chunker.flush())
            self._finishing = True
            self._said.set()

    @property
    def finishing(self) -> bool:
        return self._finishing

    async def end(self, why: str) -> None:
        """The session ended under the stream: tell the client, close the socket."""
        await self._send(error_message(why, "stopped"))
        await self._close()

    async def wait_played(self) -> None:
        """Until a finish has been played (the follower sent ``played``)."""
        await self._tasks[1]

    async def aclose(self) -> None:
        """The client is gone: drop what is buffered; says already queued play on. The provider
        connection closes once they have (or the session ends)."""
        await cancel_and_wait(*self._tasks)
        if self._chunker.buffered:
            self.log.info("stream_closed_with_text_buffered", chars=len(self._chunker.buffered))
        if self._text_stream is not None:
            for _, item in self._says:
                await item.ready.wait()  # synthesized, or ended: the connection is not needed
            await self._text_stream.aclose()

    # -- inside --------------------------------------------------------------------------------

    async def _queue(self, chunks: list[str]) -> None:
        for chunk in chunks:
            item = await self._queue_chunk(chunk, self._text_stream)
            self._says.append((self._resets, item))
            self._said.set()

    async def _all_ready(self) -> None:
        for _, item in list(self._says):
            await item.ready.wait()

    def _heard_of(self, resets: int) -> list[str]:
        """What was heard of the says not seen final yet that came after reset ``resets``."""
        return [item.heard_text for after, item in self._says if after == resets and item.heard_text]

    async def _release_on_time(self) -> None:
        """The chunker's bounded wait: release held text when it is due."""
        while True:
            due = self._chunker.next_due()
            self._timer_wake.clear()
            if due is None:
                await self._timer_wake.wait()
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, due - time.monotonic())):
                    await self._timer_wake.wait()
                    continue
            try:
                await self._queue(self._chunker.due(time.monotonic()))
            except SpeakdError as exc:  # e.g. the session ended: the handler reports it on the next message
                self.log.info("stream_release_refused", error=exc.message)
                return

    async def _follow_says(self) -> None:
        """Each say, in order, once final: its words' timings; after a finish, ``played``."""
        while True:
            while not self._says:
                if self._finishing:
                    await self._send({"type": "played", "heard_text": " ".join(self._heard_since_reset)})
                    return
                self._said.clear()
                await self._said.wait()
            after, said = self._says[0]
            item = await self._wait_final(said)
            self._says.popleft()
            if item.heard_text and after == self._resets:
                self._heard_since_reset.append(item.heard_text)
            if self._timestamps and item.status in (SayStatus.PLAYED, SayStatus.INTERRUPTED) and item.played_ms:
                await self._send(timestamps_message(item))


def timestamps_message(item: SayItem) -> dict[str, Any]:
    """The words of a played (or cut) say with their start and duration on the call's timeline
    (UTC, the spec's format), as far as they were heard."""
    start = seconds_of(item.tm_play_start)
    words = [
        {
            "word": word,
            "start": stamp_of(start + begin_ms / 1000),
            "start_ms": begin_ms,
            "duration_ms": end_ms - begin_ms,
        }
        for word, begin_ms, end_ms in item.word_times()
        if end_ms <= item.played_ms
    ]
    return {
        "type": "timestamps",
        "say_id": item.say_id,
        "text": item.text,
        "tm_play_start": item.tm_play_start,
        "estimated": not item.word_marks,
        "words": words,
    }
