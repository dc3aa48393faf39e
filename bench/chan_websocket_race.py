"""chan_websocket's media-channel table with and without speakd's gate, in one run.

    .venv/bin/python bench/chan_websocket_race.py [--clients 16] [--seconds 30]

Needs the sandbox up (``python -m speakd.sandbox up``; as root: a wedged Asterisk is restarted).
Prints a markdown table (with the date) to stdout; progress goes to stderr.

``--clients`` loops, each making an ExternalMedia WebSocket channel (``connection_type=server``),
connecting its media WebSocket until MEDIA_START, then closing it and removing the channel, all
through speakd's own MediaPaths and AriClient (tests/harness/media_channels.py), for ``--seconds``:

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
from harness.media_channels import NoGate, run_clients, websocket_media  # noqa: E402

from speakd import sandbox  # noqa: E402


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def column(gated: bool, args: argparse.Namespace) -> tuple[int, float, bool]:
    """(channels done, seconds, wedged)."""
    url = os.environ.get("SPEAKD_TEST_ARI_URL", "http://127.0.0.1:18088")
    user = os.environ.get("SPEAKD_TEST_ARI_USER", "speakd")
    password = os.environ.get("SPEAKD_TEST_ARI_PASSWORD", "speakd")
    started = time.monotonic()
    async with websocket_media(url, user, password) as (ari, media, app):
        if not gated:
            media.gate = NoGate()  # type: ignore[assignment]
        done, wedged = 0, False
        # In slices, to count what was done before a wedge.
        while not wedged and time.monotonic() - started < args.seconds:
            try:
                done += await run_clients(ari, media, app, args.clients, min(5.0, args.seconds))
            except* TimeoutError:
                wedged = True
    return done, time.monotonic() - started, wedged


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
        progress(f"{name}: {args.clients} clients for up to {args.seconds:g} s")
        done, took, wedged = await column(gated, args)
        rows.append((name, done, took, wedged))
        progress(f"{name}: {done} channels in {took:.1f} s{', wedged' if wedged else ''}")
        if wedged:
            progress("restarting the sandbox Asterisk")
            restart_sandbox()
    print(f"chan_websocket race, {datetime.date.today()} ({platform.node()}, {os.cpu_count()} cores)\n")
    print("| media channels made, connected, removed | channels | seconds | chan_websocket afterwards |")
    print("|---|---|---|---|")
    for name, done, took, wedged in rows:
        after = f"locked for good after {took:.0f} s" if wedged else "working"
        print(f"| {name}, {args.clients} clients | {done} | {took:.0f} | {after} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30.0)
    asyncio.run(main(parser.parse_args()))
