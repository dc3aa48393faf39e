"""What the host was doing while a test ran, for the failure report of tests judged by ear: a
recording with holes on a host that lent half its CPU time elsewhere reads differently."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CpuTimes:
    busy: int  # jiffies (user, nice, system, irq, softirq)
    idle: int  # idle + iowait
    steal: int  # taken by the hypervisor for other guests
    # Pressure stall totals (µs; /proc/pressure, absent without PSI): how long some task waited
    # for a core, for the disk, for memory. A real-time path stalls on the latter two as well.
    stalls: tuple[int, ...] = ()

    @classmethod
    def now(cls) -> CpuTimes:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
        return cls(user + nice + system + irq + softirq, idle + iowait, steal, _stall_totals())


PRESSURE = ("cpu", "io", "memory")


def _stall_totals() -> tuple[int, ...]:
    totals = []
    for resource in PRESSURE:
        try:
            with open(f"/proc/pressure/{resource}") as f:
                some = f.readline()  # "some avg10=… avg60=… avg300=… total=<µs>"
            totals.append(int(some.rsplit("total=", 1)[1]))
        except (OSError, IndexError, ValueError):
            return ()
    return tuple(totals)


def describe(before: CpuTimes, after: CpuTimes) -> str:
    """CPU use across all cores between two samples, and the load average now."""
    busy, idle, steal = after.busy - before.busy, after.idle - before.idle, after.steal - before.steal
    total = max(busy + idle + steal, 1)
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    stalled = ""
    if before.stalls and after.stalls:
        waits = (
            f"{name} {(b - a) / 1e6:.2f} s" for name, a, b in zip(PRESSURE, before.stalls, after.stalls, strict=True)
        )
        stalled = "; some task stalled on " + ", ".join(waits)
    return (
        f"cores {os.cpu_count()}{cpu_model()}: busy {100 * busy / total:.0f} %, idle {100 * idle / total:.0f} %, "
        f"stolen {100 * steal / total:.0f} %; load average {load}{stalled}"
    )


@dataclass(frozen=True)
class ProcessCpu:
    """One process's CPU time (all its threads) and nice value at a moment."""

    ticks: int  # utime + stime, in clock ticks
    nice: int
    at: float  # time.monotonic()

    @classmethod
    def of(cls, pid: int) -> ProcessCpu | None:
        """None once the process is gone (or is not there to read)."""
        try:
            with open(f"/proc/{pid}/stat") as f:
                # After the ")" that ends the command name: state is field 3, utime 14, stime 15, nice 19.
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            return None
        return cls(int(fields[11]) + int(fields[12]), int(fields[16]), time.monotonic())


def describe_process(name: str, before: ProcessCpu | None, after: ProcessCpu | None) -> str:
    """``name``'s share of one core between two samples, and the nice value it ran at."""
    if before is None or after is None:
        return f"{name}: not measured"
    seconds = (after.ticks - before.ticks) / os.sysconf("SC_CLK_TCK")
    return f"{name} used {100 * seconds / max(after.at - before.at, 1e-3):.0f} % of a core at nice {after.nice}"


def cpu_model() -> str:
    """The CPU's model name in parentheses, after a space; "" where /proc/cpuinfo does not say."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return f" ({line.partition(':')[2].strip()})"
    return ""


# Host stalls, as a thread of Asterisk's priority meets them: a probe process per core sleeps
# PROBE_TICK_S at a time and notes every wake-up STALL_S or more late. A stall that long makes
# chan_websocket (and a file playback) miss a tick of its 20 ms timer, which is not made up: a
# hole the party hears that no sender can prevent (CI's host made such holes in the busy-host
# test, 2026-12-07; no load made any here).
PROBE_TICK_S = 0.005
STALL_S = 0.015
_PROBE = """
import os, sys, time
cpu, nice, tick, stall = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
os.sched_setaffinity(0, {cpu})
try:
    os.setpriority(os.PRIO_PROCESS, 0, nice)
except PermissionError:
    pass
print("nice", os.getpriority(os.PRIO_PROCESS, 0), flush=True)
while True:
    asked = time.time() + tick
    time.sleep(tick)
    woke = time.time()
    if woke - asked >= stall:
        print(asked, woke, flush=True)
"""


@dataclass
class HostStalls:
    """Stalls (wall-clock from, to) the probes saw, filled in when :func:`stall_probe` ends."""

    spans: list[tuple[float, float]] = field(default_factory=list)
    nice: set[int] = field(default_factory=set)  # what the probes ran at
    pids: list[int] = field(default_factory=list)  # the probe processes while they run

    def near(self, at: float, before: float, after: float) -> tuple[float, float] | None:
        """A stall that began at most ``after`` s before wall-clock ``at`` and ended at most
        ``before`` s after it (what could have made a hole heard at ``at``), or None."""
        return next((s for s in self.spans if s[0] - before <= at <= s[1] + after), None)

    def summary(self) -> str:
        probes = f"probes at nice {', '.join(map(str, sorted(self.nice)))}"
        if not self.spans:
            return f"no host stall of {STALL_S * 1000:.0f} ms or more ({probes})"
        longest = max(b - a for a, b in self.spans)
        return (
            f"{len(self.spans)} host stalls of {STALL_S * 1000:.0f} ms or more, "
            f"the longest {longest * 1000:.0f} ms ({probes})"
        )


@contextlib.contextmanager
def stall_probe(nice: int) -> Iterator[HostStalls]:
    """A probe per core at ``nice`` (best effort: raising priority needs root) for the block."""
    stalls = HostStalls()
    probes = [
        subprocess.Popen(
            [sys.executable, "-c", _PROBE, str(cpu), str(nice), str(PROBE_TICK_S), str(STALL_S)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for cpu in sorted(os.sched_getaffinity(0))
    ]
    stalls.pids = [probe.pid for probe in probes]
    try:
        yield stalls
    finally:
        for probe in probes:
            probe.kill()
        for probe in probes:
            out, _ = probe.communicate()
            for line in out.splitlines():
                first, second = line.split()
                if first == "nice":
                    stalls.nice.add(int(second))
                else:
                    stalls.spans.append((float(first), float(second)))
        stalls.spans.sort()
