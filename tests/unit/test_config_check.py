"""``speakd check-config``: the effective config on stdout, every problem and their count on stderr."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from speakd.config import DEFAULT_CONFIG_FILE
from speakd.config_check import PUBLIC_ACCESS_KEYS

REPO = Path(__file__).resolve().parents[2]


def _check_config(
    tmp_path: Path, text: str | None, stdout=subprocess.PIPE, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """check-config on ``text`` written to a file (None: no -c)."""
    args = []
    if text is not None:
        config = tmp_path / "speakd.toml"
        config.write_text(text)
        args = ["--config", str(config)]
    return subprocess.run(
        [sys.executable, "-m", "speakd", "check-config", *args],
        cwd=REPO,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("SPEAKD_")}, **(env or {})},
    )


GOOD_CONFIG = """
[ari]
url = "http://127.0.0.1:8088"
password = "secret"
[auth]
access_keys = { "k" = "c" }
[tts]
default_provider = "piper"
"""


def test_check_config_is_quiet_and_0_for_a_good_config(tmp_path):
    result = _check_config(tmp_path, GOOD_CONFIG)
    assert (result.returncode, result.stderr) == (0, "")
    assert '"default_provider": "piper"' in result.stdout


def test_check_config_warns_of_no_access_keys_and_an_empty_ari_password(tmp_path):
    result = _check_config(tmp_path, GOOD_CONFIG.replace('password = "secret"', "").replace('{ "k" = "c" }', "{}"))
    assert result.returncode == 0  # warnings: it runs, but probably not as meant
    lines = result.stderr.splitlines()
    assert [line.split(":")[1].strip() for line in lines[:2]] == ["warning", "warning"]
    assert "no access keys" in lines[0] and "token_urlsafe" in lines[0] and "ari.password is empty" in lines[1]
    config = tmp_path / "speakd.toml"
    assert lines[2:] == [f"speakd: {config}: 0 configuration errors, 0 errors, 2 warnings; speakd runs with it"]


def test_check_config_is_an_error_when_the_default_provider_cannot_be_used(tmp_path):
    result = _check_config(tmp_path, GOOD_CONFIG.replace('"piper"', '"elevenlabs"'))
    assert result.returncode == 1
    assert "speakd: error: tts.default_provider is 'elevenlabs', which cannot be used" in result.stderr
    assert "usable one: piper" in result.stderr


def test_check_config_is_an_error_for_a_bad_provider_value(tmp_path):
    result = _check_config(tmp_path, GOOD_CONFIG + '[piper]\nthreads = "x"\n')
    assert result.returncode == 1
    assert result.stderr.startswith("speakd: error: tts.default_provider is 'piper', which cannot be used")
    assert "piper: 'threads' must be an integer, not 'x'" in result.stderr
    assert "0 configuration errors, 1 error, 0 warnings; speakd runs with it" in result.stderr
    # A provider that is not the default is an error too: its section says it was meant to work.
    result = _check_config(tmp_path, GOOD_CONFIG + '[aws]\nregion = "us-east-1"\n')
    assert result.returncode == 1
    assert result.stderr.startswith("speakd: error: aws: no credentials configured")


def test_check_config_into_a_closed_pipe_ends_without_a_traceback(tmp_path):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader (`| head`) is gone before anything is written
    try:
        result = _check_config(tmp_path, GOOD_CONFIG, stdout=write_end)
    finally:
        os.close(write_end)
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
    assert result.returncode == 0


def test_check_config_lists_every_problem_and_counts_them(tmp_path):
    text = GOOD_CONFIG.replace("[ari]", "[ari]\nusr = 'x'\nrequest_timeout = 'soon'").replace(
        "[tts]", "[media]\ncodec = 'slin16'\n[nope]\n[tts]"
    )
    result = _check_config(tmp_path, text + '[piper]\nthreads = "x"\n[aws]\nregion = "us-east-1"\n')
    assert result.returncode == 2  # speakd run would not start
    assert result.stdout == ""  # no effective config: there is none
    lines = result.stderr.splitlines()
    assert [line.split(": ")[1] for line in lines[:-1]] == [
        "configuration error",  # [nope]
        "configuration error",  # usr
        "configuration error",  # request_timeout
        "configuration error",  # codec
        "error",  # piper, the default provider
        "error",  # aws, present
    ]
    for words in (
        "nope",
        "usr",
        "[ari] request_timeout must be a number",
        "media.codec",
        "threads",
        "aws: no credentials",
    ):
        assert sum(words in line for line in lines[:-1]) == 1, words
    config = tmp_path / "speakd.toml"
    assert lines[-1] == f"speakd: {config}: 4 configuration errors, 2 errors, 0 warnings; speakd run refuses it"


def test_a_refused_value_is_not_judged_again_at_its_default(tmp_path):
    # default_provider = 5 is refused, and the default it keeps (elevenlabs, unusable here) is not
    # reported as a second problem; nor is an access key or password that was given but refused.
    text = GOOD_CONFIG.replace('"piper"', "5").replace('password = "secret"', "password = 1")
    result = _check_config(tmp_path, text.replace('{ "k" = "c" }', '"k=c"'))
    assert result.returncode == 2
    assert "0 errors, 0 warnings" in result.stderr
    assert "[tts] default_provider must be a string" in result.stderr
    assert "[ari] password must be a string" in result.stderr
    assert "[auth] access_keys must be a table" in result.stderr


@pytest.mark.parametrize("key", sorted(PUBLIC_ACCESS_KEYS))
def test_check_config_warns_of_a_published_access_key_naming_where_not_what(tmp_path, key):
    result = _check_config(tmp_path, GOOD_CONFIG.replace('{ "k" = "c" }', f'{{ "k" = "c", "{key}" = "c2" }}'))
    assert result.returncode == 0
    config = tmp_path / "speakd.toml"
    (warning, count) = result.stderr.splitlines()
    assert warning.startswith(f"speakd: warning: auth.access_keys in {config}: the access key of customer c2 is ")
    assert "anyone can use it" in warning and "secrets.token_urlsafe(32)" in warning
    assert key not in result.stderr and key not in result.stdout  # the location, never the key
    assert count.endswith("1 warning; speakd runs with it")


def test_check_config_names_the_variable_that_set_a_published_key(tmp_path):
    result = _check_config(tmp_path, GOOD_CONFIG, env={"SPEAKD_AUTH_ACCESS_KEYS": "dev-accesskey=c1"})
    assert result.returncode == 0
    assert result.stderr.startswith("speakd: warning: SPEAKD_AUTH_ACCESS_KEYS: the access key of customer c1 is ")
    assert "scripts/dev-up" in result.stderr


def test_check_config_without_c_takes_speakd_config_else_refuses(tmp_path):
    if Path(DEFAULT_CONFIG_FILE).exists():
        pytest.skip(f"{DEFAULT_CONFIG_FILE} exists here: check-config without -c would read it")
    result = _check_config(tmp_path, None)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("speakd: configuration error: no config file: pass -c FILE, set SPEAKD_CONFIG=")
    config = tmp_path / "chosen.toml"
    config.write_text(GOOD_CONFIG)
    result = _check_config(tmp_path, None, env={"SPEAKD_CONFIG": str(config)})
    assert (result.returncode, result.stderr) == (0, "")
