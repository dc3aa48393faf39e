"""Latency bench on the sandbox Asterisk: setup time and time to first audio.

    .venv/bin/python bench/latency.py [--runs 10]

Needs the sandbox up (`python -m speakd.sandbox up`) or SPEAKD_TEST_ARI_URL/_USER/_PASSWORD.
It runs the real daemon, places real two-party calls, and reports:

* create -> active: as the client sees it (POST answered, then GET polled every 2 ms) and as
  the daemon logs it (``setup_ms``: the ARI calls of the setup);
* say -> provider's first chunk, say -> first RTP frame sent, and their difference (what speakd
  adds: resample, encode, frame, wait for the next 20 ms tick), from the daemon's log;
* pacer health: stalls logged during the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from harness.ari import Ari  # the test harness: a test-only ARI client and call maker
from harness.calls import start_two_party_call
from harness.daemon import Api, SpeakdProcess

TEXT = "Thanks for calling. Your order has shipped and will arrive tomorrow."


def summary(values: list[float]) -> str:
    values = sorted(values)
    p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
    return (
        f"median {statistics.median(values):7.1f} ms   p95 {p95:7.1f} ms   min {values[0]:7.1f}   max {values[-1]:7.1f}"
    )


LONG_TEXT = (
    "Thanks for calling the support line. Your order has shipped and will arrive tomorrow before noon. "
    "If you need to change the delivery address, say change address, or stay on the line for an agent."
)


async def run_concurrent(ari: Ari, api: Api, daemon: SpeakdProcess, n: int) -> dict:
    """n calls, each with a session handed a 12 s text at the same moment; returns /health."""
    calls = [await start_two_party_call(ari) for _ in range(n)]
    ids = [await api.start_session(call.channel_id, direction="out") for call in calls]
    await asyncio.gather(*(api.say(i, LONG_TEXT) for i in ids))
    await asyncio.sleep(15.0)
    async with api._http.get(f"{daemon.base}/health") as resp:
        health = await resp.json()
    for speaking_id, call in zip(ids, calls, strict=True):
        await api.stop(speaking_id)
        await call.hangup()
    return health


async def main(runs: int, concurrent: int) -> None:
    url = os.environ.get("SPEAKD_TEST_ARI_URL", "http://127.0.0.1:18088")
    user = os.environ.get("SPEAKD_TEST_ARI_USER", "speakd")
    password = os.environ.get("SPEAKD_TEST_ARI_PASSWORD", "speakd")
    ari = Ari(url, user, password)
    with tempfile.TemporaryDirectory() as workdir:
        daemon = SpeakdProcess(Path(workdir), url, user, password)
        await daemon.start()
        api = Api(daemon.base)
        client_setup: list[float] = []
        health: dict = {}
        try:
            if concurrent:
                health = await run_concurrent(ari, api, daemon, concurrent)
            for _ in range(runs):
                call = await start_two_party_call(ari)
                started = time.perf_counter()
                created = await api.create(call.channel_id, direction="out")
                while (await api.get(created.body["id"])).body["status"] != "active":
                    await asyncio.sleep(0.002)
                client_setup.append((time.perf_counter() - started) * 1000)
                await api.say(created.body["id"], TEXT)
                await asyncio.sleep(1.0)
                await api.stop(created.body["id"])
                await call.hangup()
        finally:
            await api.close()
            await daemon.stop()
            await ari.close()
        events = [json.loads(line) for line in daemon.log_text().splitlines() if line.startswith("{")]

    def values(event: str, key: str) -> list[float]:
        return [e[key] for e in events if e.get("event") == event and key in e]

    setup = values("session_active", "setup_ms")
    first_chunk = values("say_first_audio", "latency_ms")
    first_frame = values("say_playing", "latency_ms")
    stalls = [e for e in events if e.get("event") == "pacer_stalled"]
    if concurrent:
        first_frame_concurrent, first_frame = first_frame[:concurrent], first_frame[concurrent:]
        first_chunk = first_chunk[concurrent:]
    print(f"speakd latency bench: {runs} sessions on {url}, Piper (offline), ulaw")
    print(f"create -> active (client, POST + polling GET)   {summary(client_setup)}")
    print(f"create -> active (daemon, ARI setup)            {summary(setup)}")
    print(f"say -> provider's first chunk                   {summary(first_chunk)}")
    print(f"say -> first RTP frame sent                     {summary(first_frame)}")
    print(
        "first chunk -> first frame (speakd's own part)  "
        + summary([f - c for f, c in zip(first_frame, first_chunk, strict=False)])
    )
    print(f"pacer stalls (a tick missed by > 20 ms)         {len(stalls)}")
    if concurrent:
        print(f"{concurrent} sessions handed a 12 s text at once:")
        print(f"  say -> first RTP frame sent                   {summary(first_frame_concurrent)}")
        print(f"  pacer's worst lateness meanwhile              {health.get('pacer_max_late_ms', 0):7.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--concurrent", type=int, default=0, help="also: N sessions speaking at once")
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.concurrent))
