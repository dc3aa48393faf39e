"""Say items: what was asked, and what of it the call actually heard.

A say moves ``queued -> playing -> played``, or ends ``interrupted`` (a flush, stop or hangup
cut it: ``heard_chars`` says how much of its text had been played) or ``failed`` (the
provider's message in ``error``; audio already played stays counted).

What was heard is read off the say's *word marks*: pairs (audio ms into the say, characters
spoken by then). Providers that report alignments give exact marks; for the others they are
estimated from the text's words spread over the audio.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import re
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from speakd.providers.base import TextStream
from speakd.sessions.lexicons import Rewrite
from speakd.store.records import NOT_YET, SAY_COLUMNS, now_stamp


class SayStatus(StrEnum):
    QUEUED = "queued"
    PLAYING = "playing"
    PLAYED = "played"
    INTERRUPTED = "interrupted"
    FAILED = "failed"


FINAL = frozenset({SayStatus.PLAYED, SayStatus.INTERRUPTED, SayStatus.FAILED})

_WORD_END = re.compile(r"\S+")


@dataclass(eq=False)
class SayItem:
    speaking_id: str
    text: str
    payload_type: str = "text"
    client_state: str = ""  # the client's, opaque: echoed in this say's events
    command_id: str = ""  # the client's idempotency key, if it gave one
    say_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    status: SayStatus = SayStatus.QUEUED
    error: str = ""
    heard_chars: int = 0
    played_ms: int = 0
    tm_queued: str = field(default_factory=now_stamp)
    tm_play_start: str = NOT_YET
    tm_play_end: str = NOT_YET
    # Who spoke it, in order: {"provider", "voice_id"} of each provider that gave it audio (more
    # than one when it went on with a fallback provider: speakd.providers.fallback).
    spoken_by: list[dict[str, str]] = field(default_factory=list)
    # Each provider that failed on it, in order: {"provider", "voice_id", "stage" (before_audio or
    # mid_say), "error"}; the last one's error is also the say's if none was left to go on.
    provider_failures: list[dict[str, str]] = field(default_factory=list)
    # False: must be heard whole: a flush or a stop of says does not cut it, only the session's end.
    interruptible: bool = True
    volume: float = 0.0  # dB on top of the one loudness every say is brought to
    lexicon: str = ""  # the lexicon its text goes through before synthesis ('' for none)
    # Run-time only (not stored): where the say sits on the playout timeline, and its marks.
    start_ms: int | None = field(default=None, repr=False)
    synthesized_ms: int = field(default=0, repr=False)
    synthesized: bool = field(default=False, repr=False)
    word_marks: list[tuple[int, int]] = field(default_factory=list, repr=False)
    # Set once all its audio is synthesized and queued to play, or it ended without.
    ready: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    # A streamed say's provider connection, kept across the stream's chunks (None: synthesize alone).
    text_stream: TextStream | None = field(default=None, repr=False)
    # False: the say's text may be personal; its audio is never kept in the audio cache.
    cache: bool = field(default=True, repr=False)
    # The text as providers read it, its lexicon applied (None: as sent); marks are mapped back.
    rewrite: Rewrite | None = field(default=None, repr=False)

    STORED = SAY_COLUMNS
    # The say as the API shows it (also the fields the OpenAPI document's Say requires).
    SHOWN = (
        "say_id",
        "text",
        "payload_type",
        "client_state",
        "command_id",
        "status",
        "error",
        "heard_chars",
        "heard_text",
        "played_ms",
        "tm_queued",
        "tm_play_start",
        "tm_play_end",
        "spoken_by",
        "provider_failures",
        "interruptible",
        "lexicon",
        "volume",
    )
    # Stored as JSON text.
    JSON_COLUMNS = ("spoken_by", "provider_failures")

    @property
    def heard_text(self) -> str:
        return self.text[: self.heard_chars]

    @property
    def final(self) -> bool:
        return self.status in FINAL

    def row(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.STORED} | {
            name: json.dumps(getattr(self, name)) for name in self.JSON_COLUMNS
        }

    def to_dict(self) -> dict[str, Any]:
        """The say item as the API shows it."""
        return {name: getattr(self, name) for name in self.SHOWN} | {"status": str(self.status)}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> SayItem:
        values = {k: row[k] for k in cls.STORED}
        values["status"] = SayStatus(values["status"])
        values["interruptible"] = bool(values["interruptible"])  # SQLite keeps 1 or 0
        for name in cls.JSON_COLUMNS:
            values[name] = json.loads(values[name] or "[]")
        item = cls(**values)
        if item.status in FINAL:  # it ended: nothing more of it will be synthesized
            item.ready.set()
        return item

    def reset_synthesis(self) -> None:
        """Back to unsynthesized: a later say's audio was thrown away with the one cut before it."""
        self.start_ms = None
        self.synthesized_ms = 0
        self.synthesized = False
        self.error = ""
        self.word_marks = []
        self.spoken_by = []
        self.provider_failures = []
        self.ready.clear()

    def spoken(self, provider: str, voice_id: str) -> None:
        """``provider`` with ``voice_id`` gave this say audio (after any that did before)."""
        self.spoken_by.append({"provider": provider, "voice_id": voice_id})

    def provider_failed(self, provider: str, voice_id: str, stage: str, error: str) -> None:
        """``provider`` with ``voice_id`` failed on this say (``stage``: before_audio or mid_say)."""
        self.provider_failures.append({"provider": provider, "voice_id": voice_id, "stage": stage, "error": error})

    def word_times(self) -> list[tuple[str, int, int]]:
        """(word, start ms, end ms) into the say's audio for each word its marks reach. A word
        ends at the first mark reaching its last character and the next one starts at the last
        mark with those characters (they differ across a pause: see the providers' marks)."""
        marks = self.word_marks or self._estimated_marks()
        words: list[tuple[str, int, int]] = []
        start = 0
        for match in _WORD_END.finditer(self.text):
            first = bisect.bisect_left(marks, match.end(), key=lambda mark: mark[1])  # first reaching it
            if first == len(marks):
                break
            reached = marks[first][1]
            last = bisect.bisect_right(marks, reached, key=lambda mark: mark[1]) - 1
            end = max(start, marks[first][0])
            words.append((match.group(), start, end))
            start = max(end, marks[last][0])
        return words

    # -- what was heard ---------------------------------------------------------------------

    @property
    def spoken_text(self) -> str:
        """What the provider reads: the text with its lexicon applied."""
        return self.text if self.rewrite is None else self.rewrite.text

    def add_word_mark(self, audio_ms: int, chars: int) -> None:
        """Text up to ``chars`` of ``spoken_text`` had been spoken ``audio_ms`` into the say's
        audio (kept as characters of ``text``)."""
        self.word_marks.append((audio_ms, chars if self.rewrite is None else self.rewrite.original_chars(chars)))

    def chars_heard_by(self, played_ms: int) -> int:
        """Characters of the text fully played after ``played_ms`` of the say's audio."""
        if self.synthesized and not self.error and played_ms >= self.synthesized_ms:
            return len(self.text)
        marks = self.word_marks or self._estimated_marks()
        index = bisect.bisect_right(marks, (played_ms, len(self.text) + 1))
        return marks[index - 1][1] if index else 0

    def _estimated_marks(self) -> list[tuple[int, int]]:
        # No alignment: spread the words over the audio in proportion to their length (over
        # the known total once all of it is synthesized, else at a typical 14 characters a second).
        complete = self.synthesized and not self.error
        total_ms = self.synthesized_ms if complete else max(self.synthesized_ms, len(self.text) * 1000 // 14)
        if not self.text or total_ms <= 0:
            return []
        return [(m.end() * total_ms // len(self.text), m.end()) for m in _WORD_END.finditer(self.text)]
