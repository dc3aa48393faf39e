"""Choosing the store: ``[store] path`` (SQLite, the default) or ``[store] url`` (PostgreSQL),
never both; the URL's password never shown; a store speakd cannot open stops ``speakd run``
with a sentence that names it."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from speakd import config_check
from speakd.config import read_config
from speakd.store import open_store
from speakd.store.postgres import PostgresStore
from speakd.store.sqlite import SqliteStore

REPO = Path(__file__).resolve().parents[2]
URL = "postgresql://speakd:s3cret@db.example:5433/speakd"


def _problems(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> list[str]:
    path = tmp_path / "speakd.toml"
    path.write_text(text)
    return read_config(path, environ or {}).problems


def test_the_store_is_sqlite_unless_a_url_is_given(tmp_path):
    reading = read_config(None, {})
    assert reading.problems == [] and isinstance(open_store(reading.config.store), SqliteStore)
    reading = read_config(None, {"SPEAKD_STORE_URL": URL})
    assert reading.problems == []
    store = open_store(reading.config.store)
    assert isinstance(store, PostgresStore) and store.server == "db.example:5433"


def test_path_and_url_both_set_is_a_configuration_error_naming_both(tmp_path):
    both = "store.path and store.url are both set: set store.path for SQLite or store.url for PostgreSQL"
    assert _problems(tmp_path, f'[store]\npath = "/tmp/s.sqlite3"\nurl = "{URL}"\n') == [both]
    assert _problems(tmp_path, '[store]\npath = "/tmp/s.sqlite3"\n', {"SPEAKD_STORE_URL": URL}) == [both]
    assert _problems(tmp_path, f'[store]\nurl = "{URL}"\n') == []


def test_a_url_that_is_not_postgresql_is_refused_without_its_password(tmp_path):
    (problem,) = _problems(tmp_path, '[store]\nurl = "mysql://u:hunter2@h/db"\n')
    assert problem.startswith("store.url must be postgresql://user:password@host:port/database")
    assert "hunter2" not in problem and "mysql://u:***@h/db" in problem
    (problem,) = _problems(tmp_path, '[store]\nurl = "postgresql://u:hunter2@h:99999/db"\n')
    assert "invalid port" in problem and "hunter2" not in problem


def test_check_config_shows_the_url_with_its_password_masked(tmp_path):
    path = tmp_path / "speakd.toml"
    path.write_text(f'[store]\nurl = "{URL}?password=again"\n')
    out, err = io.StringIO(), io.StringIO()
    config_check.run(read_config(path, {}), out, err)
    assert "s3cret" not in out.getvalue() + err.getvalue() and "again" not in out.getvalue() + err.getvalue()
    shown = json.loads(out.getvalue())["store"]
    assert shown["url"] == "postgresql://speakd:***@db.example:5433/speakd?password=***"


def test_run_on_a_store_of_a_newer_speakd_stops_with_a_sentence(tmp_path):
    store = tmp_path / "speakd.sqlite3"
    with sqlite3.connect(store) as db:
        db.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, description TEXT, applied TEXT)")
        db.execute("INSERT INTO schema_version VALUES (1000, 'future', '')")
    config = tmp_path / "speakd.toml"
    config.write_text(f'[store]\npath = "{store}"\n[log]\nformat = "json"\n[piper]\nenabled = false\n')
    result = subprocess.run(
        [sys.executable, "-m", "speakd", "run", "-c", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("SPEAKD_")},
    )
    assert result.returncode == 1
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    (refusal,) = [event for event in events if event["event"] == "store_not_opened"]
    assert f"the store ({store}) has schema version 1000" in refusal["error"]
    assert "Traceback" not in result.stderr
