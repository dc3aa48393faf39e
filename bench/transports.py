"""Both media transports side by side, in the same run, beside Asterisk's own playback.

    .venv/bin/python bench/transports.py [--quick] [--calls N] [--only ttfa,flush,busy,capacity]

Needs the sandbox up (``python -m speakd.sandbox up``): the Asterisk-playback columns write
sound files into its root. Prints a markdown table (with the date) to stdout; progress goes to
stderr. Nothing here asserts on speed.

How each number is measured:

* **time to first audio at the party**: a fresh two-party call per measurement with an
  independent probe on alice's phone (``bench/probe.py``: snoop ``spy=in`` on the phone
  channel, bridged to an ExternalMedia RTP channel of the bench's own ARI app, packets stamped
  by the kernel). From the client's request to the first 20 ms frame above -40 dBFS at the
  probe. speakd (``websocket``/``rtp``): a session (``direction: out``, already active) and
  ``POST /say``; Piper streams sentence by sentence, so the first sentence is what counts.
  *Asterisk playback*: ``POST /channels/{snoop}/play`` of the same text pre-rendered (a
  whisper=out snoop on the call leg made by the bench's app): the floor of this path.
  *render-then-play*: at the say moment, render the whole text with speakd's own Piper
  provider in this process (same settings as the daemon), write it as a ``.ulaw`` file into
  the sandbox's sounds dir, then ARI ``play`` it: what an app does without streaming.
* **flush -> silence at the party**: say a long text; about 2 s after the probe first heard
  speech, at a moment the probe is hearing speech, request the flush (speakd ``POST /flush``;
  Asterisk: ``DELETE /playbacks/{id}``); from the request to the last speech frame at the
  probe. "leaks" counts speech frames more than 300 ms after the flush (should be none).
* **busy host**: harness's busy-host set-up (8 calls, alice listen-only, 3 busy-loop
  processes, clients polling the API/playbacks all along), all says at once; each alice's
  recording judged by ``harness.hearing.judge_intact``. Intact count, the longest single
  dropout, and time to first audio under load read from the recordings (the phone's recording
  start time + the first frame above -40 dBFS, +/-20 ms).
* **capacity daemon-side**: no Asterisk. K speakd sessions in this process (speakd's own
  ``Session``/``Playout``/transport, a provider that yields pre-rendered ulaw so synthesis
  CPU is excluded), all playing at once. ``websocket``: ``WebSocketTransport`` through
  speakd's ``AriClient.media_websocket`` to a local chan_websocket stand-in in a process of its
  own (``bench/sinks.py ws``: 50 frames/s per connection, marks answered when played);
  an underrun is a tick on which a started connection's queue was empty before its audio
  ended. ``rtp``: ``RtpTransport`` + ``PacerProcess`` sending to a local UDP socket
  (``bench/sinks.py rtp``); a break is an inter-arrival gap over 40 ms. CPU = this process's
  ``process_time`` (+ the pacer process's for rtp) over the steady-state window, as % of one
  core, per session. Each K tried (default 200 to 1,000) gets a row: the sessions with an
  underrun (a break), the CPU, and this process's resident memory; a K that cannot even start
  its sessions ends the column.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import logging
import math
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "tests"))

import aiohttp  # noqa: E402
import numpy as np  # noqa: E402
import structlog  # noqa: E402
from harness.ari import Ari, AriApp  # noqa: E402
from harness.audio import FRAME_S, frame_dbfs, render_piper, wav_bytes  # noqa: E402
from harness.calls import TwoPartyCall, start_two_party_call  # noqa: E402
from harness.daemon import Api, SpeakdProcess  # noqa: E402
from harness.hearing import LONG, SPEECH_DBFS, Intactness, judge_intact  # noqa: E402
from harness.load import busy_loops, polling  # noqa: E402
from probe import Probe, probe_party  # noqa: E402

from speakd.ari.client import AriClient  # noqa: E402
from speakd.audio import AudioFormat  # noqa: E402
from speakd.media.codec import FrameEncoder, encode  # noqa: E402
from speakd.media.playout import Playout  # noqa: E402
from speakd.media.rtp import FRAME_SAMPLES  # noqa: E402
from speakd.media.rtp_transport import PacerProcess, RtpTransport  # noqa: E402
from speakd.media.websocket import WebSocketTransport  # noqa: E402
from speakd.providers.base import AudioChunk, Provider, SynthesisRequest  # noqa: E402
from speakd.sessions.session import Session  # noqa: E402
from speakd.store.records import Speaking, now_stamp  # noqa: E402

# Two sentences: a streaming speaker plays the first while the second is synthesized.
TEXT = "Thanks for calling. Your order has shipped and will arrive tomorrow before noon."
# harness's busy-host text (tests/integration/test_busy_host.py): 10.8 s rendered, 8.7 s speech.
BUSY_TEXT = (
    "Thank you for calling the city library. Our opening hours are from nine in the morning until "
    "seven in the evening, Monday to Saturday. To renew a book, please have your library card ready "
    "and stay on the line."
)
BUSY_CALLS = 8
BUSY_LOOPS = 3
LISTEN_ONLY = {"_SPEAKD_LISTEN_ONLY": "alice"}
FLUSH_AFTER_S = 2.0
LEAK_AFTER_S = 0.3
HEAR_WITHIN_S = 15.0
SETTLE_S = 0.2  # after a call's set-up, before a measured request


async def settle() -> None:
    """Wait :data:`SETTLE_S` and a random part of a 20 ms frame. Asterisk's channels tick every
    20 ms from when they were made (chan_websocket's timer, a snoop's): a request a fixed time
    after the set-up meets them at the same phase every call, so every call waited the same part
    of a tick, the medians moved in 20 ms steps, not with the time speakd took, and the floor's own
    median sat on one of two values 15 ms apart from run to run. At a random phase the wait is a
    tick's average, as for requests that come when they come."""
    await asyncio.sleep(SETTLE_S + random.uniform(0, FRAME_S))


TRANSPORTS = ("websocket", "rtp")
ASTERISK = "asterisk"
RENDER = "render"
COLUMNS = (*TRANSPORTS, ASTERISK, RENDER)
SECTIONS = ("ttfa", "flush", "busy", "capacity")


def progress(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


def med_p95(values: list[float], unit: str = "ms") -> str:
    if not values:
        return "n/a"
    return f"{statistics.median(values):.0f} / {p95(values):.0f} {unit}"


# -- shared context -------------------------------------------------------------------------


@dataclass
class Bench:
    ari: Ari
    app: AriApp
    sounds: Path  # the sandbox's sounds dir
    args: argparse.Namespace
    workdir: Path
    results: dict[str, dict[str, str]] = field(default_factory=dict)  # row -> column -> cell
    notes: list[str] = field(default_factory=list)
    _piper: Any = None

    def put(self, row: str, column: str, cell: str) -> None:
        self.results.setdefault(row, {})[column] = cell

    @contextlib.contextmanager
    def sound(self, data: bytes, ext: str):
        """A sound file in the sandbox (``sound:`` name yielded), removed afterwards."""
        name = f"speakd/bench-{uuid.uuid4().hex[:8]}"
        path = self.sounds / f"{name}.{ext}"
        path.write_bytes(data)
        try:
            yield name
        finally:
            path.unlink(missing_ok=True)

    async def piper(self) -> Any:
        if self._piper is None:
            from speakd.providers import piper

            self._piper = piper.create({"noise_w_scale": 0.0})  # the daemon's settings in the harness
            await self._piper.start()
        return self._piper

    async def render_ulaw(self, text: str) -> bytes:
        """The whole text with speakd's Piper provider, as 8 kHz ulaw."""
        provider = await self.piper()
        encoder, out = FrameEncoder("ulaw"), bytearray()
        async for chunk in provider.synthesize(SynthesisRequest(text=text, language="en-US", voice_id="")):
            for frame in encoder.feed(chunk.data, chunk.format):
                out += frame
        for frame in encoder.finish():
            out += frame
        return bytes(out)

    @contextlib.asynccontextmanager
    async def call_with_probe(self, **call_args: Any) -> AsyncIterator[tuple[TwoPartyCall, Probe]]:
        call = await start_two_party_call(self.ari, **call_args)
        probe = None
        try:
            probe = await probe_party(self.ari, self.app, call.other_id)
            yield call, probe
        finally:
            if probe is not None:
                await probe.close()
            await call.hangup()

    @contextlib.asynccontextmanager
    async def whisper_snoop(self, call: TwoPartyCall) -> AsyncIterator[str]:
        snoop = f"{call.test_id}-bsnoop"
        try:
            await self.ari.post(
                f"/channels/{call.channel_id}/snoop", app=self.app.name, whisper="out", spy="none", snoopId=snoop
            )
            await self.app.wait_stasis_start(snoop)
            yield snoop
        finally:
            await self.ari.delete_quietly(f"/channels/{snoop}")


@contextlib.asynccontextmanager
async def speakd_daemon(bench: Bench, transport: str, cache: bool = False) -> AsyncIterator[tuple[SpeakdProcess, Api]]:
    """``cache``: the audio cache on (off here: every say of the same text is a synthesis to time;
    bench/cache.py times the cache)."""
    workdir = bench.workdir / f"{transport}{'-cache' if cache else ''}"
    workdir.mkdir(exist_ok=True)
    daemon = SpeakdProcess(workdir, bench.ari.url, bench.ari.user, bench.ari.password, transport=transport, cache=cache)
    api: Api | None = None
    try:
        await daemon.start()
        api = Api(daemon.base)
        yield daemon, api
    finally:
        if api is not None:
            await api.close()
        await daemon.stop()


# -- time to first audio ------------------------------------------------------------------


async def measure_ttfa(
    bench: Bench,
    n: int,
    column: str,
    prepare: Callable[[TwoPartyCall, contextlib.AsyncExitStack], Awaitable[Callable[[], Awaitable[None]]]],
) -> list[float]:
    """``prepare(call, stack)`` sets up (clean-ups on ``stack``) and returns ``go()``, which
    makes the sound start; timed from just before ``go()`` to the first speech at the probe."""
    values: list[float] = []
    missed = 0
    for _ in range(n):
        async with bench.call_with_probe(max_seconds=60) as (call, probe), contextlib.AsyncExitStack() as stack:
            go = await prepare(call, stack)
            await settle()
            t0 = time.time()
            await go()
            heard = await probe.wait_speech(t0, HEAR_WITHIN_S)
            if heard is None:
                missed += 1
            else:
                values.append((heard - t0) * 1000)
    progress(f"  ttfa {column}: {[round(v) for v in values]} ms" + (f", {missed} never heard" if missed else ""))
    cell = med_p95(values) + (f" ({missed} unheard)" if missed else "")
    bench.put("time to first audio at the party, median / p95", column, cell)
    return values


async def speakd_session(api: Api, call: TwoPartyCall, stack: contextlib.AsyncExitStack) -> str:
    sid = await api.start_session(call.channel_id, direction="out")

    async def stop() -> None:
        with contextlib.suppress(Exception):
            await api.stop(sid)

    stack.push_async_callback(stop)
    return sid


async def ttfa_speakd(bench: Bench, api: Api, column: str) -> None:
    async def prepare(call: TwoPartyCall, stack: contextlib.AsyncExitStack):
        sid = await speakd_session(api, call, stack)

        async def go() -> None:
            await api.say(sid, TEXT)

        return go

    await measure_ttfa(bench, bench.args.calls, column, prepare)


async def ttfa_asterisk(bench: Bench) -> None:
    rendered = await bench.render_ulaw(TEXT)
    with bench.sound(rendered, "ulaw") as sound:

        async def prepare(call: TwoPartyCall, stack: contextlib.AsyncExitStack):
            snoop = await stack.enter_async_context(bench.whisper_snoop(call))

            async def go() -> None:
                await bench.ari.post(f"/channels/{snoop}/play", media=f"sound:{sound}")

            return go

        await measure_ttfa(bench, bench.args.calls, ASTERISK, prepare)


async def ttfa_render(bench: Bench) -> None:
    await bench.piper()  # loaded once, before: a running app has its model loaded

    async def prepare(call: TwoPartyCall, stack: contextlib.AsyncExitStack):
        snoop = await stack.enter_async_context(bench.whisper_snoop(call))
        name = f"speakd/bench-{uuid.uuid4().hex[:8]}"
        path = bench.sounds / f"{name}.ulaw"
        stack.callback(path.unlink, missing_ok=True)

        async def go() -> None:
            path.write_bytes(await bench.render_ulaw(TEXT))
            await bench.ari.post(f"/channels/{snoop}/play", media=f"sound:{name}")

        return go

    await measure_ttfa(bench, bench.args.calls, RENDER, prepare)


# -- flush -> silence -----------------------------------------------------------------------


async def measure_flush(
    bench: Bench,
    column: str,
    prepare: Callable[[TwoPartyCall, contextlib.AsyncExitStack], Awaitable[tuple[Callable, Callable]]],
) -> None:
    """``prepare(call, stack)`` -> (``speak()``, ``cut()``), clean-ups on ``stack``."""
    values: list[float] = []
    leaks = 0
    failures = 0
    for _ in range(bench.args.flushes):
        async with bench.call_with_probe(max_seconds=60) as (call, probe), contextlib.AsyncExitStack() as stack:
            speak, cut = await prepare(call, stack)
            await settle()
            t0 = time.time()
            await speak()
            onset = await probe.wait_speech(t0, HEAR_WITHIN_S)
            if onset is None:
                failures += 1
                continue
            # Cut while the party is hearing speech (not in a pause between words).
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:
                newest = probe.packets[-1]
                if time.time() - onset >= FLUSH_AFTER_S and newest.dbfs > SPEECH_DBFS:
                    break
                await asyncio.sleep(0.002)
            t_cut = time.time()
            await cut()
            await asyncio.sleep(1.5)
            last = probe.last_speech(onset)
            values.append(max(0.0, (last - t_cut) * 1000) if last is not None else 0.0)
            leaks += len(probe.speech_after(t_cut + LEAK_AFTER_S))
    progress(f"  flush {column}: {[round(v) for v in values]} ms, leaks {leaks}, failures {failures}")
    cell = "n/a"
    if values:
        cell = f"{statistics.median(values):.0f} / {max(values):.0f} ms"
        if leaks:
            cell += f", {leaks} leaked frames"
    if failures:
        cell += f" ({failures} unheard)"
    bench.put("flush -> silence at the party, median / max", column, cell)


async def flush_speakd(bench: Bench, api: Api, column: str) -> None:
    async def prepare(call: TwoPartyCall, stack: contextlib.AsyncExitStack):
        sid = await speakd_session(api, call, stack)

        async def speak() -> None:
            await api.say(sid, LONG)

        async def cut() -> None:
            await api.flush(sid)

        return speak, cut

    await measure_flush(bench, column, prepare)


async def flush_asterisk(bench: Bench) -> None:
    rendered = await bench.render_ulaw(LONG)
    with bench.sound(rendered, "ulaw") as sound:

        async def prepare(call: TwoPartyCall, stack: contextlib.AsyncExitStack):
            snoop = await stack.enter_async_context(bench.whisper_snoop(call))
            playback = f"{snoop}-play"

            async def speak() -> None:
                await bench.ari.post(f"/channels/{snoop}/play", media=f"sound:{sound}", playbackId=playback)

            async def cut() -> None:
                await bench.ari.delete_quietly(f"/playbacks/{playback}")

            return speak, cut

        await measure_flush(bench, ASTERISK, prepare)


# -- busy host ------------------------------------------------------------------------------


def heard_at(recording: np.ndarray, rec_t0: float, after: float) -> float | None:
    """Wall time of the first speech frame in a phone's recording at or after ``after``."""
    loud = np.flatnonzero(frame_dbfs(recording) > SPEECH_DBFS)
    times = rec_t0 + loud * FRAME_S
    later = times[times >= after - FRAME_S]
    return float(later[0]) if len(later) else None


async def busy_calls(bench: Bench) -> list[TwoPartyCall]:
    calls: list[TwoPartyCall] = []
    results = await asyncio.gather(
        *(start_two_party_call(bench.ari, max_seconds=150, variables=LISTEN_ONLY) for _ in range(BUSY_CALLS)),
        return_exceptions=True,
    )
    for result in results:
        if isinstance(result, TwoPartyCall):
            calls.append(result)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        for call in calls:
            await call.hangup()
        raise errors[0]
    return calls


def report_busy(
    bench: Bench, column: str, verdicts: list[Intactness], firsts: list[float], not_played: int, extra: str
) -> None:
    intact = sum(1 for v in verdicts if not v.problems())
    worst = max((length for v in verdicts for _, length in v.dropouts), default=0.0)
    holes = sum(len(v.dropouts) for v in verdicts)
    for v in verdicts:
        progress("   ", v.summary())
    progress(f"  busy {column}: {intact}/{len(verdicts)} intact, worst hole {worst * 1000:.0f} ms; {extra}")
    cell = f"{intact}/{len(verdicts)}"
    if not_played:
        cell += f" ({not_played} not played in time)"
    bench.put(f"busy host ({BUSY_CALLS} calls, {BUSY_LOOPS} busy loops): heard intact", column, cell)
    bench.put("busy host: longest dropout (holes in all)", column, f"{worst * 1000:.0f} ms ({holes})")
    # From the recordings (phone's recording start + first frame above -40 dBFS): no snoop or
    # bridge in the way, so about 40 ms less than the probe's numbers for the same path.
    bench.put("busy host: time to first audio (from the recordings), median / p95", column, med_p95(firsts))


async def wait_says_final(api: Api, speaking_id: str, within: float) -> str:
    deadline = time.monotonic() + within
    status = "?"
    while time.monotonic() < deadline:
        reply = await api.request("GET", f"/speakings/{speaking_id}/says")
        says = reply.body.get("result", []) if isinstance(reply.body, dict) else []
        status = says[-1]["status"] if says else "?"
        if status not in ("queued", "playing", "?"):
            return status
        await asyncio.sleep(0.25)
    return f"still {status}"


async def busy_speakd(bench: Bench, daemon: SpeakdProcess, api: Api, column: str, reference: np.ndarray) -> None:
    calls = await busy_calls(bench)
    sids: list[str] = []
    try:
        rec_t0 = [await call.recording_started_at("alice") for call in calls]
        for call in calls:
            sids.append(await api.start_session(call.channel_id, direction="out"))

        async def get_session(speaking_id: str) -> None:
            await api.get(speaking_id)

        with busy_loops(BUSY_LOOPS):
            async with polling(get_session, sids) as polls:
                t0 = time.time()
                await asyncio.gather(*(api.say(sid, BUSY_TEXT) for sid in sids))
                finals = await asyncio.gather(*(wait_says_final(api, sid, bench.args.busy_within) for sid in sids))
        recordings = await asyncio.gather(*(call.recording("alice") for call in calls))
    finally:
        for sid in sids:
            with contextlib.suppress(Exception):
                await api.stop(sid)
        for call in calls:
            await call.hangup()
    verdicts = [judge_intact(rec, reference, f"{column} call {i + 1}") for i, rec in enumerate(recordings)]
    firsts = [
        (at - t0) * 1000 for rec, t in zip(recordings, rec_t0, strict=True) if (at := heard_at(rec, t, t0)) is not None
    ]
    stalls = daemon.log_text().count('"pacer_stalled"')
    report_busy(
        bench,
        column,
        verdicts,
        firsts,
        sum(1 for f in finals if f != "played"),
        f"says {finals}, {polls.requests} polling GETs, pacer_stalled lines {stalls}",
    )


async def busy_asterisk(bench: Bench, reference: np.ndarray) -> None:
    with bench.sound(wav_bytes(reference), "wav") as sound:
        calls = await busy_calls(bench)
        snoops = [f"{call.test_id}-bsnoop" for call in calls]
        playbacks = [f"{snoop}-play" for snoop in snoops]
        not_finished = 0
        try:
            rec_t0 = [await call.recording_started_at("alice") for call in calls]
            for call, snoop in zip(calls, snoops, strict=True):
                await bench.ari.post(
                    f"/channels/{call.channel_id}/snoop", app=bench.app.name, whisper="out", spy="none", snoopId=snoop
                )
                await bench.app.wait_stasis_start(snoop)

            async def get_playback(playback_id: str) -> None:
                with contextlib.suppress(Exception):
                    await bench.ari.get(f"/playbacks/{playback_id}")

            with busy_loops(BUSY_LOOPS):
                async with polling(get_playback, playbacks) as polls:
                    t0 = time.time()
                    await asyncio.gather(
                        *(
                            bench.ari.post(f"/channels/{snoop}/play", media=f"sound:{sound}", playbackId=playback)
                            for snoop, playback in zip(snoops, playbacks, strict=True)
                        )
                    )
                    for playback in playbacks:
                        try:
                            await bench.app.wait_for(
                                lambda e, p=playback: (
                                    e.get("type") == "PlaybackFinished" and e.get("playback", {}).get("id") == p
                                ),
                                within=len(reference) / 8000 + 6.0,
                                what=f"PlaybackFinished of {playback}",
                            )
                        except TimeoutError:
                            not_finished += 1
                    await asyncio.sleep(0.5)
            recordings = await asyncio.gather(*(call.recording("alice") for call in calls))
        finally:
            for snoop in snoops:
                await bench.ari.delete_quietly(f"/channels/{snoop}")
            for call in calls:
                await call.hangup()
    verdicts = [judge_intact(rec, reference, f"asterisk call {i + 1}") for i, rec in enumerate(recordings)]
    firsts = [
        (at - t0) * 1000 for rec, t in zip(recordings, rec_t0, strict=True) if (at := heard_at(rec, t, t0)) is not None
    ]
    report_busy(bench, ASTERISK, verdicts, firsts, not_finished, f"{polls.requests} polling GETs")


# -- capacity daemon-side -------------------------------------------------------------------


class PrerenderedProvider(Provider):
    """Yields pre-rendered ulaw in 1 s chunks, as fast as asked: no synthesis CPU."""

    name = "prerendered"

    def __init__(self, audio: bytes, seconds: float) -> None:
        reps = math.ceil(seconds * 8000 / len(audio))
        self.audio = (audio * reps)[: int(seconds * 8000)]

    def check(self, language: str, voice_id: str, payload_type: str = "text") -> None:
        return None

    async def synthesize(self, request: SynthesisRequest) -> AsyncIterator[AudioChunk]:
        fmt = AudioFormat("ulaw", 8000)
        for start in range(0, len(self.audio), 8000):
            yield AudioChunk(self.audio[start : start + 8000], fmt)


@contextlib.asynccontextmanager
async def sink_process(kind: str) -> AsyncIterator[dict[str, int]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(BENCH / "sinks.py"),
        kind,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 15)
        yield json.loads(line)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 3)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def new_session(provider: Provider) -> Session:
    stamp = now_stamp()
    record = Speaking(
        id=str(uuid.uuid4()),
        customer_id="bench",
        reference_type="call",
        reference_id=f"bench-{uuid.uuid4().hex[:8]}",
        language="en-US",
        provider=provider.name,
        voice_id="",
        direction="out",
        status="active",
        tm_create=stamp,
        tm_update=stamp,
    )

    async def save_say(_item: object) -> None:
        return None

    defaults = {"lead_ms": 1500, "mark_every_ms": 100}  # speakd's [media] defaults
    return Session(record, provider, "ulaw", Playout(**defaults), save_say)


def resident_mb() -> float:
    """This process's resident memory (VmRSS), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def child_cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class CapacityResult:
    k: int
    started: int
    broken: int  # sessions with an underrun / a break inside the window
    cpu_pct: float  # % of one core, all sessions
    detail: str
    rss_mb: float  # this process's resident memory at the window's end

    @property
    def ok(self) -> bool:
        return self.started == self.k and self.broken == 0


async def run_sessions(
    k: int,
    provider: Provider,
    open_transport: Callable[[int], Awaitable[Any]],
    window_s: float,
    warmup_s: float,
    other_cpu: Callable[[], float],
) -> tuple[int, float, float, float, str, float]:
    """Start k sessions, say at once, measure CPU over the window. Returns
    (started, cpu %, window start, window end, failure text, resident MB at the window's end)."""
    sessions: list[Session] = []
    transports: list[Any] = []
    failure = ""
    try:
        for i in range(k):
            session = new_session(provider)
            sessions.append(session)
            session.start_synthesis()
            try:
                transport = await asyncio.wait_for(open_transport(i), 10)
            except (Exception, TimeoutError) as exc:
                failure = f"session {i + 1} could not open its transport: {type(exc).__name__}: {exc}"
                break
            transports.append(transport)
            session.start_playout(transport)
        for session in sessions[: len(transports)]:
            session.enqueue(session.new_say("prerendered"))
        await asyncio.sleep(warmup_s)
        cpu0, other0, wall0, start = time.process_time(), other_cpu(), time.monotonic(), time.time()
        await asyncio.sleep(window_s)
        cpu1, other1, wall1, end = time.process_time(), other_cpu(), time.monotonic(), time.time()
        cpu_pct = 100 * ((cpu1 - cpu0) + (other1 - other0)) / (wall1 - wall0)
        return len(transports), cpu_pct, start, end, failure, resident_mb()
    finally:
        for session in sessions:
            with contextlib.suppress(Exception):
                await session.close()
        for transport in transports:
            with contextlib.suppress(Exception):
                await transport.aclose()


async def capacity_websocket(
    k: int, provider: Provider, window_s: float, warmup_s: float, unlimited_pool: bool = False
) -> CapacityResult:
    """``unlimited_pool``: connect as ``AriClient.media_websocket`` does, but from a session
    whose connection pool has no limit (speakd's shares the ARI pool, limit 64)."""
    async with sink_process("ws") as ports, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{ports['http']}"
        async with AriClient(base, "bench", "bench", app="bench") as client:
            media = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

            def connect(i: int) -> Any:
                if not unlimited_pool:
                    return client.media_websocket(f"c{i}")
                return media.ws_connect(
                    f"ws://127.0.0.1:{ports['http']}/media/c{i}",
                    protocols=("media",),
                    heartbeat=10.0,
                    timeout=aiohttp.ClientWSTimeout(ws_close=2),
                )

            async def open_transport(i: int) -> WebSocketTransport:
                transport = WebSocketTransport(lambda: connect(i), FRAME_SAMPLES)
                await transport.start()
                return transport

            try:
                started, cpu, start, end, failure, rss = await run_sessions(
                    k, provider, open_transport, window_s, warmup_s, lambda: 0.0
                )
            finally:
                await media.close()
        async with http.get(f"{base}/stats") as resp:
            stats = await resp.json()
    audio_end_s = len(provider.audio) / 8000  # type: ignore[attr-defined]
    broken = 0
    worst = 0
    for conn in stats["connections"]:
        if conn["first_play"] is None:
            broken += 1
            continue
        until = min(end, conn["first_play"] + audio_end_s - 0.1)
        dry = [t for t in conn["underruns"] if max(start, conn["first_play"]) <= t <= until]
        worst = max(worst, len(dry))
        broken += bool(dry)
    detail = f"sink late max {stats['max_late_ms']} ms, worst session {worst} dry ticks"
    if failure:
        detail += f"; {failure}"
    return CapacityResult(k, started, broken, cpu, detail, rss)


async def capacity_rtp(k: int, provider: Provider, window_s: float, warmup_s: float) -> CapacityResult:
    async with sink_process("rtp") as ports, aiohttp.ClientSession() as http:
        rtp_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rtp_socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        rtp_socket.bind(("127.0.0.1", 0))
        try:
            async with PacerProcess(rtp_socket, realtime_priority=10) as pacer:

                async def open_transport(_i: int) -> RtpTransport:
                    transport = RtpTransport(pacer, ("127.0.0.1", ports["media"]), 0)
                    await transport.start()
                    return transport

                started, cpu, start, end, failure, rss = await run_sessions(
                    k, provider, open_transport, window_s, warmup_s, lambda: child_cpu_s(pacer.pid)
                )
                pacer_note = (
                    f"pacer SCHED_FIFO {pacer.realtime}, max late {pacer.max_late_ms:.1f} ms, stalls {pacer.stalls}"
                )
        finally:
            rtp_socket.close()
        async with http.get(f"http://127.0.0.1:{ports['http']}/stats") as resp:
            stats = await resp.json()
    broken = 0
    worst_gap = 0.0
    lost = 0
    for stream in stats["streams"]:
        inside = [(g, missing) for at, g, missing in stream["gaps"] if start <= at <= end]
        worst_gap = max([worst_gap, *(g for g, missing in inside if not missing)])
        lost += sum(1 for _g, missing in inside if missing)
        broken += any(g > 0.040 and not missing for g, missing in inside)
    broken += max(0, started - len(stats["streams"]))  # a stream that never sent
    worst = f"worst inter-arrival gap {worst_gap * 1000:.0f} ms" if worst_gap else "no inter-arrival gap over 30 ms"
    detail = f"{pacer_note}, {worst}"
    if lost:
        detail += f", {lost} gaps from packets lost at the sink (not counted)"
    if failure:
        detail += f"; {failure}"
    return CapacityResult(k, started, broken, cpu, detail, rss)


async def capacity(bench: Bench) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    audio = encode(render_piper(LONG), "ulaw")
    window_s, warmup_s = bench.args.window, 1.5
    provider = PrerenderedProvider(audio, warmup_s + window_s + 3.0)
    ks = [int(k) for k in bench.args.sessions.split(",")]
    row_k = "capacity daemon-side: most sessions with no underrun (K tried: " + ",".join(map(str, ks)) + ")"
    row_cpu = "speakd CPU per session at that K (% of one core)"

    def step_row(k: int) -> str:
        return f"capacity daemon-side, K={k}: sessions with an underrun; CPU (per session); resident"

    def line(result: CapacityResult) -> str:
        per = result.cpu_pct / max(result.started, 1)
        state = "ok" if result.ok else f"{result.broken} broken, {result.started} started"
        return f"K={result.k}: {state}, CPU {result.cpu_pct:.0f}% ({per:.2f}%/session)"

    for column, run in (("websocket", capacity_websocket), ("rtp", capacity_rtp)):
        if column not in bench.args.transports:
            continue
        best: CapacityResult | None = None
        tried: list[str] = []
        capped = False
        for k in ks:
            if capped:
                break
            rss_before = resident_mb()
            result = await run(k, provider, window_s, warmup_s)
            progress(f"  capacity {column}: {line(result)}; {result.detail}")
            tried.append(line(result))
            bench.put(
                step_row(k),
                column,
                f"{result.broken} of {result.started}; {result.cpu_pct:.0f}% "
                f"({result.cpu_pct / max(result.started, 1):.3f}%); "
                f"{result.rss_mb:.0f} MB (+{result.rss_mb - rss_before:.0f})",
            )
            if result.ok and (best is None or k > best.k):
                best = result
            if result.started < k:  # a hard limit: more sessions cannot even start
                capped = True
                tried[-1] += f" ({result.detail.split('; ', 1)[-1]})"
                if column == "websocket":
                    alone = await capacity_websocket(k, provider, window_s, warmup_s, unlimited_pool=True)
                    progress(f"  capacity websocket, unlimited pool: {line(alone)}; {alone.detail}")
                    tried.append(f"with an unlimited connection pool {line(alone)}")
        bench.notes.append(f"capacity {column}: " + "; ".join(tried))
        if best is None:
            bench.put(row_k, column, f"< {ks[0]}")
            continue
        cell = str(best.k)
        if capped and column == "websocket":
            cell += " (no more than 64 can start: media WebSockets share the ARI client's pool, limit 64)"
        bench.put(row_k, column, cell)
        bench.put(row_cpu, column, f"{best.cpu_pct / best.k:.2f}% ({best.cpu_pct:.0f}% for {best.k})")


# -- main -----------------------------------------------------------------------------------


def table(bench: Bench, started: float) -> str:
    names = {
        "websocket": "speakd websocket",
        "rtp": "speakd rtp",
        ASTERISK: "Asterisk playback (pre-rendered)",
        RENDER: "render whole text, then ARI play",
    }
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    load = os.getloadavg()
    lines = [
        f"speakd transports bench, {date}, {os.cpu_count()} cores, load average at start {bench.args.load_at_start}, "
        f"at end {load[0]:.1f}; {'--quick, ' if bench.args.quick else ''}{bench.args.calls} calls per "
        f"time-to-first-audio cell, {bench.args.flushes} flushes per flush cell; "
        f"run took {time.monotonic() - started:.0f} s; {platform.python_version()}",
        "",
        "| what | " + " | ".join(names[c] for c in COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    for row, cells in bench.results.items():
        lines.append(f"| {row} | " + " | ".join(cells.get(c, "—") for c in COLUMNS) + " |")
    if bench.notes:
        lines += ["", *(f"- {note}" for note in bench.notes)]
    return "\n".join(lines)


def keep_logs(bench: Bench, workdir: Path) -> None:
    """The daemons' logs outlive the run (their workdir does not)."""
    logs = list(workdir.glob("*/speakd.log"))
    if logs:
        keep = Path(tempfile.mkdtemp(prefix="speakd-bench-logs-"))
        for log in logs:
            shutil.copy(log, keep / f"{log.parent.name}.log")
        bench.notes.append(f"daemon logs: {keep}")


async def main(args: argparse.Namespace) -> None:
    started = time.monotonic()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    url = os.environ.get("SPEAKD_TEST_ARI_URL", "http://127.0.0.1:18088")
    user = os.environ.get("SPEAKD_TEST_ARI_USER", "speakd")
    password = os.environ.get("SPEAKD_TEST_ARI_PASSWORD", "speakd")
    from speakd import sandbox

    state = sandbox.read_state() or {}
    needs_asterisk = set(args.only) & {"ttfa", "flush", "busy"}
    if needs_asterisk and not state.get("root"):
        sys.exit("the sandbox is not up (python -m speakd.sandbox up): the Asterisk columns need its sounds dir")
    sounds = Path(state.get("root", "/nonexistent")) / "usr/share/asterisk/sounds"
    ari = Ari(url, user, password)
    app = ari.app(f"speakd-bench-{uuid.uuid4().hex[:6]}")
    with tempfile.TemporaryDirectory(prefix="speakd-bench-") as workdir:
        bench = Bench(ari, app, sounds, args, Path(workdir))
        try:
            if needs_asterisk:
                await app.connect()
                reference = render_piper(BUSY_TEXT) if "busy" in args.only else None
                for transport in args.transports:
                    progress(f"speakd, transport {transport}")
                    async with speakd_daemon(bench, transport) as (daemon, api):
                        if "ttfa" in args.only:
                            await ttfa_speakd(bench, api, transport)
                        if "flush" in args.only:
                            await flush_speakd(bench, api, transport)
                        if "busy" in args.only:
                            await busy_speakd(bench, daemon, api, transport, reference)
                if not args.no_asterisk:
                    progress("Asterisk's own playback")
                    if "ttfa" in args.only:
                        await ttfa_asterisk(bench)
                        await ttfa_render(bench)
                    if "flush" in args.only:
                        await flush_asterisk(bench)
                    if "busy" in args.only:
                        await busy_asterisk(bench, reference)
            if "capacity" in args.only:
                progress("capacity, daemon-side (no Asterisk)")
                await capacity(bench)
        finally:
            keep_logs(bench, Path(workdir))
            if bench._piper is not None:
                await bench._piper.aclose()
            await app.close()
            await ari.close()
        print(table(bench, started))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls, shorter capacity windows")
    parser.add_argument("--calls", type=int, help="calls per time-to-first-audio cell (default 10, quick 3)")
    parser.add_argument("--flushes", type=int, help="flushes per cell (default 5, quick 2)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"sections, comma-separated: {','.join(SECTIONS)}")
    parser.add_argument("--transports", default=",".join(TRANSPORTS), help="websocket,rtp")
    parser.add_argument("--no-asterisk", action="store_true", help="skip the Asterisk-playback/render columns")
    parser.add_argument("--sessions", help="capacity: K values to try (default 200,...,1000; quick 200,400)")
    parser.add_argument("--window", type=float, help="capacity: seconds measured per K (default 6, quick 4)")
    parser.add_argument("--busy-within", type=float, default=60.0, help="busy host: seconds a say may take")
    args = parser.parse_args()
    args.only = [s for s in args.only.split(",") if s]
    unknown = set(args.only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}")
    args.transports = [t for t in args.transports.split(",") if t]
    if set(args.transports) - set(TRANSPORTS):
        parser.error("transports: websocket, rtp")
    args.calls = args.calls or (3 if args.quick else 10)
    args.flushes = args.flushes or (2 if args.quick else 5)
    args.sessions = args.sessions or ("200,400" if args.quick else "200,400,600,800,1000")
    args.window = args.window or (4.0 if args.quick else 6.0)
    args.load_at_start = f"{os.getloadavg()[0]:.1f}"
    return args


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
