"""No click in what the parties of a call hear, while speech plays and after the session stops.

The sandbox's phones once clicked every 4 s from a call's 16th second, speech or not: their
carrier was a .wav, whose last 22 samples Asterisk never plays, and on the phones' slin192
channels the short frame at every loop made Asterisk's audiohooks (MixMonitor's recording)
read a few stale samples (docs/troubleshooting.md). The carrier is now raw slin of whole
frames. The call here loops a 0.5 s carrier made the same way, so a few seconds of call cross
a dozen loops; with the .wav form of it, alice heard 5 or 6 clicks in this test.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import numpy as np
import pytest
from harness.audio import FRAME, RATE, render_piper
from harness.hearing import GREETING, assert_heard, assert_no_clicks, clicks, last_speech_s

CONFIG = Path(__file__).resolve().parents[2] / "asterisk-config"
SHORT_CARRIER = "speakd/phone-carrier-short"
QUIET_AFTER_S = 2.5  # after the stop: five loops of the short carrier with nothing over them


def test_the_phones_carriers_are_whole_frames_of_raw_slin():
    """What keeps the loop clean, for the carrier every call uses (too slow to hear here: its
    first click came at 16 s) and for the short one below."""
    dialplan = (CONFIG / "extensions.conf").read_text()
    carrier = re.search(r"^SPEAKD_CARRIER\s*=\s*(\S+)", dialplan, re.MULTILINE)
    assert carrier, "extensions.conf names no SPEAKD_CARRIER"
    for name in (carrier.group(1), SHORT_CARRIER):
        sound = CONFIG / "sounds" / f"{name}.sln"
        assert sound.is_file(), f"{name} should be raw 8 kHz slin ({sound}): a .wav's loop ends on a short frame"
        assert sound.stat().st_size % (2 * FRAME) == 0, f"{sound}: {sound.stat().st_size} bytes, not whole 20 ms frames"
        others = [p.name for p in sound.parent.iterdir() if p.stem == sound.stem and p != sound]
        assert not others, f"Asterisk may play {others} instead of {sound.name}"


def test_a_click_in_the_quiet_is_found_and_speech_is_not_one():
    carrier = np.frombuffer((CONFIG / "sounds" / f"{SHORT_CARRIER}.sln").read_bytes(), dtype="<i2")
    speech = render_piper(GREETING)
    recording = np.tile(carrier, 12)[: len(speech) + 2 * RATE].astype(np.int32)
    recording[RATE // 2 : RATE // 2 + len(speech)] += speech
    recording = np.clip(recording, -32768, 32767).astype(np.int16)
    assert clicks(recording) == []
    # One as the sandbox made them: 10 samples between -16 and -6 dBFS, 1 s after the speech.
    at = RATE // 2 + len(speech) + RATE
    recording[at : at + 10] = [5483, 10662, 4307, 11023, 8253, 4627, 6132, 5872, 11261, 5652]
    found = clicks(recording)
    assert len(found) == 1 and abs(found[0][0] - at / RATE) < 0.002 and -10 < found[0][1] < -8, found


async def _wait_played(api, speaking_id: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        says = (await api.request("GET", f"/speakings/{speaking_id}/says")).body["result"]
        if says and says[-1]["status"] == "played":
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the say did not play within {within}s: {says}")


@pytest.mark.by_ear
@pytest.mark.asyncio(loop_scope="session")
async def test_no_click_while_speech_plays_or_after_the_session_stops(api, make_two_party_call):
    call = await make_two_party_call(variables={"_SPEAKD_CARRIER": SHORT_CARRIER})
    speaking_id = await api.start_session(call.channel_id, direction="out")
    assert (await api.say(speaking_id, GREETING)).status == 200
    await _wait_played(api, speaking_id)
    assert (await api.stop(speaking_id)).status == 200
    await asyncio.sleep(QUIET_AFTER_S)
    alice, bob = await call.recording("alice"), await call.recording("bob")
    assert_heard(alice, render_piper(GREETING), "alice")
    assert_no_clicks(alice, "alice")
    assert_no_clicks(bob, "bob")
    # Clicks are looked for in quiet stretches: all of bob's (he hears no speech), and alice's
    # after the speech, which must have been long enough to cross several loops.
    quiet_s = len(alice) / RATE - last_speech_s(alice)
    assert quiet_s > QUIET_AFTER_S - 0.5, f"alice's recording has only {quiet_s:.2f}s after the speech"
