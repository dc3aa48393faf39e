"""Pronunciation lexicons: a customer's named lists of replacements, applied to a say's text
before any provider reads it, and the map that reports what was heard in the words the
application sent.

The rules (docs/api.md states them to clients):

* A name is 1-64 letters, digits, ``.``, ``_`` or ``-``, starting with a letter or digit.
* A lexicon has 1 to :data:`MAX_ENTRIES` entries ``{"from", "to"}``. ``from`` is a word or a few
  words (1-100 characters, at least one letter or digit, no control characters; the spaces in it
  match any run of whitespace); ``to`` is what is read instead (1-200 characters).
* Whole words only: an entry matches where no letter, digit or underscore touches it.
* Case-insensitive: ``nguyen``, ``Nguyen`` and ``NGUYEN`` all match ``{"from": "Nguyen"}``, and
  are read as ``to`` exactly as written. Two entries whose ``from`` differ only in case (or
  spacing) are refused.
* One pass, longest first: where entries overlap the longer ``from`` wins, and a replacement is
  not looked at again (``{"from": "A", "to": "B"}`` and ``{"from": "B", "to": "C"}`` read "A" as "B").
* SSML: replaced in the text between tags, never inside a tag; ``to`` is escaped there.

The provider reads the replaced text, so its word marks count characters of that text;
:class:`Rewrite` maps them back: a mark inside a replacement counts to the end of the word it
replaced.
"""

from __future__ import annotations

import bisect
import json
import re
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

from speakd.errors import InvalidRequest, NotFound, invalid_field, reject_unknown
from speakd.store.interface import Store
from speakd.store.records import now_stamp

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_NAME = re.compile(NAME_PATTERN, re.ASCII)
MAX_ENTRIES = 500
MAX_FROM_CHARS = 100
MAX_TO_CHARS = 200
MAX_LEXICONS = 100  # per customer
# What a say's text may grow to with its replacements (a say's own text is at most 5000).
MAX_REPLACED_CHARS = 10_000
ENTRY_FIELDS = ("from", "to")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_name(name: str, what: str = "a lexicon's name") -> str:
    """``name`` if it is a lexicon's name (``what``: where it was given), else a 400 saying the rule."""
    if not _NAME.fullmatch(name):
        raise invalid_field(
            f"{what} must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit; got '{name[:80]}'"
        )
    return name


def _words_pattern(source: str) -> str:
    return r"\s+".join(map(re.escape, source.split()))


def _key(words: str) -> str:
    """What entries are told apart and matched by: case and spacing ignored."""
    return " ".join(words.split()).lower()


def parse_entries(data: Any) -> list[dict[str, str]]:
    """A PUT body's entries (``{"entries": [{"from", "to"}, ...]}``), checked, in order."""
    if not isinstance(data, dict):
        raise invalid_field('the body must be a JSON object: {"entries": [{"from": "...", "to": "..."}, ...]}')
    reject_unknown(data, ("entries",), "field")
    entries = data.get("entries")
    if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_ENTRIES:
        raise invalid_field(f'\'entries\' must be a list of 1 to {MAX_ENTRIES} entries {{"from", "to"}}')
    parsed: list[dict[str, str]] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        where = f"entries[{index}]"
        if not isinstance(entry, dict):
            raise invalid_field(f'{where} must be an object {{"from": "...", "to": "..."}}')
        reject_unknown(entry, ENTRY_FIELDS, "field", where=where)
        source, target = entry.get("from"), entry.get("to")
        if not isinstance(source, str) or not isinstance(target, str):
            raise invalid_field(f"{where} needs 'from' and 'to', both strings")
        source = " ".join(source.split())
        if not 1 <= len(source) <= MAX_FROM_CHARS or not any(c.isalnum() for c in source):
            raise invalid_field(
                f"{where}.from must be a word or words: 1-{MAX_FROM_CHARS} characters with a letter or digit"
            )
        if not 1 <= len(target) <= MAX_TO_CHARS or not target.strip():
            raise invalid_field(f"{where}.to must be 1-{MAX_TO_CHARS} characters, not only spaces")
        if _CONTROL.search(source) or _CONTROL.search(target):
            raise invalid_field(f"{where}: 'from' and 'to' must have no control characters")
        if (earlier := seen.setdefault(_key(source), index)) != index:
            raise invalid_field(f"{where}.from '{source}' is entries[{earlier}].from again (case is ignored)")
        parsed.append({"from": source, "to": target})
    return parsed


@dataclass(frozen=True)
class Rewrite:
    """A text as the provider reads it, and the way back to the text the application sent."""

    text: str
    original_length: int
    # Each replacement: (start, end) in ``text``, (start, end) in the original, in order.
    spans: tuple[tuple[int, int, int, int], ...] = ()
    _starts: list[int] = field(default_factory=list, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._starts.extend(span[0] for span in self.spans)

    def original_chars(self, chars: int) -> int:
        """Characters of the original text spoken once ``chars`` of ``text`` were: one inside
        a replacement counts to the end of the words it replaced."""
        index = bisect.bisect_left(self._starts, chars) - 1  # the last replacement starting before
        if index < 0:
            return min(chars, self.original_length)
        _, end, _, original_end = self.spans[index]
        if chars < end:
            return original_end
        return min(original_end + chars - end, self.original_length)


@dataclass(frozen=True)
class Lexicon:
    name: str
    entries: tuple[tuple[str, str], ...]  # (from, to), as given
    _words: re.Pattern[str] = field(repr=False, compare=False, init=False)
    _words_or_tag: re.Pattern[str] = field(repr=False, compare=False, init=False)  # SSML: a tag is group 1
    _by_key: dict[str, str] = field(repr=False, compare=False, init=False)

    def __post_init__(self) -> None:
        sources = sorted((source for source, _ in self.entries), key=len, reverse=True)  # longest first
        words = rf"(?<!\w)(?:{'|'.join(_words_pattern(source) for source in sources)})(?!\w)"
        object.__setattr__(self, "_words", re.compile(words, re.IGNORECASE))
        object.__setattr__(self, "_words_or_tag", re.compile(rf"(<[^>]*>)|{words}", re.IGNORECASE))
        object.__setattr__(self, "_by_key", {_key(source): target for source, target in self.entries})

    def _target(self, matched: str) -> str:
        target = self._by_key.get(_key(matched))
        if target is None:  # matched by a case rule that lower() does not share (rare scripts)
            target = next(t for s, t in self.entries if re.fullmatch(_words_pattern(s), matched, re.IGNORECASE))
        return target

    def apply(self, text: str, payload_type: str = "text") -> Rewrite:
        ssml = payload_type == "ssml"
        parts: list[str] = []
        spans: list[tuple[int, int, int, int]] = []
        done = length = 0  # original characters copied, characters written
        for match in (self._words_or_tag if ssml else self._words).finditer(text):
            if ssml and match.group(1) is not None:  # a tag: left as it is
                continue
            target = escape(self._target(match.group())) if ssml else self._target(match.group())
            parts.append(text[done : match.start()])
            length += match.start() - done
            spans.append((length, length + len(target), match.start(), match.end()))
            parts.append(target)
            length += len(target)
            done = match.end()
        if not spans:
            return Rewrite(text, len(text))
        parts.append(text[done:])
        return Rewrite("".join(parts), len(text), tuple(spans))

    @staticmethod
    def from_row(row: dict[str, Any]) -> Lexicon:
        return Lexicon(row["name"], tuple((e["from"], e["to"]) for e in json.loads(row["entries"])))


def lexicon_dict(row: dict[str, Any]) -> dict[str, Any]:
    """A lexicon as the API shows it."""
    return {
        "name": row["name"],
        "entries": json.loads(row["entries"]),
        "tm_create": row["tm_create"],
        "tm_update": row["tm_update"],
    }


class Lexicons:
    """Each customer's lexicons, kept in the store; another customer's are not found."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def put(self, customer_id: str, name: str, entries: list[dict[str, str]]) -> tuple[dict[str, Any], bool]:
        """Made or replaced: (the lexicon, True if made)."""
        check_name(name)
        new = await self.store.lexicon_get(customer_id, name) is None
        if new and len(await self.store.lexicon_list(customer_id)) >= MAX_LEXICONS:
            raise InvalidRequest(
                f"you have {MAX_LEXICONS} lexicons, the most a customer may have; delete one first",
                reason="too_many_lexicons",
            )
        made = await self.store.lexicon_put(customer_id, name, json.dumps(entries), now_stamp())
        return await self.get(customer_id, name), made

    async def get(self, customer_id: str, name: str) -> dict[str, Any]:
        return lexicon_dict(await self._row(customer_id, name))

    async def list(self, customer_id: str) -> list[dict[str, Any]]:
        return [lexicon_dict(row) for row in await self.store.lexicon_list(customer_id)]

    async def delete(self, customer_id: str, name: str) -> None:
        if not await self.store.lexicon_delete(customer_id, check_name(name)):
            raise NotFound(f"lexicon '{name}' not found")

    async def named(self, customer_id: str, name: str, named_by: str) -> Lexicon:
        """The lexicon a session or a say names (``named_by``: which field named it): a 400 naming
        it if the customer has none of that name."""
        row = await self.store.lexicon_get(customer_id, name)
        if row is None:
            raise invalid_field(
                f"{named_by} names lexicon '{name}', and you have none of that name; "
                f"PUT /v1.0/lexicons/{name} first, or name another"
            )
        return Lexicon.from_row(row)

    async def rewrite(
        self, customer_id: str, name: str, text: str, payload_type: str, named_by: str, what: str
    ) -> Rewrite:
        """``text`` through the customer's lexicon ``name`` (a say's or a prompt's: ``what``), or a
        400 if the replacements make it longer than MAX_REPLACED_CHARS."""
        rewrite = (await self.named(customer_id, name, named_by)).apply(text, payload_type)
        if len(rewrite.text) > MAX_REPLACED_CHARS:
            raise invalid_field(
                f"lexicon '{name}' makes this {what}'s text {len(rewrite.text)} characters; at most "
                f"{MAX_REPLACED_CHARS} with replacements (split it into several {what}s)"
            )
        return rewrite

    async def _row(self, customer_id: str, name: str) -> dict[str, Any]:
        row = await self.store.lexicon_get(customer_id, check_name(name))
        if row is None:
            raise NotFound(f"lexicon '{name}' not found")
        return row
