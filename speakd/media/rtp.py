"""RTP packetizer (RFC 3550): pure, no I/O.

One per session, for the session's whole life, so sequence number, timestamp and SSRC stay
continuous across utterances, flushes and silences. The timestamp follows the sampling clock:
ticks with nothing to send still advance it, and the first packet of each talkspurt carries
the marker bit.
"""

from __future__ import annotations

import secrets
import struct

_HEADER = struct.Struct("!BBHII")
_VERSION_BYTE = 0x80  # V=2, no padding, no extension, no CSRC

# A frame: 20 ms at the 8 kHz telephony clock (speakd.audio.TELEPHONY_RATE), one byte a sample
# in G.711. Defined here, not in media.codec: the pacer process imports this module and must not
# pull in numpy (codec) or dataclasses (audio), which would slow its start.
FRAME_MS = 20
FRAME_SAMPLES = 160


class RtpPacketizer:
    def __init__(
        self,
        payload_type: int,
        samples_per_frame: int = FRAME_SAMPLES,
        *,
        ssrc: int | None = None,
        sequence: int | None = None,
        timestamp: int | None = None,
    ) -> None:
        if not 0 <= payload_type <= 127:
            raise ValueError(f"RTP payload type must be 0..127, not {payload_type}")
        self.payload_type = payload_type
        self.samples_per_frame = samples_per_frame
        # Random initial values, as RFC 3550 5.1 asks.
        self.ssrc = secrets.randbits(32) if ssrc is None else ssrc
        self.sequence = secrets.randbits(16) if sequence is None else sequence
        self.timestamp = secrets.randbits(32) if timestamp is None else timestamp
        self._talking = False

    def packet(self, payload: bytes) -> bytes:
        """The packet carrying ``payload`` for the current frame slot; advances the clock."""
        marker = 0 if self._talking else 0x80
        header = _HEADER.pack(_VERSION_BYTE, marker | self.payload_type, self.sequence, self.timestamp, self.ssrc)
        self._talking = True
        self.sequence = (self.sequence + 1) & 0xFFFF
        self.timestamp = (self.timestamp + self.samples_per_frame) & 0xFFFFFFFF
        return header + payload

    def silence(self, samples: int) -> None:
        """Nothing was sent for ``samples``: the clock runs on, the next packet starts a
        talkspurt (marker bit)."""
        self._talking = False
        self.timestamp = (self.timestamp + max(0, samples)) & 0xFFFFFFFF
