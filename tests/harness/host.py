"""What the host was doing while a test ran, for the failure report of tests judged by ear: a
recording with holes on a host that lent half its CPU time elsewhere reads differently."""

from __future__ import annotations

import os
from dataclasses import dataclass


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
        f"cores {os.cpu_count()}: busy {100 * busy / total:.0f} %, idle {100 * idle / total:.0f} %, "
        f"stolen {100 * steal / total:.0f} %; load average {load}{stalled}"
    )
