"""speakd.media.loudness: speech levels, one loudness per voice, volume, the limiter."""

from __future__ import annotations

import numpy as np
import pytest

from speakd.audio import AudioFormat
from speakd.media.codec import FrameEncoder, decode
from speakd.media.loudness import (
    CEILING,
    ESTIMATE_AFTER_S,
    FULL_SCALE,
    Leveler,
    LevelMeter,
    VoiceLevels,
    speech_level_db,
)

RATE = 8000


def speechlike(seconds: float = 4.0, level_dbfs: float = -16.0, seed: int = 1) -> np.ndarray:
    """Syllables of noise shaped by a 4 Hz envelope, pauses between phrases, scaled to a speech
    level: what the gates must measure the same way at any level."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    envelope = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 2 * (np.sin(2 * np.pi * 0.4 * t) > -0.3)
    x = rng.standard_normal(len(t)) * envelope
    x *= 10 ** ((level_dbfs - speech_level_db(x * 3000)) / 20) * 3000
    return x


def in_chunks(leveler: Leveler, x: np.ndarray, chunk: int = 1600) -> np.ndarray:
    return np.concatenate([leveler.process(x[i : i + chunk]) for i in range(0, len(x), chunk)])


def test_the_speech_level_leaves_out_pauses_and_follows_gain():
    x = speechlike()
    with_pause = np.concatenate([x, np.zeros(4 * RATE)])
    assert speech_level_db(with_pause) == pytest.approx(speech_level_db(x), abs=0.01)
    assert speech_level_db(x * 0.25) == pytest.approx(speech_level_db(x) - 12.04, abs=0.3)
    assert speech_level_db(np.zeros(RATE)) is None


def test_voices_at_any_level_come_out_at_the_target_once_learned():
    levels = VoiceLevels(-20.0)
    for voice, level in (("loud", -8.0), ("quiet", -32.0), ("usual", -18.0)):
        x = speechlike(level_dbfs=level)
        for _ in range(2):  # the first say teaches the voice, the second starts at its gain
            leveler = Leveler(levels)
            leveler.voice = ("p", voice)
            out = in_chunks(leveler, x)
        assert speech_level_db(out) == pytest.approx(-20.0, abs=0.5), voice
        assert levels.known_gain_db(("p", voice)) == pytest.approx(-20.0 - level, abs=0.5)


def test_a_new_voice_plays_as_sent_until_enough_speech_then_takes_its_gain():
    levels = VoiceLevels(-20.0)
    leveler = Leveler(levels)
    leveler.voice = ("p", "new")
    x = speechlike(level_dbfs=-32.0)
    first = leveler.process(x[:800])  # 0.1 s: too little speech to judge
    assert np.array_equal(first, np.round(x[:800]).astype(np.int16))
    out = in_chunks(leveler, x[800:])
    assert ESTIMATE_AFTER_S < 1.0
    assert speech_level_db(out[2 * RATE :]) == pytest.approx(-20.0, abs=1.0)


def test_volume_moves_the_level_and_peaks_never_pass_the_ceiling():
    levels = VoiceLevels(-20.0)
    x = speechlike(level_dbfs=-20.0)
    base = Leveler(levels)
    base.voice = ("p", "v")
    in_chunks(base, x)  # learned
    for volume in (-20.0, -10.0, 3.0):
        leveler = Leveler(levels, volume)
        leveler.voice = ("p", "v")
        assert speech_level_db(in_chunks(leveler, x)) == pytest.approx(-20.0 + volume, abs=0.5)
    loud = Leveler(levels, 10.0)
    loud.voice = ("p", "v")
    out = in_chunks(loud, x * 4)  # a voice suddenly 12 dB louder, 10 dB up: limited, not clipped
    assert np.abs(out.astype(np.int32)).max() <= CEILING * FULL_SCALE + 1


def test_each_voice_of_a_say_gets_its_own_gain():
    levels = VoiceLevels(-20.0)
    for voice, level in (("a", -10.0), ("b", -30.0)):
        leveler = Leveler(levels)
        leveler.voice = ("p", voice)
        in_chunks(leveler, speechlike(level_dbfs=level))
    leveler = Leveler(levels)  # a say that a fallback provider goes on with, in another voice
    leveler.voice = ("p", "a")
    first = in_chunks(leveler, speechlike(level_dbfs=-10.0, seed=2))
    leveler.voice = ("p", "b")
    second = in_chunks(leveler, speechlike(level_dbfs=-30.0, seed=3))
    assert speech_level_db(first) == pytest.approx(-20.0, abs=0.5)
    assert speech_level_db(second) == pytest.approx(-20.0, abs=0.5)


def test_the_meter_keeps_fixed_memory_and_forgets_old_audio_by_halves():
    meter = LevelMeter()
    meter.add(speechlike(level_dbfs=-10.0).astype(np.float32))
    before = meter.speech_s
    meter.decay()
    assert meter.speech_s == pytest.approx(before / 2, rel=0.05)


def test_the_frame_encoder_levels_provider_audio_of_any_format():
    levels = VoiceLevels(-20.0)
    x = np.round(speechlike(level_dbfs=-30.0)).astype(np.int16)
    for fmt, data in (
        (AudioFormat("pcm_s16le", 8000), x.tobytes()),
        (AudioFormat("pcm_s16le", 16000), np.repeat(x, 2).tobytes()),
    ):
        for _ in range(2):
            leveler = Leveler(levels)
            leveler.voice = ("p", fmt.encoding + str(fmt.sample_rate))
            encoder = FrameEncoder("ulaw", leveler)
            frames = encoder.feed(data, fmt) + encoder.finish()
        assert speech_level_db(decode(b"".join(frames), "ulaw")) == pytest.approx(-20.0, abs=1.0), fmt
