"""Reference injection, done by hand the way speakd does it, to prove the harness and the
Asterisk facts: snoop(whisper) + ExternalMedia(ulaw RTP) + mixing bridge + paced RTP."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import time
from dataclasses import dataclass, field

import numpy as np

from .ari import Ari, AriApp
from .audio import FRAME, ulaw_encode


@dataclass
class Injection:
    ari: Ari
    app: AriApp
    snoop_id: str
    media_id: str
    bridge_id: str
    sock: socket.socket
    rtp_to: tuple[str, int]
    received: list[tuple[float, bytes]] = field(default_factory=list)  # RTP Asterisk sent us
    _listener: asyncio.Task | None = None

    async def send(self, samples: np.ndarray) -> tuple[float, float]:
        """Send 8 kHz int16 samples as ulaw RTP, one 20 ms frame per 20 ms of monotonic clock.
        Returns (first, last) monotonic send times."""
        payload = ulaw_encode(samples)
        loop = asyncio.get_running_loop()
        ssrc, seq, ts = random.getrandbits(32), random.getrandbits(16), random.getrandbits(32)
        frames = [payload[i : i + FRAME] for i in range(0, len(payload) - FRAME + 1, FRAME)]
        start = time.monotonic()
        for i, frame in enumerate(frames):
            delay = start + i * 0.02 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            marker = 0x80 if i == 0 else 0
            header = struct.pack("!BBHII", 0x80, marker | 0, (seq + i) & 0xFFFF, (ts + i * FRAME) & 0xFFFFFFFF, ssrc)
            await loop.sock_sendto(self.sock, header + frame, self.rtp_to)
        return start, time.monotonic()

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, 2048)
            self.received.append((time.monotonic(), data))

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self.ari.delete_quietly(f"/bridges/{self.bridge_id}")
        await self.ari.delete_quietly(f"/channels/{self.media_id}")
        await self.ari.delete_quietly(f"/channels/{self.snoop_id}")
        self.sock.close()


async def inject_into(ari: Ari, app: AriApp, channel_id: str, whisper: str = "out") -> Injection:
    """Wire an RTP path whose audio is whispered onto `channel_id` (out: its party hears it)."""
    tag = f"{channel_id}-inj{random.getrandbits(24):06x}"
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    host, port = sock.getsockname()
    inj = Injection(ari, app, f"{tag}-snoop", f"{tag}-em", f"{tag}-br", sock, ("", 0))
    try:
        await ari.post(f"/channels/{channel_id}/snoop", app=app.name, whisper=whisper, spy="none", snoopId=inj.snoop_id)
        em = await ari.post(
            "/channels/externalMedia",
            app=app.name,
            external_host=f"{host}:{port}",
            format="ulaw",
            channelId=inj.media_id,
        )
        vars_ = em["channelvars"]
        inj.rtp_to = (vars_["UNICASTRTP_LOCAL_ADDRESS"], int(vars_["UNICASTRTP_LOCAL_PORT"]))
        inj._listener = asyncio.create_task(inj._listen())
        await app.wait_stasis_start(inj.snoop_id)
        await app.wait_stasis_start(inj.media_id)
        await ari.post("/bridges", type="mixing", bridgeId=inj.bridge_id)
        await ari.post(f"/bridges/{inj.bridge_id}/addChannel", channel=f"{inj.snoop_id},{inj.media_id}")
    except BaseException:
        await inj.close()
        raise
    return inj
