"""Piper through the windowed decoder (speakd.providers.piper_model): the audio a say streams is the
whole-sentence render, seamless; its word marks are where the words are; a model that cannot be
split runs whole. Not timed (bench/first_audio.py times it)."""

from __future__ import annotations

import asyncio
import re

import numpy as np
import pytest
import soxr
from harness.audio import RATE, spectral_similarity
from harness.fakes import SinkTransport

from speakd.audio import AudioFormat
from speakd.media.playout import Playout
from speakd.providers import piper, piper_model
from speakd.providers.base import AudioChunk, Provider, SynthesisRequest
from speakd.sessions.session import Session
from speakd.store.records import Speaking

SHORT = "Hello there."
LONG = "Thank you for calling the accounts office of the northern regional council, how can we help today?"
TWO = "Thank you for calling. Your call is important to us, so please stay on the line."
FRAME_MS = 20
# Deterministic: no noise in sound or timing, so the whole-sentence render is one fixed signal.
SETTINGS = {"noise_scale": 0.0, "noise_w_scale": 0.0}


@pytest.fixture(scope="module")
async def provider():
    made = piper.create(SETTINGS)
    await made.start()
    yield made
    await made.aclose()


async def streamed(provider: piper.PiperProvider, text: str) -> list[AudioChunk]:
    request = SynthesisRequest(text=text, language="en-US", voice_id="")
    return [chunk async for chunk in provider.synthesize(request)]


def pcm(chunks: list[AudioChunk]) -> np.ndarray:
    return np.frombuffer(b"".join(c.data for c in chunks), dtype=np.int16)


def whole_sentence_render(provider: piper.PiperProvider, text: str) -> tuple[np.ndarray, list]:
    """Piper's own synthesis of ``text`` with the unsplit model (alignments patched in): int16
    audio, and its chunks (one a sentence)."""
    from piper import PiperVoice, SynthesisConfig

    voice = PiperVoice.load(provider.model_path, provider.config_path, include_alignments=True)
    chunks = list(voice.synthesize(text, syn_config=SynthesisConfig(**SETTINGS), include_alignments=True))
    return np.concatenate([c.audio_int16_array for c in chunks]), chunks


def at_8k(samples: np.ndarray, rate: int) -> np.ndarray:
    out = soxr.resample(samples.astype(np.float32) / 32768, rate, RATE)
    return np.clip(np.round(out * 32768), -32768, 32767).astype(np.int16)


def worst_frame_correlation(a: np.ndarray, b: np.ndarray, rate: int) -> float:
    """The lowest waveform correlation of any loud 10 ms frame (a seam shows in one frame)."""
    n = rate // 100
    frames = min(len(a), len(b)) // n
    x = a[: frames * n].astype(np.float64).reshape(frames, n)
    y = b[: frames * n].astype(np.float64).reshape(frames, n)
    loud = np.sqrt((y**2).mean(axis=1)) > 32768 * 10 ** (-30 / 20)
    x, y = x[loud] - x[loud].mean(axis=1, keepdims=True), y[loud] - y[loud].mean(axis=1, keepdims=True)
    return float(((x * y).sum(axis=1) / np.sqrt((x**2).sum(axis=1) * (y**2).sum(axis=1))).min())


@pytest.mark.parametrize("first", piper_model.FIRST_WINDOW_FRAMES, ids=lambda f: f"first-{f}")
@pytest.mark.parametrize("text", [SHORT, LONG], ids=["short", "long"])
async def test_streamed_audio_is_the_whole_sentence_render(provider, text, first, monkeypatch):
    monkeypatch.setattr(provider, "first_window", lambda ids: first)
    chunks = await streamed(provider, text)
    assert len(chunks[0].data) // 2 == first * provider._hop
    audio, reference = pcm(chunks), whole_sentence_render(provider, text)[0]
    rate = provider.sample_rate
    # Streamed within the sentence: the first audio is a window, not the sentence.
    first_ms = len(chunks[0].data) // 2 * 1000 / rate
    assert len(chunks) >= 2 and 100 <= first_ms <= 250, [len(c.data) for c in chunks]
    assert abs(len(audio) - len(reference)) * 1000 / rate < FRAME_MS
    spectral = spectral_similarity(at_8k(audio, rate), at_8k(reference, rate), 0)
    assert spectral >= 0.97, spectral
    # No seam: every loud 10 ms of it has the reference's waveform (gain aside).
    assert worst_frame_correlation(audio, reference, rate) > 0.99


async def test_the_comparison_hears_a_seam(provider, monkeypatch):
    """Windows decoded without their context frames have seams, and the test above sees them."""
    monkeypatch.setattr(piper_model, "CONTEXT_FRAMES", 0)
    monkeypatch.setattr(piper_model, "FLOW_CONTEXT_FRAMES", 0)
    audio, reference = pcm(await streamed(provider, LONG)), whole_sentence_render(provider, LONG)[0]
    assert worst_frame_correlation(audio, reference, provider.sample_rate) < 0.9


async def test_word_marks_are_monotonic_within_the_audio_and_as_before(provider):
    text = f"{TWO} {LONG}"
    chunks = await streamed(provider, text)
    marks, start = [], 0
    for chunk in chunks:
        samples = len(chunk.data) // 2
        assert all(0 <= at <= samples for _, at in chunk.marks), (samples, chunk.marks)
        marks += [(chars, start + at) for chars, at in chunk.marks]
        start += samples
    assert [m[0] for m in marks] == sorted(m[0] for m in marks)
    assert [m[1] for m in marks] == sorted(m[1] for m in marks)
    assert marks[-1] == (len(text), start)
    assert len(marks) >= len(text.split()) // 2  # most words (espeak joins some, as "for the")
    # The same marks as from Piper's own alignment of each whole sentence.
    _, sentences = whole_sentence_render(provider, text)
    clock = piper.WordClock.for_text(provider._voice, text, provider._voice.phonemize(text))
    expected, offset = [], 0
    for sentence in sentences:
        expected += [(chars, offset + at) for chars, at in clock.marks(sentence.phoneme_alignments)]
        offset += len(sentence.audio_int16_array)
    assert marks == expected


def test_word_weights_in_one_espeak_call_are_each_word_alone(provider):
    text = 'Mr. Smith paid $5.99 at 10:30 a.m. (roughly) — "quoted" U.S.A. e.g. 3.14 twenty-one!'
    voice = provider._voice
    words = re.findall(r"\S+", text)
    batched = [piper._sounds(phonemes) for phonemes in piper._words_alone(voice, words)]
    assert batched == [sum(piper._sounds(s) for s in voice.phonemize(w)) for w in words]


def test_a_word_is_heard_when_its_last_sound_ends_also_inside_a_joined_phoneme_word(provider):
    # espeak says "has been" as one phoneme word: "has" still gets a mark of its own, and a word
    # before a comma ends where its last sound does (the pause after it is not the word).
    voice = provider._voice
    text = "Apples, this morning has been moved."
    phonemes = voice.phonemize(text)
    assert any("h" in word and "b" in word for word in "".join(phonemes[0]).split(" ")), phonemes
    clock = piper.WordClock.for_text(voice, text, phonemes)
    aligned = [piper._Aligned(p, 100) for p in ["^", *phonemes[0], "$"]]
    marks = clock.marks(aligned)
    ends = {text[:chars].split()[-1]: sample for chars, sample in reversed(marks) if chars}
    sound_end = {"Apples,": 100 * (1 + phonemes[0].index(","))}
    assert ends["Apples,"] == sound_end["Apples,"]
    has_end = 100 * (1 + "".join(phonemes[0]).index("hɐz") + 3)
    assert ends["has"] == has_end < ends["been"]


async def test_a_model_that_cannot_be_split_runs_whole_sentences(monkeypatch, caplog):
    monkeypatch.setattr(piper_model, "DECODER_PREFIX", "/no-such-scope/")
    whole = piper.create(SETTINGS)
    await whole.start()
    try:
        assert whole._model.decoder is None
        chunks = await streamed(whole, TWO)
        reference, sentences = whole_sentence_render(whole, TWO)
        assert len(chunks) == len(sentences) == 2
        audio = pcm(chunks)
        assert len(audio) == len(reference)
        assert worst_frame_correlation(audio, reference, whole.sample_rate) > 0.99
        assert chunks[-1].marks[-1] == (len(TWO), len(chunks[-1].data) // 2)
    finally:
        await whole.aclose()


class PcmProvider(Provider):
    """Three 300 ms chunks at Piper's rate, each with a word mark at its end."""

    name = "pcm"
    CHUNK_MS = 300

    def check(self, language, voice_id, payload_type="text"):
        pass

    async def synthesize(self, request: SynthesisRequest):
        fmt = AudioFormat("pcm_s16le", 22050)
        samples = 22050 * self.CHUNK_MS // 1000
        tone = (8000 * np.sin(np.arange(samples) * 2 * np.pi * 440 / 22050)).astype(np.int16).tobytes()
        for word in range(3):
            yield AudioChunk(tone, fmt, marks=((word + 1, samples),))
            await asyncio.sleep(0)


async def test_a_sessions_word_marks_count_the_audio_its_resampler_holds():
    """A chunk's marks sit where its audio starts in the say, also while the 22.05 -> 8 kHz
    resampler still holds the end of the chunk before (72 ms of it)."""
    sink = SinkTransport(speed=10)
    await sink.start()
    saved = []

    async def save_say(item):
        saved.append(item.row())

    record = Speaking("s1", "c", "call", "ch", "en-US", "pcm", "", "out", "active", "t", "t")
    session = Session(record, PcmProvider(), "ulaw", Playout(), save_say)
    session.start_synthesis()
    session.start_playout(sink)
    try:
        item = session.new_say("a b c")
        session.enqueue(item)
        await asyncio.wait_for(item.ready.wait(), 10)
        assert item.word_marks == [(300, 1), (600, 2), (900, 3)]
    finally:
        await asyncio.wait_for(session.close(), 10)


RUN_ON = ", ".join(["thank you for calling the accounts department of the northern regional office today"] * 8) + "."


def test_a_run_on_sentence_is_cut_after_its_pauses(provider):
    phonemes = provider._voice.phonemize(RUN_ON)[0]
    assert len(phonemes) > 2 * piper.MAX_SENTENCE_PHONEMES
    pieces = piper._clauses(phonemes)
    assert all(len(p) <= piper.MAX_SENTENCE_PHONEMES for p in pieces)
    assert all(p[-1] == "," for p in pieces[:-1]), ["".join(p[-5:]) for p in pieces]
    assert " ".join("".join(p) for p in pieces) == "".join(phonemes)  # the space after each cut aside


async def test_a_run_on_sentence_streams_with_its_word_marks(provider):
    chunks = await streamed(provider, RUN_ON)
    marks, start = [], 0
    for chunk in chunks:
        marks += [(chars, start + at) for chars, at in chunk.marks]
        start += len(chunk.data) // 2
    assert marks == sorted(marks) and marks[-1] == (len(RUN_ON), start)
    assert len(marks) >= len(RUN_ON.split()) // 2


def test_word_ends_of_a_long_text_are_one_per_word_in_order(provider):
    # Aligned a window at a time: every word placed once, in order, within the text's sounds.
    voice = provider._voice
    text = ("Your flight 2041 to Boston, at 10:30 a.m., has been moved to gate B12. " * 70)[:5000]
    phonemized = voice.phonemize(text)
    words = re.findall(r"\S+", text)
    ends = list(piper._word_end_sounds(piper._words_alone(voice, words), phonemized))
    assert len(ends) == len(words)
    assert ends == sorted(ends) and ends[0] > 0
    assert ends[-1] == sum(piper._sounds(s) for s in phonemized)


async def test_the_first_window_is_the_smaller_when_its_step_leaves_room(provider, monkeypatch):
    """A sentence starts with the smaller first window when its audio lasts FIRST_STEP_RATE times
    the step expected to make it (a session starts it at once), else with the larger one."""
    small, large = piper_model.FIRST_WINDOW_FRAMES
    small_s = small * provider._hop / provider.sample_rate
    monkeypatch.setattr(provider._pool, "expected_s", lambda cost: 0.9 * small_s / piper.FIRST_STEP_RATE)
    assert provider.first_window(30) == small
    monkeypatch.setattr(provider._pool, "expected_s", lambda cost: 1.1 * small_s / piper.FIRST_STEP_RATE)
    assert provider.first_window(30) == large
    chunks = await streamed(provider, SHORT)
    assert len(chunks[0].data) // 2 == large * provider._hop


def test_a_long_texts_words_are_placed_as_its_sentences_are_spoken(provider):
    """The word clock aligns a long text's words a window at a time as marks need them (not all
    before the first audio), and places every word where aligning them all at once does."""
    voice = provider._voice
    text = ("Your flight 2041 to Boston, at 10:30 a.m., has been moved to gate B12. " * 70)[:5000]
    phonemized = voice.phonemize(text)
    words = re.findall(r"\S+", text)
    lazy = piper.WordClock.for_text(voice, text, phonemized)
    eager = piper.WordClock(
        [m.end() for m in re.finditer(r"\S+", text)],
        list(piper._word_end_sounds(piper._words_alone(voice, words), phonemized)),
    )
    for n, sentence in enumerate(phonemized):
        aligned = [piper._Aligned(p, 100) for p in ["^", *sentence, "$"]]
        assert lazy.marks(aligned) == eager.marks(aligned)
        if n == 0:  # the first sentence's marks read a few windows of words, not the text's
            assert len(lazy._end_sounds) < 4 * piper.ALIGN_WINDOW < len(words)
    assert lazy._end_sounds == eager._end_sounds
