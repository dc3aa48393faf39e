"""Routing of ARI events to whoever waits for them.

Asterisk can deliver a channel's StasisStart before the POST that created it returns, so a
waiter is registered under the id we chose for the channel *before* creating it.
"""

from __future__ import annotations

import asyncio
from typing import Any


def event_object_ids(event: dict[str, Any]) -> list[str]:
    """The channel/bridge ids an event is about (snoop/peer channels included)."""
    ids = []
    for key in ("channel", "bridge", "peer", "replace_channel"):
        obj = event.get(key)
        if isinstance(obj, dict) and "id" in obj:
            ids.append(obj["id"])
    return ids


class StasisWaiters:
    """Futures resolved by the StasisStart of a channel id we chose."""

    def __init__(self) -> None:
        self._waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}

    def expect(self, channel_id: str) -> asyncio.Future[dict[str, Any]]:
        future = asyncio.get_running_loop().create_future()
        self._waiters[channel_id] = future
        return future

    def discard(self, channel_id: str) -> None:
        future = self._waiters.pop(channel_id, None)
        if future is not None and not future.done():
            future.cancel()

    def resolve(self, event: dict[str, Any]) -> None:
        channel_id = event.get("channel", {}).get("id", "")
        future = self._waiters.pop(channel_id, None)
        if future is not None and not future.done():
            future.set_result(event)

    def fail(self, channel_id: str, exc: BaseException) -> None:
        future = self._waiters.pop(channel_id, None)
        if future is not None and not future.done():
            future.set_exception(exc)
