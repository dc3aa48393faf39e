"""Values written as text: the one reading (and writing) of a yes/no and the reading of a
``key=value`` table, wherever text is all there is (``SPEAKD_*`` variables, query strings,
dialplan arguments, provider sections set from the environment). Each caller words its own
error around the ValueError."""

from __future__ import annotations

TRUE_WORDS = ("1", "true", "yes", "on")
# Empty is no: an unset dialplan or shell variable (``wait=${WAIT}``) asks for nothing.
FALSE_WORDS = ("0", "false", "no", "off", "")


def parse_bool(raw: str) -> bool:
    """One of TRUE_WORDS or FALSE_WORDS, in any case, spaces around ignored; else ValueError."""
    lowered = raw.strip().lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def format_bool(value: bool) -> str:
    """A bool as Asterisk and its dialplan spell it: ``true`` / ``false``."""
    return "true" if value else "false"


def parse_table(raw: str) -> dict[str, str]:
    """``k=v,k2=v2``: spaces around keys and values ignored, empty items (a trailing comma)
    skipped; an item without a key, a ``=`` or a value raises ValueError naming it."""
    table: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not (sep and key and value):
            raise ValueError(f"expected key=value[,key=value...], got {item!r}")
        table[key] = value
    return table
