"""The one error hierarchy of speakd.

Domain code raises these; the HTTP edge turns each into its status code and a JSON body
whose message says what to fix. Third-party exceptions (ARI, provider SDKs) are mapped to
these where they are caught, never leaked to the API.
"""

from __future__ import annotations


class SpeakdError(Exception):
    """Base of every error speakd raises on purpose."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(SpeakdError):
    """The request cannot be served as written (HTTP 400)."""

    status = 400


class Unauthorized(SpeakdError):
    """No, invalid or expired credentials (HTTP 401)."""

    status = 401


class NotFound(SpeakdError):
    """Unknown resource, or one owned by another customer (HTTP 404)."""

    status = 404


class Conflict(SpeakdError):
    """The request clashes with the current state of a call or session (HTTP 409)."""

    status = 409


class TooManyRequests(SpeakdError):
    """A bounded queue is full (HTTP 429)."""

    status = 429


class ServiceUnavailable(SpeakdError):
    """speakd cannot serve now: Asterisk unreachable, or shutting down (HTTP 503)."""

    status = 503


class ProviderError(SpeakdError):
    """A TTS provider failed, timed out or cut off mid-stream."""

    status = 502


class ProviderNotConfigured(InvalidRequest):
    """The requested provider has no configuration (credentials) on this daemon."""


class UnsupportedLanguage(InvalidRequest):
    """The provider does not speak the requested language."""
