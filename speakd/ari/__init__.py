"""Asterisk REST Interface: a thin aiohttp client (REST + events WebSocket)."""

from speakd.ari.client import AriClient
from speakd.ari.errors import AriError, AriNotFound, AriUnavailable

__all__ = ["AriClient", "AriError", "AriNotFound", "AriUnavailable"]
