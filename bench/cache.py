"""The audio cache: time to first audio at the party on a hit and on a miss, beside Asterisk's
own playback of a ready file (the floor), in one run.

    .venv/bin/python bench/cache.py [--calls N] [--transport websocket|rtp]

Needs the sandbox up (``python -m speakd.sandbox up``). Prints a markdown table (with the date)
to stdout; progress goes to stderr. Nothing here asserts on speed.

Measured as bench/transports.py measures time to first audio (its ``measure_ttfa``: a fresh
two-party call per measurement, the independent probe of bench/probe.py on alice's phone, from
the client's request to the first 20 ms frame above -40 dBFS there), with one speakd (Piper, the
audio cache on, in its own directory):

* **miss**: each call says a text no call said before (the same first sentence, a different
  ticket number at the end), so Piper synthesizes it: its first sentence is what counts;
* **hit**: the text is rendered ahead once (``POST /v1.0/prompts``), then each call says it:
  no synthesis, the audio is read from disk;
* **Asterisk playback**: the same text pre-rendered as a file, played on a whisper snoop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import logging
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "tests"))

import structlog  # noqa: E402
from harness.ari import Ari  # noqa: E402
from harness.calls import TwoPartyCall  # noqa: E402
from harness.daemon import Api  # noqa: E402
from transports import (  # noqa: E402
    ASTERISK,
    TEXT,
    Bench,
    measure_ttfa,
    progress,
    speakd_daemon,
    speakd_session,
    ttfa_asterisk,
)

from speakd import sandbox  # noqa: E402

MISS, HIT = "miss", "hit"
ROW = "time to first audio at the party, median / p95"


async def ttfa_say(bench: Bench, api: Api, column: str, text_of) -> None:
    """Each call says ``text_of(index)``."""
    said = 0

    async def prepare(call: TwoPartyCall, stack: contextlib.AsyncExitStack):
        nonlocal said
        sid = await speakd_session(api, call, stack)
        text, said = text_of(said), said + 1

        async def go() -> None:
            await api.say(sid, text)

        return go

    await measure_ttfa(bench, bench.args.calls, column, prepare)


async def main(args: argparse.Namespace) -> None:
    started = time.monotonic()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    state = sandbox.read_state() or {}
    if not state.get("root"):
        sys.exit("the sandbox is not up (python -m speakd.sandbox up): the Asterisk column needs its sounds dir")
    ari = Ari(
        os.environ.get("SPEAKD_TEST_ARI_URL", "http://127.0.0.1:18088"),
        os.environ.get("SPEAKD_TEST_ARI_USER", "speakd"),
        os.environ.get("SPEAKD_TEST_ARI_PASSWORD", "speakd"),
    )
    app = ari.app(f"speakd-bench-{uuid.uuid4().hex[:6]}")
    run = uuid.uuid4().hex[:4]  # texts no earlier run left in a cache
    with tempfile.TemporaryDirectory(prefix="speakd-bench-") as workdir:
        bench = Bench(ari, app, Path(state["root"]) / "usr/share/asterisk/sounds", args, Path(workdir))
        try:
            await app.connect()
            async with speakd_daemon(bench, args.transport, cache=True) as (daemon, api):
                progress(f"speakd ({args.transport}), misses")
                await ttfa_say(bench, api, MISS, lambda n: TEXT.replace(" noon.", f" noon, ticket {run}-{n}."))
                prompt = await api.request("POST", "/prompts", json={"text": TEXT})
                if prompt.status not in (200, 201):
                    sys.exit(f"rendering ahead failed: {prompt}")
                progress(f"speakd ({args.transport}), hits (rendered ahead: {prompt.body['duration_ms']} ms of audio)")
                await ttfa_say(bench, api, HIT, lambda n: TEXT)
                async with api._http.get(f"{daemon.base}/metrics") as metrics:
                    exposition = await metrics.text()
                counted = [line for line in exposition.splitlines() if line.startswith("speakd_cache_")]
            progress("Asterisk's own playback")
            await ttfa_asterisk(bench)
        finally:
            if bench._piper is not None:
                await bench._piper.aclose()
            await app.close()
            await ari.close()
    cells = bench.results.get(ROW, {})
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    print(
        f"speakd audio cache bench, {date}, {os.cpu_count()} cores, load average at start {args.load_at_start}, "
        f"at end {os.getloadavg()[0]:.1f}; transport {args.transport}, {args.calls} calls per cell; "
        f"run took {time.monotonic() - started:.0f} s; {platform.python_version()}\n"
    )
    print(
        "| what | speakd, miss (Piper synthesizes) | speakd, hit (from the cache) | Asterisk playback (pre-rendered) |"
    )
    print("|---|---|---|---|")
    print(f"| {ROW} | {cells.get(MISS, '—')} | {cells.get(HIT, '—')} | {cells.get(ASTERISK, '—')} |")
    print("\n" + ", ".join(counted))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=10, help="calls per cell (default 10)")
    parser.add_argument("--transport", default="websocket", choices=("websocket", "rtp"))
    args = parser.parse_args()
    args.load_at_start = f"{os.getloadavg()[0]:.1f}"
    return args


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
