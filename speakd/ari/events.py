"""Routing of ARI events to whoever waits for them.

Asterisk can deliver a channel's StasisStart before the POST that created it returns, so a
waiter is registered under the id we chose for the object *before* creating it. (Teardown
does not wait here: a channel that left our app is destroyed without an event reaching us,
so the sessions poll until ARI no longer lists it.)
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


class EventWaiters:
    """Futures resolved by the first event of a type about an object id."""

    def __init__(self) -> None:
        self._waiters: dict[tuple[str, str], asyncio.Future[dict[str, Any]]] = {}

    def expect(self, event_type: str, object_id: str) -> asyncio.Future[dict[str, Any]]:
        future = asyncio.get_running_loop().create_future()
        self._waiters[(event_type, object_id)] = future
        return future

    def discard(self, event_type: str, object_id: str) -> None:
        future = self._waiters.pop((event_type, object_id), None)
        if future is not None and not future.done():
            future.cancel()

    def resolve(self, event: dict[str, Any]) -> None:
        if not self._waiters:
            return
        event_type = event.get("type", "")
        for object_id in event_object_ids(event):
            future = self._waiters.pop((event_type, object_id), None)
            if future is not None and not future.done():
                future.set_result(event)
