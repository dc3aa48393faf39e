"""chan_websocket's media-channel table with and without speakd's gate, in one run.

    .venv/bin/python bench/chan_websocket_race.py [--clients 16] [--seconds 30]

Needs the sandbox up (``python -m speakd.sandbox up``; as root: a wedged Asterisk is restarted).
Prints a markdown table (with the date) to stdout; progress goes to stderr.

``--clients`` loops, each making an ExternalMedia WebSocket channel (``connection_type=server``),
connecting its media WebSocket until MEDIA_START, then closing it and removing the channel, all
through speakd's own set-up and teardown code (tests/harness/media_channels.py), for ``--seconds``:

* **speakd's gate** (speakd.media.channel_gate): connects never overlap makes or removals;
* **no gate**: what speakd did before it.

A step that takes over 5 s ends the column: chan_websocket's table is locked for good (every
later make and hangup of a media channel waits forever), and the sandbox Asterisk is restarted.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "tests"))

import structlog  # noqa: E402
from harness.media_channels import STEP_TIMEOUT, NoGate, run_clients, websocket_media  # noqa: E402
from transports import progress  # noqa: E402

from speakd import sandbox  # noqa: E402


async def column(gated: bool, args: argparse.Namespace) -> tuple[int, float | None]:
    """(channels done, seconds into the run a step hung: None if none did)."""
    url = os.environ.get("SPEAKD_TEST_ARI_URL", "http://127.0.0.1:18088")
    user = os.environ.get("SPEAKD_TEST_ARI_USER", "speakd")
    password = os.environ.get("SPEAKD_TEST_ARI_PASSWORD", "speakd")
    done = 0

    def count() -> None:
        nonlocal done
        done += 1

    started = time.monotonic()
    hung_at = None
    async with websocket_media(url, user, password) as ctx:
        if not gated:
            ctx.media.gate = NoGate()  # type: ignore[assignment]
        try:
            await run_clients(ctx, args.clients, args.seconds, count)
        except* TimeoutError:
            hung_at = time.monotonic() - started - STEP_TIMEOUT
    return done, hung_at


def restart_sandbox() -> None:
    for command in ("down", "up"):
        subprocess.run([sys.executable, "-m", "speakd.sandbox", command], check=True, capture_output=True)


async def main(args: argparse.Namespace) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if not (sandbox.read_state() or {}).get("root"):
        sys.exit("the sandbox is not up (python -m speakd.sandbox up)")
    rows = []
    for gated in (True, False):
        name = "speakd's gate" if gated else "no gate"
        progress(f"{name}: {args.clients} clients for {args.seconds:g} s")
        done, hung_at = await column(gated, args)
        rows.append((name, done, hung_at))
        progress(f"{name}: {done} channels" + (f", a step hung at {hung_at:.1f} s" if hung_at is not None else ""))
        if hung_at is not None:
            progress("restarting the sandbox Asterisk")
            restart_sandbox()
    print(f"chan_websocket race, {datetime.date.today()} ({platform.node()}, {os.cpu_count()} cores)\n")
    print("| media channels made, connected, removed | channels | chan_websocket |")
    print("|---|---|---|")
    for name, done, hung_at in rows:
        after = f"locked for good {hung_at:.0f} s in" if hung_at is not None else f"working after {args.seconds:g} s"
        print(f"| {name}, {args.clients} clients | {done} | {after} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30.0)
    asyncio.run(main(parser.parse_args()))
