from __future__ import annotations

import pytest

from speakd.config import ConfigError, load_config


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
