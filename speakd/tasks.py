"""Owning tasks: the one way speakd ends a task it started.

Every task has an owner that cancels it and waits for it to end (no fire-and-forget). Waiting
with ``gather`` rather than ``suppress(CancelledError): await task`` keeps a cancel aimed at the
owner itself: the owner still ends, instead of swallowing its own cancellation.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

log = structlog.get_logger(__name__)


async def cancel_and_wait(*tasks: asyncio.Future[Any] | None) -> None:
    """Cancel each of ``tasks`` (None and finished ones are fine) and wait until all have ended.
    A task that had failed is logged here (``task_failed``), not raised: the owner is ending it,
    and the rest of the owner's teardown must still run."""
    owned = [task for task in tasks if task is not None]
    for task in owned:
        task.cancel()
    if not owned:
        return
    for task, result in zip(owned, await asyncio.gather(*owned, return_exceptions=True), strict=True):
        if isinstance(result, Exception):
            name = task.get_name() if isinstance(task, asyncio.Task) else repr(task)
            log.error("task_failed", task=name, error=repr(result), exc_info=result)
