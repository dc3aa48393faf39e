"""The OpenAPI 3.1 document of the Speaking API, served at /v1.0/openapi.json."""

from __future__ import annotations

from typing import Any

from speakd import __version__
from speakd.api.schemas import MAX_PAGE_SIZE, PAGE_TOKEN_PATTERN
from speakd.config import TransportKind
from speakd.languages import TAG_PATTERN
from speakd.provider_names import PROVIDER_NAMES
from speakd.providers.base import TEXT_PAYLOAD_TYPES
from speakd.sessions.lexicons import MAX_ENTRIES, MAX_FROM_CHARS, MAX_LEXICONS, MAX_TO_CHARS, NAME_PATTERN
from speakd.sessions.nodes import HEARTBEAT_S
from speakd.sessions.requests import (
    DEFAULT_DIRECTION,
    DEFAULT_LANGUAGE,
    DEFAULT_PAYLOAD_TYPE,
    MAX_CLIENT_STATE_CHARS,
    MAX_COMMAND_ID_CHARS,
    MAX_PROMPT_CHARS,
    MAX_TEXT_CHARS,
    MAX_VOICE_ID_CHARS,
    REFERENCE_ID_PATTERN,
    VOLUME_RANGE_DB,
    SayStop,
)
from speakd.sessions.says import SayItem, SayStatus
from speakd.sessions.service import COMMAND_ID_WINDOW_S
from speakd.store.health import STORE_CHECK_TIMEOUT_S
from speakd.store.records import FIELDS, NOT_YET, Direction, ReferenceType, Status


def _enum(choices: Any) -> dict[str, Any]:
    """A string field that takes one of ``choices`` (a StrEnum or a tuple of names)."""
    return {"type": "string", "enum": [str(choice) for choice in choices]}


_TIMESTAMP = {
    "type": "string",
    "description": f"UTC, 'YYYY-MM-DD HH:MM:SS.ffffff'; '{NOT_YET}' means not yet",
    "examples": ["2025-06-15 14:30:00.123456"],
}

_SPEAKING = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "customer_id": {"type": "string"},
        "reference_type": _enum(ReferenceType),
        "reference_id": {"type": "string", "description": "Asterisk channel id (call) or conference id"},
        "language": {"type": "string", "description": "BCP47, e.g. en-US"},
        "provider": _enum(PROVIDER_NAMES),
        "voice_id": {"type": "string"},
        "direction": _enum(Direction),
        "status": _enum(Status),
        "tm_create": _TIMESTAMP,
        "tm_update": _TIMESTAMP,
        "tm_delete": _TIMESTAMP,
    },
    "required": list(FIELDS),
}

_SAY = {
    "type": "object",
    "description": "One say and what of it the call heard (from played positions, not from what was sent)",
    "properties": {
        "say_id": {"type": "string", "format": "uuid"},
        "text": {"type": "string"},
        "payload_type": _enum(TEXT_PAYLOAD_TYPES),
        "client_state": {"type": "string", "description": "the client's, echoed in this say's events"},
        "command_id": {"type": "string"},
        "status": _enum(SayStatus),
        "error": {"type": "string", "description": "the provider's message, for a failed say; else empty"},
        "heard_chars": {"type": "integer", "description": "characters of the text played before a cut"},
        "heard_text": {"type": "string", "description": "the text up to heard_chars (whole words)"},
        "played_ms": {"type": "integer"},
        "tm_queued": _TIMESTAMP,
        "tm_play_start": _TIMESTAMP,
        "tm_play_end": _TIMESTAMP,
        "spoken_by": {
            "type": "array",
            "description": "who spoke it, in order: more than one when its provider failed and a provider of "
            "[tts] fallback went on with it (docs/providers.md: When a provider fails); empty until audio came",
            "items": {
                "type": "object",
                "properties": {"provider": {"type": "string"}, "voice_id": {"type": "string"}},
                "required": ["provider", "voice_id"],
            },
        },
        "provider_failures": {
            "type": "array",
            "description": "each provider that failed on it, in order (with [tts] fallback, the next one went on "
            "with the say): stage before_audio or mid_say, and the provider's error",
            "items": {
                "type": "object",
                "properties": {
                    "provider": {"type": "string"},
                    "voice_id": {"type": "string"},
                    "stage": {"type": "string", "enum": ["before_audio", "mid_say"]},
                    "error": {"type": "string"},
                },
                "required": ["provider", "voice_id", "stage", "error"],
            },
        },
        "interruptible": {
            "type": "boolean",
            "description": "false: a must-play say; a flush, a stop (current or all) or a stream's reset did not "
            "cut it, only the session's end (stop, hangup, delete) can",
        },
        "lexicon": {
            "type": "string",
            "description": "the lexicon its text went through before synthesis ('' for none); text, heard_text and "
            "word timestamps still name the words sent",
        },
        "volume": {"type": "number", "description": "dB on top of the one loudness every say is brought to"},
    },
    "required": list(SayItem.SHOWN),
}

_LEXICON_NAME = {"type": "string", "pattern": NAME_PATTERN}
_LEXICON_ENTRIES = {
    "type": "array",
    "minItems": 1,
    "maxItems": MAX_ENTRIES,
    "description": "replacements, matched as whole words, case-insensitively (read as 'to' is written); where "
    "entries overlap the longer 'from' wins; one pass (a replacement is not replaced again); in SSML only "
    "between tags. Two entries' 'from' may not differ only in case or spacing",
    "items": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "from": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_FROM_CHARS,
                "pattern": r"\w",
                "description": "a word or words as the application writes them (spaces match any whitespace)",
            },
            "to": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_TO_CHARS,
                "pattern": r"\S",
                "description": "what the provider reads instead",
            },
        },
        "required": ["from", "to"],
    },
}
_LEXICON = {
    "type": "object",
    "properties": {
        "name": _LEXICON_NAME,
        "entries": _LEXICON_ENTRIES,
        "tm_create": _TIMESTAMP,
        "tm_update": _TIMESTAMP,
    },
    "required": ["name", "entries", "tm_create", "tm_update"],
}
_LEXICON_FIELD = {
    **_LEXICON_NAME,
    "pattern": f"^$|{NAME_PATTERN}",
}

_ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "status": {"type": "integer", "description": "the HTTP status code"},
                "message": {"type": "string", "description": "what went wrong and what to fix; wording may change"},
                "reason": {
                    "type": "string",
                    "description": "a short, stable code to branch on (the message may be reworded, a reason is not)",
                    "examples": [
                        "invalid_json",
                        "invalid_field",
                        "invalid_request",
                        "unsupported_language",
                        "provider_not_configured",
                        "unauthorized",
                        "not_found",
                        "no_such_endpoint",
                        "method_not_allowed",
                        "body_too_large",
                        "conflict",
                        "cache_disabled",
                        "too_many_lexicons",
                        "queue_full",
                        "provider_failed",
                        "unavailable",
                        "internal",
                    ],
                },
                "request_id": {
                    "type": "string",
                    "description": "this request's id, also in the X-Request-Id header and in speakd's log",
                },
            },
            "required": ["status", "message", "reason", "request_id"],
        }
    },
    "required": ["error"],
}

_PROMPT_ENTRY = {
    "type": "object",
    "properties": {
        "key": {"type": "string", "description": "the cache entry (a file of [cache] dir)"},
        "provider": _enum(PROVIDER_NAMES),
        "voice_id": {"type": "string", "description": "as asked (empty: the provider's default)"},
        "language": {"type": "string"},
        "payload_type": _enum(TEXT_PAYLOAD_TYPES),
        "lexicon": {"type": "string", "description": "the lexicon its text went through ('' for none)"},
        "bytes": {"type": "integer", "description": "the entry's size on disk"},
        "duration_ms": {"type": "integer", "description": "its audio's duration"},
    },
    "required": ["key", "provider", "voice_id", "language", "payload_type", "lexicon", "bytes", "duration_ms"],
}

_REQUEST_ID_HEADER = {
    "description": "The request's id (on every response; error bodies repeat it as error.request_id)",
    "schema": {"type": "string"},
}
_RETRY_AFTER_HEADER = {
    "description": "Seconds to wait before retrying",
    "schema": {"type": "integer"},
}


def _error_response(status: int, description: str) -> dict[str, Any]:
    headers: dict[str, Any] = {"X-Request-Id": {"$ref": "#/components/headers/RequestId"}}
    if status in (429, 503):
        headers["Retry-After"] = {"$ref": "#/components/headers/RetryAfter"}
    return {
        "description": description,
        "headers": headers,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _responses(ok: int, *errors: int) -> dict[str, Any]:
    described = {
        400: "Invalid request (the message says which field and why)",
        401: "Missing, invalid or expired credentials, or several that disagree",
        404: "No such speaking session for this customer",
        409: "Another session is active on the reference, or the call is not answered",
        429: "Too many says are waiting in this session; wait or flush",
        503: "speakd cannot serve this now: not connected to Asterisk, shutting down, its store cannot be "
        "written (disk full, read-only), or the node that owns the session does not answer (reason "
        "node_unreachable); nothing was changed, retry later",
    }
    out: dict[str, Any] = {
        str(ok): {
            "description": "OK",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Speaking"}}},
        }
    }
    for status in errors:
        out[str(status)] = _error_response(status, described[status])
    return out


def _result_list(description: str, item: dict[str, Any], *, required: bool = False) -> dict[str, Any]:
    """A 200 whose JSON body is ``{"result": [item, ...]}``."""
    body: dict[str, Any] = {"type": "object", "properties": {"result": {"type": "array", "items": item}}}
    if required:
        body["required"] = ["result"]
    return {"description": description, "content": {"application/json": {"schema": body}}}


_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}

_HEALTH_BODY = {
    "type": "object",
    "properties": {
        "status": {"type": "string", "enum": ["ok", "degraded", "unavailable"]},
        "failed": {
            "type": "array",
            "items": {"type": "string", "enum": ["ari", "store"]},
            "description": "what keeps speakd from serving; empty when status is ok or degraded",
        },
        "degraded_providers": {
            "type": "array",
            "items": {"type": "string"},
            "description": "providers skipped by their circuit breaker ([tts] fallback): speech goes on with "
            "the others (status degraded, still 200)",
        },
        "ari_connected": {"type": "boolean", "description": "the ARI events WebSocket is connected"},
        "store_writable": {
            "type": "boolean",
            "description": "the store took a real write "
            f"(checked at most once a second, {STORE_CHECK_TIMEOUT_S:g} s timeout)",
        },
        "store_error": {"type": "string", "description": "why the store is not writable; empty when it is"},
        "live_sessions": {"type": "integer", "description": "sessions initiating or active"},
        "media_transport": {**_enum(TransportKind), "description": "for new sessions"},
        "pacer_realtime": {"type": "boolean", "description": "rtp only: the pacer runs with SCHED_FIFO"},
        "pacer_max_late_ms": {"type": "number", "description": "rtp only: the pacer's worst lateness"},
        "pacer_stalls": {"type": "integer", "description": "rtp only: frame periods the pacer skipped"},
    },
    "required": [
        "status",
        "failed",
        "degraded_providers",
        "ari_connected",
        "store_writable",
        "store_error",
        "live_sessions",
    ],
}
_HEALTH = {
    "summary": "Whether speakd can serve: ARI connected and the store writable (no credentials)",
    "security": [],
    "responses": {
        "200": {"description": "Serving", "content": {"application/json": {"schema": _HEALTH_BODY}}},
        "503": {
            "description": "Not serving: 'failed' says what (ARI, the store)",
            "content": {"application/json": {"schema": _HEALTH_BODY}},
        },
    },
}
_METRICS = {
    "summary": "Prometheus metrics (no credentials: restrict who reaches it by network)",
    "description": "Text exposition format 0.0.4, or OpenMetrics 1.0 when the Accept header asks for it. "
    "docs/metrics.md lists every metric.",
    "security": [],
    "responses": {
        "200": {
            "description": "The metrics",
            "content": {
                "text/plain; version=0.0.4; charset=utf-8": {"schema": {"type": "string"}},
                "application/openmetrics-text; version=1.0.0; charset=utf-8": {"schema": {"type": "string"}},
            },
        }
    },
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "speakd Speaking API", "version": __version__},
    "servers": [{"url": "/"}],
    # Any one of these; several at once must all be valid and name the same customer.
    "security": [{"accesskey": []}, {"accesskeyCookie": []}, {"token": []}, {"bearer": []}],
    "components": {
        "securitySchemes": {
            "accesskey": {"type": "apiKey", "in": "query", "name": "accesskey"},
            "accesskeyCookie": {"type": "apiKey", "in": "cookie", "name": "accesskey"},
            "token": {"type": "apiKey", "in": "query", "name": "token"},
            "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
        },
        "schemas": {"Speaking": _SPEAKING, "Say": _SAY, "Error": _ERROR, "Lexicon": _LEXICON},
        "headers": {"RequestId": _REQUEST_ID_HEADER, "RetryAfter": _RETRY_AFTER_HEADER},
    },
    "paths": {
        "/v1.0/speakings": {
            "post": {
                "summary": "Create a speaking session on a call or conference",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["reference_type", "reference_id"],
                                "properties": {
                                    "reference_type": _enum(ReferenceType),
                                    "reference_id": {"type": "string", "pattern": REFERENCE_ID_PATTERN},
                                    "language": {
                                        "type": "string",
                                        "default": DEFAULT_LANGUAGE,
                                        "pattern": f"^$|{TAG_PATTERN}",
                                        "description": "BCP47 language[-extlang][-Script][-REGION], e.g. en-US; "
                                        "made canonical (en-us -> en-US, zh-yue -> yue); '' as left out",
                                    },
                                    "provider": _enum(PROVIDER_NAMES),
                                    "voice_id": {"type": "string", "maxLength": MAX_VOICE_ID_CHARS},
                                    "direction": {
                                        **_enum(Direction),
                                        "default": DEFAULT_DIRECTION,
                                        "description": "on a call: out, the party on reference_id hears; in, its "
                                        "peer; both. On a conference: both (everyone), or with member: out, only the "
                                        "member hears; in, every participant but the member; both, everyone",
                                    },
                                    "member": {
                                        "type": "string",
                                        "pattern": REFERENCE_ID_PATTERN,
                                        "description": "confbridge only: the channel id of one participant of the "
                                        "conference, to speak to it (direction out) or to all but it (in); not a "
                                        "participant: a 400. Its leaving the conference ends the session (reason "
                                        "hangup)",
                                    },
                                    "lexicon": {
                                        **_LEXICON_FIELD,
                                        "description": "one of your lexicons (PUT /v1.0/lexicons/{name}): every say "
                                        "goes through it unless the say names another; an unknown name is a 400",
                                    },
                                },
                            }
                        }
                    },
                },
                "operationId": "createSpeaking",
                "responses": {
                    **_responses(201, 400, 401, 404, 409, 503),
                    "201": {
                        **_responses(201)["201"],
                        "links": {
                            name: {"operationId": name, "parameters": {"id": "$response.body#/id"}}
                            for name in (
                                "getSpeaking",
                                "deleteSpeaking",
                                "say",
                                "listSays",
                                "flushSpeaking",
                                "stopSpeaking",
                            )
                        },
                    },
                },
            },
            "get": {
                "summary": "List this customer's speaking sessions, newest first (deleted ones left out)",
                "parameters": [
                    {
                        "name": "page_size",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE},
                    },
                    {
                        "name": "page_token",
                        "in": "query",
                        "description": "The previous page's next_page_token; empty or absent: the first page",
                        "schema": {"type": "string", "pattern": PAGE_TOKEN_PATTERN},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "A page",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "result": {"type": "array", "items": {"$ref": "#/components/schemas/Speaking"}},
                                        "next_page_token": {
                                            "type": "string",
                                            "pattern": PAGE_TOKEN_PATTERN,
                                            "description": "Pass as page_token for the next page; empty on the last",
                                        },
                                    },
                                }
                            }
                        },
                    },
                    "400": _error_response(400, "Bad paging parameters"),
                    "401": _error_response(401, "Missing, invalid or expired credentials"),
                },
            },
        },
        "/v1.0/speakings/{id}": {
            "parameters": [_ID],
            "get": {
                "summary": "Get a speaking session (also a deleted one: tm_delete is then set)",
                "operationId": "getSpeaking",
                "responses": _responses(200, 401, 404),
            },
            "delete": {
                "summary": "Delete (stops it first if needed; GET still returns it with tm_delete set)",
                "description": "Deleting marks the session deleted: it leaves the list, but GET, its says and "
                "another DELETE still answer 200 with tm_delete set, so what was said stays on record.",
                "operationId": "deleteSpeaking",
                "responses": _responses(200, 401, 404, 503),
            },
        },
        "/v1.0/speakings/{id}/say": {
            "parameters": [_ID],
            "post": {
                "summary": "Queue text to speak; items play in order with no gap",
                "operationId": "say",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["text"],
                                "properties": {
                                    "text": {
                                        "type": "string",
                                        "minLength": 1,
                                        "maxLength": MAX_TEXT_CHARS,
                                        "pattern": r"\S",
                                        "description": "not only spaces",
                                    },
                                    "payload_type": {**_enum(TEXT_PAYLOAD_TYPES), "default": DEFAULT_PAYLOAD_TYPE},
                                    "client_state": {
                                        "type": "string",
                                        "maxLength": MAX_CLIENT_STATE_CHARS,
                                        "description": "opaque; echoed in this say's events",
                                    },
                                    "command_id": {
                                        "type": "string",
                                        "maxLength": MAX_COMMAND_ID_CHARS,
                                        "description": "a repeat with the same command_id on this session within "
                                        f"{COMMAND_ID_WINDOW_S:g} s is not played again and gets the first answer",
                                    },
                                    "stop": {
                                        **_enum(SayStop),
                                        "description": "before this say plays, interrupt the say playing now "
                                        "(current) or everything queued (all)",
                                    },
                                    "cache": {
                                        "type": "boolean",
                                        "default": True,
                                        "description": "false: the text may be personal, its audio is neither "
                                        "kept in the audio cache nor played from it",
                                    },
                                    "volume": {
                                        "type": "number",
                                        "minimum": VOLUME_RANGE_DB[0],
                                        "maximum": VOLUME_RANGE_DB[1],
                                        "default": 0,
                                        "description": "dB on top of the one loudness every say is brought to "
                                        "([media] loudness_dbfs); peaks are limited, never clipped, so above about "
                                        "+5 dB the level rises less than asked",
                                    },
                                    "interruptible": {
                                        "type": "boolean",
                                        "default": True,
                                        "description": "false: must be heard whole (a legal notice). A flush, a "
                                        "stop (current or all) or a stream's reset does not cut it, nor drop it "
                                        "while it waits; the says around it are dropped as usual. The session's end "
                                        "(stop, hangup, delete) still ends it",
                                    },
                                    "lexicon": {
                                        **_LEXICON_FIELD,
                                        "description": "the lexicon this say's text goes through instead of the "
                                        "session's ('' for none); an unknown name is a 400",
                                    },
                                },
                            }
                        }
                    },
                },
                "responses": {
                    **_responses(200, 400, 401, 404, 429, 503),
                    "200": {
                        "description": "The speaking session, and the id of the say just queued",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "allOf": [
                                        {"$ref": "#/components/schemas/Speaking"},
                                        {
                                            "type": "object",
                                            "properties": {"say_id": {"type": "string", "format": "uuid"}},
                                            "required": ["say_id"],
                                        },
                                    ]
                                }
                            }
                        },
                    },
                },
            },
        },
        "/v1.0/speakings/{id}/says": {
            "parameters": [_ID],
            "get": {
                "summary": "The session's says, oldest first (newest last), with what the call heard of each",
                "operationId": "listSays",
                "responses": {
                    "200": {
                        "description": "The say items",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "result": {"type": "array", "items": {"$ref": "#/components/schemas/Say"}}
                                    },
                                    "required": ["result"],
                                }
                            }
                        },
                    },
                    **{k: v for k, v in _responses(200, 401, 404, 503).items() if k != "200"},
                },
            },
        },
        "/v1.0/speakings/{id}/flush": {
            "parameters": [_ID],
            "post": {
                "summary": "Barge-in: drop queued text and stop the audio now; the session stays active",
                "description": "Must-play says (interruptible false) are not cut: one playing plays on whole, ones "
                "waiting stay queued; protected_says names them. It answers at once either way.",
                "operationId": "flushSpeaking",
                "responses": {
                    **_responses(200, 400, 401, 404, 503),
                    "200": {
                        "description": "The speaking session, and the must-play says the flush left",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "allOf": [
                                        {"$ref": "#/components/schemas/Speaking"},
                                        {
                                            "type": "object",
                                            "properties": {
                                                "protected_says": {
                                                    "type": "array",
                                                    "items": {"type": "string", "format": "uuid"},
                                                    "description": "the say_ids of the must-play says that go "
                                                    "on, in play order (the first may be playing now)",
                                                }
                                            },
                                            "required": ["protected_says"],
                                        },
                                    ]
                                }
                            }
                        },
                    },
                },
            },
        },
        "/v1.0/speakings/{id}/stream": {
            "parameters": [_ID],
            "get": {
                "summary": "Stream text into the session over a WebSocket (upgrade); one stream at a time",
                "description": (
                    'Client messages (JSON): {"type": "text", "text"}, {"type": "flush", '
                    '"nonce"}, {"type": "reset", "nonce"}, {"type": "finish"}. Server '
                    "messages: ready, flush_complete and reset_complete (with the nonce; reset's with "
                    "heard_text and protected_says: must-play says it did not cut), timestamps (with "
                    "?timestamps=true), played, error (then close). Text is "
                    "spoken sentence by sentence as it completes; each sentence is a say of the session."
                ),
                "parameters": [
                    {
                        "name": "timestamps",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "boolean", "default": False},
                        "description": "report each played sentence's words with their times",
                    },
                    {
                        "name": "cache",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "boolean", "default": True},
                        "description": "false: the text may be personal; no sentence's audio is kept in the audio "
                        "cache nor played from it (as a say's cache)",
                    },
                ],
                "responses": {
                    "101": {"description": "Switching to the WebSocket protocol"},
                    **{k: v for k, v in _responses(200, 400, 401, 404, 409, 503).items() if k != "200"},
                },
            },
        },
        "/v1.0/ws": {
            "get": {
                "summary": "Speaking events over a WebSocket (upgrade); the same credentials as the API",
                "description": (
                    'Send {"type": "subscribe", "topics": [...]} or {"type": "unsubscribe", ...}; '
                    'speakd answers {"type": "subscribed", "topics": [...]} or {"type": "error", '
                    '"message": ...}, and sends each event as {"event_type", "timestamp", "topic", '
                    '"data"}. Topics: customer_id:<id>:speaking:<speaking id>, '
                    "customer_id:<id>:speaking:<event type>, or a prefix ending in '*'; only your own."
                ),
                "responses": {
                    "101": {"description": "Switching to the WebSocket protocol"},
                    "400": _error_response(400, "Not a WebSocket upgrade request"),
                    "401": _error_response(401, "Missing, invalid or expired credentials"),
                },
            },
        },
        "/v1.0/voices": {
            "get": {
                "summary": "Voices each configured provider offers (from the provider's own list, cached)",
                "parameters": [
                    {"name": "provider", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "language",
                        "in": "query",
                        "description": "empty means any language",
                        "schema": {"type": "string", "pattern": f"^$|{TAG_PATTERN}"},
                    },
                ],
                "responses": {
                    "200": _result_list(
                        "The voices",
                        {
                            "type": "object",
                            "properties": {
                                "provider": {"type": "string"},
                                "voice_id": {"type": "string"},
                                "name": {"type": "string"},
                                "languages": {"type": "array", "items": {"type": "string"}},
                                "gender": {"type": "string"},
                            },
                        },
                    ),
                    "400": _error_response(400, "Provider not configured, or not a language tag"),
                    "401": _error_response(401, "Missing, invalid or expired credentials"),
                    "502": _error_response(502, "The provider failed to list its voices"),
                },
            }
        },
        "/v1.0/prompts": {
            "post": {
                "summary": "Render a text into the audio cache ahead of the says that will speak it",
                "description": "For an IVR's fixed prompts: rendered as a session's say would ask for it "
                "(this speakd's [media] codec, the voice and model named), so a say of the same text, provider, "
                "voice, language and lexicon later plays from the cache at once and asks no provider. Answers once the "
                "audio is stored. The cache is shared by every customer. docs/providers.md: The audio cache.",
                "operationId": "renderPrompt",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["text"],
                                "properties": {
                                    "text": {
                                        "type": "string",
                                        "minLength": 1,
                                        "maxLength": MAX_PROMPT_CHARS,
                                        "pattern": r"\S",
                                        "description": "not only spaces",
                                    },
                                    "provider": _enum(PROVIDER_NAMES),
                                    "voice_id": {"type": "string", "maxLength": MAX_VOICE_ID_CHARS},
                                    "language": {
                                        "type": "string",
                                        "default": DEFAULT_LANGUAGE,
                                        "pattern": f"^$|{TAG_PATTERN}",
                                        "description": "as a session's",
                                    },
                                    "payload_type": {**_enum(TEXT_PAYLOAD_TYPES), "default": DEFAULT_PAYLOAD_TYPE},
                                    "lexicon": {
                                        **_LEXICON_FIELD,
                                        "description": "the lexicon its text goes through, as the says that "
                                        "will speak it name it ('' for none); an unknown name is a 400",
                                    },
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "201": {
                        "description": "Rendered now and stored",
                        "content": {"application/json": {"schema": _PROMPT_ENTRY}},
                    },
                    "200": {
                        "description": "Already in the cache (nothing rendered)",
                        "content": {"application/json": {"schema": _PROMPT_ENTRY}},
                    },
                    "400": _error_response(
                        400,
                        "Invalid request: a field (the message says which), a provider not configured, a language "
                        "or voice it does not speak, or a text it makes no audio of",
                    ),
                    "401": _error_response(401, "Missing, invalid or expired credentials"),
                    "409": _error_response(409, "The audio cache is off on this speakd (reason cache_disabled)"),
                    "502": _error_response(502, "The provider failed to render it"),
                    "503": _error_response(503, "The audio could not be stored (the daemon log says why)"),
                },
            }
        },
        "/v1.0/nodes": {
            "get": {
                "summary": "The speakd nodes sharing this one's store, each with its live sessions (for operators)",
                "description": "Any customer's credential. A node writes tm_last_seen every "
                f"{HEARTBEAT_S:g} s while it runs; the sessions a node made are its own (their Asterisk objects "
                "are on its Asterisk).",
                "responses": {
                    "200": _result_list(
                        "The nodes, by id",
                        {
                            "type": "object",
                            "properties": {
                                "id": {"type": "string", "description": "its [node] id"},
                                "url": {"type": "string", "description": "where the other nodes reach its API"},
                                "tm_last_seen": _TIMESTAMP,
                                "live_sessions": {
                                    "type": "integer",
                                    "description": "its sessions initiating or active",
                                },
                            },
                            "required": ["id", "url", "tm_last_seen", "live_sessions"],
                        },
                        required=True,
                    ),
                    "401": _error_response(401, "Missing, invalid or expired credentials"),
                    "503": _error_response(503, "The store cannot be read now (PostgreSQL unreachable)"),
                },
            }
        },
        "/v1.0/lexicons": {
            "get": {
                "summary": "Your pronunciation lexicons, by name",
                "operationId": "listLexicons",
                "responses": {
                    "200": _result_list("The lexicons", {"$ref": "#/components/schemas/Lexicon"}, required=True),
                    "401": _error_response(401, "Missing, invalid or expired credentials"),
                    "503": _error_response(503, "The store cannot be read now"),
                },
            }
        },
        "/v1.0/lexicons/{name}": {
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": _LEXICON_NAME}],
            "put": {
                "summary": "Make a pronunciation lexicon, or replace its entries",
                "description": f"At most {MAX_LEXICONS} lexicons per customer. A session (lexicon at create) or a "
                "say names one; says already queued keep the entries they were queued with.",
                "operationId": "putLexicon",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["entries"],
                                "properties": {"entries": _LEXICON_ENTRIES},
                            }
                        }
                    },
                },
                "responses": {
                    "201": {
                        "description": "Made",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Lexicon"}}},
                    },
                    "200": {
                        "description": "Its entries replaced",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Lexicon"}}},
                    },
                    "400": _error_response(
                        400, "Invalid name or entries (the message says which), or too many lexicons"
                    ),
                    "401": _error_response(401, "Missing, invalid or expired credentials"),
                    "503": _error_response(503, "The store cannot be written now; nothing was changed"),
                },
            },
            "get": {
                "summary": "One of your lexicons",
                "operationId": "getLexicon",
                "responses": {
                    "200": {
                        "description": "The lexicon",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Lexicon"}}},
                    },
                    "400": _error_response(400, "Not a lexicon name"),
                    "401": _error_response(401, "Missing, invalid or expired credentials"),
                    "404": _error_response(404, "You have no lexicon of that name"),
                    "503": _error_response(503, "The store cannot be read now"),
                },
            },
            "delete": {
                "summary": "Delete one of your lexicons (says already queued keep its entries)",
                "operationId": "deleteLexicon",
                "responses": {
                    "200": {
                        "description": "Deleted: the lexicon as it was",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Lexicon"}}},
                    },
                    "400": _error_response(400, "Not a lexicon name"),
                    "401": _error_response(401, "Missing, invalid or expired credentials"),
                    "404": _error_response(404, "You have no lexicon of that name"),
                    "503": _error_response(503, "The store cannot be written now; nothing was changed"),
                },
            },
        },
        "/v1.0/speakings/{id}/stop": {
            "parameters": [_ID],
            "post": {
                "summary": "Stop the session and release the call",
                "operationId": "stopSpeaking",
                "responses": _responses(200, 401, 404, 503),
            },
        },
        "/health": {"get": _HEALTH},
        "/metrics": {"get": _METRICS},
    },
}
