"""HTTP request parsing: JSON bodies, query strings and pages. A body's fields are read by
:mod:`speakd.sessions.requests`, as every way in reads them; this adds what only HTTP has."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from speakd.errors import INVALID_JSON, InvalidRequest, invalid_field, reject_unknown
from speakd.parsing import load_json_object, parse_bool
from speakd.sessions.requests import (
    CACHE_FIELD_RULE,
    CREATE_FIELDS,
    INTERRUPTIBLE_FIELD_RULE,
    PROMPT_FIELDS,
    SAY_FIELDS,
    VOLUME_FIELD_RULE,
    CreateRequest,
    PromptRequest,
    SayRequest,
    create_request,
    prompt_request,
    say_request,
)

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 10
# Also the pattern of the OpenAPI document's page_token. Empty is the first page: it is what a
# client that starts from "no token" sends, and what the last page's next_page_token reads.
PAGE_TOKEN_PATTERN = r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{6})?$"
# fullmatch and ASCII: "$" alone lets a trailing newline through, \d other scripts' digits.
_PAGE_TOKEN = re.compile(PAGE_TOKEN_PATTERN, re.ASCII)


def websocket_response(**options: Any) -> web.WebSocketResponse:
    """Every WebSocket of the API: pinged every 30 s (a vanished client is noticed), messages of
    64 KiB at most."""
    return web.WebSocketResponse(heartbeat=30, max_msg_size=64 * 1024, **options)


def parse_json_object(body: bytes, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        data = load_json_object(body, "request body")
    except ValueError as exc:
        raise InvalidRequest(str(exc), reason=INVALID_JSON) from None
    reject_unknown(data, allowed, "field")
    return data


def parse_create(body: bytes, default_provider: str) -> CreateRequest:
    return create_request(parse_json_object(body, CREATE_FIELDS), default_provider)


def parse_say(body: bytes) -> SayRequest:
    data = parse_json_object(body, SAY_FIELDS)
    if not isinstance(data.get("cache", True), bool):  # JSON has booleans (the dialplan writes "false")
        raise invalid_field(CACHE_FIELD_RULE)
    if isinstance(data.get("volume"), str):  # JSON has numbers (the dialplan writes "-6")
        raise invalid_field(f"{VOLUME_FIELD_RULE}; got a string")
    if not isinstance(data.get("interruptible", True), bool):
        raise invalid_field(INTERRUPTIBLE_FIELD_RULE)
    return say_request(data)


def parse_prompt(body: bytes, default_provider: str) -> PromptRequest:
    return prompt_request(parse_json_object(body, PROMPT_FIELDS), default_provider)


def parse_stream_query(query: Any) -> tuple[bool, bool]:
    """(``?timestamps=true``: the stream reports its words' timings, ``?cache=false``: its audio is
    never kept). Unknown parameters are refused."""
    reject_unknown(set(query) - {"accesskey", "token"}, ("cache", "timestamps"), "query parameter")  # less credentials
    flags = []
    for name, default in (("timestamps", "false"), ("cache", "true")):
        try:
            flags.append(parse_bool(query.get(name, default)))
        except ValueError as exc:
            raise invalid_field(f"'{name}': {exc}") from None
    return flags[0], flags[1]


def parse_page(query: Any) -> tuple[int, str | None]:
    raw = query.get("page_size", str(DEFAULT_PAGE_SIZE))
    try:
        page_size = int(raw)
    except ValueError:
        raise invalid_field(f"'page_size' must be an integer from 1 to {MAX_PAGE_SIZE}; got '{raw}'") from None
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise invalid_field(f"'page_size' must be from 1 to {MAX_PAGE_SIZE}; got {page_size}")
    token = query.get("page_token") or None
    if token is not None and not _PAGE_TOKEN.fullmatch(token):
        raise invalid_field("'page_token' must be the next_page_token of a previous page")
    return page_size, token
