"""One loudness: every provider's and voice's speech reaches the party at one level, a say's
``volume`` moves it by what it says, and the dialplan's wait path hears what a bridged party hears.

The daemon speaks with Piper and the three cloud stand-ins (which render with the same Piper voice;
``gain_db`` makes one stand-in's voice 12 dB quieter). Levels are read off what alice recorded,
as speech levels (speakd.media.loudness.speech_level_db: the mean power of the 20 ms frames that
carry speech), so the path's own loss (the sandbox's Local-channel phones) cancels out between
says heard on the same kind of call.
"""

from __future__ import annotations

import asyncio
import socket
import time

import numpy as np
import pytest
import pytest_asyncio
from harness.audio import RATE, frame_dbfs
from harness.daemon import Api, SpeakdProcess
from standins import audio as standin_audio
from standins.elevenlabs import ElevenLabsStandin
from standins.google import GoogleStandin
from standins.polly import PollyStandin
from test_providers_e2e import TIMEOUTS, toml_section

from speakd.media.codec import decode
from speakd.media.loudness import speech_level_db

pytestmark = pytest.mark.asyncio(loop_scope="session")

TEXT = "Thank you for calling. Your call is important to us, and an agent will be with you shortly."
QUIET_VOICE = {"elevenlabs": "pNInz6obpgDQGcFmaJgB"}  # another of the stand-in's voices: a new voice to speakd
GAP_S = 1.2  # between two says: where a recording is split


@pytest.fixture(scope="module")
def standins():
    standin_audio.speech(TEXT, 8000)  # rendered once: no slow first byte by accident
    with ElevenLabsStandin() as elevenlabs, GoogleStandin() as gcp, PollyStandin() as aws:
        yield {"elevenlabs": elevenlabs, "gcp": gcp, "aws": aws}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def loud_speakd(standins, ari_settings, tmp_path_factory):
    extra = "\n".join(toml_section(name, s.provider_section(**TIMEOUTS)) for name, s in standins.items())
    daemon = SpeakdProcess(
        tmp_path_factory.mktemp("speakd-loudness"),
        ari_settings["url"],
        ari_settings["user"],
        ari_settings["password"],
        extra_config=extra,
        cache=False,  # every say synthesized: its provider's level is what is judged
    )
    await daemon.start()
    yield daemon
    await daemon.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def lapi(loud_speakd):
    client = Api(loud_speakd.base)
    yield client
    await client.close()


def speech_runs(recording: np.ndarray) -> list[np.ndarray]:
    """The recording cut at every pause of GAP_S / 2 or more: one piece per say."""
    loud = np.flatnonzero(frame_dbfs(recording) > -50.0)
    if not len(loud):
        return []
    frame = RATE // 50
    cuts = np.flatnonzero(np.diff(loud) > GAP_S / 2 * 50)
    starts = [loud[0], *loud[cuts + 1]]
    ends = [*loud[cuts], loud[-1]]
    return [recording[s * frame : (e + 1) * frame] for s, e in zip(starts, ends, strict=True)]


async def played(api: Api, speaking_id: str, within: float = 20.0) -> None:
    """Until the session's last say has played."""
    deadline = time.monotonic() + within
    while (await api.request("GET", f"/speakings/{speaking_id}/says")).body["result"][-1]["status"] != "played":
        assert time.monotonic() < deadline, f"the last say of {speaking_id} did not play within {within:g} s"
        await asyncio.sleep(0.1)


async def says_heard(api: Api, call, provider: str, voice_id: str, volumes: list[float]) -> list[float]:
    """A session on the call speaking TEXT once per volume, one after another: the speech level
    (dBFS) alice heard of each."""
    fields = {"provider": provider, "direction": "out"} | ({"voice_id": voice_id} if voice_id else {})
    speaking_id = await api.start_session(call.channel_id, **fields)
    for volume in volumes:
        reply = await api.say(speaking_id, TEXT, volume=volume)
        assert reply.status == 200, reply
        await played(api, speaking_id)
        await asyncio.sleep(GAP_S)
    await api.stop(speaking_id)
    runs = speech_runs(await call.recording("alice"))
    assert len(runs) == len(volumes), f"{provider}: {len(runs)} speech runs for {len(volumes)} says"
    return [speech_level_db(run) for run in runs]


@pytest.mark.by_ear
async def test_every_provider_and_a_quieter_voice_are_heard_at_one_level(
    lapi, loud_speakd, standins, make_two_party_call
):
    standins["elevenlabs"].gain_db = -12.0
    try:
        quiet = await says_heard(lapi, await make_two_party_call(), "elevenlabs", QUIET_VOICE["elevenlabs"], [0.0, 0.0])
    finally:
        standins["elevenlabs"].gain_db = 0.0
    heard = {"elevenlabs (12 dB quieter voice)": quiet}
    providers = ("piper", "elevenlabs", "gcp", "aws")
    calls = [await make_two_party_call() for _ in providers]  # each on a call of its own, at once
    levels = await asyncio.gather(
        *(says_heard(lapi, c, p, "", [0.0, 0.0]) for c, p in zip(calls, providers, strict=True))
    )
    heard |= dict(zip(providers, levels, strict=True))
    for what, levels in heard.items():
        print(f"{what}: first say {levels[0]:.2f} dBFS, second {levels[1]:.2f} dBFS")
    # A voice's next says start at its learned gain: one level. Measured: within 0.4 dB.
    learned = [levels[1] for levels in heard.values()]
    assert max(learned) - min(learned) <= 1.0, f"the second says: levels {heard}"
    # Its first say plays as sent until 0.3 s of its speech are judged, then at the say's own
    # level. That is by design a spread: this text's first 0.4 s go out 4 dB over the target from
    # a voice at Piper's level and 8 dB under it from the quieter one, which puts their first
    # says 1.2 dB apart (speakd's Leveler run on the stand-in's chunks, no Asterisk). Measured
    # through Asterisk: 1.11 to 1.48 dB in five runs, and once over 1.5 dB (2026-12-07).
    first = [levels[0] for levels in heard.values()]
    assert max(first) - min(first) <= 2.0, f"the first says: levels {heard}"


@pytest.mark.by_ear
async def test_volume_moves_the_level_by_what_it_says(lapi, make_two_party_call):
    volumes = [0.0, -10.0, 5.0, 0.0, 10.0]
    # The first on its own (the voice's gain is then learned, as for any say after it), the rest
    # at once, each on a call of its own: the calls' paths lose the same (the providers' test).
    levels = await says_heard(lapi, await make_two_party_call(), "piper", "", volumes[:1])
    calls = [await make_two_party_call() for _ in volumes[1:]]
    rest = await asyncio.gather(
        *(says_heard(lapi, c, "piper", "", [v]) for c, v in zip(calls, volumes[1:], strict=True))
    )
    levels += [level for heard in rest for level in heard]
    base = levels[0]
    print("volume -> heard:", [(v, round(level - base, 2)) for v, level in zip(volumes, levels, strict=True)])
    for volume, level in zip(volumes[:4], levels[:4], strict=True):
        assert abs(level - base - volume) <= 1.0, f"volume {volume:+g} dB moved the level {level - base:+.2f} dB"
    # +10 dB takes this voice's peaks over the ceiling: limited (never clipped), it rises less.
    assert 5.0 < levels[4] - base <= 10.5


async def test_a_volume_out_of_range_is_a_400(lapi, make_two_party_call):
    call = await make_two_party_call()
    speaking_id = await lapi.start_session(call.channel_id, direction="out")
    for volume in (10.5, -21, "loud", True, "6"):
        reply = await lapi.say(speaking_id, TEXT, volume=volume)
        assert reply.status == 400, (volume, reply)
        assert "'volume' must be a number of dB from -20 to +10" in reply.message, reply
    assert (await lapi.say(speaking_id, "Fine.", volume=-20)).status == 200
    await lapi.stop(speaking_id)


# -- the dialplan's wait path against a bridged call, on real (RTP) channels -------------------


class RtpPhone:
    """An ExternalMedia RTP channel (chan_rtp, native ulaw: the media of a SIP phone) whose RTP
    this test receives: what it carries is what that phone's user hears. ``talk()`` sends
    silence into it, as a phone does."""

    def __init__(self, ari, app, channel_id: str) -> None:
        self.ari, self.app, self.channel_id = ari, app, channel_id
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.heard = bytearray()
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> RtpPhone:
        port = self.sock.getsockname()[1]
        await self.ari.post(
            "/channels/externalMedia",
            app=self.app.name,
            channelId=self.channel_id,
            external_host=f"127.0.0.1:{port}",
            format="ulaw",
        )
        await self.app.wait_stasis_start(self.channel_id)
        self._tasks.append(asyncio.create_task(self._receive()))
        return self

    async def talk(self) -> None:
        variables = [
            (await self.ari.get(f"/channels/{self.channel_id}/variable", variable=name))["value"]
            for name in ("UNICASTRTP_LOCAL_ADDRESS", "UNICASTRTP_LOCAL_PORT")
        ]
        self._tasks.append(asyncio.create_task(self._send((variables[0], int(variables[1])))))

    async def _receive(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            packet = await loop.sock_recv(self.sock, 2048)
            self.heard += packet[12:]

    async def _send(self, address: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        start, n = loop.time(), 0
        while True:
            header = (0x80).to_bytes(1, "big") + bytes([0]) + (n & 0xFFFF).to_bytes(2, "big")
            header += (n * 160 & 0xFFFFFFFF).to_bytes(4, "big") + (0x5EED).to_bytes(4, "big")
            self.sock.sendto(header + b"\xff" * 160, address)
            n += 1
            await asyncio.sleep(max(0.0, start + n * 0.02 - loop.time()))

    async def close(self) -> np.ndarray:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.sock.close()
        await self.ari.delete_quietly(f"/channels/{self.channel_id}")
        return decode(bytes(self.heard), "ulaw")


async def test_the_wait_path_and_a_bridged_call_hear_one_level_on_real_channels(api, ari, harness_app):
    """What the 5 dB between the dialplan's wait path and a bridged call belongs to: on real
    channels the caller kept alive by a silence generator (what speak's ``wait`` runs,
    Playtones(0)) and a party of a bridged call hear speakd at one level, the level it sends; the
    sandbox's Local-channel phones lose 6 dB on a bridged call and 12 dB behind a generator
    (docs/media.md)."""
    tag = f"lv{time.monotonic_ns() % 10**9}"
    caller = await RtpPhone(ari, harness_app, f"{tag}-caller").start()
    party, peer = RtpPhone(ari, harness_app, f"{tag}-party"), RtpPhone(ari, harness_app, f"{tag}-peer")
    bridge = f"{tag}-bridge"
    try:
        await ari.post(f"/channels/{caller.channel_id}/silence")  # the wait path's keepalive
        await party.start()
        await peer.start()
        await peer.talk()
        await ari.post("/bridges", type="mixing", bridgeId=bridge)
        await ari.post(f"/bridges/{bridge}/addChannel", channel=f"{party.channel_id},{peer.channel_id}")

        async def heard_by(phone: RtpPhone) -> float:
            speaking_id = await api.start_session(phone.channel_id, direction="out")
            for _ in range(2):  # the first: the voice's level learned, if no test taught it yet
                assert (await api.say(speaking_id, TEXT)).status == 200
                await played(api, speaking_id)
                await asyncio.sleep(GAP_S)
            await api.stop(speaking_id)
            return speech_level_db(speech_runs(await phone.close())[-1])

        levels = await asyncio.gather(heard_by(caller), heard_by(party))
        heard = dict(zip(("wait path", "bridged party"), levels, strict=True))
        print("speech level heard:", {who: round(level, 2) for who, level in heard.items()})
        assert abs(heard["wait path"] - heard["bridged party"]) <= 1.0, heard
        for who, level in heard.items():  # what speakd sent: [media] loudness_dbfs, -20 by default
            assert abs(level - -20.0) <= 1.0, f"{who} hears {level:.2f} dBFS"
    finally:
        for phone in (caller, party, peer):
            await phone.close()
        await ari.delete_quietly(f"/bridges/{bridge}")
