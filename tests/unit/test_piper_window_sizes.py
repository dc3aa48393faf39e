"""Piper's decode windows (speakd.providers.piper_model.windows): a sentence's frames of z are
decoded once each, the first window small (first audio), and no run larger than the last window
size and a merged tail: the decoder's working memory grows with a run's frames, so this is what
bounds it whatever the sentence's length."""

import itertools

import pytest

from speakd.providers.piper_model import FIRST_WINDOW_FRAMES, LAST_WINDOW_FRAMES, windows

# Longer than any sentence Piper is given (300 phonemes, about 2 frames an id, 2 ids a phoneme)
# at a slow speaking rate.
LONGEST_FRAMES = 3000


@pytest.mark.parametrize("first", FIRST_WINDOW_FRAMES)
def test_windows_cover_a_sentence_once_in_order(first):
    for frames in range(1, LONGEST_FRAMES):
        spans = list(windows(frames, first))
        assert spans[0][0] == 0 and spans[-1][1] == frames
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans)), (frames, spans)


@pytest.mark.parametrize("first", FIRST_WINDOW_FRAMES)
def test_the_first_window_is_small_and_no_run_exceeds_the_last_size_and_a_tail(first):
    largest = 0
    for frames in range(2 * first, LONGEST_FRAMES):
        spans = list(windows(frames, first))
        assert spans[0] == (0, first)
        largest = max(largest, *(end - start for start, end in spans))
    # A tail shorter than a first window joins the window before it (its context would cost more).
    assert largest == LAST_WINDOW_FRAMES + first - 1
