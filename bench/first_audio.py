"""The embedded voice's time to first audio, stage by stage, beside Asterisk's floor, in one run.

    .venv/bin/python bench/first_audio.py [--calls N] [--transport websocket|rtp]

Needs the sandbox up (``python -m speakd.sandbox up``). Prints a markdown table (with the date
and the load average) to stdout; progress goes to stderr. Nothing here asserts on speed.

Three text shapes (:data:`TEXTS`): a short sentence, two sentences, a long first sentence (75
characters). For each, a fresh two-party call per measurement with the independent probe of
bench/probe.py on alice's phone (as bench/transports.py's ``measure_ttfa``), and three ways to
make the text heard:

* **speakd**: a session (``direction: out``, already active), ``POST /say``; one speakd daemon
  (Piper as the test daemons run it, the audio cache off so every say is a synthesis). The
  stages, from the client's request (wall clock, the daemon's log stamps on the same clock):
  *text ready* (``say_queued``: the say is stored and queued), *first audio out of the
  provider* (``say_first_audio``), *first frame sent* (``say_first_sent``: handed to the
  transport), *heard* (the first 20 ms frame above -40 dBFS at the probe).
* **Asterisk playback** (the floor): the text pre-rendered as a ``.ulaw`` file, ARI ``play`` on a
  whisper snoop of the call leg.
* **render, then play**: at the request, render the whole text with speakd's Piper provider in
  this process, write the file, then ARI ``play`` it: what an application does without streaming.

Both files are brought to the loudness speakd brings the voice to (``harness.audio.at_loudness``),
so the probe's threshold meets the same audio. Each request goes at a random phase of Asterisk's
20 ms ticks (``transports.settle``). The three ways take turns call by call (the same
host for each). Every cell is the median / p95 over ``--calls`` calls; "over the floor" is speakd's
median heard minus the floor's. Progress ends with how many says the session held (its underrun
protection: the first frame sent a frame or more after the first audio came), each one 80-100 ms
later.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "tests"))

import structlog  # noqa: E402
from harness.ari import Ari  # noqa: E402
from harness.audio import at_loudness  # noqa: E402
from transports import HEAR_WITHIN_S, Bench, med_p95, progress, settle, speakd_daemon, speakd_session  # noqa: E402

from speakd import sandbox  # noqa: E402
from speakd.media.codec import decode, encode  # noqa: E402

TEXTS = {
    "short sentence": "Hello there.",
    "two sentences": "Thank you for calling. Your call is important to us, so please stay on the line.",
    "long first sentence (75 chars)": (
        "Thank you for calling the accounts office of the northern regional council. Please hold."
    ),
}
# The daemon's log events that mark each stage, in order.
STAGES = {
    "text ready": "say_queued",
    "first audio out of the provider": "say_first_audio",
    "first frame sent": "say_first_sent",
}
PROVIDED = "first audio out of the provider"
HEARD = "heard at the party"
FLOOR = "Asterisk playback (floor)"
RENDER = "render whole text, then play"


def median(values: list[float]) -> str:
    return f"{statistics.median(values):.0f}" if values else "n/a"


async def heard_after(bench: Bench, prepare) -> tuple[float, float | None, object]:
    """One call: ``prepare(call, stack)`` returns ``go()``; (request time, heard time, what go returned)."""
    async with bench.call_with_probe(max_seconds=60) as (call, probe), contextlib.AsyncExitStack() as stack:
        go = await prepare(call, stack)
        await settle()
        t0 = time.time()
        result = await go()
        return t0, await probe.wait_speech(t0, HEAR_WITHIN_S), result


async def speakd_call(bench: Bench, api, text: str) -> tuple[float, float | None, str]:
    """(request time, heard time, say id) of one say on a fresh call."""

    async def prepare(call, stack):
        sid = await speakd_session(api, call, stack)

        async def go() -> str:
            reply = await api.say(sid, text)
            return reply.body["say_id"]

        return go

    return await heard_after(bench, prepare)  # type: ignore[return-value]


async def as_speakd_plays(bench: Bench, text: str) -> bytes:
    """``text`` rendered by speakd's Piper provider in this process, at the loudness speakd brings
    a voice to (as the test suite levels its references): the floor's file sounds as the say does,
    so the probe's speech threshold is crossed at the same frame."""
    return encode(at_loudness(decode(await bench.render_ulaw(text), "ulaw")), "ulaw")


async def playback_call(bench: Bench, text: str, ready: bytes | None) -> float | None:
    """Milliseconds from the request to heard: ARI play of ``text`` rendered before (``ready``:
    the floor) or at the request (render, then play)."""
    name = f"speakd/bench-{uuid.uuid4().hex[:8]}"
    path = bench.sounds / f"{name}.ulaw"
    if ready is not None:
        path.write_bytes(ready)

    async def prepare(call, stack):
        snoop = await stack.enter_async_context(bench.whisper_snoop(call))

        async def go() -> None:
            if ready is None:
                path.write_bytes(await as_speakd_plays(bench, text))
            await bench.ari.post(f"/channels/{snoop}/play", media=f"sound:{name}")

        return go

    try:
        t0, heard, _ = await heard_after(bench, prepare)
    finally:
        path.unlink(missing_ok=True)
    return None if heard is None else (heard - t0) * 1000


def log_stamps(log_text: str) -> dict[tuple[str, str], float]:
    """(say id, event) -> wall time, from the daemon's JSON log."""
    stamps: dict[tuple[str, str], float] = {}
    for line in log_text.splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if "say_id" in entry and entry.get("event") in STAGES.values():
                at = datetime.datetime.fromisoformat(entry["timestamp"]).timestamp()
                stamps.setdefault((entry["say_id"], entry["event"]), at)
    return stamps


def held(stamps: dict[tuple[str, str], float], say_id: str) -> bool:
    """Whether the session held the say (its underrun protection): its first frame went out a
    frame or more after its first audio came."""
    came, sent = (stamps.get((say_id, STAGES[stage])) for stage in (PROVIDED, "first frame sent"))
    return came is not None and sent is not None and sent - came >= 0.02


async def main(args: argparse.Namespace) -> None:
    started = time.monotonic()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    state = sandbox.read_state() or {}
    if not state.get("root"):
        sys.exit("the sandbox is not up (python -m speakd.sandbox up): the floor column needs its sounds dir")
    ari = Ari(
        os.environ.get("SPEAKD_TEST_ARI_URL", "http://127.0.0.1:18088"),
        os.environ.get("SPEAKD_TEST_ARI_USER", "speakd"),
        os.environ.get("SPEAKD_TEST_ARI_PASSWORD", "speakd"),
    )
    app = ari.app(f"speakd-bench-{uuid.uuid4().hex[:6]}")
    said: dict[str, list[tuple[float, float | None, str]]] = {}
    floor: dict[str, list[float | None]] = {}
    render: dict[str, list[float | None]] = {}
    with tempfile.TemporaryDirectory(prefix="speakd-bench-") as workdir:
        bench = Bench(ari, app, Path(state["root"]) / "usr/share/asterisk/sounds", args, Path(workdir))
        try:
            await app.connect()
            await bench.piper()  # loaded once, before: a running application has its model loaded
            async with speakd_daemon(bench, args.transport) as (daemon, api):
                await speakd_call(bench, api, "Warming up.")  # not counted: a daemon's first synthesis
                for shape, text in TEXTS.items():
                    progress(f"{shape}: speakd ({args.transport}), Asterisk playback, render then play, call by call")
                    ready = await as_speakd_plays(bench, text)
                    said[shape], floor[shape], render[shape] = [], [], []
                    for _ in range(args.calls):  # interleaved: the three ways see the same host
                        said[shape].append(await speakd_call(bench, api, text))
                        floor[shape].append(await playback_call(bench, text, ready))
                        render[shape].append(await playback_call(bench, text, None))
                stamps = log_stamps(daemon.log_text())
        finally:
            if bench._piper is not None:
                await bench._piper.aclose()
            await app.close()
            await ari.close()
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"speakd first-audio bench, {date}, {os.cpu_count()} cores, load average at start {args.load_at_start}, "
        f"at end {os.getloadavg()[0]:.2f}; transport {args.transport}, {args.calls} calls per cell, Piper "
        f"(noise_w_scale 0, audio cache off); run took {time.monotonic() - started:.0f} s; "
        f"Python {platform.python_version()}\n"
    )
    print("Milliseconds from the request; speakd's stages are medians, heard and the other columns median / p95.\n")
    print(
        "| text | " + " | ".join(f"speakd: {s}" for s in STAGES) + f" | speakd: {HEARD} | {FLOOR} | over the floor "
        f"(p50) | {RENDER} |"
    )
    print("|---|" + "---|" * (len(STAGES) + 4))
    for shape in TEXTS:
        rows = said[shape]
        for t0, h, sid in rows:  # each call's stages, to read the medians against
            at = [round((stamps[(sid, e)] - t0) * 1000) if (sid, e) in stamps else None for e in STAGES.values()]
            hold = ", held" if held(stamps, sid) else ""
            progress(f"  {shape}: stages {at}, heard {round((h - t0) * 1000) if h else None}{hold}")
        stages = [
            median([(stamps[(sid, e)] - t0) * 1000 for t0, _, sid in rows if (sid, e) in stamps])
            for e in STAGES.values()
        ]
        heard = heard_cell([None if h is None else (h - t0) * 1000 for t0, h, _ in rows])
        over = "n/a"
        if (said_ms := [(h - t0) * 1000 for t0, h, _ in rows if h]) and (floor_ms := [v for v in floor[shape] if v]):
            over = f"{statistics.median(said_ms) - statistics.median(floor_ms):+.0f}"
        cells = [*stages, heard, heard_cell(floor[shape]), over, heard_cell(render[shape])]
        print(f"| {shape} | " + " | ".join(cells) + " |")
    for shape in TEXTS:
        late = sum(held(stamps, sid) for _, _, sid in said[shape])
        progress(f"{shape}: {late} of {len(said[shape])} says held by the session (underrun protection)")


def heard_cell(values: list[float | None]) -> str:
    """Median / p95 of the calls heard, and how many were not."""
    heard = [v for v in values if v is not None]
    missed = len(values) - len(heard)
    return med_p95(heard) + (f" ({missed} unheard)" if missed else "")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=10, help="calls per cell (default 10)")
    parser.add_argument("--transport", default="websocket", choices=("websocket", "rtp"))
    args = parser.parse_args()
    args.load_at_start = f"{os.getloadavg()[0]:.2f}"
    return args


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
