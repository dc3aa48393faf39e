"""docker/compose.yaml as a user runs it: both images built, speakd healthy beside the Asterisk
container, and a session on a call in that Asterisk heard by the party.

Runs under podman and podman-compose (Debian's; .ci/run installs them) with base images made
by docker/local-base-images, since no image registry is reachable here. Skips, saying why,
where that engine is missing or cannot run a container, and with SPEAKD_TEST_CONTAINERS=0.
Images stay in podman's storage, so a second run on the same machine rebuilds only what
changed (a cold build here: about 2 min for the base roots and 2 to 5 min for the images).
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from harness.ari import Ari
from harness.audio import render_piper
from harness.calls import start_two_party_call
from harness.daemon import CUSTOMER_A, KEY_A, Api, free_port
from harness.hearing import GREETING, assert_heard
from podman import engine_env, missing_engine, prepare_base_images, run, tail

PROJECT = "speakdtest"
BUILD_TIMEOUT_S = 1500
UP_TIMEOUT_S = 180
HEALTHY_WITHIN_S = 120

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.containers]


# Laid over compose.yaml (`-f compose.yaml -f <this>`, as a user would add their own): Piper with
# the same timing on every rendering, as the integration tests' daemon, so the recording can be
# compared with the harness's reference rendering frame by frame.
TEST_OVERRIDE = """
services:
  speakd:
    environment:
      SPEAKD_PIPER_NOISE_W_SCALE: "0"
"""


def _compose(env: dict[str, str], log: Path, *args: str, timeout: float, check: bool = True) -> None:
    """podman-compose 1.0.3 exits 0 even when a podman command it ran failed: read its
    `exit code: N` lines too."""
    override = log.parent / "compose.test.yaml"
    override.write_text(TEST_OVERRIDE)
    files = ["-f", "compose.yaml", "-f", str(override)]
    proc = run(["podman-compose", "-p", PROJECT, *files, *args], env, timeout, log)
    if not check:
        return
    codes = [int(c) for c in re.findall(r"^exit code: (\d+)$", proc.stdout, re.MULTILINE)]
    if proc.returncode or any(codes):
        pytest.fail(f"podman-compose {' '.join(args)} failed (exit codes {codes}):\n{tail(log)}")


def _container(env: dict[str, str], service: str) -> str:
    out = subprocess.run(
        [
            "podman",
            "ps",
            "-q",
            "--filter",
            f"label=com.docker.compose.project={PROJECT}",
            "--filter",
            f"label=com.docker.compose.service={service}",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.split()
    assert len(out) == 1, f"expected one running {service} container, found {out}"
    return out[0]


def _container_log(env: dict[str, str], service: str) -> str:
    logs = subprocess.run(
        ["podman", "logs", "--tail", "40", _container(env, service)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return logs.stdout + logs.stderr


@pytest.fixture(scope="module")
def compose_stack(tmp_path_factory):
    """The compose project up with the test's ports and access key; down (volumes too) after."""
    reason = missing_engine("podman-compose")
    if reason:
        pytest.skip(f"container test skipped: {reason}")
    work = tmp_path_factory.mktemp("compose")
    log = work / "compose.log"
    env = {
        **engine_env(work),
        "BUILDAH_FORMAT": "docker",  # the OCI format has no HEALTHCHECK: buildah would drop it
        "SPEAKD_ARI_HOST_PORT": str(free_port()),
        "SPEAKD_API_HOST_PORT": str(free_port()),
        "SPEAKD_AUTH_ACCESS_KEYS": f"{KEY_A}={CUSTOMER_A}",
    }
    started = time.monotonic()
    prepare_base_images(env, log)
    timings = {"base images": time.monotonic() - started}

    _compose(env, log, "down", "-v", timeout=UP_TIMEOUT_S, check=False)  # what a killed run left
    started = time.monotonic()
    _compose(env, log, "build", timeout=BUILD_TIMEOUT_S)
    timings["build"] = time.monotonic() - started
    try:
        _compose(env, log, "up", "-d", timeout=UP_TIMEOUT_S)
        yield {
            "env": env,
            "log": log,
            "api": f"http://127.0.0.1:{env['SPEAKD_API_HOST_PORT']}",
            "ari": f"http://127.0.0.1:{env['SPEAKD_ARI_HOST_PORT']}",
            "timings": timings,
        }
    finally:
        _compose(env, log, "down", "-v", timeout=UP_TIMEOUT_S)
        # podman-compose 1.0.3's down leaves the network (docker compose's removes it)
        run(["podman", "network", "rm", f"{PROJECT}_default"], env, 60, log)


def _health(api: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"{api}/health", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


async def _wait_healthy(env: dict[str, str], container: str) -> None:
    """Runs the image's own HEALTHCHECK (podman schedules it with systemd timers, and there is no
    systemd here) until it passes."""
    deadline = time.monotonic() + HEALTHY_WITHIN_S
    while True:
        check = await asyncio.create_subprocess_exec(
            "podman", "healthcheck", "run", container, env=env, stdout=asyncio.subprocess.DEVNULL
        )
        if await asyncio.wait_for(check.wait(), 30) == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{container} not healthy within {HEALTHY_WITHIN_S} s")
        await asyncio.sleep(1)


async def _wait_say_played(api: Api, speaking_id: str, say_id: str, within: float = 30.0) -> dict:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        reply = await api.request("GET", f"/speakings/{speaking_id}/says")
        assert reply.status == 200, reply
        item = next(i for i in reply.body["result"] if i["say_id"] == say_id)
        if item["status"] not in ("queued", "playing"):
            return item
        await asyncio.sleep(0.1)
    raise AssertionError(f"say {say_id} still {item['status']} after {within} s")


# Judged by ear like tests/integration's by_ear tests (rerun before failing), but only the
# test itself: a failed build or start-up is not retried.
@pytest.mark.flaky(reruns=2, reruns_delay=10, only_rerun=["AssertionError"])
async def test_compose_runs_speakd_beside_asterisk_and_a_call_hears_it(compose_stack):
    env, log = compose_stack["env"], compose_stack["log"]
    print(f"container build times: {compose_stack['timings']}")
    for service in ("asterisk", "speakd"):
        await _wait_healthy(env, await asyncio.to_thread(_container, env, service))
    status, health = _health(compose_stack["api"])
    # connected to the Asterisk container's ARI, which has chan_websocket (Asterisk 22)
    assert (status, health["ari_connected"], health["media_transport"]) == (200, True, "websocket"), health

    ari = Ari(compose_stack["ari"], "speakd", "speakd")
    api = Api(compose_stack["api"], KEY_A)
    try:
        call = await start_two_party_call(ari, max_seconds=120, test_id=f"compose-{uuid.uuid4().hex[:8]}")
        try:
            speaking_id = await api.start_session(call.channel_id, direction="out")
            said = await api.say(speaking_id, GREETING)
            assert said.status == 200, said
            item = await _wait_say_played(api, speaking_id, said.body["say_id"])
            assert item["status"] == "played", item
            await asyncio.sleep(1.0)  # MixMonitor drops what it has not written when the call hangs up
            assert_heard(await call.recording("alice"), render_piper(GREETING), "alice")
            await api.wait_status(speaking_id, "stopped", timeout=10)  # the hangup ended it
        finally:
            await call.hangup()
    except BaseException:
        logs = await asyncio.to_thread(_container_log, env, "speakd")
        print(f"--- speakd container log ---\n{logs}\n--- compose log ---\n{tail(log)}")
        raise
    finally:
        await api.close()
        await ari.close()
