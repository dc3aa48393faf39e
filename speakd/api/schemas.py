"""Request validation: every rule raises InvalidRequest with a message that says what to fix."""

from __future__ import annotations

import json
import re
from typing import Any

from speakd.config import parse_bool
from speakd.errors import InvalidRequest
from speakd.providers.voices import resolve_voice
from speakd.sessions.model import Direction, ProviderName, ReferenceType
from speakd.sessions.service import CreateRequest, SayRequest, SayStop

MAX_TEXT_CHARS = 5000
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 10

# RFC 5646 language tags. Only 2-3 letter primary subtags (the registered ones): "english"
# is well-formed RFC 5646 but is a mistake in practice. Grandfathered tags are not accepted.
_BCP47 = re.compile(
    r"""^[a-z]{2,3}(?:-[a-z]{3}){0,3}
    (?:-[a-z]{4})?
    (?:-(?:[a-z]{2}|[0-9]{3}))?
    (?:-(?:[a-z0-9]{5,8}|[0-9][a-z0-9]{3}))*
    (?:-[0-9a-wy-z](?:-[a-z0-9]{2,8})+)*
    (?:-x(?:-[a-z0-9]{1,8})+)?$""",
    re.IGNORECASE | re.VERBOSE,
)
_REFERENCE_ID = re.compile(r"^[A-Za-z0-9._:@+=-]{1,200}$")

CREATE_FIELDS = ("reference_type", "reference_id", "language", "provider", "voice_id", "direction")
SAY_FIELDS = ("text", "payload_type", "client_state", "command_id", "stop")
MAX_CLIENT_STATE_CHARS = 4096
MAX_COMMAND_ID_CHARS = 256

# Reasons (speakd.errors): the body is not a JSON object, or one of its fields is wrong
# (missing, unknown, of the wrong type or out of range).
INVALID_JSON = "invalid_json"
INVALID_FIELD = "invalid_field"


def _invalid_field(message: str) -> InvalidRequest:
    return InvalidRequest(message, reason=INVALID_FIELD)


def parse_json_object(body: bytes, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}", reason=INVALID_JSON) from None
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object", reason=INVALID_JSON)
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise _invalid_field(f"unknown field(s) {', '.join(unknown)}; accepted fields: {', '.join(allowed)}")
    return data


def _string(data: dict[str, Any], name: str, *, required: bool = False, default: str = "") -> str:
    value = data.get(name)
    if value is None:
        if required:
            raise _invalid_field(f"'{name}' is required")
        return default
    if not isinstance(value, str):
        raise _invalid_field(f"'{name}' must be a string")
    return value


def _enum(data: dict[str, Any], name: str, choices: type, default: str | None = None) -> str:
    value = _string(data, name, required=default is None, default=default or "")
    allowed = [c.value for c in choices]
    if value not in allowed:
        raise _invalid_field(f"'{name}' must be one of {', '.join(allowed)}; got '{value}'")
    return value


def canonical_language(value: str) -> str:
    """Validate a BCP47 tag and give it its usual case (en-us -> en-US)."""
    if not _BCP47.match(value):
        raise _invalid_field(f"'language' must be a BCP47 language tag such as en-US or ko-KR; got '{value}'")
    parts = value.split("-")
    out = [parts[0].lower()]
    for part in parts[1:]:
        if len(part) == 2 and part.isalpha():
            out.append(part.upper())
        elif len(part) == 4 and part.isalpha():
            out.append(part.title())
        else:
            out.append(part.lower())
    return "-".join(out)


def parse_create(body: bytes, default_provider: str) -> CreateRequest:
    return create_request(parse_json_object(body, CREATE_FIELDS), default_provider)


def create_request(data: dict[str, Any], default_provider: str) -> CreateRequest:
    """A session's fields, however they came (a JSON body, AGI arguments, ARI user event variables)."""
    reference_type = _enum(data, "reference_type", ReferenceType)
    reference_id = _string(data, "reference_id", required=True).strip()
    if not reference_id:
        raise _invalid_field("'reference_id' must not be empty")
    if not _REFERENCE_ID.match(reference_id):
        raise _invalid_field(
            "'reference_id' must be a call (channel) or conference id: letters, digits and ._:@+=- only"
        )
    language = canonical_language(_string(data, "language", default="en-US") or "en-US")
    provider = _enum(data, "provider", ProviderName) if data.get("provider") is not None else None
    voice_id = _string(data, "voice_id").strip()
    if len(voice_id) > 200:
        raise _invalid_field("'voice_id' is too long (200 characters at most)")
    # A peer-form voice ("AWS.Polly.Joanna-Neural") names its provider and model.
    try:
        voice = resolve_voice(provider, voice_id)
    except InvalidRequest as exc:
        if type(exc) is InvalidRequest:  # not a finer reason (provider_not_configured, ...)
            exc.reason = INVALID_FIELD
        raise
    direction = _enum(data, "direction", Direction, default="both")
    return CreateRequest(
        reference_type,
        reference_id,
        language,
        voice.provider or default_provider,
        voice_id,
        direction,
        model=voice.model,
    )


def parse_say(body: bytes) -> SayRequest:
    return say_request(parse_json_object(body, SAY_FIELDS))


def say_request(data: dict[str, Any]) -> SayRequest:
    """A say's fields, however they came (a JSON body, AGI arguments, ARI user event variables)."""
    text = _string(data, "text", required=True)
    if not text.strip():
        raise _invalid_field("'text' must not be empty")
    if len(text) > MAX_TEXT_CHARS:
        raise _invalid_field(
            f"'text' is {len(text)} characters; at most {MAX_TEXT_CHARS} per say (split it into several says)"
        )
    payload_type = _string(data, "payload_type", default="text") or "text"
    if payload_type not in ("text", "ssml"):
        raise _invalid_field(f"'payload_type' must be 'text' or 'ssml'; got '{payload_type}'")
    client_state = _string(data, "client_state", default="")
    if len(client_state) > MAX_CLIENT_STATE_CHARS:
        raise _invalid_field(f"'client_state' is {len(client_state)} characters; at most {MAX_CLIENT_STATE_CHARS}")
    command_id = _string(data, "command_id", default="")
    if len(command_id) > MAX_COMMAND_ID_CHARS:
        raise _invalid_field(f"'command_id' is {len(command_id)} characters; at most {MAX_COMMAND_ID_CHARS}")
    stop = _string(data, "stop", default="")
    if stop and stop not in {m.value for m in SayStop}:
        raise _invalid_field(f"'stop' must be 'current' or 'all' (or left out); got '{stop}'")
    return SayRequest(text, payload_type, client_state, command_id, SayStop(stop) if stop else None)


def parse_stream_query(query: Any) -> bool:
    """``?timestamps=true``: the stream reports its words' timings. Unknown parameters are refused."""
    unknown = sorted(set(query) - {"timestamps", "accesskey", "token"})
    if unknown:
        raise _invalid_field(f"unknown query parameter(s) {', '.join(unknown)}; the stream takes 'timestamps'")
    try:
        return parse_bool(query.get("timestamps", "false"))
    except ValueError as exc:
        raise _invalid_field(f"'timestamps': {exc}") from None


def parse_page(query: Any) -> tuple[int, str | None]:
    raw = query.get("page_size", str(DEFAULT_PAGE_SIZE))
    try:
        page_size = int(raw)
    except ValueError:
        raise _invalid_field(f"'page_size' must be an integer from 1 to {MAX_PAGE_SIZE}; got '{raw}'") from None
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise _invalid_field(f"'page_size' must be from 1 to {MAX_PAGE_SIZE}; got {page_size}")
    token = query.get("page_token") or None
    if token is not None and not re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{6}", token):
        raise _invalid_field("'page_token' must be the next_page_token of a previous page")
    return page_size, token
