"""The synthesis pool's order: playing says' sentences before new says' first ones, by cost."""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time

import pytest

from speakd.providers import deadline_pool
from speakd.providers.deadline_pool import SAFETY, DeadlinePool


async def run_in_order(pool: DeadlinePool, jobs: list[tuple[str, float, float | None]]) -> list[str]:
    """Queue ``jobs`` (name, deadline in s from now or inf, cost) behind a job that holds the
    only worker, release it, and return the order in which they ran."""
    ran: list[str] = []
    release = threading.Event()
    blocker = asyncio.ensure_future(pool.run(release.wait))
    while not pool._running:  # the worker took the blocker
        await asyncio.sleep(0.001)
    now = time.monotonic()
    waiting = [
        asyncio.ensure_future(
            pool.run(ran.append, name, deadline=lambda d=delay: now + d if d < math.inf else math.inf, cost=cost)
        )
        for name, delay, cost in jobs
    ]
    await asyncio.sleep(0.01)  # all queued before the worker is free
    release.set()
    await asyncio.gather(blocker, *waiting)
    return ran


async def test_a_playing_say_whose_sentence_cannot_wait_goes_before_a_new_say() -> None:
    pool = DeadlinePool(1, "test")
    try:
        pool.observe(100, 1.0)  # 10 ms per unit of cost
        # The new say's first sentence (1 s) and then the playing say's next one (2 s) do not
        # fit in the 3.5 s the playing say has buffered, with the margin.
        assert SAFETY * (1.0 + 2.0) > 3.5
        order = await run_in_order(pool, [("new", math.inf, 100), ("playing", 3.5, 200)])
        assert order == ["playing", "new"]
    finally:
        pool.close()
        await asyncio.to_thread(pool.join)


async def test_a_new_say_starts_first_when_the_playing_say_can_wait_for_it() -> None:
    pool = DeadlinePool(1, "test")
    try:
        pool.observe(100, 1.0)
        order = await run_in_order(pool, [("new", math.inf, 10), ("playing", 3.5, 200)])
        assert SAFETY * (0.1 + 2.0) < 3.5
        assert order == ["new", "playing"]
    finally:
        pool.close()
        await asyncio.to_thread(pool.join)


async def test_deadlines_go_earliest_first_and_new_says_in_arrival_order() -> None:
    pool = DeadlinePool(1, "test")
    try:
        pool.observe(100, 1.0)
        order = await run_in_order(
            pool,
            [("new-1", math.inf, 100), ("late", 2.0, 100), ("new-2", math.inf, 100), ("soon", 1.0, 100)],
        )
        assert order == ["soon", "late", "new-1", "new-2"]
    finally:
        pool.close()
        await asyncio.to_thread(pool.join)


def test_a_longer_sentence_is_expected_to_take_longer() -> None:
    pool = DeadlinePool(2, "test")
    assert pool.expected_s(50) == pool.typical_job_s == 0.0  # nothing learnt yet
    pool.observe(100, 0.5)
    pool.observe(100, 1.5)  # the host got busier: the average follows
    assert pool.seconds_per_cost == pytest.approx(0.01)
    assert pool.expected_s(300) == pytest.approx(3.0)
    assert pool.expected_s(None) == pool.typical_job_s


async def test_a_job_submitted_to_a_busy_pool_is_expected_back_after_the_jobs_before_it() -> None:
    pool = DeadlinePool(2, "test")
    release = threading.Event()
    held = [asyncio.ensure_future(pool.run(release.wait)) for _ in range(2)]
    try:
        pool.observe(100, 1.0)  # 10 ms per unit of cost
        while pool._running < 2:
            await asyncio.sleep(0.001)
        pool.typical_job_s = 0.2
        both_busy = pool.expected_return_s(100)
        assert both_busy == pytest.approx(0.2 / 2 + 1.0)  # one worker's share of a job, then its own
        waiting = [asyncio.ensure_future(pool.run(time.sleep, 0)) for _ in range(6)]
        await asyncio.sleep(0.01)
        # Six more before it (other sessions' next steps): their share of both workers first.
        assert pool.expected_return_s(100) == pytest.approx(0.2 * 7 / 2 + 1.0)
        # Eight sessions under way: the other seven's next steps are before it, submitted or not.
        assert pool.expected_return_s(100, streams=8) == pytest.approx(0.2 * 7 / 2 + 1.0)
        release.set()
        await asyncio.gather(*held, *waiting)
        assert pool.expected_return_s(100) == pytest.approx(1.0)  # idle: it goes at once
        # Idle, but eight sessions between steps: seven jobs' share of the two workers first.
        pool.typical_job_s = 0.2
        assert pool.expected_return_s(100, streams=8) == pytest.approx(0.2 * 6 / 2 + 1.0)
        assert pool.expected_return_s(100, streams=2) == pytest.approx(1.0)  # a worker each
    finally:
        release.set()
        pool.close()
        await asyncio.to_thread(pool.join)


def test_each_stream_is_expected_its_share_of_the_workers_output() -> None:
    pool = DeadlinePool(2, "test")
    pool.observe(100, 0.2, 0.0)  # a sentence's front: time, no audio
    assert pool.share_rate(1) == 0.0  # too little seen yet to guess
    for _ in range(4):
        pool.observe(50, 0.2, 1.0)  # windows: a second of audio in 0.2 s
    per_worker = pool.share_rate(1)
    assert 3.5 < per_worker < 4.5  # the front's time counts against the windows' audio
    assert pool.share_rate(2) == pytest.approx(per_worker, rel=1e-3)  # a worker each
    # Eight streams on two workers: a quarter each, though one's first chunks went first.
    assert pool.share_rate(8) == pytest.approx(per_worker / 4, rel=1e-3)


def test_the_share_follows_the_host_and_forgets_a_busy_spell(monkeypatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(deadline_pool.time, "monotonic", lambda: clock[0])
    pool = DeadlinePool(1, "test")
    for _ in range(20):
        pool.observe(50, 0.1, 1.0)
        clock[0] += 0.1
    idle = pool.share_rate(1)
    for _ in range(20):
        pool.observe(50, 0.5, 1.0)  # the same work now takes five times as long
        clock[0] += 0.5
    busy = pool.share_rate(1)
    assert busy < idle / 3
    clock[0] += 60  # a minute with nothing to do: the busy spell is forgotten
    assert pool.share_rate(1) == 0.0
    for _ in range(8):
        pool.observe(50, 0.1, 1.0)
        clock[0] += 0.1
    assert pool.share_rate(1) == pytest.approx(idle, rel=0.01)


async def test_the_workers_run_at_the_pools_priority_not_the_callers() -> None:
    # Raising a thread's nice is always allowed; the caller's own stays where it was.
    caller = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    nice = min(caller + 5, 19)

    def own_priority() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    pool = DeadlinePool(2, "test-nice", nice=nice)
    try:
        assert await asyncio.gather(pool.run(own_priority), pool.run(own_priority)) == [nice, nice]
    finally:
        pool.close()
        await asyncio.to_thread(pool.join)
    assert own_priority() == caller
    plain = DeadlinePool(1, "test-no-nice")
    try:
        assert await plain.run(own_priority) == caller
    finally:
        plain.close()
        await asyncio.to_thread(plain.join)
