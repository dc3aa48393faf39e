"""``[tts] fallback`` and its keys: read from the file and the environment, refused with a message
naming the key, and a fallback provider that cannot be used reported by check-config."""

from __future__ import annotations

import pytest

from speakd.config import ConfigError, TtsConfig, load_config, read_config
from speakd.config_check import provider_errors
from speakd.providers.fallback import FailoverSettings


def write(tmp_path, text: str):
    path = tmp_path / "speakd.toml"
    path.write_text(text)
    return path


def test_off_by_default_with_the_documented_timeouts():
    tts = load_config(None, environ={}).tts
    assert tts.fallback == []
    assert FailoverSettings.of(tts) == FailoverSettings((), 3.0, 2.0, 5, 30.0)


def test_from_the_file_and_from_the_environment(tmp_path):
    path = write(
        tmp_path,
        '[tts]\nfallback = ["gcp", "piper"]\nfirst_audio_timeout = 1.5\nstall_timeout = 1\n'
        "breaker_failures = 3\nbreaker_cool_off = 10\n",
    )
    assert FailoverSettings.of(load_config(path, environ={}).tts) == FailoverSettings(
        ("gcp", "piper"), 1.5, 1.0, 3, 10.0
    )
    tts = load_config(path, environ={"SPEAKD_TTS_FALLBACK": "piper, aws"}).tts
    assert tts.fallback == ["piper", "aws"]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('fallback = "gcp"', "[tts] fallback must be a list of strings"),
        ("fallback = [1]", "[tts] fallback must be a list of strings"),
        ('fallback = ["google"]', "tts.fallback names 'google'"),
        ('fallback = ["gcp", "gcp"]', "tts.fallback names a provider twice"),
        ("first_audio_timeout = 0", "tts.first_audio_timeout must be more than 0 seconds"),
        ("stall_timeout = -1", "tts.stall_timeout must be more than 0 seconds"),
        ("breaker_failures = 0", "tts.breaker_failures must be at least 1"),
        ("breaker_cool_off = 0", "tts.breaker_cool_off must be more than 0 seconds"),
    ],
)
def test_bad_values_are_refused_naming_the_key(tmp_path, text, words):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, f"[tts]\n{text}\n"), environ={})
    assert any(words in problem for problem in info.value.problems), info.value.problems


def test_check_config_names_a_fallback_provider_that_cannot_be_used(tmp_path):
    reading = read_config(write(tmp_path, '[tts]\ndefault_provider = "piper"\nfallback = ["gcp", "piper"]\n'), {})
    assert reading.problems == []
    errors = provider_errors(reading)
    assert [e for e in errors if e.startswith("tts.fallback names 'gcp', which cannot be used: ")], errors
    assert not [e for e in errors if "'piper'" in e]  # usable (and the default)


def test_the_tts_defaults_hold_no_problem():
    assert TtsConfig().problems() == []
