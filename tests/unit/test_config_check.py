"""``speakd check-config``: the effective config on stdout, errors and warnings on stderr."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _check_config(tmp_path: Path, text: str, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    config = tmp_path / "speakd.toml"
    config.write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "speakd", "check-config", "--config", str(config)],
        cwd=REPO,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("SPEAKD_")},
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
    assert [line.split(":")[1].strip() for line in lines] == ["warning", "warning"]
    assert "no access keys" in lines[0] and "ari.password is empty" in lines[1]


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
