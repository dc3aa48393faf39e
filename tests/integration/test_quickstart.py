"""The README's quick start, run exactly as a newcomer pastes it: the block is read from README.md
(the fenced block after the ``quickstart`` marker), not copied here, and run by bash against a
real daemon and the sandbox Asterisk. What alice heard is judged on the recording the block saves.

The block reads ``SPEAKD_API``/``SPEAKD_KEY`` (defaults: what scripts/dev-up serves), so the test
points it at its own daemon; everything else runs as written, from a directory whose ``.venv`` is
the repository's (the block calls ``.venv/bin/python -m speakd.sandbox``).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shutil

import pytest
from harness.audio import FRAME_S, read_wav, render_piper
from harness.daemon import KEY_A, REPO
from harness.hearing import (
    assert_heard,
    assert_heard_text_within_a_word,
    assert_nothing_else,
    where_speech_stops,
)

from speakd.sandbox import ari_settings as sandbox_ari_settings

BLOCK_TIMEOUT_S = 120


def _readme_hook():
    """docs/hooks/readme_quickstart.py: the one reader of the README's quick-start block (the docs
    site shows the same block)."""
    path = REPO / "docs" / "hooks" / "readme_quickstart.py"
    spec = importlib.util.spec_from_file_location("readme_quickstart", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def quickstart_block() -> str:
    fenced = _readme_hook().quickstart_block((REPO / "README.md").read_text())
    return fenced.split("\n", 1)[1].rsplit("```", 1)[0]  # without its fences


def says_in(text: str) -> list[str]:
    """The texts the block says, in order."""
    return [json.loads(body)["text"] for body in re.findall(r"/say\" '(\{.*?\})'", text)]


def test_the_block_is_what_this_test_expects():
    """The test below judges the recording against the block's own texts: two says played
    whole, then a third cut by a flush."""
    block = quickstart_block()
    assert len(says_in(block)) == 3 and "/flush" in block and "hangup" in block


@pytest.mark.by_ear
@pytest.mark.one_transport
@pytest.mark.asyncio(loop_scope="session")
async def test_the_readme_quick_start_pasted_whole_is_heard(speakd, ari_settings, tmp_path):
    if ari_settings["url"] != sandbox_ari_settings()["url"]:
        pytest.skip("the quick start places its call in the sandbox Asterisk, not SPEAKD_TEST_ARI_URL's")
    if not (shutil.which("curl") and shutil.which("jq")):
        pytest.skip("the quick start needs curl and jq (apt-get install curl jq)")
    block = quickstart_block()
    first, second, cut = says_in(block)
    (tmp_path / ".venv").symlink_to(REPO / ".venv")
    env = {**os.environ, "SPEAKD_API": f"{speakd.base}/v1.0", "SPEAKD_KEY": KEY_A}
    run = await asyncio.create_subprocess_exec(
        "bash", "-c", block, cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(run.communicate(), BLOCK_TIMEOUT_S)
    except TimeoutError:
        run.kill()
        await run.wait()
        raise
    stdout, stderr = out.decode(), err.decode()
    print(stdout, stderr, sep="\n")
    assert run.returncode == 0, stderr
    assert "error" not in stdout + stderr.replace("sandbox:", ""), "the block printed an error"

    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    played = [line for line in lines if set(line) == {"status", "tm_play_start", "tm_play_end"}]
    assert [p["status"] for p in played] == ["played", "played"], played
    (heard,) = [line for line in lines if "heard_text" in line]
    assert heard["status"] == "interrupted"

    recording = read_wav((tmp_path / "alice.wav").read_bytes())
    lag_first = assert_heard(recording, render_piper(first), "alice (first say)")
    lag_second = assert_heard(recording, render_piper(second), "alice (second say)")
    assert lag_first < lag_second, "the says should be heard in the order they were sent"
    start_s, stopped_at = where_speech_stops(recording, cut, heard["played_ms"])
    assert_heard_text_within_a_word(cut, heard["heard_text"], len(heard["heard_text"]), stopped_at)
    first_s = lag_first * FRAME_S
    assert_nothing_else(recording, [(first_s, start_s + stopped_at)], "alice")
