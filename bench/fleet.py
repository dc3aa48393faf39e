"""Two speakd nodes on one PostgreSQL: what carrying costs, side by side in one run.

Set-up: a PostgreSQL server of the bench's own (Debian's binaries, as the tests start it), two
speakd nodes sharing it (``node-a``, ``node-b``), both beside the sandbox Asterisk (sandbox up),
and one two-party call whose session ``node-a`` owns.

* **commands**: each verb sent to the owner (``node-a``) and the same verb sent to the other node
  (``node-b``, which carries it to the owner), interleaved so both see the same host: ``GET
  /says``, ``POST /flush`` and ``POST /say`` (a short text, each flushed by the next round).
  The time is the client's, from sending the request to reading the whole answer.
* **events**: a client of ``/v1.0/ws`` on each node, both subscribed to the customer's events;
  ``create`` and ``stop`` of a session on ``node-a``, many times over. For each event the bench
  reads when it arrived on each client (``time.time()`` on reading the frame): ``speaking_created``
  and ``speaking_stopped`` carry the time they were published (``timestamp``), so their delivery
  latency on the owner's socket is arrival minus timestamp; every event's extra on the other
  node's socket is its arrival there minus its arrival on the owner's.

Usage (sandbox up, as root for PostgreSQL's own user)::

    .venv/bin/python bench/fleet.py [--rounds 300] [--sessions 40]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "tests"))

from harness.ari import Ari  # noqa: E402
from harness.calls import start_two_party_call  # noqa: E402
from harness.daemon import CUSTOMER_A, KEY_A, Api, SpeakdProcess  # noqa: E402
from harness.events import WsEvents  # noqa: E402
from harness.postgres import start_server  # noqa: E402

from speakd.store.records import seconds_of  # noqa: E402

VERBS = ("says", "flush", "say")
ROUND_PAUSE_S = 0.01  # between rounds: the owner's session keeps speaking meanwhile


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def cell(values: list[float]) -> str:
    if not values:
        return "—"
    return f"{statistics.median(values):.1f} / {pct(values, 0.95):.1f} ms"


async def timed(api: Api, verb: str, speaking_id: str) -> float:
    path = f"/speakings/{speaking_id}"
    started = time.perf_counter()
    if verb == "says":
        reply = await api.request("GET", f"{path}/says")
    elif verb == "flush":
        reply = await api.request("POST", f"{path}/flush")
    else:
        reply = await api.request("POST", f"{path}/say", json={"text": "One moment please."})
    took = (time.perf_counter() - started) * 1000
    if reply.status != 200:
        raise RuntimeError(f"{verb} answered {reply.status}: {reply.body}")
    return took


async def commands(owner: Api, other: Api, speaking_id: str, rounds: int) -> dict[str, dict[str, list[float]]]:
    times: dict[str, dict[str, list[float]]] = {verb: {"owner": [], "other": []} for verb in VERBS}
    for verb in VERBS:  # warm both paths (connections, the other node's cache of the owner)
        await timed(owner, verb, speaking_id)
        await timed(other, verb, speaking_id)
    for n in range(rounds):
        first, second = ((owner, "owner"), (other, "other")) if n % 2 == 0 else ((other, "other"), (owner, "owner"))
        for verb in VERBS:
            for api, which in (first, second):
                times[verb][which].append(await timed(api, verb, speaking_id))
        await asyncio.sleep(ROUND_PAUSE_S)
    await owner.request("POST", f"/speakings/{speaking_id}/flush")
    return times


class Arrivals(WsEvents):
    """A /v1.0/ws client that notes when each event arrived."""

    def __init__(self, base: str) -> None:
        super().__init__(base, KEY_A)
        self.arrived: dict[tuple[str, str], float] = {}
        self.published: dict[tuple[str, str], float] = {}

    async def add(self, envelope: dict[str, Any]) -> None:
        at = time.time()
        data = envelope.get("data") or {}
        key = (envelope["event_type"], data.get("say_id") or data.get("id") or data.get("speaking_id", ""))
        self.arrived.setdefault(key, at)
        if envelope["event_type"] in ("speaking_created", "speaking_stopped"):
            self.published.setdefault(key, seconds_of(envelope["timestamp"]))
        await super().add(envelope)

    def latencies(self) -> list[float]:
        """ms from publication to arrival, for the events that carry their publication time."""
        return [(at - self.published[key]) * 1000 for key, at in self.arrived.items() if key in self.published]


async def events(owner: Api, call_id: str, a: str, b: str, sessions: int) -> dict[str, list[float]]:
    topics = [f"customer_id:{CUSTOMER_A}:speaking:*"]
    async with Arrivals(a) as on_owner, Arrivals(b) as on_other:
        await on_owner.subscribe(topics)
        await on_other.subscribe(topics)
        for _ in range(sessions):
            speaking_id = await owner.start_session(call_id)
            assert (await owner.stop(speaking_id)).status == 200
            await on_other.wait_stopped(speaking_id, timeout=10)
        await asyncio.sleep(0.5)
    owner_latency = on_owner.latencies()
    other_latency = on_other.latencies()
    extra = [(at - on_owner.arrived[key]) * 1000 for key, at in on_other.arrived.items() if key in on_owner.arrived]
    missing = len(on_owner.arrived) - len(extra)
    return {"owner": owner_latency, "other": other_latency, "extra": extra, "missing": [float(missing)]}


async def main(args: argparse.Namespace) -> None:
    from speakd import sandbox

    settings = sandbox.ari_settings(1)
    server = start_server()
    url = server.new_database()
    work = Path(tempfile.mkdtemp(prefix="speakd-bench-fleet-"))
    nodes = []
    for node_id in ("node-a", "node-b"):
        daemon = SpeakdProcess(work / node_id, settings["url"], settings["user"], settings["password"], store_url=url)
        daemon.extra_config += f'\n[node]\nid = "{node_id}"\n'
        daemon.workdir.mkdir(parents=True)
        await daemon.start()
        nodes.append(daemon)
    a, b = nodes
    owner, other = Api(a.base), Api(b.base)
    ari = Ari(settings["url"], settings["user"], settings["password"])
    call = await start_two_party_call(ari, max_seconds=900)
    try:
        speaking_id = await owner.start_session(call.channel_id)
        command_times = await commands(owner, other, speaking_id, args.rounds)
        assert (await owner.stop(speaking_id)).status == 200
        event_times = await events(owner, call.channel_id, a.base, b.base, args.sessions)
    finally:
        await call.hangup()
        await ari.close()
        for api in (owner, other):
            await api.close()
        for daemon in nodes:
            await daemon.stop()
        server.remove()

    load = os.getloadavg()[0]
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"bench/fleet.py, {stamp}, {platform.node()}, {os.cpu_count()} cores, load average {load:.1f}")
    print(f"{args.rounds} rounds of each verb per path (interleaved); {args.sessions} sessions created and stopped\n")
    print("| what, median / p95 | via the owner | via the other node (carried) | carrying adds (median) |")
    print("|---|---|---|---|")
    for verb in VERBS:
        t = command_times[verb]
        added = statistics.median(t["other"]) - statistics.median(t["owner"])
        label = {"says": "`GET /says`", "flush": "`POST /flush`", "say": "`POST /say` (short text)"}[verb]
        print(f"| {label} | {cell(t['owner'])} | {cell(t['other'])} | {added:+.1f} ms |")
    e = event_times
    print(
        f"| event delivery, `speaking_created`/`speaking_stopped` (from publication) | {cell(e['owner'])} "
        f"| {cell(e['other'])} | {statistics.median(e['other']) - statistics.median(e['owner']):+.1f} ms |"
    )
    print(f"| every event: the other node's socket after the owner's | — | {cell(e['extra'])} | — |")
    print(f"\nevents the owner's socket got that the other's did not: {int(e['missing'][0])}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=300, help="rounds of the three verbs per path")
    parser.add_argument("--sessions", type=int, default=40, help="sessions created and stopped for the events")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
