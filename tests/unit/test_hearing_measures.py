"""The harness's ear: spectral similarity tells the right G.711 law from the wrong one wherever
within a frame the speech lands in the recording (the envelope's lag is whole 20 ms frames)."""

from __future__ import annotations

import numpy as np
import pytest
from harness.audio import envelope_correlation, render_piper, spectral_similarity
from harness.hearing import GREETING, MIN_SPECTRAL

from speakd.media.codec import decode, encode


def heard(reference: np.ndarray, offset: int, sent_as: str, read_as: str) -> tuple[np.ndarray, int]:
    padded = np.concatenate([np.zeros(1600 + offset, np.int16), reference, np.zeros(1600, np.int16)])
    recording = decode(encode(padded, sent_as), read_as).astype(np.int16)
    return recording, envelope_correlation(recording, reference)[1]


@pytest.mark.parametrize("offset", [0, 40, 80, 120])
def test_the_right_law_matches_wherever_in_a_frame_the_speech_lands(offset):
    reference = render_piper(GREETING)
    recording, lag = heard(reference, offset, "ulaw", "ulaw")
    assert spectral_similarity(recording, reference, lag) > 0.95  # 0.90 at 80 samples, placed by frames


@pytest.mark.parametrize(("sent_as", "read_as"), [("ulaw", "alaw"), ("alaw", "ulaw")])
@pytest.mark.parametrize("offset", [0, 80])
def test_the_wrong_law_does_not_match_at_any_placing(offset, sent_as, read_as):
    reference = render_piper(GREETING)
    recording, lag = heard(reference, offset, sent_as, read_as)
    assert spectral_similarity(recording, reference, lag) < MIN_SPECTRAL
