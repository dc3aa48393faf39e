"""Speech that survives its provider, heard on real calls in the sandbox Asterisk: the daemon with
``[tts] fallback = ["gcp", "piper"]``, ElevenLabs and Google pointed at their stand-ins, and
ElevenLabs failing each way providers fail in production.

Judged on what alice recorded: the whole text is heard once (its speech within 15 % of one
rendering, the envelope and spectral match of tests/harness/hearing.py against what the
Google stand-in sent), the pause at the switch no longer than the timeout configured for it,
and the say item naming who spoke it. Then the circuit breaker: a provider that failed five
says in a row gets no request during its cool-off, and one after it.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import aiohttp
import numpy as np
import pytest
import pytest_asyncio
from conftest_helpers import wait_for
from harness.audio import FRAME_S, RATE, at_loudness, envelope_correlation
from harness.daemon import Api, SpeakdProcess
from harness.hearing import assert_heard, speech_seconds
from standins import audio as standin_audio
from standins.base import Standin
from standins.elevenlabs import ElevenLabsStandin
from standins.google import GoogleStandin

from speakd.media.loudness import speech_level_db
from speakd.store.records import seconds_of

pytestmark = pytest.mark.asyncio(loop_scope="session")

FIRST_AUDIO_TIMEOUT = 3.0
STALL_TIMEOUT = 1.5
COOL_OFF = 6.0
TIMEOUTS = {"connect_timeout": 1.0, "first_byte_timeout": 6.0, "read_timeout": 10.0, "retries": 1}
# One text per failure (the audio cache is off, but no test depends on another's rendering).
TEXTS = {
    "server_error": "Your call is important to us. Please stay on the line while we connect you.",
    "empty": "Thank you for calling. All of our agents are busy at the moment, please hold.",
    "cut": "Welcome back. Your order has been shipped and should arrive within three days.",
    "stall": "Good afternoon. The office is open from nine in the morning until five today.",
}
AFTER = "The next say is spoken by the session's own provider again."
FINAL = {"played", "failed", "interrupted"}


def section(name: str, values: dict[str, Any]) -> str:
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        return repr(v) if isinstance(v, int | float) else json.dumps(str(v))

    return f"[{name}]\n" + "".join(f"{key} = {value(v)}\n" for key, v in values.items())


def sent(text: str):
    """What a stand-in streams for ``text`` (its cached rendering), int16 at 8 kHz, as speakd sends
    it on (brought to its one loudness: speech is judged by frames over an absolute level)."""
    return at_loudness(standin_audio.speech(text, 8000))


def at_level(pcm, level_db: float | None):
    """``pcm`` brought to the speech level ``level_db`` (as it is if None)."""
    own = speech_level_db(pcm)
    if level_db is None or own is None:
        return pcm
    return np.clip(np.round(pcm * 10 ** ((level_db - own) / 20)), -32768, 32767).astype(np.int16)


def reset(standin: Standin) -> None:
    standin.release()
    with standin._lock:
        standin._fails.clear()
        standin.requests.clear()
        standin.events.clear()
    standin._hold = None
    for event in (standin.first_chunk_sent, standin.finished, standin.client_closed):
        event.clear()
    standin.chunk_bytes, standin.cut_after = 1600, 2


@pytest.fixture(scope="module")
def standins():
    for text in (*TEXTS.values(), AFTER):
        sent(text)  # rendered before any say: no slow first byte by accident
    with ElevenLabsStandin() as elevenlabs, GoogleStandin() as gcp:
        yield {"elevenlabs": elevenlabs, "gcp": gcp}


@pytest.fixture(autouse=True)
def fresh_standins(standins):
    for standin in standins.values():
        reset(standin)
    yield
    for standin in standins.values():
        reset(standin)


async def failover_daemon(standins, ari_settings, workdir, **tts: str) -> SpeakdProcess:
    extra = "".join(section(name, s.provider_section(**TIMEOUTS)) for name, s in standins.items())
    env = {
        "SPEAKD_TTS_FALLBACK": "gcp,piper",
        "SPEAKD_TTS_FIRST_AUDIO_TIMEOUT": str(FIRST_AUDIO_TIMEOUT),
        "SPEAKD_TTS_STALL_TIMEOUT": str(STALL_TIMEOUT),
        **{f"SPEAKD_TTS_{key.upper()}": value for key, value in tts.items()},
    }
    daemon = SpeakdProcess(
        workdir,
        ari_settings["url"],
        ari_settings["user"],
        ari_settings["password"],
        extra_config=extra,
        env=env,
        cache=False,  # every say asks its provider: these tests count the requests
    )
    await daemon.start()
    return daemon


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def speakd_failover(standins, ari_settings, tmp_path_factory):
    daemon = await failover_daemon(standins, ari_settings, tmp_path_factory.mktemp("speakd-failover"))
    yield daemon
    await daemon.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def fapi(speakd_failover):
    client = Api(speakd_failover.base)
    yield client
    await client.close()


async def say_and_wait(api: Api, speaking_id: str, text: str, timeout: float = 30.0) -> dict[str, Any]:
    """Say ``text`` and return its item once final (as GET /says shows it)."""
    reply = await api.say(speaking_id, text)
    assert reply.status == 200, reply
    say_id = reply.body["say_id"]

    async def final():
        listed = await api.request("GET", f"/speakings/{speaking_id}/says")
        (item,) = [s for s in listed.body["result"] if s["say_id"] == say_id]
        return item if item["status"] in FINAL else None

    return await wait_for(final, timeout=timeout, interval=0.1, what=f"say {say_id} final")


def speakers(item: dict[str, Any]) -> list[str]:
    return [s["provider"] for s in item["spoken_by"]]


def prepare(standin: ElevenLabsStandin, mode: str) -> float:
    """Make ElevenLabs fail the next say as ``mode``; the seconds of audio it sends first."""
    if mode == "server_error":
        standin.fail_next("server_error", count=2)  # speakd's own retry meets the second
        return 0.0
    if mode == "empty":
        standin.fail_next("empty")
        return 0.0
    if mode == "cut":
        standin.chunk_bytes, standin.cut_after = 800, 3  # three chunks of 0.1 s, then the connection drops
        standin.fail_next("cut")
        return 0.3
    standin.hold_after_first_chunk()  # "stall": one chunk of 0.2 s, then nothing
    return standin.chunk_bytes / RATE


@pytest.mark.by_ear
@pytest.mark.parametrize("mode", list(TEXTS))
async def test_the_whole_text_is_heard_once_when_elevenlabs_fails(
    fapi, speakd_failover, standins, make_two_party_call, mode
):
    elevenlabs, gcp = standins["elevenlabs"], standins["gcp"]
    text = TEXTS[mode]
    call = await make_two_party_call()
    speaking_id = await fapi.start_session(call.channel_id, provider="elevenlabs", direction="out")
    fragment_s = prepare(elevenlabs, mode)

    item = await say_and_wait(fapi, speaking_id, text)
    assert (item["status"], item["error"], item["heard_text"]) == ("played", "", text), item
    # Who spoke it, in order: ElevenLabs only where it gave audio; and who failed on it, when.
    assert speakers(item) == (["elevenlabs", "gcp"] if fragment_s else ["gcp"]), item
    stage = "mid_say" if fragment_s else "before_audio"
    assert [(f["provider"], f["stage"]) for f in item["provider_failures"]] == [("elevenlabs", stage)], item
    assert item["spoken_by"][-1]["voice_id"] == "en-US-Chirp3-HD-Charon"  # gcp's default for en-US
    # Less than a word had arrived: gcp says the text from its start (nothing skipped).
    assert [r.text for r in gcp.synth_requests()] == [text]
    queued, started = seconds_of(item["tm_queued"]), seconds_of(item["tm_play_start"])
    if not fragment_s:
        # Nothing played before the switch: the say's first audio came within the timeout.
        assert started - queued <= FIRST_AUDIO_TIMEOUT, item

    elevenlabs.release()  # a stalled stream's hold: the next say is not held
    after = await say_and_wait(fapi, speaking_id, AFTER)
    assert speakers(after) == ["elevenlabs"] and after["status"] == "played", after

    recording = await call.recording("alice")
    heard_at = await call.recording_started_at("alice")
    reference = sent(text)
    lag = assert_heard(recording, reference, f"{mode}: the text, from gcp")
    gcp_at = lag * FRAME_S
    assert_heard(recording, sent(AFTER), f"{mode}: the next say")
    heard = recording[: int((gcp_at + len(reference) / RATE + 0.3) * RATE)]
    said = speech_seconds(heard)
    # Speech is counted by an absolute level, and the sandbox's Local-channel phones lose about 6 dB
    # (test_loudness): the rendering is counted at the level the recording heard it. ElevenLabs'
    # fragment (less than a word) is heard once before gcp's whole text.
    as_heard = at_level(reference, speech_level_db(heard))
    once = speech_seconds(as_heard)
    expected = once + speech_seconds(as_heard[: int(fragment_s * RATE)])
    print(f"{mode}: speech {said:.2f} s, expected {expected:.2f} s (one rendering {once:.2f}); gcp from {gcp_at:.2f}")
    assert abs(said - expected) <= 0.15 * once, f"{mode}: {said:.2f} s of speech, expected {expected:.2f} s"
    if fragment_s:
        # The pause at the switch: from the end of what ElevenLabs sent to gcp's speech.
        pause = gcp_at - (started - heard_at + fragment_s)
        limit = STALL_TIMEOUT if mode == "stall" else FIRST_AUDIO_TIMEOUT
        print(f"{mode}: {pause:.2f} s between ElevenLabs' last audio and gcp's first")
        assert pause <= limit, f"{mode}: a pause of {pause:.2f} s at the switch (at most {limit} s)"
        # What ElevenLabs sent is heard before it, once.
        corr, fragment_lag = envelope_correlation(recording[: int(gcp_at * RATE)], reference[: int(fragment_s * RATE)])
        assert corr > 0.8 and fragment_lag * FRAME_S < gcp_at, f"{mode}: the fragment (corr {corr:.2f})"


# -- the circuit breaker ----------------------------------------------------------------------------


async def metric(daemon: SpeakdProcess, name: str, **labels: str) -> float | None:
    async with aiohttp.ClientSession() as http, http.get(f"{daemon.base}/metrics") as reply:
        body = await reply.text()
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    found = re.search(rf"^{name}\{{{wanted}\}} (\S+)$", body, re.M)
    return float(found.group(1)) if found else None


async def health(daemon: SpeakdProcess) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(f"{daemon.base}/health") as reply:
        return reply.status, await reply.json()


async def test_a_provider_that_failed_five_says_in_a_row_gets_no_request_in_its_cool_off_and_one_after(
    standins, ari_settings, tmp_path_factory, make_two_party_call
):
    elevenlabs = standins["elevenlabs"]
    daemon = await failover_daemon(
        standins,
        ari_settings,
        tmp_path_factory.mktemp("speakd-breaker"),
        breaker_failures="5",
        breaker_cool_off=str(COOL_OFF),
    )
    api = Api(daemon.base)
    try:
        call = await make_two_party_call()
        speaking_id = await api.start_session(call.channel_id, provider="elevenlabs", direction="out")
        elevenlabs.fail_next("server_error", count=10)  # five says, each tried twice
        for number in range(5):
            item = await say_and_wait(api, speaking_id, f"Failure number {number + 1}.")
            assert speakers(item) == ["gcp"] and item["status"] == "played", item
        opened = time.monotonic()
        assert len(elevenlabs.synth_requests()) == 10
        status, body = await health(daemon)
        assert status == 200 and body["status"] == "degraded" and body["degraded_providers"] == ["elevenlabs"], body
        assert await metric(daemon, "speakd_provider_breaker_state", provider="elevenlabs", state="open") == 1
        assert await metric(daemon, "speakd_provider_failovers_total", provider="elevenlabs", stage="before_audio") == 5

        item = await say_and_wait(api, speaking_id, "Skipped while it cools off.")
        assert speakers(item) == ["gcp"], item
        assert len(elevenlabs.synth_requests()) == 10, "no request during the cool-off"
        waited = seconds_of(item["tm_play_start"]) - seconds_of(item["tm_queued"])
        assert waited < 1.0, f"no time lost on the skipped provider: first audio after {waited:.2f} s"

        await asyncio.sleep(max(0.0, COOL_OFF + 0.2 - (time.monotonic() - opened)))
        assert await metric(daemon, "speakd_provider_breaker_state", provider="elevenlabs", state="half_open") == 1
        item = await say_and_wait(api, speaking_id, "Tried again after the cool off.")
        assert speakers(item) == ["elevenlabs"] and item["status"] == "played", item
        assert len(elevenlabs.synth_requests()) == 11, "one request after the cool-off"
        status, body = await health(daemon)
        assert (status, body["status"], body["degraded_providers"]) == (200, "ok", []), body
    finally:
        await api.close()
        await daemon.stop()
