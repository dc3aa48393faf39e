"""Small waiting helpers shared by integration tests."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any


async def wait_for(check: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


async def says_of(api, speaking_id: str) -> dict[str, dict]:
    """A session's say items by say_id, read through the API."""
    reply = await api.request("GET", f"/speakings/{speaking_id}/says")
    assert reply.status == 200, reply
    return {item["say_id"]: item for item in reply.body["result"]}


async def wait_statuses(api, speaking_id: str, wanted: dict[str, str], timeout: float = 40.0) -> dict[str, dict]:
    """Poll the says until each named one has its wanted status; returns them all."""
    deadline = time.monotonic() + timeout
    while True:
        says = await says_of(api, speaking_id)
        if all(says[say_id]["status"] == status for say_id, status in wanted.items()):
            return says
        assert time.monotonic() < deadline, f"says did not reach {wanted}: {says}"
        await asyncio.sleep(0.05)
