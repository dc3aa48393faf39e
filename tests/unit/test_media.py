"""The audio path's pure parts: G.711, framing and the RTP packetizer.

The playout (bounded lead, marks, flush) is tested in test_playout.py, the RTP pacer process
in test_rtp_pacer.py.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from harness.rtp import parse_header

from speakd.audio import AudioFormat, strip_wav_header
from speakd.media import codec
from speakd.media.codec import FrameEncoder
from speakd.media.rtp import FRAME_SAMPLES, RtpPacketizer


def test_g711_matches_the_reference_encoder_for_every_sample():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")  # the reference; gone from Python 3.13
    pcm = np.arange(-32768, 32768, dtype=np.int16)
    assert codec.encode(pcm, "ulaw") == audioop.lin2ulaw(pcm.tobytes(), 2)
    assert codec.encode(pcm, "alaw") == audioop.lin2alaw(pcm.tobytes(), 2)
    every_byte = bytes(range(256))
    assert codec.decode(every_byte, "ulaw").tobytes() == audioop.ulaw2lin(every_byte, 2)
    assert codec.decode(every_byte, "alaw").tobytes() == audioop.alaw2lin(every_byte, 2)


def _tone(freq: float, rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (8000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


@pytest.mark.parametrize("chunk_bytes", [1, 333, 4410, 100000])
def test_frame_encoder_resamples_and_frames_whatever_the_chunking(chunk_bytes):
    pcm = _tone(440, 22050, 1.0).tobytes()
    encoder = FrameEncoder("ulaw")
    fmt = AudioFormat("pcm_s16le", 22050)
    frames = []
    for i in range(0, len(pcm), chunk_bytes):
        frames += encoder.feed(pcm[i : i + chunk_bytes], fmt)
    frames += encoder.finish()
    assert all(len(f) == FRAME_SAMPLES for f in frames)
    assert len(frames) == 50  # one second at 20 ms
    audio = codec.decode(b"".join(frames), "ulaw").astype(float)
    spectrum = np.abs(np.fft.rfft(audio[800:7200]))
    assert abs(np.argmax(spectrum) * 8000 / 6400 - 440) < 5  # pitch kept: no chipmunk


def test_frame_encoder_passes_matching_telephony_audio_through_untouched():
    data = bytes(range(256)) * 5
    encoder = FrameEncoder("alaw")
    frames = encoder.feed(data, AudioFormat("alaw", 8000)) + encoder.finish()
    assert b"".join(frames)[: len(data)] == data
    assert b"".join(frames)[len(data) :] == bytes([codec.SILENCE_BYTE["alaw"]]) * (-len(data) % 160)


def test_frame_encoder_filters_what_8khz_cannot_carry():
    # A 6 kHz tone is above Nyquist at 8 kHz: it must vanish, not alias to 2 kHz.
    encoder = FrameEncoder("ulaw")
    frames = encoder.feed(_tone(6000, 16000, 1.0).tobytes(), AudioFormat("pcm_s16le", 16000)) + encoder.finish()
    audio = codec.decode(b"".join(frames), "ulaw").astype(float)[800:7200]
    assert np.sqrt(np.mean(audio**2)) < 8000 * 0.707 * 10 ** (-50 / 20)


def test_wav_header_is_stripped():
    import io
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x01\x02" * 100)
    assert strip_wav_header(buf.getvalue()) == b"\x01\x02" * 100
    assert strip_wav_header(b"plain audio") == b"plain audio"


def test_rtp_sequence_timestamp_and_marker():
    rtp = RtpPacketizer(0, 160, ssrc=0x1234, sequence=65535, timestamp=2**32 - 160)
    first = parse_header(rtp.packet(b"\xff" * 160))
    second = parse_header(rtp.packet(b"\xff" * 160))
    rtp.silence(320)  # two frame slots with nothing to send
    after_gap = parse_header(rtp.packet(b"\xff" * 160))
    assert (first["version"], first["payload_type"], first["ssrc"]) == (2, 0, 0x1234)
    assert first["marker"] == 1 and second["marker"] == 0 and after_gap["marker"] == 1
    assert (first["sequence"], second["sequence"], after_gap["sequence"]) == (65535, 0, 1)  # wraps, no gaps
    assert second["timestamp"] == 0 and after_gap["timestamp"] == 480  # the clock ran through the silence
