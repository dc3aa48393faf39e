# ruff: noqa: RUF001, RUF002 - this module is about look-alike punctuation of many scripts
"""Streamed text into speakable chunks: where an LLM's token stream is cut into says.

Tokens arrive as a few characters at a time; each chunk :class:`TextChunker` releases becomes one
say. A say per token breaks prosody, one say for the whole reply delays the first word by seconds,
so chunks are whole sentences, or a clause when that gets the first speech out sooner. Pure logic:
no I/O, no clock (times are passed in), deterministic.

Rules
-----
*Sentence ends.* ``.`` ``!`` ``?`` ``…`` ``‽`` (with runs such as ``?!`` or ``...`` and closing quotes
or brackets after them) end a sentence only when followed by whitespace (or markup) and then text
that does not start in lowercase. So a final ``.`` is not yet an end (the next token may be ``com``
or ``14``): the chunker waits for the next characters, or for ``max_wait_s``. Because an end needs
whitespace after it, nothing is ever cut inside ``example.com``, ``www.example.co.uk``, URLs,
e-mail addresses, ``3.14``, ``1,000.50`` or ``v2.5.1``. A ``.`` followed by whitespace is still not an
end after a title (``Dr. Smith``, ``Mr.``, ``St.``, ``vs.``), a single capital initial
(``J. R. R. Tolkien``), an initialism (``U.S.``, ``e.g.``, ``i.e.``, ``Ph.D.``), an abbreviation followed
by a number (``No. 5``, ``p. 12``, ``Jan. 3``) or a list number at the start of a line (``1. First``).
Any of these ends followed by lowercase is not an end (``etc. and``, ``Well... maybe``, ``Yahoo! is``). Joining
two sentences by mistake costs nothing audible; splitting one does, so doubtful cases join.

*Other scripts.* ``。`` ``！`` ``？`` ``．`` ``｡`` (CJK), ``।`` ``॥`` (Devanagari), ``؟`` ``۔`` (Arabic, Urdu),
``։`` (Armenian), ``።`` (Ethiopic), ``။`` (Myanmar), ``។`` (Khmer) and the Greek question mark U+037E
end a sentence with no whitespace after them (``．`` between digits is a decimal point). In Greek
text the question mark is usually typed as ASCII ``;``: a ``;`` right after a Greek letter is a
sentence end, not a clause end (Greek's own semicolon is the ano teleia ``·``, a clause end).
Thai has no sentence punctuation: its text is cut by ``max_chars`` at spaces, by the waits, or by a
flush. A line break is a sentence end too (list items, headings).

*Clauses.* ``,`` ``;`` ``:`` ``–`` and `` - `` followed by whitespace, and ``—`` ``，`` ``、`` ``；`` ``：``
``،`` ``؛`` ``·`` ``፣`` anywhere. Until a chunk has been released (at the start, and again after a
flush or a reset: a new utterance) a sentence or clause end with at least ``first_min_chars`` before
it is released at once, so speech starts early. Later chunks are whole sentences.

*Lengths* count speakable characters: not whitespace, not markup; East Asian wide characters count
two. A sentence shorter than ``min_chars`` ("Yes.") is held to join the next one, until
``max_wait_s`` has passed or a flush. A chunk that reaches ``max_chars`` without a sentence end is cut
at its last clause or held sentence end if the chunk cut there is at least half of ``max_chars``, else
at its last word boundary, else between two wide (CJK) characters; a single "word" (a long URL) is never
cut: it ends at the next whitespace.

*Waits* (:meth:`TextChunker.due`, on the caller's timer at :meth:`TextChunker.next_due`). A
finished sentence that is held (a final ``.`` still undecided, or too short) is released
``max_wait_s`` after its end arrived, so a stalled model does not hold a finished sentence. Text with
no end at all is released when no text has come for ``stall_wait_s``, up to its last word boundary
(a trailing word may be half a token), and only if that is at least the minimum length; otherwise it
waits for more text or a flush.

*Markup.* ``<`` followed by a letter, ``/``, ``!`` or ``?`` opens a tag that ends at ``>``; nothing is
released while a tag is open (a ``<`` with no ``>`` within 200 characters, or with another ``<``
first, was just text; ``x < y`` is text at once). SSML elements are tracked: nothing is cut inside
``say-as``, ``sub``, ``phoneme``, ``audio``, ``w`` or ``token``; a cut inside a container (``speak``,
``p``, ``s``, ``prosody``, ``voice``, ``lang``, ``emphasis``, ``amazon:*``) closes its open containers at the
end of the chunk and reopens them at the start of the next one, so every chunk of an SSML document
is a well-formed document. Other tag names (``break``, ``mark``, unknown ones) are kept whole and
open nothing.

*Whitespace.* Chunks are stripped at both ends and keep their inner spacing. Chunks with nothing
speakable (whitespace, closing tags) are dropped.

*Determinism.* Every decision at a position depends only on the text up to a bounded lookahead
past it, and the chunker waits for that lookahead: without the timer, chunk boundaries do not
depend on how the text was split into tokens. Each feed's work is proportional to the new text
(plus the bounded lookahead and word being examined).
"""

from __future__ import annotations

import re
import unicodedata
from typing import NamedTuple

# Ends that need whitespace (or markup) and then non-lowercase text after them.
_SPACED_ENDS = frozenset(".!?…‽")
# Ends that are unambiguous: no whitespace needed after them.
_UNSPACED_ENDS = frozenset("。！？．｡।॥؟۔։።။។\u037e")
_ENDS = _SPACED_ENDS | _UNSPACED_ENDS
_CLOSERS = frozenset("\"')]}»”’」』）】〕〉》›")
# Clause ends that need whitespace after them ("-" also needs a space before it).
_SPACED_CLAUSES = frozenset(",;:–-")
_UNSPACED_CLAUSES = frozenset("—，、；：،؛\u0387፣")
# Characters that end the "word" examined before a ".".
_WORD_STOPS = frozenset("—–([{<>\"'“‘«")
_OPENERS = "\"'([{“‘«¿¡"

# Before ". X" with X uppercase or not a letter: an abbreviation, not a sentence end.
_TITLES = frozenset(
    "Mr Mrs Ms Mx Dr Drs Prof St Mt Ft Sr Jr Sra Srta Dra Hr Gen Col Capt Lt Sgt Cmdr Adm Gov Sen Rep "  # noqa: SIM905
    "Pres Rev Hon Fr Messrs Mme Mlle vs Vs cf viz".split()
)
# Before ". 5": an abbreviation of what the number counts.
_NUMBER_ABBREVIATIONS = frozenset(
    "No no Nos nos Nr nr pp p Vol vol Ch ch Fig fig Art art Sec sec Op op Ed ed Apt apt approx ca "  # noqa: SIM905
    "Jan Feb Mar Apr Jun Jul Aug Sep Sept Oct Nov Dec".split()
)

_SSML_CONTAINERS = frozenset({"speak", "p", "s", "paragraph", "sentence", "prosody", "voice", "lang", "emphasis"})
_SSML_ATOMIC = frozenset({"say-as", "sub", "phoneme", "audio", "w", "token"})
_MAX_TAG_CHARS = 200
_TAG_NAME = re.compile(r"<\s*(/?)\s*([\w:.-]+)")
_TAG = re.compile(r"<[^<>]*>")


def _weight(text: str) -> int:
    """Speakable length: whitespace counts nothing, East Asian wide characters two."""
    return sum(_char_weight(c) for c in text if not c.isspace())


def _char_weight(c: str) -> int:
    # Per character of streamed text: the width test inline, one call.
    return 2 if c >= "\u1100" and unicodedata.east_asian_width(c) in "WF" else 1


def _is_greek_letter(c: str) -> bool:
    return ("\u0370" <= c <= "\u03ff" or "\u1f00" <= c <= "\u1fff") and c.isalpha()


class _Element(NamedTuple):
    name: str
    open_tag: str


class _Cut(NamedTuple):
    """A place the buffer may be cut: the chunk is ``buffer[:index]``."""

    index: int
    weight: int  # speakable weight of buffer[:index]
    open_elements: tuple[_Element, ...]  # SSML containers open at index


class TextChunker:
    """Cuts an incremental text stream into chunks to speak (see the module docstring).

    ``min_chars``: a later chunk's minimum length (a shorter sentence waits to join the next).
    ``first_min_chars``: the first chunk's minimum, for a sentence or a clause end.
    ``max_wait_s``: how long a finished but held sentence waits (undecided ``.``, too short).
    ``max_chars``: a chunk longer than this is cut at a clause or word boundary.
    ``stall_wait_s``: after this long without text, text with no end is released up to its last
    word boundary if it is at least the minimum length.

    The defaults suit 1-4 character tokens every 20-50 ms: the next character after a final ``.``
    is a token away (0.5 s means the model stalled), and 20 characters is a short sentence.

    The caller owns the timer: after each :meth:`feed`, :meth:`due` or :meth:`flush`, wait until
    :meth:`next_due` (if not None) and call :meth:`due` then. Times are seconds of one monotonic
    clock. :attr:`buffered` and :meth:`reset` give the text as fed; released chunks may carry
    SSML containers closed and reopened around them (see the module docstring).
    """

    def __init__(
        self,
        *,
        min_chars: int = 20,
        first_min_chars: int = 12,
        max_wait_s: float = 0.5,
        max_chars: int = 240,
        stall_wait_s: float = 2.0,
    ) -> None:
        if not 0 <= first_min_chars <= max_chars or not 0 <= min_chars <= max_chars:
            raise ValueError("min_chars and first_min_chars must be between 0 and max_chars")
        if max_chars < 2:
            raise ValueError("max_chars must be at least 2")
        if max_wait_s < 0 or stall_wait_s < 0:
            raise ValueError("max_wait_s and stall_wait_s must not be negative")
        self.min_chars = min_chars
        self.first_min_chars = first_min_chars
        self.max_wait_s = max_wait_s
        self.max_chars = max_chars
        self.stall_wait_s = stall_wait_s
        self._clear()

    def _clear(self) -> None:
        self._buf = ""
        self._pos = 0  # buffer[:pos] has been scanned
        self._weight = 0  # speakable weight of buffer[:pos]
        self._released_any = False
        self._at_stream_start = True  # buffer[0] is the first character of the stream (or since a reset)
        self._elements: list[_Element] = []  # open SSML elements at pos
        self._reopen: tuple[_Element, ...] = ()  # containers a previous chunk closed, reopened in the next
        self._atomic_depth = 0
        self._tag_start: int | None = None
        self._tag_quote = ""
        self._held: _Cut | None = None  # latest sentence end kept back (too short)
        self._held_since = 0.0
        self._clause: _Cut | None = None  # latest clause end
        self._word: _Cut | None = None  # latest word boundary
        self._pending_end: int | None = None  # an end candidate waiting for its lookahead
        self._pending_since = 0.0
        # How far its lookahead was read (a long run of spaces is read once, not once per token).
        self._pending_run_end = 0
        self._pending_read = 0
        self._last_text_at = 0.0

    # -- the interface ------------------------------------------------------------------------

    @property
    def buffered(self) -> str:
        """The text fed and not yet released."""
        return self._buf

    def feed(self, text: str, now: float) -> list[str]:
        """Append ``text`` (arrived at ``now``); the chunks now complete, in order."""
        if not text:
            return []
        self._buf += text
        self._last_text_at = now
        return self._scan(now)

    def due(self, now: float) -> list[str]:
        """Release what a bounded wait has passed for (see :meth:`next_due`)."""
        out: list[str] = []
        if self._pending_end is not None and now >= self._pending_since + self.max_wait_s:
            # An undecided end waited long enough: it is an end, whatever comes next.
            i = self._pending_end
            j = self._run_end(i)
            self._pending_end = None
            self._weight += _weight(self._buf[i:j])
            self._pos = j
            self._emit(_Cut(j, self._weight, self._open_containers()), out)
            out += self._scan(now)
        elif self._held is not None and now >= self._held_since + self.max_wait_s:
            self._emit(self._held, out)
        stall = self._stall_cut()
        if stall is not None and now >= self._last_text_at + self.stall_wait_s:
            self._emit(stall, out)
        return out

    def next_due(self) -> float | None:
        """When :meth:`due` would release something (None: only more text or a flush will)."""
        times = []
        if self._pending_end is not None:
            times.append(self._pending_since + self.max_wait_s)
        if self._held is not None:
            times.append(self._held_since + self.max_wait_s)
        if self._stall_cut() is not None:
            times.append(self._last_text_at + self.stall_wait_s)
        return min(times, default=None)

    def flush(self) -> list[str]:
        """Everything buffered, now, as one chunk (an open tag too: the client said the text is
        complete); the next chunk is a first chunk again. SSML containers stay open across it."""
        out: list[str] = []
        if self._buf:
            # Only the markup matters now (which containers stay open): read the tags left.
            buf = self._buf
            while self._pos < len(buf):
                if self._tag_start is not None:
                    if not self._step_tag(self._pos):
                        break  # an unfinished tag: it goes out as text
                elif buf[self._pos] == "<" and self._pos + 1 < len(buf) and self._opens_tag(buf[self._pos + 1]):
                    self._tag_start = self._pos
                    self._pos += 1
                else:
                    self._pos += 1
            self._emit(_Cut(len(buf), self._weight, self._open_containers()), out)
            self._tag_start = None
            self._tag_quote = ""
            self._pending_end = None
            self._pos = 0
            self._weight = 0
        self._released_any = False
        return out

    def reset(self) -> str:
        """Drop everything buffered (and any open SSML elements); returns the text dropped."""
        dropped = self._buf
        self._clear()
        return dropped

    # -- scanning -----------------------------------------------------------------------------

    def _scan(self, now: float) -> list[str]:
        out: list[str] = []
        while self._pos < len(self._buf):
            if self._tag_start is not None:
                if not self._step_tag(self._pos):
                    break
            elif not self._step_text(self._pos, now, out):
                break
        return out

    def _step_tag(self, i: int) -> bool:
        """One character inside a would-be tag; False: wait for more text."""
        c = self._buf[i]
        start = self._tag_start
        assert start is not None
        if self._tag_quote:
            if c == self._tag_quote:
                self._tag_quote = ""
        elif c in "\"'":
            self._tag_quote = c
        elif c == ">":
            self._tag_start = None
            self._pos = i + 1
            self._on_tag(self._buf[start : i + 1])
            return True
        elif c == "<":
            self._not_a_tag(start)
            return True
        if i - start >= _MAX_TAG_CHARS:
            self._not_a_tag(start)
            return True
        self._pos = i + 1
        return self._pos < len(self._buf)

    def _not_a_tag(self, start: int) -> None:
        # The "<" was text: scan again from after it.
        self._tag_start = None
        self._tag_quote = ""
        self._weight += 1
        self._pos = start + 1

    def _on_tag(self, tag: str) -> None:
        m = _TAG_NAME.match(tag)
        if m is None or tag.endswith("/>"):
            return
        closing, name = m.group(1), m.group(2).lower()
        kind = self._element_kind(name)
        if kind is None:
            return
        if not closing:
            self._elements.append(_Element(name, tag))
            self._atomic_depth += kind == "atomic"
            return
        for k in range(len(self._elements) - 1, -1, -1):
            if self._elements[k].name == name:
                for element in self._elements[k:]:
                    self._atomic_depth -= self._element_kind(element.name) == "atomic"
                del self._elements[k:]
                return

    @staticmethod
    def _element_kind(name: str) -> str | None:
        if name in _SSML_CONTAINERS or name.startswith("amazon:"):
            return "container"
        if name in _SSML_ATOMIC:
            return "atomic"
        return None

    def _open_containers(self) -> tuple[_Element, ...]:
        return tuple(self._elements)

    @staticmethod
    def _opens_tag(c: str) -> bool:
        return c.isalpha() or c in "/!?"

    def _step_text(self, i: int, now: float, out: list[str]) -> bool:
        """One character of text at ``i``; False: wait for more text."""
        buf = self._buf
        c = buf[i]
        n = len(buf)
        if c == "<":
            if i + 1 == n:
                return False
            if self._opens_tag(buf[i + 1]):
                self._tag_start = i
                self._tag_quote = ""
                self._pos = i + 1
                return True
        safe = self._atomic_depth == 0
        if safe and (c in _ENDS or (c == ";" and i > 0 and _is_greek_letter(buf[i - 1]))):
            decision, j = self._decide_end(i)
            if decision == "wait":
                if self._pending_end != i:
                    self._pending_end = i
                    self._pending_since = now
                return False
            since = self._pending_since if self._pending_end == i else now
            self._pending_end = None
            self._weight += _weight(buf[i:j])
            self._pos = j
            if decision == "end":
                self._on_sentence_end(_Cut(j, self._weight, self._open_containers()), since, out)
            return True
        if safe and (c in _UNSPACED_CLAUSES or c in _SPACED_CLAUSES):
            if c in _SPACED_CLAUSES:
                if i + 1 == n:
                    return False
                is_clause = buf[i + 1].isspace() and (c != "-" or (i > 0 and buf[i - 1] == " "))
            else:
                is_clause = True
            self._weight += 1
            self._pos = i + 1
            if is_clause:
                cut = _Cut(i + 1, self._weight, self._open_containers())
                self._clause = cut
                if not self._released_any and cut.weight >= self.first_min_chars:
                    self._emit(cut, out)
                else:
                    self._check_max(i, out)
            else:
                self._check_max(i, out)
            return True
        self._pos = i + 1
        if c.isspace():
            if safe and i > 0 and not buf[i - 1].isspace():
                self._word = _Cut(i, self._weight, self._open_containers())
            if safe and c == "\n":
                start = i
                while start > 0 and buf[start - 1].isspace():
                    start -= 1
                # A line break ends a sentence (cut where the text before it ends).
                self._on_sentence_end(_Cut(start, self._weight, self._open_containers()), now, out)
            return True
        self._weight += _char_weight(c)
        self._check_max(i, out)
        return True

    def _run_end(self, i: int, read: int = 0) -> int:
        """End of the run of end marks and closing quotes/brackets starting at ``i`` (read up to
        ``read`` already)."""
        buf = self._buf
        j = max(i + 1, read)
        while j < len(buf) and (buf[j] in _ENDS or buf[j] in _CLOSERS):
            j += 1
        return j

    def _decide_end(self, i: int) -> tuple[str, int]:
        """Whether the end mark at ``i`` ends a sentence: ("end" | "no" | "wait", end of its run)."""
        buf = self._buf
        n = len(buf)
        resumed = self._pending_end == i
        j = self._run_end(i, self._pending_run_end if resumed else 0)
        if j == n:
            self._pending_run_end = self._pending_read = j
            return "wait", j
        run = buf[i:j]
        if any(c in _UNSPACED_ENDS for c in run):
            if run[0] == "．" and i > 0 and buf[i - 1].isdigit() and buf[j].isdigit():
                return "no", j  # a full-width decimal point
            return "end", j
        if buf[j] == "<":
            return "end", j  # markup after the end: "Hello.<break/>"
        if not buf[j].isspace():
            return "no", j  # example.com, 3.14, v2.5.1, U.S (inner), ?d=e
        k = max(j, self._pending_read) if resumed else j
        while k < n and buf[k].isspace():
            if buf[k] == "\n":
                return "end", j
            k += 1
        if k == n:
            self._pending_run_end, self._pending_read = j, k
            return "wait", j
        following = buf[k]
        if following.islower():
            return "no", j  # etc. and / Well... maybe / e.g. the
        if run == "." and self._is_abbreviation(i, following):
            return "no", j
        return "end", j

    def _is_abbreviation(self, i: int, following: str) -> bool:
        """Whether the word before the "." at ``i`` is an abbreviation, given the next text starts
        with ``following`` (not lowercase)."""
        buf = self._buf
        start = i
        while start > 0 and not buf[start - 1].isspace() and buf[start - 1] not in _WORD_STOPS:
            start -= 1
        word = buf[start:i].lstrip(_OPENERS)
        if not word:
            return False
        if word in _TITLES:
            return True
        if following.isdigit() and word in _NUMBER_ABBREVIATIONS:
            return True
        if len(word) == 1 and word.isupper():
            return True  # an initial: J. R. R. Tolkien
        if "." in word:
            parts = word.split(".")
            if all(p.isalpha() and len(p) <= 2 for p in parts):
                return True  # U.S. / e.g. / Ph.D.
        if word.isdigit():
            # A list number at the start of a line: "1. First".
            return (start == 0 and self._at_stream_start) or (start > 0 and buf[start - 1] == "\n")
        return False

    @property
    def _minimum(self) -> int:
        """The least weight a chunk is released at (the first of an utterance has its own)."""
        return self.min_chars if self._released_any else self.first_min_chars

    def _on_sentence_end(self, cut: _Cut, since: float, out: list[str]) -> None:
        if cut.weight == 0:
            return
        if cut.weight >= self._minimum:
            self._emit(cut, out)
            return
        if self._held is None:
            self._held_since = since
        self._held = cut

    def _check_max(self, i: int, out: list[str]) -> None:
        if self._weight <= self.max_chars:
            return
        punctuation = max((c for c in (self._held, self._clause) if c is not None), default=None)
        if punctuation is not None and punctuation.weight * 2 >= self.max_chars:
            cut = punctuation
        elif self._word is not None and self._word.weight > 0:
            cut = self._word
        elif punctuation is not None:
            cut = punctuation
        elif self._atomic_depth == 0 and _char_weight(self._buf[i]) == 2:
            cut = _Cut(i + 1, self._weight, self._open_containers())
        else:
            return  # one long word (a URL): it ends at the next whitespace
        self._emit(cut, out)

    def _stall_cut(self) -> _Cut | None:
        """What a stall releases: up to the last word boundary, if long enough."""
        if self._pending_end is not None or self._held is not None:
            return None  # those have their own (shorter) wait
        cut = self._word
        if cut is None or cut.weight == 0 or cut.weight < self._minimum:
            return None
        return cut

    # -- releasing ----------------------------------------------------------------------------

    def _emit(self, cut: _Cut, out: list[str]) -> None:
        """Release ``buffer[:cut.index]`` as a chunk and rebase the scan state on the rest."""
        raw = self._buf[: cut.index]
        self._buf = self._buf[cut.index :]
        self._pos -= cut.index
        self._weight -= cut.weight
        if self._tag_start is not None:
            self._tag_start -= cut.index
        if self._pending_end is not None:
            self._pending_end -= cut.index
            self._pending_run_end -= cut.index
            self._pending_read -= cut.index
        self._held = self._rebase(self._held, cut)
        self._clause = self._rebase(self._clause, cut)
        self._word = self._rebase(self._word, cut)
        if cut.index:
            self._at_stream_start = False
        text = raw.strip()
        reopen = list(self._reopen)
        self._reopen = cut.open_elements
        while reopen and (closed := re.match(rf"</\s*{re.escape(reopen[-1].name)}\s*>\s*", text)):
            # The chunk starts by closing what the last one left open: neither is needed.
            text = text[closed.end() :]
            reopen.pop()
        if not text or not (_TAG.sub("", text).strip() or "/>" in text):
            return  # nothing to speak: whitespace, or closing tags
        prefix = "".join(e.open_tag for e in reopen)
        suffix = "".join(f"</{e.name}>" for e in reversed(cut.open_elements))
        out.append(prefix + text + suffix)
        self._released_any = True

    @staticmethod
    def _rebase(kept: _Cut | None, cut: _Cut) -> _Cut | None:
        if kept is None or kept.index <= cut.index:
            return None
        return _Cut(kept.index - cut.index, kept.weight - cut.weight, kept.open_elements)
