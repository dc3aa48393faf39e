"""An independent ARI probe: hear what a party of a test call hears, in real time.

A snoop on the party's *phone* channel (for ``harness.calls.TwoPartyCall``: alice's phone is
``other_id``, the ``;2`` half of ``Local/alice``, the channel that reads the frames alice
hears) with ``spy=in`` (the frames that channel reads), bridged to an ExternalMedia RTP
channel (udp, rtp, ulaw) that sends to a UDP socket of this process. The probe is made by
the bench's own ARI application, so it shares nothing with speakd.

Every packet is stamped by the kernel on arrival (``SO_TIMESTAMPNS``, wall clock): a busy
bench process that reads late does not move the times. Each 160-byte ulaw payload is one
20 ms frame; a frame above ``SPEECH_DBFS`` is speech (the test phones' carrier sits near
-60 dBFS, Piper speech around -20 to -26 dBFS through the whisper path).

What the probe adds to every path alike: the snoop's 20 ms read timer and the bridge to the
ExternalMedia channel (one frame or so). Compare paths with each other, not with zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from speakd.media.codec import decode

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; also the SCM_ type of the ancillary data
SPEECH_DBFS = -40.0
FRAME_S = 0.020


@dataclass(slots=True)
class Packet:
    at: float  # wall clock (time.time() scale) the kernel received it
    seq: int
    dbfs: float


def _rtp_payload(data: bytes) -> tuple[int, bytes]:
    if len(data) < 12 or data[0] >> 6 != 2:
        return -1, b""
    csrc = data[0] & 0x0F
    offset = 12 + 4 * csrc
    if data[0] & 0x10 and len(data) >= offset + 4:  # header extension
        offset += 4 + 4 * struct.unpack("!H", data[offset + 2 : offset + 4])[0]
    seq = struct.unpack("!H", data[2:4])[0]
    return seq, data[offset:]


def frame_dbfs(payload: bytes) -> float:
    if not payload:
        return -120.0
    pcm = decode(payload, "ulaw").astype(np.float64) / 32768.0
    rms = float(np.sqrt(np.mean(pcm * pcm)))
    return max(20 * np.log10(max(rms, 1e-12)), -120.0)


@dataclass
class Probe:
    """Packets heard on one party's phone since the probe was wired."""

    ari: object  # harness.ari.Ari
    app: object  # harness.ari.AriApp
    phone_id: str
    tag: str
    sock: socket.socket
    packets: list[Packet] = field(default_factory=list)
    _reading: bool = False

    @property
    def snoop_id(self) -> str:
        return f"{self.tag}-snoop"

    @property
    def media_id(self) -> str:
        return f"{self.tag}-em"

    @property
    def bridge_id(self) -> str:
        return f"{self.tag}-br"

    # -- reading ------------------------------------------------------------------------------

    def _on_readable(self) -> None:
        while True:
            try:
                data, ancdata, _flags, _addr = self.sock.recvmsg(2048, 64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            at = time.time()
            for level, kind, value in ancdata:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                    sec, nsec = struct.unpack("qq", value[:16])
                    at = sec + nsec / 1e9
            seq, payload = _rtp_payload(data)
            if seq >= 0:
                self.packets.append(Packet(at, seq, frame_dbfs(payload)))

    def start_reading(self) -> None:
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._on_readable)
        self._reading = True

    # -- what was heard -----------------------------------------------------------------------

    def speech_after(self, t0: float) -> list[Packet]:
        return [p for p in self.packets if p.at >= t0 and p.dbfs > SPEECH_DBFS]

    def first_speech(self, t0: float) -> float | None:
        """Wall time the first speech frame arrived after ``t0`` (None: nothing yet)."""
        return next((p.at for p in self.packets if p.at >= t0 and p.dbfs > SPEECH_DBFS), None)

    def last_speech(self, t0: float) -> float | None:
        speech = self.speech_after(t0)
        return speech[-1].at if speech else None

    async def wait_speech(self, t0: float, within: float) -> float | None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            at = self.first_speech(t0)
            if at is not None:
                return at
            await asyncio.sleep(0.005)
        return None

    async def wait_quiet(self, quiet_s: float, within: float) -> bool:
        """Until no speech frame arrived for ``quiet_s`` (packets keep flowing)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            last = self.last_speech(0.0)
            if last is None or time.time() - last >= quiet_s:
                return True
            await asyncio.sleep(0.05)
        return False

    def flowing(self, within_s: float = 0.2) -> bool:
        return bool(self.packets) and time.time() - self.packets[-1].at < within_s

    # -- teardown -----------------------------------------------------------------------------

    async def close(self) -> None:
        if self._reading:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self._reading = False
        await self.ari.delete_quietly(f"/bridges/{self.bridge_id}")  # type: ignore[attr-defined]
        await self.ari.delete_quietly(f"/channels/{self.media_id}")  # type: ignore[attr-defined]
        await self.ari.delete_quietly(f"/channels/{self.snoop_id}")  # type: ignore[attr-defined]
        self.sock.close()


async def probe_party(ari, app, phone_id: str, spy: str = "in", within: float = 5.0) -> Probe:
    """Wire a probe on ``phone_id`` (``spy=in``: the frames that phone reads = what its party
    hears) and wait until packets flow. Close it with ``await probe.close()``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    host, port = sock.getsockname()
    probe = Probe(ari, app, phone_id, f"{phone_id}-probe{uuid.uuid4().hex[:6]}", sock)
    try:
        await ari.post(f"/channels/{phone_id}/snoop", app=app.name, spy=spy, whisper="none", snoopId=probe.snoop_id)
        await ari.post(
            "/channels/externalMedia",
            app=app.name,
            external_host=f"{host}:{port}",
            format="ulaw",
            encapsulation="rtp",
            transport="udp",
            channelId=probe.media_id,
        )
        probe.start_reading()
        await app.wait_stasis_start(probe.snoop_id)
        await app.wait_stasis_start(probe.media_id)
        await ari.post("/bridges", type="mixing", bridgeId=probe.bridge_id)
        await ari.post(f"/bridges/{probe.bridge_id}/addChannel", channel=f"{probe.snoop_id},{probe.media_id}")
        deadline = time.monotonic() + within
        while not probe.flowing() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if not probe.flowing():
            raise TimeoutError(f"probe on {phone_id}: no RTP from Asterisk within {within} s")  # noqa: TRY301
    except BaseException:
        await probe.close()
        raise
    return probe
