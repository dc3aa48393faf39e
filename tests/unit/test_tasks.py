"""cancel_and_wait: how every owner ends its tasks."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from speakd.tasks import cancel_and_wait

pytestmark = pytest.mark.asyncio


async def test_tasks_are_cancelled_and_awaited_and_none_is_fine():
    started = asyncio.Event()

    async def forever():
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(forever())
    await started.wait()
    await cancel_and_wait(task, None)
    assert task.cancelled()


async def test_a_task_that_had_failed_is_logged_not_raised():
    async def broken():
        raise RuntimeError("callback bug")

    task = asyncio.create_task(broken(), name="feeder")
    await asyncio.sleep(0)
    with capture_logs() as logs:
        await cancel_and_wait(task)
    assert [(e["event"], e["task"]) for e in logs] == [("task_failed", "feeder")]
    assert "callback bug" in logs[0]["error"]


async def test_a_cancel_aimed_at_the_owner_still_ends_the_owner():
    # suppress(CancelledError): await task would swallow it and the owner would run on.
    child_can_end = asyncio.Event()
    ran_on = []

    async def stubborn():
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await child_can_end.wait()  # slow to end: the owner is waiting on it
            raise

    async def owner(child):
        await cancel_and_wait(child)
        ran_on.append(True)

    child = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    owner_task = asyncio.create_task(owner(child))
    await asyncio.sleep(0.01)
    owner_task.cancel()
    child_can_end.set()
    with pytest.raises(asyncio.CancelledError):
        await owner_task
    assert ran_on == []
