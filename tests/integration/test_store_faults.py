"""The store's disk full under a live call: requests that need a write are 503, the call keeps
speaking, nothing stored before is lost, and the writes catch up once there is room again.

The store is put on a tmpfs of its own (a few MiB) that the test fills to the last byte: a
real ENOSPC, as root (the CI user, for whom ``chmod`` makes nothing read-only) and without
touching any other file system. Mounting needs root; the test is skipped without it. A store
that turns read-only is tested at the SQLite level in tests/unit/test_store_unwritable.py (a
tmpfs cannot be remounted read-only while speakd holds its files open for writing).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from harness.audio import render_piper
from harness.daemon import Api, SpeakdProcess
from harness.hearing import GREETING, assert_heard

pytestmark = pytest.mark.asyncio(loop_scope="session")


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str = "4m"):
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the file system has no byte left; returns it (delete it to make room)."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as out:
        for chunk in (1 << 20, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while True:
                    out.write(b"\0" * chunk)
    with open(directory / "probe", "wb", buffering=0) as probe, pytest.raises(OSError) as full:
        probe.write(b"\0" * 4096)
    assert full.value.errno == errno.ENOSPC
    (directory / "probe").unlink()
    return filler


def say_statuses(db_path: Path) -> list[str]:
    """What is on disk, read by a connection of the test's own (not speakd's memory)."""
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db:
        return [row[0] for row in db.execute("SELECT status FROM says ORDER BY seq")]


@pytest.mark.by_ear
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting the store's tmpfs needs root (CI runs as root)")
async def test_disk_full_is_503_while_the_call_keeps_speaking_and_writes_catch_up(
    ari_settings, tmp_path, make_two_party_call
):
    with tiny_tmpfs(tmp_path / "store") as store_dir:
        db_path = store_dir / "speakd.sqlite3"
        daemon = SpeakdProcess(
            tmp_path,
            ari_settings["url"],
            ari_settings["user"],
            ari_settings["password"],
            transport="websocket",
            env={"SPEAKD_STORE_PATH": str(db_path)},  # overrides the config's [store] path
        )
        await daemon.start()
        api = Api(daemon.base)
        try:
            call, other_call = await make_two_party_call(), await make_two_party_call()
            speaking_id = await api.start_session(call.channel_id, direction="out")

            assert (await api.say(speaking_id, GREETING)).status == 200  # stored, queued
            filler = fill(store_dir)

            refused = await api.say(speaking_id, "This one cannot be stored.")
            assert refused.status == 503, refused
            assert refused.body["error"]["reason"] == "unavailable"
            assert "disk is full" in refused.message and str(db_path) in refused.message
            created = await api.create(other_call.channel_id, direction="out")
            assert (created.status, created.body["error"]["reason"]) == (503, "unavailable")

            # The say queued before plays to its end; speakd tells its state from memory ...
            await asyncio.sleep(len(render_piper(GREETING)) / 8000 + 1.5)
            says = (await api.request("GET", f"/speakings/{speaking_id}/says")).body["result"]
            assert [s["status"] for s in says] == ["played"]
            assert (await api.get(speaking_id)).body["status"] == "active"
            # ... while the disk still has it as queued: the write is waiting, not lost.
            assert say_statuses(db_path) == ["queued"]

            filler.unlink()
            deadline = time.monotonic() + 15
            while say_statuses(db_path) != ["played"]:
                assert time.monotonic() < deadline, "the kept say state was not written once there was room"
                await asyncio.sleep(0.2)
            # Writes resume: a new session is stored again.
            created = await api.create(other_call.channel_id, direction="out")
            assert created.status == 201, created
            assert (await api.stop(created.body["id"])).status == 200

            assert_heard(await call.recording("alice"), render_piper(GREETING), "alice")
            await api.wait_status(speaking_id, "stopped")
        finally:
            await api.close()
            await daemon.stop()
        log = daemon.log_text()
        assert "store_unwritable" in log and "store_writable_again" in log
        assert "Traceback" not in log
        with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db:
            stored = dict(db.execute("SELECT id, status FROM speakings").fetchall())
        assert stored == {speaking_id: "stopped", created.body["id"]: "stopped"}
