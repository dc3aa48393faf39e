"""The one error hierarchy of speakd.

Domain code raises these; the HTTP edge turns each into its status code and a JSON body
whose message says what to fix and whose ``reason`` is a short, stable code a client can
branch on (the message may be reworded; a reason is not). Each class carries its default
reason; a raise site can pass a finer one (``InvalidRequest(..., reason="invalid_json")``).
Third-party exceptions (ARI, provider SDKs) are mapped to these where they are caught,
never leaked to the API.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

# Finer reasons of InvalidRequest: the body is not a JSON object, or one of its fields (or query
# parameters) is wrong: missing, unknown, of the wrong type or out of range.
INVALID_JSON = "invalid_json"
INVALID_FIELD = "invalid_field"
# What a client is told of a bug (an exception that is not a SpeakdError): the log has the rest.
INTERNAL_ERROR = "internal error in speakd; the daemon log has the details"


def either(choices: Iterable[str]) -> str:
    """The allowed values as a message says them: ``'a' or 'b'``, ``'a', 'b' or 'c'``."""
    quoted = [f"'{choice}'" for choice in choices]
    return " or ".join([", ".join(quoted[:-1]), quoted[-1]] if len(quoted) > 1 else quoted)


def invalid_field(message: str) -> InvalidRequest:
    return InvalidRequest(message, reason=INVALID_FIELD)


def reject_unknown(
    given: Iterable[str],
    allowed: Iterable[str],
    what: str,
    *,
    where: str = "",
    error: Callable[[str], Exception] = invalid_field,
) -> None:
    """Raise ``error`` if ``given`` has names not ``allowed`` (``what`` they are: "field", "key";
    ``where``: what has them, if the message should say), saying which and what is accepted:
    the one wording of every such refusal."""
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        message = f"unknown {what}(s) {', '.join(unknown)}; accepted: {either(allowed)}"
        raise error(f"{where} has {message}" if where else message)


class SpeakdError(Exception):
    """Base of every error speakd raises on purpose."""

    status = 500
    reason = "internal"
    retry_after: int | None = None  # seconds, sent as Retry-After when set

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason


class InvalidRequest(SpeakdError):
    """The request cannot be served as written (HTTP 400)."""

    status = 400
    reason = "invalid_request"


class Unauthorized(SpeakdError):
    """No, invalid or expired credentials (HTTP 401)."""

    status = 401
    reason = "unauthorized"


class NotFound(SpeakdError):
    """Unknown resource, or one owned by another customer (HTTP 404)."""

    status = 404
    reason = "not_found"


class Conflict(SpeakdError):
    """The request clashes with the current state of a call or session (HTTP 409)."""

    status = 409
    reason = "conflict"


class TooManyRequests(SpeakdError):
    """A bounded queue is full (HTTP 429)."""

    status = 429
    reason = "queue_full"
    # The only bounded queue is a session's says (100 waiting). When it is full the call has
    # minutes of speech queued ahead of it, so a client that waits loses nothing audible, and a
    # say (a sentence, at the ~15 characters per second speech runs) plays for roughly 2-6 s:
    # after 5 s about one slot has freed. Retrying sooner only finds the queue still full.
    retry_after = 5


class ServiceUnavailable(SpeakdError):
    """speakd cannot serve now: Asterisk unreachable, or shutting down (HTTP 503)."""

    status = 503
    reason = "unavailable"


class ProviderError(SpeakdError):
    """A TTS provider failed, timed out or cut off mid-stream."""

    status = 502
    reason = "provider_failed"


class ProviderNotConfigured(InvalidRequest):
    """The requested provider has no configuration (credentials) on this daemon."""

    reason = "provider_not_configured"


class UnsupportedLanguage(InvalidRequest):
    """The provider does not speak the requested language."""

    reason = "unsupported_language"
