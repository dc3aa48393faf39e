"""What a party heard, judged on its recording: the checks the audio tests share."""

from __future__ import annotations

import datetime
import json

import numpy as np

from harness.audio import FRAME_S, envelope_correlation, frame_dbfs, spectral_similarity

SPEECH_DBFS = -40.0  # Piper speech sits around -20 dBFS; the phones' carrier near -60
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


def assert_heard(recording: np.ndarray, reference: np.ndarray, who: str) -> int:
    corr, lag = envelope_correlation(recording, reference)
    assert corr > 0.8, f"{who} should hear the speech: envelope correlation {corr:.2f}"
    # The envelope alone survives distortion (e.g. audio decoded with the wrong G.711 law):
    # the spectral shape must match too. Measured: 0.86-0.89 when right, 0.59-0.73 with
    # the wrong law.
    spectral = spectral_similarity(recording, reference, lag)
    assert spectral > 0.8, f"{who} hears the speech distorted: spectral similarity {spectral:.2f}"
    assert speech_seconds(recording) > 0.7 * speech_seconds(reference), f"{who} heard too little speech"
    return lag


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
