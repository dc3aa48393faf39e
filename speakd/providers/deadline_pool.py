"""Worker threads that keep playing sessions fed before starting new ones.

Local synthesis shares a few cores among every session. In arrival order, a session that is
already playing waits behind the first sentences of sessions that just started, and runs dry
mid-sentence when the host is busy. Here each job carries a deadline, read when a worker
becomes free (it moves: a playing session's is when its buffered audio runs out; a job with no
deadline, ``inf``, is a new say's start). A worker takes, in this order:

1. the job with the earliest deadline, if that deadline is at risk (fewer than two typical
   job durations away: jobs are assumed to take what jobs took lately, which grows with load);
2. else the oldest job without a deadline (a new say's start, as soon as nothing is at risk);
3. else the job with the earliest deadline.

Running dry mid-speech is a glitch the caller hears; a new say starting later is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import threading
import time
from collections.abc import Callable
from typing import Any

Deadline = Callable[[], float]


def no_deadline() -> float:
    return math.inf


class _Job:
    __slots__ = ("args", "deadline", "fn", "future", "loop", "order", "took")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], deadline: Deadline, order: int) -> None:
        self.fn, self.args, self.deadline, self.order = fn, args, deadline, order
        self.loop = asyncio.get_running_loop()
        self.future: asyncio.Future[Any] = self.loop.create_future()
        self.took = 0.0


class DeadlinePool:
    def __init__(self, workers: int, name: str) -> None:
        self._workers = workers
        self._name = name
        self._jobs: list[_Job] = []
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._order = itertools.count()
        self.typical_job_s = 0.0  # moving average of how long a job took (wall clock)
        self._measured = 0

    async def run(self, fn: Callable[..., Any], *args: Any, deadline: Deadline | None = None) -> Any:
        """Run ``fn(*args)`` on a worker; ``deadline()`` is a monotonic time (inf: none)."""
        return (await self.run_timed(fn, *args, deadline=deadline))[0]

    async def run_timed(
        self, fn: Callable[..., Any], *args: Any, deadline: Deadline | None = None
    ) -> tuple[Any, float]:
        """As :meth:`run`, also returning how long the job ran (seconds, wall clock)."""
        job = _Job(fn, args, deadline or no_deadline, next(self._order))
        with self._cond:
            if self._closed:
                raise RuntimeError(f"{self._name} is closed")
            self._jobs.append(job)
            if len(self._threads) < self._workers:
                # Not daemon threads: one killed at exit inside native code (ONNX) aborts the process.
                thread = threading.Thread(target=self._work, name=f"{self._name}-{len(self._threads)}")
                self._threads.append(thread)
                thread.start()
            self._cond.notify()
        try:
            return await asyncio.shield(job.future), job.took
        except asyncio.CancelledError:
            with self._cond:  # not started yet: never start it
                if job in self._jobs:
                    self._jobs.remove(job)
            raise

    def expected_wait_s(self, job_s: float) -> float:
        """Roughly how long a job of ``job_s`` submitted now takes to come back: the jobs
        already waiting share the workers with it."""
        return max(job_s, self.typical_job_s) * (len(self._jobs) / self._workers + 1)

    def join(self) -> None:
        """Wait for the workers to exit (after close(); blocking)."""
        for thread in self._threads:
            thread.join()

    def close(self) -> None:
        """Stop taking jobs; workers finish the one they run and exit."""
        with self._cond:
            self._closed = True
            for job in self._jobs:
                _deliver(job, _cancel, None)
            self._jobs.clear()
            self._cond.notify_all()

    def _next(self) -> _Job | None:
        with self._cond:
            while not self._jobs and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            now = time.monotonic()
            deadlines = [(_safe(j.deadline, now), j.order, j) for j in self._jobs]
            earliest = min(deadlines, key=lambda d: d[:2])
            open_ended = [d for d in deadlines if d[0] == math.inf]
            if earliest[0] - 2 * self.typical_job_s > now and open_ended:
                earliest = min(open_ended, key=lambda d: d[1])
            job = earliest[2]
            self._jobs.remove(job)
            return job

    def _work(self) -> None:
        while (job := self._next()) is not None:
            started = time.monotonic()
            try:
                result, failure = job.fn(*job.args), None
            except BaseException as exc:  # handed to the awaiting coroutine
                result, failure = None, exc
            job.took = took = time.monotonic() - started
            if failure is not None:
                _deliver(job, _set_exception, failure)
            else:
                _deliver(job, _set_result, result)
            with self._cond:
                self._measured += 1
                self.typical_job_s += (took - self.typical_job_s) / min(self._measured, 4)


def _deliver(job: _Job, how: Callable[[asyncio.Future[Any], Any], None], value: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is gone (shutdown): nobody is waiting
        job.loop.call_soon_threadsafe(how, job.future, value)


def _safe(deadline: Deadline, now: float) -> float:
    try:
        return deadline()
    except Exception:
        return now


def _set_result(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def _cancel(future: asyncio.Future[Any], _: Any) -> None:
    if not future.done():
        future.cancel()
