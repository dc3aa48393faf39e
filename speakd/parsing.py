"""Values written as text: the one reading (and writing) of a yes/no and the reading of a
``key=value`` table, wherever text is all there is (``SPEAKD_*`` variables, query strings,
dialplan arguments, provider sections set from the environment), and of a JSON object a client
sent (a request body, a WebSocket message). Each caller words its own error around the ValueError."""

from __future__ import annotations

import json
from typing import Any

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


def load_json_object(text: str | bytes, what: str) -> dict[str, Any]:
    """``json.loads`` of what a client sent (a request body, a WebSocket message), which must be a
    JSON object; else ValueError saying what is wrong with ``what``, also for nesting deep enough
    to exhaust the parser's recursion limit."""
    try:
        data = json.loads(text)
    except ValueError as exc:  # also bytes that are not UTF-8
        raise ValueError(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise ValueError(f"{what} is nested too deeply; send a flat JSON object") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} must be a JSON object")  # noqa: TRY004 - one error for every wrong text
    return data


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
