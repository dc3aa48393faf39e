"""``speakd run``, the real command line as a subprocess: which config file it runs on, what it
refuses to start with, and the warnings it logs at start."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from speakd.config import DEFAULT_CONFIG_FILE

REPO = Path(__file__).resolve().parents[2]
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("SPEAKD_")}


def _speakd_run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "speakd", "run", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**CLEAN_ENV, **(env or {})},
    )


def test_run_without_a_config_file_refuses_and_says_how_to_name_one():
    if Path(DEFAULT_CONFIG_FILE).exists():
        pytest.skip(f"{DEFAULT_CONFIG_FILE} exists here: speakd run would run on it")
    result = _speakd_run()
    assert result.returncode == 2
    assert result.stderr == (
        "speakd: configuration error: no config file: pass -c FILE, set SPEAKD_CONFIG=FILE, "
        f"or create {DEFAULT_CONFIG_FILE} (speakd.example.toml has every key)\n"
    )
    assert result.stdout == ""


def test_run_lists_every_configuration_error_and_does_not_start(tmp_path):
    config = tmp_path / "speakd.toml"
    config.write_text("[server]\nport = 'http'\n[media]\ncodec = 'slin16'\n")
    result = _speakd_run(env={"SPEAKD_CONFIG": str(config), "SPEAKD_LOG_LEVEL": "loud"})
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0] == "speakd: configuration error: [server] port must be a number"
    assert lines[1].startswith("speakd: configuration error: media.codec must be 'ulaw' or 'alaw', not 'slin16'")
    assert lines[2].startswith("speakd: configuration error: log.level must be one of")
    assert lines[3:] == [f"speakd: 3 configuration errors in {config}: not started"]


def test_run_logs_its_config_file_and_warns_of_a_published_access_key(tmp_path):
    config = tmp_path / "speakd.toml"
    config.write_text(
        f"""
[server]
port = 0
[ari]
url = "http://127.0.0.1:1"
password = "secret"
[store]
path = "{tmp_path / "speakd.sqlite3"}"
[auth]
access_keys = {{ "dev-accesskey" = "c1" }}
[log]
format = "json"
[piper]
enabled = false
"""
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "speakd", "run", "-c", str(config)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**CLEAN_ENV, "SPEAKD_ARI_PASSWORD": "from-env"},
    )
    events: dict[str, dict] = {}
    try:
        deadline = time.monotonic() + 60
        while "config_warning" not in events and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stderr], [], [], deadline - time.monotonic())
            line = proc.stderr.readline() if ready else ""
            if not line:
                break
            if line.startswith("{"):
                event = json.loads(line)
                events.setdefault(event["event"], event)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert events["config_file"]["path"] == str(config)
    assert events["config_file"]["from_environment"] == ["SPEAKD_ARI_PASSWORD"]  # names, never values
    warning = events["config_warning"]
    assert warning["level"] == "warning"
    assert warning["problem"].startswith(f"auth.access_keys in {config}: the access key of customer c1 is ")
    assert "dev-accesskey" not in json.dumps(warning)
