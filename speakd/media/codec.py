"""G.711 (mu-law / a-law) encoding and the streaming converter from provider audio to frames.

Pure functions and small stateful objects, no I/O. Encoding uses 64 Ki lookup tables built
once with numpy, so a 20 ms frame costs one fancy-index.
"""

from __future__ import annotations

import numpy as np
import soxr

from speakd.audio import TELEPHONY_RATE, AudioFormat, Codec
from speakd.media.loudness import Leveler
from speakd.media.rtp import FRAME_SAMPLES

PAYLOAD_TYPES: dict[Codec, int] = {"ulaw": 0, "alaw": 8}
# The byte each codec uses for digital silence.
SILENCE_BYTE: dict[Codec, int] = {"ulaw": 0xFF, "alaw": 0xD5}


def _build_ulaw_table() -> np.ndarray:
    # G.711 reference algorithm on the 14-bit sample (arithmetic shift, as the ITU code).
    pcm = np.arange(-32768, 32768, dtype=np.int32) >> 2
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(pcm), 8159) + 0x21
    segment = np.maximum(np.floor(np.log2(mag)).astype(np.int32) - 5, 0)
    value = np.where(segment > 7, 0x7F, (segment << 4) | ((mag >> (segment + 1)) & 0x0F))
    return (value ^ mask).astype(np.uint8)


def _build_alaw_table() -> np.ndarray:
    pcm = np.arange(-32768, 32768, dtype=np.int32)
    sign = np.where(pcm >= 0, 0x80, 0x00)
    mag = np.where(pcm >= 0, pcm, -pcm - 1) >> 3  # 13-bit magnitude
    mag = np.minimum(mag, 0x0FFF)
    exponent = np.where(mag >= 32, np.floor(np.log2(np.maximum(mag, 1))).astype(np.int32) - 4, 0)
    mantissa = np.where(exponent == 0, mag >> 1, mag >> exponent) & 0x0F
    return ((sign | (exponent << 4) | mantissa) ^ 0x55).astype(np.uint8)


def _build_ulaw_decode() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    mag = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(sign != 0, -mag, mag).astype(np.int16)


def _build_alaw_decode() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    sign = a & 0x80
    exponent = (a >> 4) & 0x07
    mantissa = a & 0x0F
    mag = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    return np.where(sign != 0, mag, -mag).astype(np.int16)


# Tables are indexed by the int16 sample viewed as uint16, hence the half-turn roll.
_ENCODE: dict[Codec, np.ndarray] = {
    "ulaw": np.roll(_build_ulaw_table(), 32768),
    "alaw": np.roll(_build_alaw_table(), 32768),
}
_DECODE: dict[Codec, np.ndarray] = {"ulaw": _build_ulaw_decode(), "alaw": _build_alaw_decode()}


def encode(pcm: np.ndarray, codec: Codec) -> bytes:
    """Encode int16 samples to G.711 bytes."""
    return _ENCODE[codec][pcm.astype(np.int16, copy=False).view(np.uint16)].tobytes()


def decode(data: bytes, codec: Codec) -> np.ndarray:
    """Decode G.711 bytes to int16 samples."""
    return _DECODE[codec][np.frombuffer(data, dtype=np.uint8)]


class FrameEncoder:
    """Streams provider chunks of one utterance into 20 ms frames of the session codec.

    One instance per utterance: a flush throws the instance away, so no resampler history or
    half frame from before a flush can leak into what follows (what-users-hit #1/#2).
    """

    def __init__(self, codec: Codec, leveler: Leveler | None = None) -> None:
        self.codec = codec
        # Brings the audio to the one loudness before it is encoded (None: as the provider sent it).
        self.leveler = leveler
        self._pending = bytearray()
        self._resampler: soxr.ResampleStream | None = None
        self._in_rate = 0
        self._odd_byte = b""

    def _to_codec(self, data: bytes, fmt: AudioFormat) -> bytes:
        if self.leveler is None and fmt.encoding == self.codec and fmt.sample_rate == TELEPHONY_RATE:
            return data
        if fmt.encoding == "pcm_s16le":
            if self._odd_byte:
                data = self._odd_byte + data
                self._odd_byte = b""
            if len(data) % 2:
                self._odd_byte, data = data[-1:], data[:-1]
            pcm: np.ndarray = np.frombuffer(data, dtype="<i2")
        else:
            pcm = decode(data, fmt.encoding)
        if fmt.sample_rate != TELEPHONY_RATE:
            if self._resampler is None or self._in_rate != fmt.sample_rate:
                # float: a resampler's overshoot is not clipped before the leveler sees it
                self._resampler = soxr.ResampleStream(fmt.sample_rate, TELEPHONY_RATE, 1, dtype="float32", quality="HQ")
                self._in_rate = fmt.sample_rate
            pcm = self._resampler.resample_chunk(pcm.astype(np.float32))
        return self._encode(pcm)

    def _encode(self, pcm: np.ndarray) -> bytes:
        if self.leveler is not None:
            return encode(self.leveler.process(pcm), self.codec)
        if pcm.dtype != np.int16:
            pcm = np.clip(np.rint(pcm), -32768, 32767).astype(np.int16)
        return encode(pcm, self.codec)

    @property
    def pending_ms(self) -> int:
        """Audio taken in but not yet out as a whole frame."""
        return len(self._pending) * 1000 // TELEPHONY_RATE

    def feed(self, data: bytes, fmt: AudioFormat) -> list[bytes]:
        """Add a chunk; return every complete frame it finishes."""
        self._pending += self._to_codec(data, fmt)
        return self._whole_frames()

    def finish(self) -> list[bytes]:
        """End of utterance: drain the resampler and pad the last frame with silence."""
        if self._resampler is not None:
            tail = self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
            self._pending += self._encode(tail)
            self._resampler = None
        pad = (-len(self._pending)) % FRAME_SAMPLES
        self._pending += bytes([SILENCE_BYTE[self.codec]]) * pad
        return self._whole_frames()

    def _whole_frames(self) -> list[bytes]:
        """Take every whole frame out of what is pending."""
        end = len(self._pending) - len(self._pending) % FRAME_SAMPLES
        frames = [bytes(self._pending[i : i + FRAME_SAMPLES]) for i in range(0, end, FRAME_SAMPLES)]
        del self._pending[:end]
        return frames
