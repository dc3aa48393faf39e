"""One loudness for every provider and voice: speech brought to a target level before it is encoded.

Pure numpy, no I/O. Levels are *speech levels* in dBFS (0 dBFS: the RMS of a full-scale square
wave): the mean power of the 20 ms frames that carry speech, where a frame carries speech if it
is above -70 dBFS and at most 20 dB below the mean of those (pauses between words and phrases
are left out, so the level does not depend on how a provider paces its pauses).

Streaming: audio arrives in chunks, and a gain that moves while a say plays is heard. So the
gain is learned per voice (``(provider, voice)``), from everything that voice has said:

* a voice heard before (at least :data:`KNOWN_AFTER_S` of speech) gets its learned gain, fixed
  for the whole say;
* a voice not heard yet plays as sent until :data:`ESTIMATE_AFTER_S` of its speech has arrived
  (the chunk in hand included: a look-ahead that costs no latency), then takes the gain of
  what has arrived at once, and follows the say's level as more arrives at most
  :data:`SLEW_DB_PER_S`; the voice's next says start at the learned gain.

A peak limiter after the gain keeps every sample under :data:`CEILING` (-1 dBFS): a quiet voice
brought up, or a say's ``volume`` above 0 dB, never clips.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from speakd.audio import TELEPHONY_RATE

FULL_SCALE = 32768.0
FRAME = TELEPHONY_RATE // 50  # 20 ms
DEFAULT_TARGET_DBFS = -20.0
ABSOLUTE_GATE_DB = -70.0
RELATIVE_GATE_DB = -20.0
# A histogram of frame powers: the gates are applied when the level is asked for, so a level is
# exact over any amount of audio in fixed memory.
_BIN_DB = 0.25
_LOW_DB, _HIGH_DB = -100.0, 10.0
_BINS = int((_HIGH_DB - _LOW_DB) / _BIN_DB)
_BIN_FLOORS = _LOW_DB + _BIN_DB * np.arange(_BINS)

KNOWN_AFTER_S = 1.0  # of speech: a voice's learned level is trusted from then on
FORGET_AFTER_S = 120.0  # of speech: older audio weighs half (a voice's settings may change)
MAX_VOICES = 1024
SLEW_DB_PER_S = 12.0
# Speech a voice not heard before must have said in a say before its gain is judged from it
# (a say's first syllable can be 5 dB off its level); until then it plays as sent.
ESTIMATE_AFTER_S = 0.3
MAX_GAIN_DB = 30.0  # a near-silent render is not brought up into noise
CEILING = 10 ** (-1 / 20)  # peak, relative to full scale
_LIMIT_BLOCK = 20  # 2.5 ms: the limiter's resolution (its attack starts a block before a peak)
VOLUME_RANGE_DB = (-20.0, 10.0)  # a say's volume, on top of the target


def db_to_gain(db: float) -> float:
    return float(10 ** (db / 20))


class LevelMeter:
    """The speech level of audio fed to it so far (int16-scaled floats at 8 kHz)."""

    def __init__(self) -> None:
        self._count = np.zeros(_BINS)
        self._power = np.zeros(_BINS)
        self._rest = np.zeros(0, dtype=np.float32)

    def add(self, samples: np.ndarray) -> None:
        data = np.concatenate((self._rest, samples)) if len(self._rest) else samples
        whole = len(data) - len(data) % FRAME
        self._rest = np.array(data[whole:], dtype=np.float32)
        if not whole:
            return
        frames = data[:whole].reshape(-1, FRAME) / FULL_SCALE
        power = np.einsum("ij,ij->i", frames, frames, dtype=np.float64) / FRAME
        db = 10 * np.log10(np.maximum(power, 1e-12))
        bins = np.clip(((db - _LOW_DB) / _BIN_DB).astype(np.int64), 0, _BINS - 1)
        self._count += np.bincount(bins, minlength=_BINS)
        self._power += np.bincount(bins, weights=power, minlength=_BINS)

    @property
    def speech_s(self) -> float:
        """Seconds of speech (frames past both gates)."""
        gated = self._gated()
        return float(self._count[gated].sum()) * FRAME / TELEPHONY_RATE if gated is not None else 0.0

    def level_db(self) -> float | None:
        """The speech level in dBFS; None before any speech."""
        gated = self._gated()
        if gated is None:
            return None
        return float(10 * np.log10(self._power[gated].sum() / self._count[gated].sum()))

    def _gated(self) -> np.ndarray | None:
        above = _BIN_FLOORS >= ABSOLUTE_GATE_DB
        count = self._count[above].sum()
        if not count:
            return None
        ungated_db = 10 * np.log10(self._power[above].sum() / count)
        return above & (ungated_db + RELATIVE_GATE_DB - _BIN_DB <= _BIN_FLOORS)

    def decay(self) -> None:
        """Older audio weighs half from now on."""
        self._count *= 0.5
        self._power *= 0.5


def speech_level_db(samples: np.ndarray) -> float | None:
    """The speech level of int16 samples at 8 kHz, in dBFS (None: no speech)."""
    meter = LevelMeter()
    meter.add(np.asarray(samples, dtype=np.float32))
    return meter.level_db()


class VoiceLevels:
    """What the daemon has learned of each voice's level, shared by every session; bounded
    (the least recently heard voices are forgotten first)."""

    def __init__(self, target_dbfs: float = DEFAULT_TARGET_DBFS) -> None:
        self.target_dbfs = target_dbfs
        self._meters: OrderedDict[tuple[str, str], LevelMeter] = OrderedDict()

    def meter(self, voice: tuple[str, str]) -> LevelMeter:
        meter = self._meters.get(voice)
        if meter is None:
            meter = self._meters[voice] = LevelMeter()
            while len(self._meters) > MAX_VOICES:
                self._meters.popitem(last=False)
        else:
            self._meters.move_to_end(voice)
        return meter

    def known_gain_db(self, voice: tuple[str, str]) -> float | None:
        """The gain that brings ``voice`` to the target, once enough of it has been heard."""
        meter = self._meters.get(voice)
        if meter is None or meter.speech_s < KNOWN_AFTER_S:
            return None
        level = meter.level_db()
        return None if level is None else _bounded(self.target_dbfs - level)

    def gain_of(self, meter: LevelMeter) -> float | None:
        level = meter.level_db()
        return None if level is None else _bounded(self.target_dbfs - level)


def _bounded(gain_db: float) -> float:
    return min(gain_db, MAX_GAIN_DB)


class Leveler:
    """One say's audio brought to the target level (and its ``volume_db`` on top), limited.

    Set :attr:`voice` before each piece of audio: a say may change voice part way (a fallback
    provider going on with it), and each voice has its own gain.
    """

    def __init__(self, levels: VoiceLevels, volume_db: float = 0.0) -> None:
        self.levels = levels
        self.volume = db_to_gain(volume_db)
        self.voice: tuple[str, str] = ("", "")
        self._fixed: dict[tuple[str, str], float | None] = {}  # gain per voice as the say met it
        self._say_meter: dict[tuple[str, str], LevelMeter] = {}
        self._gain_db: float | None = None  # applied at the end of the last piece
        self._settled = False  # a gain judged from enough speech has been applied
        self._limit = 1.0  # the limiter's gain at the end of the last piece

    def process(self, pcm: np.ndarray) -> np.ndarray:
        """int16 samples at 8 kHz (any numeric dtype) -> int16, levelled and limited."""
        if not len(pcm):
            return np.zeros(0, dtype=np.int16)
        x = np.array(pcm, dtype=np.float32)  # a copy: scaled in place below
        voice = self.voice
        learned = self.levels.meter(voice)
        learned.add(x)
        if learned.speech_s > FORGET_AFTER_S:
            learned.decay()
        if voice not in self._fixed:
            self._fixed[voice] = self.levels.known_gain_db(voice)
            self._settled = False  # a new voice (a fallback provider): its own gain, at once
        target_db = self._fixed[voice]
        if target_db is None:  # not learned yet: what this say has of it so far, once that says enough
            meter = self._say_meter.setdefault(voice, LevelMeter())
            meter.add(x)
            target_db = self.levels.gain_of(meter) if meter.speech_s >= ESTIMATE_AFTER_S else None
        start_db = self._gain_db if self._gain_db is not None else 0.0
        if target_db is None:  # too little speech to judge: as the provider sent it
            end_db = start_db
        elif not self._settled:  # the first judgement of this voice: taken at once
            start_db = end_db = target_db
            self._settled = True
        else:
            step = SLEW_DB_PER_S * len(x) / TELEPHONY_RATE
            end_db = min(max(target_db, start_db - step), start_db + step)
        self._gain_db = end_db
        if start_db == end_db:
            x *= db_to_gain(end_db) * self.volume
        else:
            x *= (10 ** (np.linspace(start_db, end_db, len(x), dtype=np.float32) / 20)) * self.volume
        return self._limited(x)

    def _limited(self, x: np.ndarray) -> np.ndarray:
        """Peaks over the ceiling brought down smoothly: the gain of each 2.5 ms block is the
        least its block and both neighbours need, interpolated sample by sample, so no sample
        gets more than its own block allows."""
        ceiling = CEILING * FULL_SCALE
        n = len(x)
        blocks = -(-n // _LIMIT_BLOCK)
        padded = np.zeros(blocks * _LIMIT_BLOCK, dtype=np.float32)
        padded[:n] = np.abs(x)
        peaks = padded.reshape(blocks, _LIMIT_BLOCK).max(axis=1)
        if peaks.max() <= ceiling and self._limit >= 1.0:
            return np.clip(np.rint(x), -32768, 32767).astype(np.int16)
        need = np.minimum(1.0, ceiling / np.maximum(peaks, 1e-9))
        wide = np.concatenate(([need[0]], need, [need[-1]]))
        smooth = np.minimum(np.minimum(wide[:-2], wide[1:-1]), wide[2:])
        centres = np.arange(blocks) * _LIMIT_BLOCK + _LIMIT_BLOCK / 2
        # From where the last piece left off (its last block's gain, half a block back).
        points = np.concatenate(([-_LIMIT_BLOCK / 2], centres))
        gains = np.concatenate(([min(self._limit, smooth[0])], smooth))
        curve = np.interp(np.arange(n), points, gains).astype(np.float32)
        self._limit = float(smooth[-1])
        y = x * curve
        return np.clip(np.rint(y), -ceiling, ceiling).astype(np.int16)
