"""ARI errors, typed by what Asterisk answered. Mapped to domain errors by the services."""

from __future__ import annotations


class AriError(Exception):
    def __init__(self, status: int, message: str, method: str = "", path: str = "") -> None:
        super().__init__(f"{method} {path}: {status} {message}".strip())
        self.status = status
        self.message = message
        self.method = method
        self.path = path


class AriBadRequest(AriError):
    """400: a parameter Asterisk did not accept."""


class AriNotFound(AriError):
    """404: the channel/bridge/... does not exist (any more)."""


class AriConflict(AriError):
    """409: e.g. the channel is not in a Stasis application."""


class AriUnprocessable(AriError):
    """422: e.g. the channel is not in our Stasis application."""


class AriUnavailable(AriError):
    """Asterisk cannot be reached, or the request timed out."""

    def __init__(self, message: str, method: str = "", path: str = "") -> None:
        super().__init__(0, message, method, path)


_BY_STATUS: dict[int, type[AriError]] = {
    400: AriBadRequest,
    404: AriNotFound,
    409: AriConflict,
    422: AriUnprocessable,
}


def error_for_status(status: int, message: str, method: str, path: str) -> AriError:
    return _BY_STATUS.get(status, AriError)(status, message, method, path)
