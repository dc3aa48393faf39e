"""Asterisk REST Interface: a thin aiohttp client (REST + events WebSocket)."""

from speakd.ari.client import AriClient
from speakd.ari.errors import AriConflict, AriError, AriNotFound, AriUnavailable

__all__ = ["AriClient", "AriConflict", "AriError", "AriNotFound", "AriUnavailable"]
