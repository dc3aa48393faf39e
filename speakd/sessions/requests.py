"""A session's and a say's fields, however they came: the API's JSON bodies, the dialplan's AGI
arguments, an ARI application's user event variables. Every rule raises InvalidRequest
(``invalid_field``, or a finer reason) with a message that says what to fix.

Below every way in, so the API, AGI and the ARI commands read a request the same way without
importing one another.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from speakd.errors import INVALID_FIELD, InvalidRequest, either, invalid_field
from speakd.languages import parse_language_tag
from speakd.parsing import parse_bool
from speakd.providers.base import TEXT_PAYLOAD_TYPES
from speakd.providers.peer_voices import resolve_voice
from speakd.sessions.lexicons import check_name
from speakd.store.records import Direction, ProviderName, ReferenceType


class SayStop(StrEnum):
    """What a say cuts before it plays (seed 003's ``stop``)."""

    CURRENT = "current"
    ALL = "all"


@dataclass
class SayRequest:
    text: str
    payload_type: str = "text"
    client_state: str = ""
    command_id: str = ""
    stop: SayStop | None = None
    cache: bool = True  # False: personal data, its audio never kept (speakd.providers.cache)
    volume: float = 0.0  # dB on top of the one loudness every say is brought to (speakd.media.loudness)
    interruptible: bool = True  # False: must be heard whole; a flush or stop does not cut it
    lexicon: str | None = None  # the lexicon its text goes through; None: the session's


@dataclass
class CreateRequest:
    reference_type: str
    reference_id: str
    language: str
    provider: str
    voice_id: str
    direction: str
    model: str = ""
    member: str = ""  # a conference's participant (channel id) the session whispers to or through
    lexicon: str = ""  # the lexicon its says go through ('' for none)


@dataclass
class PromptRequest:
    """A text rendered into the audio cache ahead of the says that will speak it."""

    text: str
    provider: str
    voice_id: str
    language: str
    payload_type: str
    model: str = ""
    lexicon: str = ""  # the customer's lexicon its text goes through, as a say's would ('' for none)


MAX_TEXT_CHARS = 5000
# A prompt is rendered while its request waits: an IVR prompt's length (a minute of speech or so).
MAX_PROMPT_CHARS = 1000
# What an omitted field means; also the OpenAPI document's defaults.
DEFAULT_LANGUAGE = "en-US"
DEFAULT_DIRECTION = Direction.BOTH.value
DEFAULT_PAYLOAD_TYPE = "text"

# Also the patterns of the OpenAPI document's fields.
REFERENCE_ID_PATTERN = r"^[A-Za-z0-9._:@+=-]{1,200}$"
# fullmatch and ASCII: "$" alone lets a trailing newline through, \d other scripts' digits.
_REFERENCE_ID = re.compile(REFERENCE_ID_PATTERN, re.ASCII)

# The fields a body may have: the request types' (a create's model comes from its voice).
CREATE_FIELDS = tuple(f.name for f in dataclasses.fields(CreateRequest) if f.name != "model")
# What a caller on a call (the dialplan, an ARI application) may choose for the session it gets:
# the reference is its channel (and a call has no members).
SESSION_OPTIONS = tuple(f for f in CREATE_FIELDS if f not in ("reference_type", "reference_id", "member"))
SAY_FIELDS = tuple(f.name for f in dataclasses.fields(SayRequest))
PROMPT_FIELDS = tuple(f.name for f in dataclasses.fields(PromptRequest) if f.name != "model")
MAX_CLIENT_STATE_CHARS = 4096
MAX_COMMAND_ID_CHARS = 256
MAX_VOICE_ID_CHARS = 200
CACHE_FIELD_RULE = "'cache' must be true or false (false: this say's audio is never kept)"
VOLUME_RANGE_DB = (-20.0, 10.0)
VOLUME_FIELD_RULE = (
    f"'volume' must be a number of dB from {VOLUME_RANGE_DB[0]:+g} to {VOLUME_RANGE_DB[1]:+g} "
    "(0: the common loudness every say is brought to)"
)
INTERRUPTIBLE_FIELD_RULE = "'interruptible' must be true or false (false: a flush or stop does not cut this say)"


def _string(data: dict[str, Any], name: str, *, required: bool = False, default: str = "") -> str:
    value = data.get(name)
    if value is None:
        if required:
            raise invalid_field(f"'{name}' is required")
        return default
    if not isinstance(value, str):
        raise invalid_field(f"'{name}' must be a string")
    return value


def _enum(data: dict[str, Any], name: str, choices: type, default: str | None = None) -> str:
    value = _string(data, name, required=default is None, default=default or "")
    if value not in [c.value for c in choices]:
        raise invalid_field(f"'{name}' must be one of {either(choices)}; got '{value}'")
    return value


def create_request(data: dict[str, Any], default_provider: str) -> CreateRequest:
    """A session's fields, however they came (a JSON body, AGI arguments, ARI user event variables)."""
    reference_type = _enum(data, "reference_type", ReferenceType)
    reference_id = _string(data, "reference_id", required=True)
    if not reference_id:
        raise invalid_field("'reference_id' must not be empty")
    if not _REFERENCE_ID.fullmatch(reference_id):
        raise invalid_field(
            "'reference_id' must be a call (channel) or conference id: letters, digits and ._:@+=- only"
        )
    language, provider, voice_id, model = _speaker(data, default_provider)
    direction = _enum(data, "direction", Direction, default=DEFAULT_DIRECTION)
    member = _string(data, "member")
    if member and reference_type != ReferenceType.CONFBRIDGE:
        raise invalid_field("'member' names a participant of a conference: only with reference_type 'confbridge'")
    if member and not _REFERENCE_ID.fullmatch(member):
        raise invalid_field("'member' must be the channel id of a participant: letters, digits and ._:@+=- only")
    lexicon = _lexicon(data) or ""
    return CreateRequest(
        reference_type,
        reference_id,
        language,
        provider,
        voice_id,
        direction,
        model=model,
        lexicon=lexicon,
        member=member,
    )


def _lexicon(data: dict[str, Any]) -> str | None:
    """A lexicon's name, as a session or a say names it (None: not given; '' names none)."""
    if data.get("lexicon") is None:
        return None
    name = _string(data, "lexicon")
    if name:
        check_name(name, "'lexicon'")
    return name


def _speaker(data: dict[str, Any], default_provider: str) -> tuple[str, str, str, str]:
    """(language, provider, voice id, model) of a session's or a prompt's fields."""
    language = parse_language_tag(_string(data, "language", default=DEFAULT_LANGUAGE) or DEFAULT_LANGUAGE)
    provider = _enum(data, "provider", ProviderName) if data.get("provider") is not None else None
    voice_id = _string(data, "voice_id").strip()
    if len(voice_id) > MAX_VOICE_ID_CHARS:
        raise invalid_field(f"'voice_id' is too long ({MAX_VOICE_ID_CHARS} characters at most)")
    # A peer-form voice ("AWS.Polly.Joanna-Neural") names its provider and model.
    try:
        voice = resolve_voice(provider, voice_id)
    except InvalidRequest as exc:
        if type(exc) is InvalidRequest:  # not a finer reason (provider_not_configured, ...)
            exc.reason = INVALID_FIELD
        raise
    return language, voice.provider or default_provider, voice_id, voice.model


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate ("\ud800" in JSON)
        return False
    return True


def prompt_request(data: dict[str, Any], default_provider: str) -> PromptRequest:
    """A prompt's fields: its text as a say's, its speaker as a session's."""
    say = say_request({k: v for k, v in data.items() if k in ("text", "payload_type")})  # lexicon: below
    if len(say.text) > MAX_PROMPT_CHARS:
        raise invalid_field(
            f"'text' is {len(say.text)} characters; a prompt has at most {MAX_PROMPT_CHARS} (longer text: say it, "
            "and its audio is cached as it plays)"
        )
    # Rendered while the request waits: what no provider can take is refused here, not failed there.
    if "\x00" in say.text or not _encodable(say.text):
        raise invalid_field("'text' must be text a provider can read: no NUL characters, no lone surrogates")
    language, provider, voice_id, model = _speaker(data, default_provider)
    return PromptRequest(say.text, provider, voice_id, language, say.payload_type, model, _lexicon(data) or "")


def call_create_request(channel_id: str, options: dict[str, Any], default_provider: str) -> CreateRequest:
    """The session a caller on a call gets (the dialplan, an ARI application): its channel is
    the reference; ``options`` are its SESSION_OPTIONS."""
    return create_request({**options, "reference_type": "call", "reference_id": channel_id}, default_provider)


def _volume(data: dict[str, Any]) -> float:
    """A say's volume in dB: a JSON number, or the dialplan's and ARI variables' text for one."""
    value = data.get("volume", 0.0)
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            value = None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:  # (NaN)
        raise invalid_field(f"{VOLUME_FIELD_RULE}; got {data.get('volume')!r}")
    if not VOLUME_RANGE_DB[0] <= value <= VOLUME_RANGE_DB[1]:
        raise invalid_field(f"{VOLUME_FIELD_RULE}; got {value:g}")
    return float(value)


def say_request(data: dict[str, Any]) -> SayRequest:
    """A say's fields, however they came (a JSON body, AGI arguments, ARI user event variables)."""
    text = _string(data, "text", required=True)
    if not text.strip():
        raise invalid_field("'text' must not be empty")
    if len(text) > MAX_TEXT_CHARS:
        raise invalid_field(
            f"'text' is {len(text)} characters; at most {MAX_TEXT_CHARS} per say (split it into several says)"
        )
    payload_type = _string(data, "payload_type", default=DEFAULT_PAYLOAD_TYPE) or DEFAULT_PAYLOAD_TYPE
    if payload_type not in TEXT_PAYLOAD_TYPES:
        raise invalid_field(f"'payload_type' must be {either(TEXT_PAYLOAD_TYPES)}; got '{payload_type}'")
    client_state = _string(data, "client_state", default="")
    if len(client_state) > MAX_CLIENT_STATE_CHARS:
        raise invalid_field(f"'client_state' is {len(client_state)} characters; at most {MAX_CLIENT_STATE_CHARS}")
    command_id = _string(data, "command_id", default="")
    if len(command_id) > MAX_COMMAND_ID_CHARS:
        raise invalid_field(f"'command_id' is {len(command_id)} characters; at most {MAX_COMMAND_ID_CHARS}")
    stop = _string(data, "stop", default="")
    if stop and stop not in set(SayStop):
        raise invalid_field(f"'stop' must be {either(SayStop)} (or left out); got '{stop}'")
    cache = data.get("cache", True)
    if isinstance(cache, str):  # the dialplan's and ARI variables' way of writing it
        try:
            cache = parse_bool(cache)
        except ValueError:
            cache = None
    if not isinstance(cache, bool):
        raise invalid_field(CACHE_FIELD_RULE)
    return SayRequest(
        text,
        payload_type,
        client_state,
        command_id,
        SayStop(stop) if stop else None,
        cache,
        interruptible=_flag(data, "interruptible", INTERRUPTIBLE_FIELD_RULE),
        lexicon=_lexicon(data),
        volume=_volume(data),
    )


def _flag(data: dict[str, Any], name: str, rule: str, default: bool = True) -> bool:
    """A true/false field: JSON's booleans, or the dialplan's and ARI variables' words for them."""
    value = data.get(name, default)
    if isinstance(value, str):
        try:
            value = parse_bool(value)
        except ValueError:
            value = None
    if not isinstance(value, bool):
        raise invalid_field(rule)
    return value
