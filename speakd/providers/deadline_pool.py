"""Worker threads that keep playing sessions fed before starting new ones.

Local synthesis shares a few cores among every session. In arrival order, a session that is
already playing waits behind the first sentences of sessions that just started, and runs dry
mid-sentence when the host is busy. Here each job carries a deadline, read when a worker
becomes free (it moves: a playing session's is when its buffered audio runs out; a job with no
deadline, ``inf``, is a new say's start), and a cost (how much work it is: Piper's phonemes).
The pool learns the seconds per unit of cost, which grow with load, and so expects a long
sentence to take longer than a short one. A worker takes:

1. the oldest job without a deadline (a new say's start), if every job with a deadline could
   still wait for it to finish and then run, with ``SAFETY`` to spare;
2. else the job with the earliest deadline.

A job runs to its end once started, so rule 1 counts the new job's whole duration against
every waiting deadline. Running dry mid-speech is a glitch the caller hears; a new say
starting later is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any

Deadline = Callable[[], float]

# A new say's start waits while a deadline could not absorb it: the margin on both durations.
SAFETY = 1.5
# share_rate's memory: what the pool did this long ago weighs 1/e (the host's load changes, and
# a pool idle since a busy spell must not go by it); below OBSERVED_ENOUGH_S of recent work, no guess.
OUTPUT_MEMORY_S = 5.0
OBSERVED_ENOUGH_S = 0.5


def no_deadline() -> float:
    return math.inf


class _Job:
    __slots__ = ("args", "cost", "deadline", "fn", "future", "loop", "order", "took")

    def __init__(
        self, fn: Callable[..., Any], args: tuple[Any, ...], deadline: Deadline, cost: float | None, order: int
    ) -> None:
        self.fn, self.args, self.deadline, self.cost, self.order = fn, args, deadline, cost, order
        self.loop = asyncio.get_running_loop()
        self.future: asyncio.Future[Any] = self.loop.create_future()
        self.took = 0.0


class DeadlinePool:
    def __init__(self, workers: int, name: str, nice: int | None = None) -> None:
        """``nice``: the workers' CPU priority (None: the creating thread's). Raising it is always
        allowed; lowering it below the process's needs CAP_SYS_NICE, and without it the workers
        keep the process's."""
        self._workers = workers
        self._name = name
        self._nice = nice
        self._jobs: list[_Job] = []
        self._running = 0
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._order = itertools.count()
        # Moving averages (wall clock, so they grow with load): per job, and per unit of cost.
        self.typical_job_s = 0.0
        self._measured = 0
        self.seconds_per_cost = 0.0
        self._observed = 0
        # What recent jobs made (the caller's unit, e.g. seconds of audio) and how long they ran,
        # older ones weighing less (OUTPUT_MEMORY_S): output per second of one worker, fronts included.
        self._output = 0.0
        self._output_took = 0.0
        self._output_at = time.monotonic()

    async def run(
        self, fn: Callable[..., Any], *args: Any, deadline: Deadline | None = None, cost: float | None = None
    ) -> Any:
        """Run ``fn(*args)`` on a worker; ``deadline()`` is a monotonic time (inf: none)."""
        return (await self.run_timed(fn, *args, deadline=deadline, cost=cost))[0]

    async def run_timed(
        self, fn: Callable[..., Any], *args: Any, deadline: Deadline | None = None, cost: float | None = None
    ) -> tuple[Any, float]:
        """As :meth:`run`, also returning how long the job ran (seconds, wall clock).

        ``cost``: how much work the job is, in the unit the caller reports to :meth:`observe`
        (None: unknown, taken to be a typical job)."""
        job = _Job(fn, args, deadline or no_deadline, cost, next(self._order))
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

    def observe(self, cost: float, took: float, output: float = 0.0) -> None:
        """A job of ``cost`` took ``took`` seconds and made ``output`` (reported by the caller,
        who learns the cost of a job only from its result)."""
        with self._cond:
            self._forget_older_output()
            self._output += output
            self._output_took += took
            if cost > 0:
                self._observed += 1
                self.seconds_per_cost = _recent_mean(self.seconds_per_cost, took / cost, self._observed)

    def share_rate(self, streams: int) -> float:
        """Output per second each of ``streams`` streams of jobs (one job at a time each) can
        expect from the pool, at the recent speed (0: not known yet). A stream whose jobs have
        gone first so far can have measured more; from now on it shares the workers."""
        with self._cond:
            self._forget_older_output()
            if self._output_took < OBSERVED_ENOUGH_S:
                return 0.0
            per_worker = self._output / self._output_took
        return per_worker * min(1.0, self._workers / max(streams, 1))

    def _forget_older_output(self) -> None:
        now = time.monotonic()
        kept = math.exp(-(now - self._output_at) / OUTPUT_MEMORY_S)
        self._output, self._output_took, self._output_at = self._output * kept, self._output_took * kept, now

    def expected_s(self, cost: float | None) -> float:
        """How long a job of ``cost`` is expected to run."""
        if cost is None or not self._observed:
            return self.typical_job_s
        return cost * self.seconds_per_cost

    def expected_return_s(self, cost: float | None, streams: int = 1) -> float:
        """How long a job of ``cost`` with a deadline takes to come back if submitted now: after
        the jobs running and waiting (on a busy pool they are other playing sessions' next steps,
        due as soon as this one), shared among the workers. ``streams``: streams of jobs under way
        (one job at a time each, this one's included): the others' next jobs count as waiting
        even before they are submitted, as they are between two steps (sessions that started
        together, each with little audio in hand, take turns)."""
        waiting = max(self._running + len(self._jobs), streams - 1)
        ahead = waiting - self._workers + 1
        wait = self.typical_job_s * ahead / self._workers if ahead > 0 else 0.0
        return wait + self.expected_s(cost)

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
            job = self._choose(time.monotonic())
            self._jobs.remove(job)
            self._running += 1
            return job

    def _choose(self, now: float) -> _Job:
        timed: list[tuple[float, int, _Job]] = []
        new_start: _Job | None = None
        for job in self._jobs:
            deadline = _safe(job.deadline, now)
            if deadline < math.inf:
                timed.append((deadline, job.order, job))
            elif new_start is None or job.order < new_start.order:
                new_start = job
        if new_start is not None:
            runs = self.expected_s(new_start.cost)
            if all(d - now > SAFETY * (runs + self.expected_s(j.cost)) for d, _, j in timed):
                return new_start
        return min(timed, key=lambda t: t[:2])[2]

    def _work(self) -> None:
        if self._nice is not None:
            # Linux gives each thread a nice value of its own: this worker's, not the process's.
            with contextlib.suppress(PermissionError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self._nice)
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
                self._running -= 1
                self._measured += 1
                self.typical_job_s = _recent_mean(self.typical_job_s, took, self._measured)


def _recent_mean(mean: float, sample: float, count: int) -> float:
    """``mean`` with the ``count``-th sample in: the plain mean of the first ones, then a moving
    average weighing the newest a quarter (the host's load changes)."""
    return mean + (sample - mean) / min(count, 4)


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
