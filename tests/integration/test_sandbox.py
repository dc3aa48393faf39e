"""The harness itself is sound: audio injected the documented way reaches exactly the party it
should, for as long as it was sent, and the recordings cover the call. Also re-checks the
asterisk-facts notes on our own config, and that a second sandbox Asterisk runs beside the first
on its own."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import numpy as np
import pytest
from harness import audio
from harness.ari import AriApp, AriError
from harness.calls import start_two_party_call
from harness.inject import Injection, inject_into
from harness.second_asterisk import bound_ports

from speakd import sandbox

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


# --------------------------------------------------------------------------- a second Asterisk
# The sandbox's instance 2 (harness/second_asterisk.py), as the fleet tests use it.


@pytest.fixture
async def second_app(second_ari):
    app = await AriApp(second_ari, f"speakd-test-second-{uuid.uuid4().hex[:6]}").connect()
    yield app
    await app.close()


async def test_second_asterisk_answers_on_its_own_ports(ari, second_asterisk, second_ari, second_app):
    first, second = await ari.get("/asterisk/info"), await second_ari.get("/asterisk/info")
    ari_port = urlsplit(second_asterisk.url).port
    assert ari_port != urlsplit(ari.url).port
    assert second["config"]["name"] == second_asterisk.system_name == "speakd-sandbox-2"
    assert second["system"]["entity_id"] == second_asterisk.entity_id != first["system"]["entity_id"]
    assert not set(second_asterisk.rtp_ports) & set(sandbox.rtp_port_range(1))

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    em_id = f"second-em-{uuid.uuid4().hex[:8]}"
    try:
        em = await second_ari.post(
            "/channels/externalMedia",
            app=second_app.name,
            external_host=f"127.0.0.1:{sock.getsockname()[1]}",
            format="ulaw",
            channelId=em_id,
        )
        rtp_port = int(em["channelvars"]["UNICASTRTP_LOCAL_PORT"])
        assert rtp_port in second_asterisk.rtp_ports
        bound = bound_ports(second_asterisk.pids())
    finally:
        await second_ari.delete_quietly(f"/channels/{em_id}")
        sock.close()
    # it listens on its ARI port and binds RTP ports of its own range, nothing else
    assert {port for proto, port in bound if proto == "tcp"} == {ari_port}
    udp = {port for proto, port in bound if proto == "udp"}
    assert rtp_port in udp
    assert udp <= set(second_asterisk.rtp_ports)

    # the command line names the same instance
    def sandbox_cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "speakd.sandbox", *args], capture_output=True, text=True)

    assert f"SPEAKD_TEST_ARI_URL={second_asterisk.url}" in sandbox_cli("env", "--instance", "2").stdout
    status = sandbox_cli("--instance", "2", "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"{second_asterisk.url} answers" in status.stdout


@pytest.mark.by_ear
async def test_call_on_second_asterisk_is_recorded_there(ari, second_ari, second_app):
    call = await start_two_party_call(second_ari)
    inj = await inject_into(second_ari, second_app, call.channel_id, whisper="out")
    try:
        await asyncio.sleep(0.5)
        await inj.send(audio.tone(TONE_HZ, TONE_S))
        await asyncio.sleep(0.5)
    finally:
        await call.hangup()
        await inj.close()
    # fetched over the second Asterisk's ARI
    assert_tone(await call.recording("alice"), "alice")
    assert_silent(await call.recording("bob"), "bob")
    with pytest.raises(AriError) as absent:
        await ari.get(f"/recordings/stored/{call.test_id}-alice")
    assert absent.value.status == 404, "the first Asterisk serves the second's recording"


async def test_the_two_asterisks_do_not_see_each_others_channels(ari, second_ari, two_party_call):
    second_call = await start_two_party_call(second_ari)
    try:
        first_ids = {c["id"] for c in await ari.get("/channels")}
        second_ids = {c["id"] for c in await second_ari.get("/channels")}
        first_legs = {two_party_call.channel_id, two_party_call.other_id}
        second_legs = {second_call.channel_id, second_call.other_id}
        assert first_legs <= first_ids
        assert second_legs <= second_ids
        assert not first_legs & second_ids
        assert not second_legs & first_ids
        # nor each other's dialplan state
        ready = f"SPEAKD_READY_{second_call.test_id}_alice"
        assert await second_ari.global_var(ready) == "1"
        assert await ari.global_var(ready) == ""
    finally:
        await second_call.hangup()


def mounted(path: Path) -> bool:
    with open("/proc/mounts") as f:
        return any(line.split()[1] == str(path) for line in f)


async def test_crashing_or_stopping_the_second_asterisk_leaves_the_first_running(
    ari, second_asterisk, second_ari, two_party_call
):
    first = sandbox.read_state(1)
    first_started = (await ari.get("/asterisk/info"))["status"]["startup_time"]
    root = Path(first["root"])
    for end in (second_asterisk.crash, second_asterisk.stop):
        second_call = await start_two_party_call(second_ari)
        await asyncio.to_thread(end)
        with pytest.raises(aiohttp.ClientConnectionError):
            await second_ari.get("/asterisk/info")
        assert not second_asterisk.pids(), f"{end.__name__}: the second Asterisk still runs"
        # the first runs on as it was: the same process, answering, its call up, its mounts there
        assert sandbox.is_running(sandbox.read_state(1)), f"{end.__name__} ended the first Asterisk"
        assert sandbox.read_state(1)["pid"] == first["pid"]
        assert (await ari.get("/asterisk/info"))["status"]["startup_time"] == first_started
        assert (await ari.get(f"/channels/{two_party_call.channel_id}"))["state"] == "Up"
        assert mounted(root / "proc")
        assert mounted(root / "dev")
        await asyncio.to_thread(second_asterisk.start)
        assert not await second_ari.exists(f"/channels/{second_call.channel_id}"), "a call outlived its Asterisk"
    # and the first's call kept going all along: both phones recorded it to the end
    await two_party_call.hangup()
    call_len = two_party_call.hung_up_at - two_party_call.answered_at
    for party in two_party_call.parties:
        heard = await two_party_call.recording(party)
        assert audio.duration(heard) == pytest.approx(call_len, abs=0.7), f"{party}'s recording vs call length"
        assert_carrier_floor(heard, party)
