"""piper-tts's espeak-ng bridge leaks on every phonemization (speakd.providers.piper_espeak): the
daemon's Piper phonemizes every say twice, and a long run grew for good. With the wrappers
in place, phonemizing keeps nothing, and phonemes are what they were."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from speakd.providers import piper, piper_espeak

TEXT = "Thank you for calling, your call is important to us. Please stay on the line; an agent will answer."


@pytest.fixture(scope="module")
async def voice():
    """A Piper voice's text side, in a process where speakd's Piper provider has loaded (and so
    wrapped the bridge)."""
    from piper import PiperVoice
    from piper.config import PiperConfig

    provider = piper.create({})
    await provider.start()
    config = PiperConfig.from_dict(json.loads(await asyncio.to_thread(Path(provider.config_path).read_text)))
    made = PiperVoice(config=config, session=None)
    made.phonemize("Ready.")  # espeak-ng started and its voice set, as by a say
    yield made
    await provider.aclose()


def resident_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_clause_is_held_by_its_list_alone(voice):
    from piper import espeakbridge

    clauses = espeakbridge.get_phonemes(TEXT)
    assert len(clauses) == 4
    held = piper_espeak._held_references()
    for clause in clauses:
        assert sys.getrefcount(clause) == held, "the bridge's extra reference is still on the clause"


def test_phonemizing_many_times_keeps_nothing(voice):
    for _ in range(500):  # warm: caches and free lists filled
        voice.phonemize(TEXT)
    before = resident_kb()
    for _ in range(10_000):
        voice.phonemize(TEXT)
    grown = resident_kb() - before
    # Unwrapped: about 3 kB a call here (1.3 for the voice set again, 0.4 a clause), 30 MB.
    assert grown < 2_000, f"10,000 phonemizations kept {grown} kB"


def test_the_voice_is_set_again_when_another_was_set(voice):
    from piper import espeakbridge

    english = voice.phonemize(TEXT)
    espeakbridge.set_voice("de")
    german = espeakbridge.get_phonemes("Guten Tag")
    assert voice.phonemize(TEXT) == english  # Piper's own set_voice call restores its voice
    espeakbridge.set_voice("de")
    assert espeakbridge.get_phonemes("Guten Tag") == german
    voice.phonemize("Ready.")
