"""URLs: the WebSocket URL of an HTTP endpoint, for ARI's events and media sockets and
ElevenLabs' stream input (which must not import one another)."""

from __future__ import annotations

from yarl import URL


def websocket_url(url: URL | str) -> URL:
    """``url`` with the WebSocket scheme of its HTTP one: ``https`` → ``wss``, else ``ws``."""
    url = URL(url)
    return url.with_scheme("wss" if url.scheme == "https" else "ws")
