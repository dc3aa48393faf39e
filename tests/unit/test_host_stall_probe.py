"""The harness's stall probe (harness.host.stall_probe), which the busy-host test trusts to say
which holes the host made: a probe held off its core is a stall it reports, with when it was;
a host that lets it run reports none."""

from __future__ import annotations

import os
import signal
import time

from harness.host import STALL_S, HostStalls, stall_probe


def test_a_probe_kept_from_running_reports_a_stall_where_it_was():
    with stall_probe(nice=0) as stalls:
        time.sleep(0.3)  # the probes are up and ticking
        pids = stalls.pids
        stopped_at = time.time()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(0.1)
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        time.sleep(0.1)
    assert len(stalls.nice) == 1  # (0 if this process could lower its nice value to it)
    assert stalls.spans, "a probe stopped for 100 ms saw no stall"
    assert all(b - a >= STALL_S for a, b in stalls.spans)
    assert stalls.near(stopped_at + 0.05, before=0.0, after=0.0) is not None
    assert stalls.near(stopped_at + 0.5, before=0.0, after=0.0) is None
    assert "host stall" in stalls.summary()


def test_near_is_a_window_around_each_stall():
    stalls = HostStalls(spans=[(10.0, 10.03)])
    assert stalls.near(9.8, before=0.25, after=0.05) == (10.0, 10.03)  # heard before the stall began
    assert stalls.near(10.07, before=0.25, after=0.05) is not None
    assert stalls.near(9.7, before=0.25, after=0.05) is None
    assert stalls.near(10.1, before=0.25, after=0.05) is None
