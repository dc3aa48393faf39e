"""The audio path's pure parts: G.711, framing, RTP, the playout buffer and the pacer."""

from __future__ import annotations

import asyncio
import warnings

import numpy as np
import pytest

from speakd.media import codec
from speakd.media.codec import FRAME_SAMPLES, FrameEncoder, strip_wav_header
from speakd.media.frames import FrameBuffer
from speakd.media.pacer import Pacer, RtpStream
from speakd.media.rtp import RtpPacketizer, parse_header
from speakd.providers.base import AudioFormat

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    audioop = pytest.importorskip("audioop")


def test_g711_matches_the_reference_encoder_for_every_sample():
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
    rtp.idle()
    rtp.idle()
    after_gap = parse_header(rtp.packet(b"\xff" * 160))
    assert (first["version"], first["payload_type"], first["ssrc"]) == (2, 0, 0x1234)
    assert first["marker"] == 1 and second["marker"] == 0 and after_gap["marker"] == 1
    assert (first["sequence"], second["sequence"], after_gap["sequence"]) == (65535, 0, 1)  # wraps, no gaps
    assert second["timestamp"] == 0 and after_gap["timestamp"] == 480  # the clock ran through the silence


async def test_flush_drops_everything_and_refuses_stale_frames():
    buf = FrameBuffer(max_frames=3)
    generation = buf.generation
    for i in range(3):
        assert await buf.put(generation, bytes([i]) * 160)
    blocked = asyncio.create_task(buf.put(generation, b"x" * 160))  # full: waits
    await asyncio.sleep(0)
    assert not blocked.done()
    assert buf.flush() == 3
    assert await blocked is False  # woken, and refused: it belongs to before the flush
    assert buf.pop() is None
    assert await buf.put(generation, b"y" * 160) is False
    assert await buf.put(buf.generation, b"z" * 160) is True
    assert buf.pop() == b"z" * 160


async def test_marks_fire_in_playout_order():
    buf = FrameBuffer()
    fired = []
    await buf.put(0, b"a")
    buf.mark(0, lambda: fired.append("mark"))
    await buf.put(0, b"b")
    assert buf.pop() == b"a" and fired == []
    assert buf.pop() == b"b" and fired == ["mark"]


def test_pacer_sends_one_frame_per_stream_per_tick():
    sent = []
    pacer = Pacer(lambda packet, addr: sent.append((addr, packet)))
    a, b = FrameBuffer(), FrameBuffer()
    for i in range(3):
        a._entries.append((0, bytes([i]) * 160))
        a._frames += 1
    b._entries.append((0, b"\x09" * 160))
    b._frames += 1
    pacer.add(RtpStream(("127.0.0.1", 1), "ulaw", a))
    pacer.add(RtpStream(("127.0.0.1", 2), "ulaw", b))
    assert pacer.tick() == 2
    assert pacer.tick() == 1
    assert pacer.tick() == 1
    assert pacer.tick() == 0
    to_a = [parse_header(p) for addr, p in sent if addr[1] == 1]
    assert [h["sequence"] - to_a[0]["sequence"] for h in to_a] == [0, 1, 2]
    assert [p[12:13] for addr, p in sent if addr[1] == 1] == [b"\x00", b"\x01", b"\x02"]


async def test_pacer_keeps_absolute_deadlines_and_never_bursts():
    clock = [0.0]
    sent_at = []
    pacer = Pacer(lambda packet, addr: sent_at.append(clock[0]), clock=lambda: clock[0])
    buf = FrameBuffer(max_frames=1000)
    for _ in range(200):
        await buf.put(0, b"\xff" * 160)
    pacer.add(RtpStream(("127.0.0.1", 9), "ulaw", buf))
    real_sleep = asyncio.sleep

    async def fake_sleep(delay):
        # Each sleep oversleeps by 3 ms; once the loop stalls for 100 ms.
        clock[0] += delay + 0.003 + (0.100 if len(sent_at) == 50 else 0.0)
        await real_sleep(0)

    import speakd.media.pacer as pacer_module

    pacer_module.asyncio.sleep = fake_sleep
    try:
        task = asyncio.create_task(pacer.run())
        while len(sent_at) < 120:
            await real_sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        pacer_module.asyncio.sleep = real_sleep
    gaps = np.diff(sent_at[:120])
    assert gaps.min() >= 0.0199  # never two frames in one tick
    # Oversleeping does not accumulate: frames 0..49 are on the 20 ms grid (+3 ms jitter).
    assert abs(sent_at[49] - 49 * 0.020) < 0.0035
    assert pacer.skipped_ticks >= 4  # the stall was skipped, not caught up with a burst
