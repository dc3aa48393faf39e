"""The daemon's resident memory: idle, per live session, at the peak of long says, over a soak.

    flock /tmp/team/bench.lock .venv/bin/python bench/memory.py [--quick] [--transport websocket|rtp]

Needs the sandbox up (``python -m speakd.sandbox up``): the sessions are on real calls. One
speakd configured as the test suite's daemons are: the three cloud providers pointed at their
stand-ins (``tests/standins``, in this process) and Piper, the audio cache on in its workdir.
Resident memory is the daemon's ``VmRSS`` (``/proc/<pid>/status``), sampled every 100 ms where a
peak is asked for; nothing here asserts on it. Prints a markdown table (with the date and the
load average) to stdout; progress goes to stderr.

* **idle**: started, ARI connected, no session, after a few seconds' settling.
* **per live session**: 24 calls, a session on each (``direction: out``), nothing said: the
  growth over idle, divided by 24 (calls made before the reading at idle + sessions).
* **24 concurrent 5000-character says**: one on each of those sessions at once (each text its
  own, so Piper renders every one: no cache hit), the peak over the first ``--say-window``
  seconds (the bound of synthesis ahead of playout is reached within seconds; after that the
  says only play); then the sessions are stopped.
* **soak**: 1,000 says over 100 sessions (4 batches of 25 calls, 10 short says each, each text
  its own, played to the end), then the same again: resident memory after each round, the
  sessions stopped and the calls hung up; growth is round 2 over round 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "tests"))

from harness.ari import Ari  # noqa: E402
from harness.calls import TwoPartyCall, start_two_party_call  # noqa: E402
from harness.daemon import Api, SpeakdProcess  # noqa: E402
from standins.elevenlabs import ElevenLabsStandin  # noqa: E402
from standins.google import GoogleStandin  # noqa: E402
from standins.polly import PollyStandin  # noqa: E402

CONCURRENT = 24
LONG_CHARS = 5000
# The sandbox's calls are costly (each phone records and sends a carrier): alice, who hears the
# says, sends none (bob's carries the whisper), and the soak's calls are 10 at a time.
LISTEN_ONLY = {"_SPEAKD_LISTEN_ONLY": "alice"}
SOAK_SESSIONS, SOAK_BATCH, SOAK_SAYS = 100, 10, 10
LONG_BASE = (
    "Thank you for calling the city library. Our opening hours are from nine in the morning until "
    "seven in the evening, Monday to Saturday. To renew a book, please have your library card ready "
    "and stay on the line. "
)


def progress(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def resident_mb(pid: int) -> dict[str, float]:
    """VmRSS, VmHWM, RssAnon and RssFile of ``pid``, in MB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            values[key] = int(value.split()[0]) / 1024
    return values


class Sampler:
    """The highest VmRSS of ``pid`` while running (every 100 ms)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._task = pid, 0.0, None

    async def __aenter__(self) -> Sampler:
        async def sample() -> None:
            while True:
                self.peak = max(self.peak, resident_mb(self.pid)["VmRSS"])
                await asyncio.sleep(0.1)

        self._task = asyncio.create_task(sample())
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.peak = max(self.peak, resident_mb(self.pid)["VmRSS"])


def long_text(n: int) -> str:
    """A 5000-character text of its own: sentences of the library message, numbered."""
    text, i = "", 0
    while len(text) < LONG_CHARS:
        text += f"Message {n} part {i}. " + LONG_BASE
        i += 1
    return text[:LONG_CHARS]


def toml_section(name: str, values: dict[str, Any]) -> str:
    return f"[{name}]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())


async def settle(pid: int, seconds: float = 3.0) -> dict[str, float]:
    await asyncio.sleep(seconds)
    return resident_mb(pid)


async def open_sessions(ari: Ari, api: Api, n: int, calls: list[TwoPartyCall]) -> list[tuple[TwoPartyCall, str]]:
    """``n`` calls, a session on each; made a few at a time (the sandbox's dialplan is slow to
    answer). Each call is added to ``calls`` as it is made (hung up at the end, whatever happens)."""
    made: list[tuple[TwoPartyCall, str]] = []
    for start in range(0, n, 4):

        async def one() -> tuple[TwoPartyCall, str]:
            call = await start_two_party_call(ari, max_seconds=600, variables=LISTEN_ONLY)
            calls.append(call)
            reply = await api.create(call.channel_id, direction="out")
            assert reply.status == 201, reply
            await api.wait_status(reply.body["id"], "active", timeout=30)
            return call, reply.body["id"]

        # Every one finished (none left making a call) before a failure is raised.
        results = await asyncio.gather(*(one() for _ in range(min(4, n - start))), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        made += results  # type: ignore[arg-type]
    return made


async def close_sessions(api: Api, sessions: list[tuple[TwoPartyCall, str]]) -> None:
    await asyncio.gather(*(api.stop(sid) for _, sid in sessions), return_exceptions=True)
    await asyncio.gather(*(call.hangup() for call, _ in sessions), return_exceptions=True)


async def wait_all_final(api: Api, speaking_id: str, count: int, within: float) -> int:
    """How many of the session's says are final (waits until all ``count`` are, or ``within``)."""
    deadline = time.monotonic() + within
    final = 0
    while time.monotonic() < deadline:
        reply = await api.request("GET", f"/speakings/{speaking_id}/says")
        says = reply.body.get("result", []) if isinstance(reply.body, dict) else []
        final = sum(s["status"] not in ("queued", "playing") for s in says)
        if final >= count:
            return final
        await asyncio.sleep(0.5)
    return final


async def main(args: argparse.Namespace) -> None:
    started = time.monotonic()
    url = os.environ.get("SPEAKD_TEST_ARI_URL", "http://127.0.0.1:18088")
    user = os.environ.get("SPEAKD_TEST_ARI_USER", "speakd")
    password = os.environ.get("SPEAKD_TEST_ARI_PASSWORD", "speakd")
    ari = Ari(url, user, password)
    rows: list[tuple[str, str]] = []
    calls: list[TwoPartyCall] = []  # every call made, hung up at the end
    notes: list[str] = []
    load_at_start = os.getloadavg()[0]
    with (
        tempfile.TemporaryDirectory(prefix="speakd-bench-memory-") as workdir,
        ElevenLabsStandin() as elevenlabs,
        GoogleStandin() as gcp,
        PollyStandin() as aws,
    ):
        extra = "".join(
            toml_section(name, standin.provider_section())
            for name, standin in (("elevenlabs", elevenlabs), ("gcp", gcp), ("aws", aws))
        )
        daemon = SpeakdProcess(Path(workdir), url, user, password, transport=args.transport, extra_config=extra)
        await daemon.start(timeout=120)
        assert daemon.proc is not None
        pid = daemon.proc.pid
        api = Api(daemon.base)
        try:
            idle = await settle(pid, 5.0)
            progress(f"idle: {idle}")
            rows.append(("idle (providers started, Piper loaded, no session)", f"{idle['VmRSS']:.0f} MB"))
            notes.append(
                f"idle: anonymous {idle['RssAnon']:.0f} MB, file-backed {idle['RssFile']:.0f} MB; "
                f"highest while starting (VmHWM: cutting Piper's model) {idle['VmHWM']:.0f} MB"
            )

            sessions = await open_sessions(ari, api, CONCURRENT, calls)
            live = await settle(pid)
            per = (live["VmRSS"] - idle["VmRSS"]) / CONCURRENT
            progress(f"{CONCURRENT} live sessions: {live}")
            rows.append(
                (f"per live session (growth with {CONCURRENT} sessions on calls, nothing said)", f"{per * 1000:.0f} kB")
            )

            before = resident_mb(pid)["VmRSS"]
            says_started = time.monotonic()
            async with Sampler(pid) as peak:
                replies = await asyncio.gather(*(api.say(sid, long_text(i)) for i, (_, sid) in enumerate(sessions)))
                assert all(r.status == 200 for r in replies), [r for r in replies if r.status != 200][:1]
                await asyncio.sleep(args.say_window)
            says = [await api.request("GET", f"/speakings/{sid}/says") for _, sid in sessions]
            statuses = Counter(r.body["result"][-1]["status"] for r in says)
            playing = statuses["playing"]
            progress(f"long says: peak {peak.peak:.0f} MB (before {before:.0f}); {dict(statuses)}")
            rows.append(
                (
                    f"peak, {CONCURRENT} concurrent {LONG_CHARS}-character says (first {args.say_window:.0f} s)",
                    f"{peak.peak:.0f} MB (idle + {peak.peak - idle['VmRSS']:.0f} MB)",
                )
            )
            notes.append(
                f"long says: {playing} of {CONCURRENT} still playing at the end of the window "
                f"({time.monotonic() - says_started:.0f} s)"
            )
            await close_sessions(api, sessions)
            after_long = await settle(pid)
            rows.append(("after them (sessions stopped)", f"{after_long['VmRSS']:.0f} MB"))

            rounds: list[float] = []
            for round_no in range(args.rounds):
                t0 = time.monotonic()
                said = final = 0
                async with Sampler(pid) as soak_peak:
                    for batch in range(0, args.soak_sessions, SOAK_BATCH):
                        sessions = await open_sessions(ari, api, min(SOAK_BATCH, args.soak_sessions - batch), calls)
                        for i, (_, sid) in enumerate(sessions):
                            for j in range(SOAK_SAYS):
                                n = f"{round_no}-{batch + i}-{j}"
                                reply = await api.say(sid, f"Ticket {n}, desk {j + 1}.")
                                said += reply.status == 200
                        done = await asyncio.gather(*(wait_all_final(api, sid, SOAK_SAYS, 120) for _, sid in sessions))
                        final += sum(done)
                        await close_sessions(api, sessions)
                after = await settle(pid)
                rounds.append(after["VmRSS"])
                progress(
                    f"soak round {round_no + 1}: {said} says, {final} final, peak {soak_peak.peak:.0f} MB, "
                    f"after {after['VmRSS']:.0f} MB, {time.monotonic() - t0:.0f} s"
                )
                rows.append(
                    (
                        f"soak round {round_no + 1}: {said} says over {args.soak_sessions} sessions, then",
                        f"{after['VmRSS']:.0f} MB (peak {soak_peak.peak:.0f} MB)",
                    )
                )
            if len(rounds) > 1:
                rows.append(("soak: growth after the first round", f"{rounds[-1] - rounds[0]:+.1f} MB"))
        except BaseException:
            progress(f"daemon log, last lines:\n{daemon.log_tail(15)}")
            raise
        finally:
            await asyncio.gather(*(call.hangup() for call in calls), return_exceptions=True)
            await api.close()
            await daemon.stop()
            await ari.close()
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()[0]
    print(
        f"speakd memory bench, {date}, {os.cpu_count()} cores, load average {load_at_start:.1f} at start, "
        f"{load:.1f} at end; transport {args.transport}; run took {time.monotonic() - started:.0f} s; "
        f"Python {platform.python_version()}\n"
    )
    print("| what | resident (VmRSS) |\n|---|---|")
    for what, value in rows:
        print(f"| {what} | {value} |")
    print()
    for note in notes:
        print(f"- {note}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a shorter say window, one soak round of 25 sessions")
    parser.add_argument("--transport", default="websocket", choices=("websocket", "rtp"))
    parser.add_argument("--say-window", type=float, help="seconds the long says are watched (default 60, quick 20)")
    args = parser.parse_args()
    args.say_window = args.say_window or (20.0 if args.quick else 60.0)
    args.rounds = 1 if args.quick else 2
    args.soak_sessions = SOAK_BATCH if args.quick else SOAK_SESSIONS
    return args


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
