"""Audio formats: the facts the providers (which produce audio) and the media layer (which
encodes and sends it) both rely on, in one module below both so neither imports the other.

* :data:`Encoding`, :class:`AudioFormat`: what a chunk of provider audio is;
* :data:`Codec`, :data:`CODECS`, :data:`TELEPHONY_RATE`, :func:`telephony_format`: what a call carries;
* :func:`strip_wav_header`: the sample data of a WAV blob some providers send.

No numpy, no I/O: a provider imports this without the codec tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

Encoding = Literal["pcm_s16le", "ulaw", "alaw"]
# A session's telephony codec (media.codec encodes it; a provider may produce it directly).
Codec = Literal["ulaw", "alaw"]
CODECS: tuple[Codec, ...] = get_args(Codec)
# The rate of telephony audio: ``request.codec`` at this rate goes to the call unconverted.
TELEPHONY_RATE = 8000


@dataclass(frozen=True, slots=True)
class AudioFormat:
    encoding: Encoding
    sample_rate: int

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.encoding == "pcm_s16le" else 1  # G.711: a byte a sample


def telephony_format(codec: Codec) -> AudioFormat:
    """A session's codec at the telephony rate."""
    return AudioFormat(codec, TELEPHONY_RATE)


def strip_wav_header(data: bytes) -> bytes:
    """Return the sample data of a RIFF/WAVE blob (providers sometimes prepend one).

    Played as audio, a 44-byte header is a click; Google's responses carry one (its unary
    answer and the first message of a streamed one).
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return data
    pos = 12
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        if chunk_id == b"data":
            return data[pos + 8 :]
        pos += 8 + size + (size & 1)
    return b""
