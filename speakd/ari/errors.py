"""ARI errors, typed by what Asterisk answered. Mapped to domain errors by the services."""

from __future__ import annotations


class AriError(Exception):
    def __init__(self, status: int, message: str, method: str = "", path: str = "") -> None:
        super().__init__(f"{method} {path}: {status} {message}".strip())
        self.status = status
        self.message = message
        self.method = method
        self.path = path


class AriNotFound(AriError):
    """404: the channel/bridge/... does not exist (any more)."""


class AriUnprocessable(AriError):
    """422: e.g. a user event's source has gone (``Event source was not found``)."""


class AriUnavailable(AriError):
    """Asterisk cannot be reached, or the request timed out."""

    def __init__(self, message: str, method: str = "", path: str = "") -> None:
        super().__init__(0, message, method, path)


_BY_STATUS: dict[int, type[AriError]] = {
    404: AriNotFound,
    422: AriUnprocessable,
}


def error_for_status(status: int, message: str, method: str, path: str) -> AriError:
    return _BY_STATUS.get(status, AriError)(status, message, method, path)
