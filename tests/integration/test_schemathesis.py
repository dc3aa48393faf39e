"""Schemathesis against the served OpenAPI document: every check, every phase (stateful too).

It runs against a real daemon with a real call in the sandbox Asterisk (its channel id is put in
the creates schemathesis means to be valid, see harness/schemathesis_hooks.py), so sessions are
created, spoken on, flushed, stopped and deleted for real. Bounded: ``--max-time`` for the run
and a hard timeout around it.

Configured away, each with its reason:
* ``use_after_free``: a deleted session stays readable (GET answers 200 with tm_delete set): the
  API keeps what was said on record, as the DELETE operation of the document says.
* ``positive_data_acceptance``: a request the document allows can still be refused (400, with
  a reason) for what the document cannot know: this daemon's configuration (a provider not
  configured here, SSML sent to Piper, which takes none) or the session's state (flush of a
  stopped session). A 5xx or a response off the document is still caught by the other checks.
* ``GET /v1.0/ws`` and ``GET /v1.0/speakings/{id}/stream`` are not run: they are WebSocket
  upgrades, which schemathesis does not speak; tests/integration/test_events.py and
  test_stream.py cover them.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import jwt
import pytest
import pytest_asyncio
from harness.daemon import CUSTOMER_A, JWT_SECRET, SpeakdProcess

pytestmark = pytest.mark.asyncio(loop_scope="session")

TESTS = Path(__file__).resolve().parents[1]
MAX_TIME_S = 75


@pytest_asyncio.fixture(loop_scope="session")
async def daemon(ari_settings, tmp_path):
    process = SpeakdProcess(
        tmp_path, ari_settings["url"], ari_settings["user"], ari_settings["password"], transport="websocket"
    )
    await process.start()
    yield process
    await process.stop()


async def test_schemathesis_finds_no_server_error_and_no_nonconformance(daemon, make_two_party_call, tmp_path):
    call = await make_two_party_call(max_seconds=MAX_TIME_S + 120)
    token = jwt.encode({"exp": int(time.time()) + 3600, "customer_id": CUSTOMER_A}, JWT_SECRET, algorithm="HS256")
    command = [
        *(sys.executable, "-m", "schemathesis.cli", "run", f"{daemon.base}/v1.0/openapi.json"),
        *("--checks", "all", "--exclude-checks", "use_after_free,positive_data_acceptance"),
        *("--phases", "examples,coverage,fuzzing,stateful"),
        *("--exclude-path", "/v1.0/ws", "--exclude-path", "/v1.0/speakings/{id}/stream"),
        *("--header", f"Authorization: Bearer {token}"),
        *("--max-examples", "30", "--max-time", str(MAX_TIME_S), "--workers", "1"),
        *("--request-timeout", "10", "--seed", "1", "--no-color"),
        *("--report", "junit", "--report-dir", str(tmp_path / "report")),
    ]
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "harness.schemathesis_hooks",
        "SPEAKD_SCHEMATHESIS_CALL_ID": call.channel_id,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    run = await asyncio.create_subprocess_exec(
        *command, cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        output, _ = await asyncio.wait_for(run.communicate(), MAX_TIME_S + 120)
    except TimeoutError:
        run.kill()
        await run.wait()
        raise
    text = output.decode(errors="replace")
    assert run.returncode == 0, text[-20000:]
    # speakd's own handler never crashed (aiohttp itself logs a traceback for a request it
    # cannot parse, e.g. a header with control characters, and answers it 400).
    assert "request_crashed" not in daemon.log_text()
