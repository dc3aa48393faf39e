"""Owning tasks: the one way speakd ends a task it started.

Every task has an owner that cancels it and waits for it to end (no fire-and-forget). Waiting
with ``gather`` rather than ``suppress(CancelledError): await task`` keeps a cancel aimed at the
owner itself: the owner still ends, instead of swallowing its own cancellation.
"""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(*tasks: asyncio.Future[Any] | None) -> None:
    """Cancel each of ``tasks`` (None and finished ones are fine) and wait until all have ended.
    Their results and errors are consumed here: a task reports its own failures while it runs."""
    owned = [task for task in tasks if task is not None]
    for task in owned:
        task.cancel()
    if owned:
        await asyncio.gather(*owned, return_exceptions=True)
