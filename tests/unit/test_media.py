"""The audio path's pure parts: G.711, framing, RTP, the playout buffer and the pacer."""

from __future__ import annotations

import asyncio
import threading
import warnings

import numpy as np
import pytest

from speakd.media import codec
from speakd.media.codec import FRAME_SAMPLES, FrameEncoder, strip_wav_header
from speakd.media.frames import FrameBuffer
from speakd.media.pacer import SLOTS, Pacer, PacerThread, RtpStream
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
    rtp.silence(320)  # two frame slots with nothing to send
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


def _buffer_with(frames: list[bytes]) -> FrameBuffer:
    buf = FrameBuffer(max_frames=1000)
    for frame in frames:
        buf._entries.append((0, frame))
        buf._frames += 1
    return buf


def test_pacer_sends_one_frame_per_stream_per_frame_period():
    sent = []
    pacer = Pacer(lambda packet, addr: sent.append((pacer.subticks, addr[1], packet)))
    a = _buffer_with([bytes([i]) * 160 for i in range(3)])
    b = _buffer_with([b"\x09" * 160])
    pacer.add(RtpStream(("127.0.0.1", 1), "ulaw", a))
    pacer.add(RtpStream(("127.0.0.1", 2), "ulaw", b))
    for _ in range(4 * SLOTS):
        pacer.tick()
    to_a = [(tick, packet) for tick, port, packet in sent if port == 1]
    assert [tick for tick, _ in to_a] == [0, SLOTS, 2 * SLOTS]  # exactly one frame period apart
    assert [p[12:13] for _, p in to_a] == [b"\x00", b"\x01", b"\x02"]
    headers = [parse_header(p) for _, p in to_a]
    assert [h["sequence"] - headers[0]["sequence"] for h in headers] == [0, 1, 2]
    assert [h["timestamp"] - headers[0]["timestamp"] for h in headers] == [0, 160, 320]
    assert [h["marker"] for h in headers] == [1, 0, 0]
    assert [tick for tick, port, _ in sent if port == 2] == [0]


def test_a_talkspurt_starts_on_the_next_subtick_not_the_next_frame():
    sent = []
    pacer = Pacer(lambda packet, addr: sent.append((pacer.subticks, packet)))
    buf = FrameBuffer(max_frames=1000)
    pacer.add(RtpStream(("127.0.0.1", 1), "ulaw", buf))
    buf._entries.append((0, b"\x01" * 160))
    buf._frames += 1
    pacer.tick()  # sub-tick 0: first talkspurt
    for _ in range(6):  # idle for a while
        pacer.tick()
    for _ in range(2):
        buf._entries.append((0, b"\x02" * 160))
        buf._frames += 1
    for _ in range(2 * SLOTS):
        pacer.tick()
    ticks = [tick for tick, _ in sent]
    assert ticks == [0, 7, 7 + SLOTS]  # started at once on sub-tick 7, then its own slot
    first, second, third = (parse_header(p) for _, p in sent)
    assert second["marker"] == 1 and third["marker"] == 0
    assert second["timestamp"] - first["timestamp"] == 7 * 40  # the clock ran through the silence
    assert third["timestamp"] - second["timestamp"] == 160


def test_pacer_keeps_absolute_deadlines_and_never_bursts():
    clock = [0.0]
    sent_at: list[float] = []
    stop = threading.Event()
    pacer = Pacer(lambda packet, addr: sent_at.append(clock[0]), clock=lambda: clock[0])
    buf = _buffer_with([b"\xff" * 160] * 200)
    pacer.add(RtpStream(("127.0.0.1", 9), "ulaw", buf))
    stalled: list[bool] = []

    def sleep(delay: float) -> None:
        # Each sleep oversleeps by 1 ms; once the thread stalls for 100 ms.
        clock[0] += delay + 0.001
        if len(sent_at) == 50 and not stalled:
            clock[0] += 0.100
            stalled.append(True)
        if len(sent_at) >= 120:
            stop.set()

    pacer.run(stop, sleep=sleep)
    gaps = np.diff(sent_at[:120])
    assert gaps.min() >= 0.0199  # never two frames within one frame period
    # Oversleeping does not accumulate: frames 0..49 are on the 20 ms grid (+1 ms jitter).
    assert abs(sent_at[49] - 49 * 0.020) < 0.0015
    assert pacer.skipped_ticks >= 4  # the stall was skipped, not caught up with a burst


def test_pacer_thread_starts_and_stops():
    sent = threading.Event()
    pacer = Pacer(lambda packet, addr: sent.set())
    with PacerThread(pacer) as thread:
        pacer.add(RtpStream(("127.0.0.1", 9), "ulaw", _buffer_with([b"\xff" * 160])))
        assert sent.wait(2)
    assert not thread._thread.is_alive()


def test_removed_stream_gets_nothing_more():
    sent = []
    pacer = Pacer(lambda packet, addr: sent.append(addr))
    stream = RtpStream(("127.0.0.1", 9), "ulaw", _buffer_with([b"\xff" * 160] * 10))
    pacer.add(stream)
    pacer.tick()
    pacer.remove(stream)
    for _ in range(3 * SLOTS):
        pacer.tick()
    assert len(sent) == 1
