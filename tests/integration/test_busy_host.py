"""Speech stays whole on a busy host (issue "Let Asterisk pace the audio").

Eight calls at once, a session on each saying ~9 s of speech, while three busy-loop processes
at normal priority burn the cores for the whole speech and clients poll the API: every party
must hear the whole text, and no 20 ms of it may drop out (harness.hearing.find_dropouts) but
where the host itself stalled a process of Asterisk's priority (harness.host.stall_probe).

The comparison: the same eight calls' worth played by Asterisk itself (ARI `play` of the
pre-rendered reference through a whisper snoop) under the same load, judged the same way. It
passes when Asterisk can pace (its own timer threads); it shows the detector is fair, and when
it fails too the host itself is too loaded for either result to mean much (it needs the sandbox:
the sound file is written into its root).

Red on the in-daemon pacer (commit 1f5f28d, three runs on the shared 2-core host): 0 of 8
intact every time; each party heard 0.0-2.1 s of the 8.6-8.8 s of speech with 20-29 holes,
the pacer logged 16-36 stalls (up to 0.64 s), and Piper's first audio came 5-14 s after the say.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import os
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from harness.audio import RATE, render_piper, wav_bytes
from harness.daemon import Api, SpeakdProcess
from harness.hearing import DROPOUT_TOLERANCE_S, Intactness, find_dropouts, judge_intact
from harness.host import CpuTimes, HostStalls, ProcessCpu, describe, describe_process, stall_probe
from harness.load import assert_still_busy, busy_loops, polling

from speakd.sandbox import ASTERISK_NICE, read_state

pytestmark = pytest.mark.asyncio(loop_scope="session")

CALLS = 8
BUSY_LOOPS = 3
# 10.8 s rendered, 8.7 s of it speech; three sentences, so synthesis runs while earlier ones play.
TEXT = (
    "Thank you for calling the city library. Our opening hours are from nine in the morning until "
    "seven in the evening, Monday to Saturday. To renew a book, please have your library card ready "
    "and stay on the line."
)
SLACK_S = 6.0  # Asterisk's playback: after the reference's length
# speakd: how long every say may take to be played. Eight Piper syntheses at once on a host
# whose cores the busy loops and Asterisk share start late (speakd holds a say until it can
# play through); the test is about whether what is heard is whole, the bench about how soon.
PLAYED_WITHIN_S = 90.0

# (transport, busy loops, holes judged); SpeakdProcess writes the [media] section itself.
# One loop too: synthesis is then fast enough that says are released after a short hold, and
# whether that hold covers the say is what decides (CI, 2026-12-07: says released after 1-3 s
# at their first chunks' pace ran dry at their next sentences, all eight; here, at three
# loops, every say is held to the bound and plays through whatever the rule). Its holes are
# not judged: there Piper still synthesizes while most of each say plays. What is speakd's is
# judged: no say ran dry (the far end reports every time it does), and the whole speech is
# heard. Each party's line says how long the daemon held its say, when its synthesis ended
# (from its first audio sent) and where it ran dry. CI's holes of 2026-12-07 (5 to 7 of 8
# recordings, at three loops too) came while Piper, then at the daemon's nice -10, still
# synthesized: speakd.providers.piper.NICE.
LOADS = [("websocket", BUSY_LOOPS, True), ("rtp", BUSY_LOOPS, True), ("websocket", 1, False)]
# alice only listens: whisper=out rides on the frames bob's phone sends her, and a phone's
# carrier is what costs the sandbox's Asterisk most (about 5% of a core each here), CPU a
# PBX with real phones would not spend. (Recorded twice, by two MixMonitors in threads of their
# own, CI's holes were in both, at the same places: they were in the call, not the recorder's.)
LISTEN_ONLY = {"_SPEAKD_LISTEN_ONLY": "alice"}
# A hole is the host's when a stall the probes saw (harness.host.stall_probe, at Asterisk's
# priority) began at most STALL_AFTER_HOLE_S after the hole as the recording places it, or the
# hole fell within STALL_BEFORE_HOLE_S of the stall's end. Stalls forced here (a SCHED_FIFO
# process burning each core 40 ms every 1.5-3 s; no hole without them): 17 of 19 holes were
# placed 0.01-0.15 s before a stall began (the recording's start is known to 20 ms, and frames
# reach it after the stall). The others, 0.3-0.8 s from any stall, sat at the reference's
# natural pauses, in recordings the host's holes had shifted: split_party_holes looks again with the
# alignment's slack widened by those (4 runs of 8 calls then passed, one on its rerun). CI:
# 20-60 ms holes in 5 of 8 recordings, four runs in a row (2026-12-07); never on this machine.
STALL_AFTER_HOLE_S = 0.25
STALL_BEFORE_HOLE_S = 0.05


Hole = tuple[float, float]  # (start s in the recording, length s)


@dataclasses.dataclass
class Heard:
    """What a party heard: its recording's verdict, and its holes as the host's and the rest
    (:func:`split_party_holes`), of which only the rest count."""

    verdict: Intactness
    hosts: list[Hole]
    rest: list[Hole]

    def problems(self, holes: bool) -> list[str]:
        # Holes not judged (or the host's): a hole delays what follows it, so the envelope lines
        # up less (0.76 with 0.21 s of holes; 0.65-0.75 with 4-7 holes at forced stalls); the
        # speech's length still says it was all heard.
        min_corr = 0.8 if holes and not self.hosts else 0.6
        return dataclasses.replace(self.verdict, dropouts=self.rest).problems(min_corr=min_corr, dropouts=holes)

    def summary(self) -> str:
        return self.verdict.summary() + (
            f"; {len(self.hosts)} at host stalls, {len(self.rest)} not" if self.hosts else ""
        )


def hear(
    recordings: list[np.ndarray], recording_t0s: list[float], reference: np.ndarray, stalls: HostStalls, whos: list[str]
) -> list[Heard]:
    """Each recording judged (harness.hearing.judge_intact), its holes split."""
    heard = []
    for recording, t0, who in zip(recordings, recording_t0s, whos, strict=True):
        verdict = judge_intact(recording, reference, who)
        heard.append(Heard(verdict, *split_party_holes(verdict, recording, reference, t0, stalls)))
    return heard


def split_party_holes(
    verdict: Intactness, recording: np.ndarray, reference: np.ndarray, recording_t0: float, stalls: HostStalls
) -> tuple[list[Hole], list[Hole]]:
    """The party's holes as (the host's, the rest): a host stall explains a hole heard at it
    (harness.host.stall_probe); no sender or Asterisk setting prevents those. Each of them also
    delays all that follows, and the recording is aligned with the reference as a whole, so a
    natural pause can then read as a hole: the rest are looked for again with the alignment's
    slack widened by the host's holes."""

    def at_stall(hole: Hole) -> bool:
        at = recording_t0 + hole[0]
        return stalls.near(at, before=STALL_AFTER_HOLE_S, after=STALL_BEFORE_HOLE_S) is not None

    hosts = [hole for hole in verdict.dropouts if at_stall(hole)]
    if not hosts:
        return [], verdict.dropouts
    slack = DROPOUT_TOLERANCE_S + sum(length for _, length in hosts)
    rest = find_dropouts(recording, reference, verdict.lag_frames, tolerance_s=slack)
    return hosts, [hole for hole in rest if not at_stall(hole)]


def assert_all_intact(parties: list[Heard], context: str, holes: bool = True) -> None:
    """Every party heard the whole speech."""
    broken = []
    for party in parties:
        print(party.summary())  # (shown with -s, and with the failure)
        if problems := party.problems(holes):
            broken.append(f"{party.verdict.who}: " + "; ".join(problems))
    # The context last as well: a long report is often shown by its head and its tail.
    assert not broken, (
        f"{len(broken)} of {len(parties)} parties did not hear the whole speech ({context}):\n"
        + "\n".join(broken)
        + "\nall parties:\n"
        + "\n".join(party.summary() for party in parties)
        + f"\n({context})"
    )


def logged_warnings(log_text: str) -> str:
    """The daemon's warning/error events by name and count (what it noticed itself)."""
    counts: collections.Counter[str] = collections.Counter()
    for line in log_text.splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("level") in ("warning", "error"):
                counts[str(entry.get("event"))] += 1
    return ", ".join(f"{event} x{n}" for event, n in counts.most_common()) or "none"


def says_as_the_daemon_saw_them(log_text: str, speaking_ids: list[str]) -> list[str]:
    """For each session, in order: how long its say was held before playing, when its synthesis
    ended counted from its first audio sent (after: synthesis went on while it played), and
    where it ran dry (the far end's own report: say_underrun)."""
    held: dict[str, int] = {}
    sent_at: dict[str, float] = {}
    synthesized_at: dict[str, float] = {}
    dry: collections.defaultdict[str, list[int]] = collections.defaultdict(list)
    for line in log_text.splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if not isinstance(entry, dict):
                continue
            sid, event = entry.get("speaking_id", ""), entry.get("event")
            if event == "say_held":
                held[sid] = entry.get("held_ms", 0)
            elif event == "say_first_sent":
                sent_at[sid] = datetime.fromisoformat(entry["timestamp"]).timestamp()
            elif event == "say_synthesized":
                synthesized_at[sid] = datetime.fromisoformat(entry["timestamp"]).timestamp()
            elif event == "say_underrun":
                dry[sid].append(entry.get("at_ms", -1))
    return [
        f"held {held.get(sid, 0) / 1000:.1f} s"
        + (
            f", synthesized at {synthesized_at[sid] - sent_at[sid]:+.1f} s"
            if sid in sent_at and sid in synthesized_at
            else ""
        )
        + (f", ran dry at {', '.join(f'+{at / 1000:.2f}s' for at in dry[sid])}" if dry[sid] else "")
        for sid in speaking_ids
    ]


async def wait_played(api: Api, speaking_id: str, within: float) -> dict:
    """The session's say once it is final (played, unless something broke)."""
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        reply = await api.request("GET", f"/speakings/{speaking_id}/says")
        say = reply.body["result"][-1]
        if say["status"] not in ("queued", "playing"):
            return say
        await asyncio.sleep(0.25)
    raise AssertionError(f"speaking {speaking_id}: the say was not played within {within:.0f} s: {say}")


async def listening_calls(make_two_party_call) -> list:
    """CALLS two-party calls at once, alice only listening."""
    return await asyncio.gather(*(make_two_party_call(max_seconds=120, variables=LISTEN_ONLY) for _ in range(CALLS)))


async def asterisk_version(ari) -> str:
    info = await ari.get("/asterisk/info")
    return f"Asterisk {info.get('system', {}).get('version', '?')}"


def asterisk_cpu() -> ProcessCpu | None:
    """The sandbox Asterisk's CPU time now (None where no sandbox has run)."""
    pid = (read_state() or {}).get("pid")
    return ProcessCpu.of(pid) if pid else None


@pytest.mark.by_ear
@pytest.mark.parametrize(("transport", "loops", "holes"), LOADS)
async def test_every_party_hears_the_whole_speech_on_a_busy_host(
    ari, ari_settings, make_two_party_call, tmp_path, transport, loops, holes
):
    reference = render_piper(TEXT)  # before the load: the test's own Piper is not under test
    # No audio cache: the load under test is every call's own synthesis.
    daemon = SpeakdProcess(
        tmp_path, ari_settings["url"], ari_settings["user"], ari_settings["password"], transport=transport, cache=False
    )
    await daemon.start()
    api = Api(daemon.base)

    async def get_session(speaking_id: str) -> None:
        reply = await api.get(speaking_id)
        assert reply.status == 200, reply

    try:
        calls = await listening_calls(make_two_party_call)
        speaking_ids = [await api.start_session(call.channel_id, direction="out") for call in calls]
        host_before, asterisk_before, daemon_before = CpuTimes.now(), asterisk_cpu(), ProcessCpu.of(daemon.proc.pid)
        with stall_probe(ASTERISK_NICE) as stalls, busy_loops(loops) as busy:
            async with polling(get_session, speaking_ids) as polls:
                replies = await asyncio.gather(*(api.say(speaking_id, TEXT) for speaking_id in speaking_ids))
                assert [r.status for r in replies] == [200] * CALLS, replies
                says = await asyncio.gather(
                    *(wait_played(api, speaking_id, PLAYED_WITHIN_S) for speaking_id in speaking_ids)
                )
            assert_still_busy(busy)
        host_after, asterisk_after, daemon_after = CpuTimes.now(), asterisk_cpu(), ProcessCpu.of(daemon.proc.pid)
        recording_t0s = await asyncio.gather(*(call.recording_started_at("alice") for call in calls))
        recordings = await asyncio.gather(*(call.recording("alice") for call in calls))
    finally:
        await api.close()
        await daemon.stop()

    log_text = daemon.log_text()
    daemon_saw = says_as_the_daemon_saw_them(log_text, speaking_ids)
    whos = [
        f"call {i + 1} ({call.test_id}, {saw}) alice"
        for i, (call, saw) in enumerate(zip(calls, daemon_saw, strict=True))
    ]
    warnings = logged_warnings(log_text)
    context = (
        f"{CALLS} calls, {loops} busy loops, {polls.requests} polling GETs; {stalls.summary()}; "
        f"{describe(host_before, host_after)}; {describe_process('Asterisk', asterisk_before, asterisk_after)}, "
        f"{describe_process('the daemon', daemon_before, daemon_after)}; {await asterisk_version(ari)}; "
        f"daemon warnings: {warnings}"
    )
    assert "say_underrun" not in warnings, (
        f"a say ran dry at the far end ({context}; log {daemon.log_path}): "
        + "; ".join(f"call {i + 1}: {saw}" for i, saw in enumerate(daemon_saw))
    )
    parties = hear(recordings, recording_t0s, reference, stalls, whos)
    assert_all_intact(parties, f"{context}; log {daemon.log_path}", holes=holes)
    assert all(say["status"] == "played" for say in says), says
    # The clients really polled all along, and the API answered them.
    assert polls.requests > CALLS * 20 and polls.failures == 0, f"polling: {polls}"


@contextlib.contextmanager
def sandbox_sound(samples) -> Iterator[str]:
    """Put `samples` where the sandbox Asterisk plays sounds from; yields the `sound:` name."""
    from speakd import sandbox

    # scripts/test exports the sandbox's own URL as SPEAKD_TEST_ARI_URL: skip only for another Asterisk.
    state = sandbox.read_state() or {}
    sandbox_url = state.get("ari_url", "").rstrip("/")
    if not sandbox_url or os.environ.get("SPEAKD_TEST_ARI_URL", sandbox_url).rstrip("/") != sandbox_url:
        pytest.skip("needs the sandbox's file system to place a sound file")
    name = f"speakd/test-busy-host-{uuid.uuid4().hex[:8]}"
    path = Path(state["root"]) / "usr/share/asterisk/sounds" / f"{name}.wav"
    path.write_bytes(wav_bytes(samples))
    try:
        yield name
    finally:
        path.unlink(missing_ok=True)


@pytest.mark.by_ear
async def test_asterisk_playback_under_the_same_load_is_whole(ari, harness_app, make_two_party_call):
    """The comparison: Asterisk's own pacing, same calls, same load, same judge."""
    reference = render_piper(TEXT)
    with sandbox_sound(reference) as sound:
        calls = await listening_calls(make_two_party_call)
        snoops = [f"{call.test_id}-snoop" for call in calls]
        playbacks = [f"{snoop}-play" for snoop in snoops]
        try:
            for call, snoop in zip(calls, snoops, strict=True):
                await ari.post(
                    f"/channels/{call.channel_id}/snoop", app=harness_app.name, whisper="out", spy="none", snoopId=snoop
                )
                await harness_app.wait_stasis_start(snoop)

            async def get_playback(playback_id: str) -> None:
                await ari.get(f"/playbacks/{playback_id}")  # 404 once it is done: counted, harmless

            host_before, asterisk_before = CpuTimes.now(), asterisk_cpu()
            with stall_probe(ASTERISK_NICE) as stalls, busy_loops(BUSY_LOOPS) as busy:
                async with polling(get_playback, playbacks) as polls:
                    await asyncio.gather(
                        *(
                            ari.post(f"/channels/{snoop}/play", media=f"sound:{sound}", playbackId=playback)
                            for snoop, playback in zip(snoops, playbacks, strict=True)
                        )
                    )
                    for playback in playbacks:
                        await harness_app.wait_for(
                            lambda e, p=playback: (
                                e.get("type") == "PlaybackFinished" and e.get("playback", {}).get("id") == p
                            ),
                            within=len(reference) / RATE + SLACK_S,
                            what=f"PlaybackFinished of {playback}",
                        )
                    await asyncio.sleep(0.5)
                assert_still_busy(busy)
            host_after, asterisk_after = CpuTimes.now(), asterisk_cpu()
            recording_t0s = await asyncio.gather(*(call.recording_started_at("alice") for call in calls))
            recordings = await asyncio.gather(*(call.recording("alice") for call in calls))
        finally:
            for snoop in snoops:
                await ari.delete_quietly(f"/channels/{snoop}")

    whos = [f"call {i + 1} ({call.test_id}) alice" for i, call in enumerate(calls)]
    parties = hear(recordings, recording_t0s, reference, stalls, whos)
    context = (
        f"Asterisk playback, {CALLS} calls, {BUSY_LOOPS} busy loops, {polls.requests} polling GETs; "
        f"{stalls.summary()}; {describe(host_before, host_after)}; "
        f"{describe_process('Asterisk', asterisk_before, asterisk_after)}; {await asterisk_version(ari)}"
    )
    assert_all_intact(parties, context)
