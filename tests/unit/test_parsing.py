"""Yes/no and ``key=value`` tables written as text: one reading for every way in."""

from __future__ import annotations

import pytest

from speakd.agi.scripts import parse_speak_args
from speakd.config import ConfigError, load_config
from speakd.parsing import parse_bool, parse_table
from speakd.providers import ProviderRegistry
from speakd.providers.settings import Section


@pytest.mark.parametrize("raw", ["1", "true", "Yes", " ON "])
def test_true_words(raw):
    assert parse_bool(raw) is True


@pytest.mark.parametrize("raw", ["0", "false", "No", " off ", ""])
def test_false_words(raw):
    assert parse_bool(raw) is False


def test_anything_else_is_no_bool():
    with pytest.raises(ValueError, match="expected true or false, got 'maybe'"):
        parse_bool("maybe")


def test_tables():
    assert parse_table("") == {}
    assert parse_table(" de-DE = Vicki , fr-FR=Lea,") == {"de-DE": "Vicki", "fr-FR": "Lea"}
    assert parse_table("state=a=b") == {"state": "a=b"}  # the first '=' splits
    for bad in ("novalue", "k=", "=v"):
        with pytest.raises(ValueError, match=f"got '{bad}'"):
            parse_table(bad)


def test_every_caller_reads_the_same_words():
    assert parse_speak_args(["Hi", "wait=On"]).wait is True
    assert parse_speak_args(["Hi", "wait="]).wait is False  # an unset dialplan variable
    assert Section("aws", {"default_chain": "yes"}).bool("default_chain", False) is True
    config = load_config(None, environ={"SPEAKD_ARI_USER_EVENTS": "off", "SPEAKD_AUTH_ACCESS_KEYS": "k=c,"})
    assert (config.ari.user_events, config.auth.access_keys) == (False, {"k": "c"})
    assert Section("aws", {"voices": "de-DE=Vicki,"}).table("voices") == {"de-DE": "Vicki"}


def test_a_table_with_an_empty_key_or_value_is_refused():
    with pytest.raises(ConfigError, match="SPEAKD_AUTH_ACCESS_KEYS: expected key=value"):
        load_config(None, environ={"SPEAKD_AUTH_ACCESS_KEYS": "k="})


def test_a_misspelt_enabled_is_said_not_taken_for_off():
    registry = ProviderRegistry.from_config({"piper": {"enabled": "maybe"}}, log_unavailable=False)
    assert registry.unavailable["piper"] == "piper: 'enabled' must be true or false, not 'maybe'"
