from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from speakd.config import (
    CONFIG_FILE_VARIABLE,
    DEFAULT_CONFIG_FILE,
    ConfigError,
    config_file,
    load_config,
    read_config,
)

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path, text: str):
    path = tmp_path / "speakd.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file():
    config = load_config(None, environ={})
    assert config.server.port == 8090
    assert config.tts.default_provider == "elevenlabs"  # the spec's default
    assert config.media.codec == "ulaw"


def test_file_then_environment_overrides(tmp_path):
    path = write(
        tmp_path,
        """
[ari]
url = "http://pbx:8088"
password = "from-file"
[auth]
access_keys = { "k1" = "c1" }
[elevenlabs]
api_key = "file-key"
""",
    )
    env = {
        "SPEAKD_ARI_PASSWORD": "from-env",
        "SPEAKD_SERVER_PORT": "9000",
        "SPEAKD_TTS_DEFAULT_PROVIDER": "piper",
        "SPEAKD_AUTH_ACCESS_KEYS": "k2=c2, k3=c3",
        "SPEAKD_ELEVENLABS_API_KEY": "env-key",
        "SPEAKD_AWS_REGION": "eu-west-1",
        "SPEAKD_TEST_ARI_URL": "not ours: ignored",
    }
    config = load_config(path, environ=env)
    assert config.ari.url == "http://pbx:8088"
    assert config.ari.password == "from-env"
    assert config.server.port == 9000
    assert config.tts.default_provider == "piper"
    assert config.auth.access_keys == {"k2": "c2", "k3": "c3"}
    assert config.providers["elevenlabs"]["api_key"] == "env-key"
    assert config.providers["aws"] == {"region": "eu-west-1"}


@pytest.mark.parametrize(
    ("text", "env", "words"),
    [
        ("[ari]\nurl = 5\n", {}, ["ari", "url", "string"]),
        ("[ari]\nusr = 'x'\n", {}, ["unknown key", "usr"]),
        ("[nope]\n", {}, ["unknown config section", "nope"]),
        ("[media]\ncodec = 'slin16'\n", {}, ["media.codec", "slin"]),
        ("[tts]\ndefault_provider = 'acme'\n", {}, ["default_provider", "acme"]),
        ("not toml ===", {}, ["not valid toml"]),
        ("", {"SPEAKD_SERVER_PORT": "eighty"}, ["SPEAKD_SERVER_PORT", "integer"]),
        ("", {"SPEAKD_AUTH_ACCESS_KEYS": "novalue"}, ["key=value"]),
    ],
)
def test_bad_config_says_which_key(tmp_path, text, env, words):
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), environ=env)
    for word in words:
        assert word.lower() in str(caught.value).lower()


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.toml", environ={})


def test_every_problem_is_collected_not_the_first(tmp_path):
    path = write(
        tmp_path,
        """
[nope]
[ari]
url = 5
usr = "x"
[media]
codec = "slin16"
lead_ms = 99999
[tts]
default_provider = "acme"
[webhooks.customers.c1]
url = "ftp://hooks"
[piper]
threads = 2
""",
    )
    env = {"SPEAKD_SERVER_PORT": "eighty", "SPEAKD_LOG_LEVEL": "loud"}
    reading = read_config(path, environ=env)
    wanted = [
        "unknown config section(s) nope",
        "[ari] has unknown key(s) usr",
        "[ari] url must be a string",
        "SPEAKD_SERVER_PORT: expected an integer",
        "media.codec must be",
        "media.lead_ms must be between",
        "tts.default_provider must be",
        "log.level must be one of",
        "webhooks.customers.c1.url must be an http:// or https:// URL",
        "webhooks.customers.c1.secret must be a non-empty string",
    ]
    assert len(reading.problems) == len(wanted), reading.problems
    for problem, start in zip(reading.problems, wanted, strict=True):
        assert start in problem
    # What was refused keeps its default (and is marked, so checks that read it do not judge it);
    # what was good is taken.
    assert reading.config.ari.url == "http://127.0.0.1:8088" and reading.config.server.port == 8090
    assert reading.refused == {"ari.url", "server.port"}
    assert reading.config.providers == {"piper": {"threads": 2}}
    # load_config refuses the same config with all of them, one message each.
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=env)
    assert caught.value.problems == reading.problems
    assert str(caught.value) == "; ".join(reading.problems)


def test_an_environment_value_replaces_a_refused_file_value(tmp_path):
    reading = read_config(write(tmp_path, "[server]\nport = 'x'\n"), environ={"SPEAKD_SERVER_PORT": "9000"})
    assert reading.problems == ["[server] port must be a number"]  # the file is still wrong
    assert reading.config.server.port == 9000 and reading.refused == set()


def test_origin_names_the_variable_or_the_file(tmp_path):
    path = write(tmp_path, "[auth]\naccess_keys = { k = 'c' }\n")
    assert read_config(path, environ={}).origin("auth.access_keys") == f"auth.access_keys in {path}"
    env = {"SPEAKD_AUTH_ACCESS_KEYS": "k=c", "SPEAKD_AWS_REGION": "x"}
    reading = read_config(path, environ=env)
    assert reading.origin("auth.access_keys") == "SPEAKD_AUTH_ACCESS_KEYS"
    assert reading.from_environment == {
        "auth.access_keys": "SPEAKD_AUTH_ACCESS_KEYS",
        "aws.region": "SPEAKD_AWS_REGION",
    }


def test_a_file_that_cannot_be_read_is_one_error(tmp_path):
    with pytest.raises(ConfigError, match=f"config file {tmp_path} cannot be read: Is a directory"):
        read_config(tmp_path, environ={})
    path = write(tmp_path, "")
    path.write_bytes(b"[ari]\npassword = '\xff'\n")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        read_config(path, environ={})


def test_config_file_is_c_then_the_variable_then_the_default_if_it_exists(tmp_path):
    default = write(tmp_path, "")
    absent = str(tmp_path / "absent.toml")
    env = {CONFIG_FILE_VARIABLE: "/from/env.toml"}
    assert config_file("/given.toml", env, default=str(default)) == "/given.toml"
    assert config_file(None, env, default=str(default)) == "/from/env.toml"
    assert config_file(None, {}, default=str(default)) == str(default)
    with pytest.raises(ConfigError) as caught:
        config_file(None, {CONFIG_FILE_VARIABLE: ""}, default=absent)
    assert str(caught.value).startswith(f"no config file: pass -c FILE, set SPEAKD_CONFIG=FILE, or create {absent}")
    assert DEFAULT_CONFIG_FILE == "/etc/speakd/speakd.toml"  # what systemd/speakd.service passes too


def test_the_example_ships_no_access_key_and_is_otherwise_a_config_speakd_accepts():
    example = REPO / "speakd.example.toml"
    config = load_config(example, environ={})
    assert config.auth.access_keys == {} and config.auth.jwt_secret == ""
    text = example.read_text()
    # The commented example, uncommented, is a table speakd reads (and check-config warns of).
    line = next(line for line in text.splitlines() if line.startswith("# access_keys = "))
    uncommented = tomllib.loads(line.removeprefix("# "))
    assert uncommented == {"access_keys": {"replace-with-a-long-random-key": "<customer id>"}}
    assert "secrets.token_urlsafe(32)" in text
