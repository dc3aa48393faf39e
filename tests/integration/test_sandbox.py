"""The harness itself is sound: audio injected the documented way reaches exactly the party it
should, for as long as it was sent, and the recordings cover the call. Also re-checks the
asterisk-facts notes on our own config."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid

import numpy as np
import pytest
from harness import audio
from harness.ari import AriApp
from harness.inject import Injection, inject_into

TONE_HZ = 440.0
TONE_S = 2.0
CARRIER_DB = -60.0


@pytest.fixture
async def speakd_like_app(ari):
    """A second Stasis app, standing in for speakd's own."""
    app = await AriApp(ari, f"speakd-test-inject-{uuid.uuid4().hex[:6]}").connect()
    yield app
    await app.close()


async def leftovers(ari, marker: str) -> list[str]:
    chans = [c["id"] for c in await ari.get("/channels") if marker in c["id"]]
    bridges = [b["id"] for b in await ari.get("/bridges") if marker in b["id"]]
    return chans + bridges


def assert_tone(rec: np.ndarray, who: str) -> tuple[float, float]:
    segs = audio.speech_segments(rec)
    assert len(segs) == 1, f"{who}: expected one tone burst, got segments {segs}"
    start, end = segs[0]
    assert abs((end - start) - TONE_S) <= 0.15, f"{who}: tone lasted {end - start:.2f} s, sent {TONE_S} s"
    freq = audio.dominant_frequency(audio.between(rec, start + 0.1, end - 0.1))
    assert abs(freq - TONE_HZ) < 10, f"{who}: heard {freq:.0f} Hz, sent {TONE_HZ:.0f} Hz"
    return start, end


def assert_silent(rec: np.ndarray, who: str) -> None:
    assert audio.active_duration(rec) < 0.1, f"{who} heard something: {audio.speech_segments(rec)}"


def assert_carrier_floor(rec: np.ndarray, who: str) -> None:
    # the other phone's carrier arrives all call long: proof frames flowed in that direction
    floor = audio.noise_floor_db(rec)
    assert CARRIER_DB - 15 < floor < CARRIER_DB + 8, f"{who}: floor {floor:.1f} dBFS, carrier is {CARRIER_DB} dBFS"


@pytest.mark.by_ear
async def test_whisper_out_tone_reaches_alice_only(ari, two_party_call, speakd_like_app):
    call = two_party_call
    inj = await inject_into(ari, speakd_like_app, call.channel_id, whisper="out")
    try:
        await asyncio.sleep(0.5)
        sent_from, sent_to = await inj.send(audio.tone(TONE_HZ, TONE_S))
        await asyncio.sleep(1.0)
    finally:
        await call.hangup()
        await inj.close()

    assert sent_to - sent_from == pytest.approx(TONE_S, abs=0.05), "pacer drifted"
    alice, bob = await call.recording("alice"), await call.recording("bob")
    call_len = call.hung_up_at - call.answered_at
    for rec, who in ((alice, "alice"), (bob, "bob")):
        assert audio.duration(rec) == pytest.approx(call_len, abs=0.7), f"{who}'s recording vs call length"
        assert_carrier_floor(rec, who)

    start, _ = assert_tone(alice, "alice")
    # the tone starts where it was sent, measured from the end of the recording (= hangup)
    expected_start = audio.duration(alice) - (call.hung_up_at - sent_from)
    assert start == pytest.approx(expected_start, abs=0.3)
    assert_silent(bob, "bob")
    # with spy=none Asterisk sends nothing back on the ExternalMedia RTP (asterisk-facts)
    assert inj.received == [], f"ExternalMedia sent {len(inj.received)} RTP packets back"
    await ari.wait_until(lambda: _none_left(ari, call.test_id), 5, "test objects to be gone")


async def _none_left(ari, marker):
    return not await leftovers(ari, marker)


@pytest.mark.by_ear
async def test_whisper_in_tone_reaches_bob_only(ari, two_party_call, speakd_like_app):
    call = two_party_call
    inj = await inject_into(ari, speakd_like_app, call.channel_id, whisper="in")
    try:
        await asyncio.sleep(0.5)
        await inj.send(audio.tone(TONE_HZ, TONE_S))
        await asyncio.sleep(0.5)
    finally:
        await call.hangup()
        await inj.close()
    assert_tone(await call.recording("bob"), "bob")
    assert_silent(await call.recording("alice"), "alice")


@pytest.mark.by_ear
async def test_mixing_conference_hears_external_media(ari, mixing_conference, speakd_like_app):
    conf = await mixing_conference(n=2)
    host_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    host_sock.bind(("127.0.0.1", 0))
    host_sock.setblocking(False)
    em_id = f"{conf.test_id}-em"
    try:
        em = await ari.post(
            "/channels/externalMedia",
            app=speakd_like_app.name,
            external_host=f"127.0.0.1:{host_sock.getsockname()[1]}",
            format="ulaw",
            channelId=em_id,
        )
        await speakd_like_app.wait_stasis_start(em_id)
        # a bridge made by another app accepts our channel as long as it is in Stasis
        await ari.post(f"/bridges/{conf.bridge_id}/addChannel", channel=em_id)
        inj = Injection(
            ari,
            speakd_like_app,
            "",
            em_id,
            "",
            host_sock,
            (em["channelvars"]["UNICASTRTP_LOCAL_ADDRESS"], int(em["channelvars"]["UNICASTRTP_LOCAL_PORT"])),
        )
        await asyncio.sleep(0.3)
        await inj.send(audio.tone(TONE_HZ, TONE_S))
        await asyncio.sleep(0.5)
    finally:
        await ari.delete_quietly(f"/channels/{em_id}")
        await conf.hangup()
        host_sock.close()
    for p in conf.participants:
        assert_tone(await p.recording(), p.name)


@pytest.mark.by_ear
async def test_confbridge_room_hears_announcer(ari, confbridge_room, speakd_like_app):
    room = await confbridge_room(n=2)
    announcer = f"{room.test_id}-announcer"
    try:
        await ari.post(
            "/channels",
            endpoint=f"Local/{room.room}@speakd-confbridge/n",
            app=speakd_like_app.name,
            channelId=announcer,
            otherChannelId=f"{announcer}-2",
        )
        await speakd_like_app.wait_stasis_start(announcer)
        inj = await _em_bridged_with(ari, speakd_like_app, announcer)
        try:
            await asyncio.sleep(0.5)
            await inj.send(audio.tone(TONE_HZ, TONE_S))
            await asyncio.sleep(0.5)
        finally:
            await inj.close()
    finally:
        await ari.delete_quietly(f"/channels/{announcer}")
        await room.hangup()
    for p in room.participants:
        assert_tone(await p.recording(), p.name)


async def _em_bridged_with(ari, app, channel_id):
    """ExternalMedia + mixing bridge with `channel_id` (no snoop: the channel itself is the leg)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    em_id, br_id = f"{channel_id}-em", f"{channel_id}-br"
    inj = Injection(ari, app, channel_id, em_id, br_id, sock, ("", 0))
    em = await ari.post(
        "/channels/externalMedia",
        app=app.name,
        external_host=f"127.0.0.1:{sock.getsockname()[1]}",
        format="ulaw",
        channelId=em_id,
    )
    inj.rtp_to = (em["channelvars"]["UNICASTRTP_LOCAL_ADDRESS"], int(em["channelvars"]["UNICASTRTP_LOCAL_PORT"]))
    await app.wait_stasis_start(em_id)
    await ari.post("/bridges", type="mixing", bridgeId=br_id)
    await ari.post(f"/bridges/{br_id}/addChannel", channel=f"{channel_id},{em_id}")
    return inj


async def test_sandbox_answers_quickly(ari):
    t0 = time.monotonic()
    info = await ari.get("/asterisk/info")
    assert info["system"]["version"].startswith("22.")
    assert time.monotonic() - t0 < 1.0


@pytest.mark.by_ear
async def test_piper_speech_envelope_matches_what_alice_heard(ari, two_party_call, speakd_like_app):
    speech = audio.render_piper("Your call is important to us. Please stay on the line.")
    call = two_party_call
    inj = await inject_into(ari, speakd_like_app, call.channel_id, whisper="out")
    try:
        await asyncio.sleep(0.3)
        await inj.send(speech)
        await asyncio.sleep(0.5)
    finally:
        await call.hangup()
        await inj.close()
    corr, _ = audio.envelope_correlation(await call.recording("alice"), speech)
    assert corr > 0.9, f"alice: envelope correlation {corr:.2f}"
    bob_corr, _ = audio.envelope_correlation(await call.recording("bob"), speech)
    assert bob_corr < 0.5, f"bob heard the speech too (correlation {bob_corr:.2f})"
