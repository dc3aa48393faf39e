"""What a party heard, judged on its recording: the checks the audio tests share."""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass, field

import numpy as np

from harness.audio import (
    FRAME,
    FRAME_S,
    RATE,
    envelope_correlation,
    frame_dbfs,
    noise_floor_db,
    render_piper,
    spectral_similarity,
    window_dbfs,
    word_ends_s,
)

SPEECH_DBFS = -40.0  # Piper speech sits around -20 dBFS; the phones' carrier near -60
FLOOR_HOLE_S = 0.035  # one 20 ms frame, as the detector's sliding window measures it; see Intactness
MIN_SPECTRAL = 0.77  # see assert_heard
GREETING = "Hello! This is your agent speaking. How can I help you today?"
LONG = (
    "This is a long announcement that keeps going for several seconds, so that it can be "
    "interrupted in the middle. It talks about the weather, the traffic, and the opening hours "
    "of the office, which are from nine in the morning until five in the afternoon."
)
ASTERISK_DELAY_S = 0.1  # bridge mixing + whisper + recording, generously


def speech_seconds(samples: np.ndarray) -> float:
    return float(np.count_nonzero(frame_dbfs(samples) > SPEECH_DBFS) * FRAME_S)


def last_speech_s(samples: np.ndarray) -> float:
    loud = np.flatnonzero(frame_dbfs(samples) > SPEECH_DBFS)
    return float((loud[-1] + 1) * FRAME_S) if len(loud) else 0.0


def loud_times(samples: np.ndarray, offset_s: float) -> list[float]:
    return [round(offset_s + i * FRAME_S, 2) for i in np.flatnonzero(frame_dbfs(samples) > SPEECH_DBFS)][:10]


def longest_quiet_inside_speech(samples: np.ndarray) -> float:
    loud = frame_dbfs(samples) > SPEECH_DBFS
    idx = np.flatnonzero(loud)
    if len(idx) < 2:
        return 0.0
    inner = loud[idx[0] : idx[-1] + 1]
    longest = run = 0
    for value in inner:
        run = 0 if value else run + 1
        longest = max(longest, run)
    return longest * FRAME_S


def assert_heard(recording: np.ndarray, reference: np.ndarray, who: str, min_corr: float = 0.8) -> int:
    corr, lag = envelope_correlation(recording, reference)
    assert corr > min_corr, f"{who} should hear the speech: envelope correlation {corr:.2f}"
    # The envelope alone survives distortion (e.g. audio decoded with the wrong G.711 law):
    # the spectral shape must match too. Measured (placed to the millisecond): 0.88-0.92 when
    # right (0.82-0.87 through a ConfBridge room's mix), 0.72-0.73 with the wrong law.
    spectral = spectral_similarity(recording, reference, lag)
    assert spectral > MIN_SPECTRAL, f"{who} hears the speech distorted: spectral similarity {spectral:.2f}"
    # Speech frames are counted over an absolute level: the reference's at the level it was heard
    # (speakd levels a voice, not each text: a say may be heard a dB or two off its rendering).
    heard_s = speech_seconds(recording)
    reference_s = speech_seconds(reference * 10 ** (min(level_gain_db(recording, reference, lag), 0.0) / 20))
    assert heard_s > 0.7 * reference_s, f"{who} heard too little speech ({heard_s:.2f} s of {reference_s:.2f} s)"
    return lag


def assert_nothing_else(recording: np.ndarray, spans: list[tuple[float, float]], what: str) -> None:
    """No speech outside ``spans`` (seconds): nothing was replayed, nothing else was played."""
    loud = frame_dbfs(recording) > SPEECH_DBFS
    for start, end in spans:
        loud[max(0, int((start - 0.1) / FRAME_S)) : int((end + 0.1) / FRAME_S)] = False
    extra = np.flatnonzero(loud)
    assert len(extra) == 0, (
        f"{what}: {len(extra) * FRAME_S:.2f}s of speech outside what should play, at "
        f"{[round(i * FRAME_S, 2) for i in extra[:10]]} (expected only {spans})"
    )


def where_speech_stops(recording: np.ndarray, text: str, played_ms: int) -> tuple[float, float]:
    """A say of ``text`` cut after ``played_ms``: (where its speech starts in the recording, how
    far into it the speech stops), both in seconds; asserts the cut came mid-text."""
    reference = render_piper(text)
    corr, lag = envelope_correlation(recording, reference[: int(2.0 * RATE)])
    assert corr > 0.8, f"the start of the text should be heard (corr {corr:.2f})"
    start_s = lag * FRAME_S
    # The last speech before the quiet stretch the cut made.
    window = recording[int(start_s * RATE) : int((start_s + played_ms / 1000 + 0.5) * RATE)]
    stopped_at = last_speech_s(window)
    assert 1.5 < stopped_at < len(reference) / RATE - 1.0, f"speech should stop mid-text, stopped at {stopped_at:.2f}s"
    return start_s, stopped_at


def assert_heard_text_within_a_word(text: str, heard: str, heard_chars: int, stopped_at: float) -> None:
    """``heard`` (what speakd reports was heard of ``text``) ends within one word of where the
    recording's speech stopped: after the word before its last had been spoken, before the next."""
    assert text.startswith(heard) and 0 < heard_chars == len(heard) < len(text), (heard, heard_chars)
    words = [m.end() for m in re.finditer(r"\S+", text)]
    assert len(heard) in words, f"heard_text should end on a word: {heard!r}"
    index = words.index(len(heard))
    ends = word_ends_s(text)
    before = ends[words[index - 1]] if index >= 1 else 0.0
    beyond = ends[words[index + 1]] if index + 1 < len(words) else float("inf")
    assert before - FRAME_S <= stopped_at <= beyond + FRAME_S, (
        f"speech stopped at {stopped_at:.2f}s but heard_text ends {heard[-30:]!r} "
        f"(one word less ends at {before:.2f}s, one word more at {beyond:.2f}s)"
    )
    print(f"stopped at {stopped_at:.2f}s; heard ...{heard[-25:]!r}; bounds {before:.2f}-{beyond:.2f}s")


def assert_not_heard(recording: np.ndarray, who: str) -> None:
    heard = speech_seconds(recording)
    assert heard < 0.1, f"{who} should hear nothing, but {heard:.2f}s of the recording is speech"


def first_frame_sent_at(speakd, speaking_id: str) -> float:
    """Wall-clock time the daemon sent the first frame of this session's first say."""
    for line in speakd.log_text().splitlines():
        if speaking_id in line and '"say_playing"' in line:
            stamp = json.loads(line)["timestamp"]
            return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    raise AssertionError("the daemon never reported playing")


# Dropouts: 20 ms holes in speech. A frame that did not reach Asterisk in time leaves only the
# other phone's carrier in that 20 ms of the recording (about -67 dBFS in these recordings), while
# the speech around it is 30-50 dB louder. Natural speech has quiet 20 ms stretches too (pauses,
# stop consonants), so a hole counts only where the reference, at the aligned place and at the
# recording's level, has no quiet stretch nearby. The snoop whisper path plays speech 5.6-6.6 dB
# below the rendering, so that gain is measured first and "near-silent" is relative to the
# recording's own floor.
# Calibrated on 9 good recordings (Asterisk playing the reference through a whisper snoop, quiet
# host): 0 holes in 8 of them, corr 0.969-0.975, speech 8.58-8.62 s of 8.66 s, and the quietest
# window where the reference speaks stayed 8.1-8.3 dB above the hole line; a real hole sits
# about 10 dB below it. One of those 9 had a real 20 ms hole (carrier only, mid-vowel, 0.12 s
# into the playback): Asterisk itself can drop a frame. On synthetic recordings (reference +
# -60 dBFS carrier) 0 holes; 16 of 20 inserted 20 ms holes were found (the other 4 fell within
# DROPOUT_TOLERANCE_S of a natural pause, where a hole is not told from speech).
DROPOUT_ABOVE_FLOOR_DB = 10.0  # a recording window within this of the carrier floor holds no speech
NATURAL_MARGIN_DB = 6.0  # the reference is "naturally quiet" if it comes within this of that line
DROPOUT_TOLERANCE_S = 0.04  # alignment slack: envelope lag is good to half a frame, plus drift
GAIN_RANGE_DB = (-12.0, 3.0)  # measured -5.6 to -6.6 dB through snoop whisper


@dataclass
class Intactness:
    """How whole one party's recording of one reference is."""

    who: str
    corr: float
    lag_frames: int
    speech_s: float
    reference_speech_s: float
    gain_db: float = 0.0  # the recording's level relative to the reference
    heard_s: float = 0.0  # speech seconds in the whole recording (same threshold as speech_s)
    dropouts: list[tuple[float, float]] = field(default_factory=list)  # (start s in recording, length s)

    @property
    def start_s(self) -> float:
        return self.lag_frames * FRAME_S

    def problems(
        self, min_corr: float = 0.8, speech_ratio: tuple[float, float] = (0.9, 1.1), dropouts: bool = True
    ) -> list[str]:
        """What is wrong with the recording (``dropouts``: holes count too)."""
        found = []
        if self.corr < min_corr:
            found.append(f"envelope correlation {self.corr:.2f} < {min_corr}")
        low, high = speech_ratio
        if not low * self.reference_speech_s <= self.speech_s <= high * self.reference_speech_s:
            found.append(f"{self.speech_s:.2f}s of speech where the reference has {self.reference_speech_s:.2f}s")
        if dropouts and self.dropouts and not self.only_asterisk_floor:
            where = ", ".join(
                f"{start:.2f}s (+{(start - self.start_s):.2f}s) {length * 1000:.0f}ms"
                for start, length in self.dropouts[:8]
            )
            more = f" and {len(self.dropouts) - 8} more" if len(self.dropouts) > 8 else ""
            found.append(f"{len(self.dropouts)} dropouts ({self.dropout_s:.2f}s): at {where}{more}")
        return found

    @property
    def only_asterisk_floor(self) -> bool:
        """A single hole of one frame (20-35 ms as measured): what Asterisk's own playback through a whisper
        snoop also shows on the loaded 2-core sandbox (about one recording in eight to
        sixteen): the snoop mixes its whisper into the frames the call carries, two clocks
        that jitter apart on a busy host. Anything more is not Asterisk's doing."""
        return len(self.dropouts) == 1 and self.dropouts[0][1] <= FLOOR_HOLE_S

    @property
    def dropout_s(self) -> float:
        return sum(length for _, length in self.dropouts)

    def summary(self) -> str:
        return (
            f"{self.who}: corr {self.corr:.3f}, speech {self.speech_s:.2f}/{self.reference_speech_s:.2f}s "
            f"(heard {self.heard_s:.2f}s in all), "
            f"{len(self.dropouts)} dropouts ({self.dropout_s:.2f}s), speech starts at {self.start_s:.2f}s, "
            f"level {self.gain_db:+.1f} dB"
        )


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """True wherever `mask` is True within `radius` samples."""
    counts = np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])
    idx = np.arange(len(mask))
    lo, hi = np.maximum(idx - radius, 0), np.minimum(idx + radius + 1, len(mask))
    return counts[hi] - counts[lo] > 0


def level_gain_db(recording: np.ndarray, reference: np.ndarray, lag_frames: int) -> float:
    """How much louder (dB, usually negative) the recording plays the reference placed at
    `lag_frames`: the median over the reference's loud frames."""
    rec = frame_dbfs(recording[lag_frames * FRAME : lag_frames * FRAME + len(reference)])
    ref = frame_dbfs(reference)[: len(rec)]
    loud = ref > -35.0
    gain = float(np.median(rec[loud] - ref[loud])) if loud.any() else 0.0
    # Clamped: where little was heard the median says nothing about the path, and a recording
    # that is mostly carrier must not lower what counts as a hole in it.
    return min(max(gain, GAIN_RANGE_DB[0]), GAIN_RANGE_DB[1])


def find_dropouts(
    recording: np.ndarray,
    reference: np.ndarray,
    lag_frames: int,
    above_floor_db: float = DROPOUT_ABOVE_FLOOR_DB,
    natural_margin_db: float = NATURAL_MARGIN_DB,
    tolerance_s: float = DROPOUT_TOLERANCE_S,
) -> list[tuple[float, float]]:
    """Holes in the speech: (start s in the recording, length s) of every stretch where some
    20 ms window of the recording is near-silent (within `above_floor_db` of its carrier floor)
    although the reference, placed at `lag_frames` (from envelope_correlation) and scaled to the
    recording's level, stays `natural_margin_db` above that line for `tolerance_s` either side.
    Only between the reference's first and last speech (holes between two loud parts); a
    recording that stops early shows its missing end as one long hole.

    Windows start at every sample (window_dbfs), so a hole is found wherever it falls on the
    20 ms grid.
    """
    offset = lag_frames * FRAME
    rec = recording[offset : offset + len(reference)]
    if len(rec) < len(reference):
        rec = np.concatenate([rec, np.zeros(len(reference) - len(rec), dtype=rec.dtype)])
    rec_db, ref_db = window_dbfs(rec), window_dbfs(reference)
    loud = np.flatnonzero(ref_db > SPEECH_DBFS)
    if len(loud) < 2:
        return []
    inside = np.zeros(len(ref_db), dtype=bool)
    inside[loud[0] : loud[-1] + 1] = True
    quiet_line = noise_floor_db(recording) + above_floor_db
    expected_db = ref_db + level_gain_db(recording, reference, lag_frames)
    naturally_quiet = _dilate(expected_db < quiet_line + natural_margin_db, int(tolerance_s * RATE))
    hole = (rec_db < quiet_line) & ~naturally_quiet & inside
    padded = np.concatenate([[False], hole, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    # Runs of quiet windows less than a window apart overlap in the audio: one hole, not two.
    runs: list[list[int]] = []
    for start, end in zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True):
        if runs and start - runs[-1][1] < FRAME:
            runs[-1][1] = end
        else:
            runs.append([start, end])
    return [((offset + start) / RATE, (end - start + FRAME - 1) / RATE) for start, end in runs]


def judge_intact(recording: np.ndarray, reference: np.ndarray, who: str) -> Intactness:
    """Envelope correlation, speech seconds of the aligned span (at the recording's own level)
    and dropouts of one recording of `reference`."""
    corr, lag = envelope_correlation(recording, reference)
    span = recording[lag * FRAME : lag * FRAME + len(reference)]
    gain = level_gain_db(recording, reference, lag)
    return Intactness(
        who=who,
        corr=corr,
        lag_frames=lag,
        speech_s=float(np.count_nonzero(frame_dbfs(span) > SPEECH_DBFS + gain) * FRAME_S),
        heard_s=float(np.count_nonzero(frame_dbfs(recording) > SPEECH_DBFS + gain) * FRAME_S),
        reference_speech_s=speech_seconds(reference),
        gain_db=gain,
        dropouts=find_dropouts(recording, reference, lag),
    )


# Clicks: a burst of a millisecond or two standing far out of quiet, e.g. the one the sandbox's
# .wav carrier made at every loop (10-12 samples at -6 to -16 dBFS over a -60 dBFS carrier:
# docs/troubleshooting.md). On 42 sandbox recordings (15 min, 7 with speech) it found the 27
# such bursts and nothing else. The carrier's own 1 ms peaks reach about 12 dB over its RMS
# floor; speech is longer than a click, or has no quiet around it.
CLICK_WINDOW = 8  # 1 ms
CLICK_ABOVE_FLOOR_DB = 30.0  # a click's peak stands this far over the recording's floor
CLICK_MAX_S = 0.005
CLICK_QUIET_S = 0.03  # ... with nothing over two thirds of that this long either side
CLICK_GUARD_S = 0.002  # (the codecs' ringing either side belongs to the click)


def clicks(samples: np.ndarray) -> list[tuple[float, float]]:
    """(start s, peak dBFS) of every click in quiet stretches; a click inside speech is not found."""
    n = len(samples) // CLICK_WINDOW
    peaks = np.abs(samples[: n * CLICK_WINDOW].astype(np.int32)).reshape(n, CLICK_WINDOW).max(axis=1)
    peak_db = 20 * np.log10(np.maximum(peaks, 1) / 32768.0)
    floor = max(noise_floor_db(samples), -70.0)  # digital silence: still only bursts over -40 dBFS
    not_quiet = peak_db > floor + CLICK_ABOVE_FLOOR_DB * 2 / 3
    window_s = CLICK_WINDOW / RATE
    guard, quiet, longest = (round(s / window_s) for s in (CLICK_GUARD_S, CLICK_QUIET_S, CLICK_MAX_S))
    runs: list[list[int]] = []
    for i in np.flatnonzero(peak_db > floor + CLICK_ABOVE_FLOOR_DB).tolist():
        if runs and i - runs[-1][1] <= guard:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    found = []
    for first, last in runs:
        before, after = first - guard - quiet, last + 1 + guard
        if last - first + 1 > longest or before < 0 or after + quiet > n:
            continue
        if not (not_quiet[before : first - guard].any() or not_quiet[after : after + quiet].any()):
            found.append((first * window_s, float(peak_db[first : last + 1].max())))
    return found


def assert_no_clicks(recording: np.ndarray, who: str) -> None:
    found = clicks(recording)
    where = ", ".join(f"{t:.3f}s {db:.0f} dBFS" for t, db in found[:10])
    assert not found, f"{who} hears {len(found)} clicks: {where}"
