"""Real calls and conferences inside Asterisk, built from Local channels and the [speakd-test] dialplan.

Every "phone" answers, records what it RECEIVES (= what that person hears) to
<test_id>-<party>.wav in Asterisk's recording dir, and keeps sending a near-silent carrier
(about -60 dBFS) so frames flow both ways like a real phone (whisper is silent on idle legs).
Recordings are fetched over ARI (/recordings/stored/<name>/file) after hangup, so this also
works against an external Asterisk that has asterisk-config's test dialplan.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from .ari import Ari, AriApp, AriError
from .audio import read_wav, wav_is_final

TEST_CONTEXT = "speakd-test"
READY_TIMEOUT = 10.0
RECORDING_TIMEOUT = 15.0


def new_test_id(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


async def wait_phone_ready(ari: Ari, test_id: str, party: str, within: float = READY_TIMEOUT) -> None:
    """The dialplan sets GLOBAL(SPEAKD_READY_<id>_<party>)=1 once the phone records and sends."""

    async def ready():
        return await ari.global_var(f"SPEAKD_READY_{test_id}_{party}") == "1"

    await ari.wait_until(ready, within, f"phone {party} of {test_id} to answer and record")


async def fetch_recording(
    ari: Ari, name: str, gone: tuple[str, ...] | list[str] = (), within: float = RECORDING_TIMEOUT
) -> np.ndarray:
    """Samples of stored recording `name` once MixMonitor has closed it.

    MixMonitor finalises the file after its channel hangs up, so wait for the channels in
    `gone` to disappear and for the WAV header to match the data.
    """
    deadline = time.monotonic() + within
    for channel_id in gone:
        await ari.wait_gone(f"/channels/{channel_id}", within=max(0.1, deadline - time.monotonic()))
    last: bytes | None = None
    while True:
        try:
            data = await ari.request("GET", f"/recordings/stored/{name}/file", raw=True)
        except AriError as exc:
            if exc.status != 404:
                raise
            data = None
        if data is not None and wav_is_final(data) and data == last:
            return read_wav(data)
        if time.monotonic() > deadline:
            if data is None:
                raise TimeoutError(f"recording {name} never appeared")
            return read_wav(data)  # best effort: the header may be stale, the samples are not
        last = data
        await asyncio.sleep(0.2)


@dataclass
class TwoPartyCall:
    """alice <-> bob. `channel_id` (A1, alice;1) is the channel a PBX app would name as the call;
    whisper=out on it is heard by alice, whisper=in by bob."""

    ari: Ari
    test_id: str
    channel_id: str  # A1
    other_id: str  # A2: alice's phone
    answered_at: float = 0.0  # monotonic, when both phones were recording
    hung_up_at: float | None = None
    _recordings: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    parties = ("alice", "bob")

    async def hangup(self) -> None:
        if self.hung_up_at is None:
            self.hung_up_at = time.monotonic()
        await self.ari.delete_quietly(f"/channels/{self.channel_id}")

    async def recording_started_at(self, party: str) -> float:
        """Wall-clock time (time.time()) of the first sample of `party`'s recording (±20 ms)."""
        return float(await self.ari.global_var(f"SPEAKD_REC_T0_{self.test_id}_{party}"))

    async def recording(self, party: str) -> np.ndarray:
        """What `party` heard, int16 at 8 kHz. Hangs the call up first if it is still up."""
        if party not in self.parties:
            raise ValueError(f"party must be one of {self.parties}")
        if party not in self._recordings:
            await self.hangup()
            self._recordings[party] = await fetch_recording(
                self.ari, f"{self.test_id}-{party}", gone=[self.channel_id, self.other_id]
            )
        return self._recordings[party]


async def start_two_party_call(
    ari: Ari, max_seconds: int = 300, test_id: str | None = None, variables: dict[str, str] | None = None
) -> TwoPartyCall:
    """`variables` are set on A1 (the call leg) as well, e.g. SPEAKD_CUSTOMER_ID."""
    test_id = test_id or new_test_id()
    call = TwoPartyCall(ari, test_id, f"{test_id}-a1", f"{test_id}-a2")
    await ari.post(
        "/channels",
        json={
            "variables": {
                "_SPEAKD_TEST_ID": test_id,
                "_SPEAKD_TEST_MAX_SECONDS": str(max_seconds),
                **(variables or {}),
            }
        },
        endpoint=f"Local/alice@{TEST_CONTEXT}/n",
        context=TEST_CONTEXT,
        extension="dialbob",
        channelId=call.channel_id,
        otherChannelId=call.other_id,
    )
    try:
        for party in call.parties:
            await wait_phone_ready(ari, test_id, party)

        async def a1_up():
            return (await ari.get(f"/channels/{call.channel_id}"))["state"] == "Up"

        await ari.wait_until(a1_up, READY_TIMEOUT, f"{call.channel_id} to be Up")
    except BaseException:
        await call.hangup()
        raise
    call.answered_at = time.monotonic()
    return call


@dataclass
class Participant:
    """One phone in a conference. `channel_id` is the leg inside the conference (ARI bridge or
    ConfBridge); `phone_id` is the phone that records what this participant hears."""

    ari: Ari
    test_id: str
    name: str
    channel_id: str
    phone_id: str
    _recording: np.ndarray | None = field(default=None, repr=False)

    async def hangup(self) -> None:
        await self.ari.delete_quietly(f"/channels/{self.channel_id}")
        await self.ari.delete_quietly(f"/channels/{self.phone_id}")

    async def recording(self) -> np.ndarray:
        """What this participant heard, int16 at 8 kHz. Hangs this participant up first."""
        if self._recording is None:
            await self.hangup()
            self._recording = await fetch_recording(
                self.ari, f"{self.test_id}-{self.name}", gone=[self.channel_id, self.phone_id]
            )
        return self._recording


@dataclass
class MixingConference:
    """An ARI mixing bridge owned by the test's app, with N phone participants."""

    ari: Ari
    app: AriApp
    test_id: str
    bridge_id: str
    participants: list[Participant] = field(default_factory=list)

    async def hangup(self) -> None:
        for p in self.participants:
            await p.hangup()
        await self.ari.delete_quietly(f"/bridges/{self.bridge_id}")


async def start_mixing_conference(
    ari: Ari, app: AriApp, n: int = 2, max_seconds: int = 300, variables: dict[str, str] | None = None
) -> MixingConference:
    """Each participant: Local/phone@speakd-test/n; ;2 is the phone, ;1 enters `app` and joins the bridge.
    `variables` (e.g. SPEAKD_CUSTOMER_ID) are set on each participant's leg in the bridge."""
    test_id = new_test_id("m")
    bridge_id = f"{test_id}-bridge"
    await ari.post("/bridges", type="mixing", bridgeId=bridge_id, name=bridge_id)
    conf = MixingConference(ari, app, test_id, bridge_id)
    try:
        for i in range(n):
            name = f"p{i + 1}"
            p = Participant(ari, test_id, name, f"{test_id}-{name}-1", f"{test_id}-{name}-2")
            conf.participants.append(p)
            await ari.post(
                "/channels",
                json={
                    "variables": {
                        "_SPEAKD_TEST_ID": test_id,
                        "SPEAKD_PARTY": name,
                        "_SPEAKD_TEST_MAX_SECONDS": str(max_seconds),
                        **(variables or {}),
                    }
                },
                endpoint=f"Local/phone@{TEST_CONTEXT}/n",
                app=app.name,
                appArgs="participant",
                channelId=p.channel_id,
                otherChannelId=p.phone_id,
            )
        for p in conf.participants:
            await app.wait_stasis_start(p.channel_id)
            await wait_phone_ready(ari, test_id, p.name)
            await ari.post(f"/bridges/{bridge_id}/addChannel", channel=p.channel_id)
    except BaseException:
        await conf.hangup()
        raise
    return conf


@dataclass
class ConfBridgeRoom:
    """A dialplan ConfBridge room (profile speakd_bridge) with N speakd_participant phones."""

    ari: Ari
    test_id: str
    room: str
    participants: list[Participant] = field(default_factory=list)

    async def hangup(self) -> None:
        for p in self.participants:
            await p.hangup()


async def start_confbridge_room(
    ari: Ari, n: int = 2, room: str | None = None, max_seconds: int = 300, variables: dict[str, str] | None = None
) -> ConfBridgeRoom:
    """Each participant: Local/confuser@speakd-test/n; ;2 joins ConfBridge(room), ;1 is the phone.
    `variables` are inherited by each participant's leg in the room (e.g. SPEAKD_CUSTOMER_ID)."""
    test_id = new_test_id("c")
    conf = ConfBridgeRoom(ari, test_id, room or f"{test_id}room")
    try:
        for i in range(n):
            name = f"p{i + 1}"
            p = Participant(ari, test_id, name, f"{test_id}-{name}-2", f"{test_id}-{name}-1")
            conf.participants.append(p)
            await ari.post(
                "/channels",
                json={
                    "variables": {
                        "_SPEAKD_TEST_ID": test_id,
                        "SPEAKD_PARTY": name,
                        "ROOM": conf.room,
                        "_SPEAKD_TEST_MAX_SECONDS": str(max_seconds),
                        **{f"_{k}": v for k, v in (variables or {}).items()},
                    }
                },
                endpoint=f"Local/confuser@{TEST_CONTEXT}/n",
                context=TEST_CONTEXT,
                extension="confphone",
                channelId=p.phone_id,
                otherChannelId=p.channel_id,
            )
        for p in conf.participants:
            await wait_phone_ready(ari, test_id, p.name)

            async def in_confbridge(p=p):
                chan = await ari.get(f"/channels/{p.channel_id}")
                return chan.get("dialplan", {}).get("app_name") == "ConfBridge"

            await ari.wait_until(in_confbridge, READY_TIMEOUT, f"{p.channel_id} to join {conf.room}")
    except BaseException:
        await conf.hangup()
        raise
    return conf
