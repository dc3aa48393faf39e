"""Reading RTP packets back in tests: the daemon only sends RTP, so the parser is the tests'.

Written apart from :mod:`speakd.media.rtp`'s packetizer, so a wrong header layout there fails
the tests instead of being read back the same wrong way.
"""

from __future__ import annotations

import struct

_HEADER = struct.Struct("!BBHII")  # RFC 3550 5.1, no CSRC


def parse_header(packet: bytes) -> dict[str, int]:
    """Decode an RTP fixed header."""
    first, second, sequence, timestamp, ssrc = _HEADER.unpack_from(packet)
    return {
        "version": first >> 6,
        "marker": second >> 7,
        "payload_type": second & 0x7F,
        "sequence": sequence,
        "timestamp": timestamp,
        "ssrc": ssrc,
    }
