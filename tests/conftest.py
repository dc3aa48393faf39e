"""Shared fixtures. Anything that touches Asterisk uses `ari_settings`, which either reads
SPEAKD_TEST_ARI_URL/_USER/_PASSWORD (an Asterisk you run, with asterisk-config's test dialplan)
or brings the sandbox up once per session (and leaves it up; scripts/test brings it down).
Tests using it are marked `asterisk` automatically, so `-m "not asterisk"` runs without one."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import pytest_asyncio

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `harness` importable however pytest imports us

from harness.ari import Ari, AriApp
from harness.calls import (
    ConfBridgeRoom,
    MixingConference,
    TwoPartyCall,
    start_confbridge_room,
    start_mixing_conference,
    start_two_party_call,
)
from harness.host import CpuTimes, describe
from harness.second_asterisk import SecondAsterisk, second_asterisk_for_session, second_asterisk_up

REPO = Path(__file__).resolve().parent.parent


# Tests judged by ear record a real-time system on a shared host: a burst of load from outside
# can cost a recording a few frames. They run again (twice at most, after a pause long enough to
# outlast the minute-long bursts seen on CI) before they fail, pytest's summary lists every
# rerun, and a failure says what the host was doing.
BY_EAR_RERUNS = pytest.mark.flaky(reruns=2, reruns_delay=30)
HOST_BEFORE = pytest.StashKey[CpuTimes]()


def pytest_collection_modifyitems(items):
    for item in items:
        if "ari_settings" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.asterisk)
        if item.get_closest_marker("by_ear"):
            item.add_marker(BY_EAR_RERUNS)
    # Tests that restart Asterisk run last, so no other test sees the restart.
    items.sort(key=lambda item: item.get_closest_marker("restarts_asterisk") is not None)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if item.get_closest_marker("by_ear"):
        if call.when == "setup":
            item.stash[HOST_BEFORE] = CpuTimes.now()
        elif call.when == "call" and report.failed and HOST_BEFORE in item.stash:
            report.sections.append(("host during the test", describe(item.stash[HOST_BEFORE], CpuTimes.now())))
    return report


def pytest_terminal_summary(terminalreporter):
    """Why each rerun test failed before it passed (the summary lists only its name): a flake
    seen once on CI is then diagnosable from CI's log."""
    reruns = terminalreporter.stats.get("rerun", [])
    if not reruns:
        return
    terminalreporter.section("why tests were rerun")
    for report in reruns:
        errors = [line for line in report.longreprtext.splitlines() if line.startswith("E ")]
        terminalreporter.write_line(f"{report.nodeid}: {' | '.join(errors[:3])[:1500]}")
        for name, text in report.sections:
            if name == "host during the test":
                terminalreporter.write_line(f"  host: {text.strip()}")


@pytest.fixture(scope="session")
def ari_settings() -> dict[str, str]:
    if os.environ.get("SPEAKD_TEST_ARI_URL"):
        return {
            "url": os.environ["SPEAKD_TEST_ARI_URL"].rstrip("/"),
            "user": os.environ.get("SPEAKD_TEST_ARI_USER", "speakd"),
            "password": os.environ.get("SPEAKD_TEST_ARI_PASSWORD", "speakd"),
        }
    up = subprocess.run([sys.executable, "-m", "speakd.sandbox", "up"], cwd=REPO, capture_output=True, text=True)
    if up.returncode:
        pytest.fail(f"sandbox did not come up (set SPEAKD_TEST_ARI_URL to use another Asterisk):\n{up.stderr}")
    env = subprocess.run(
        [sys.executable, "-m", "speakd.sandbox", "env"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    values = dict(line.split("=", 1) for line in env.splitlines() if "=" in line)
    return {
        "url": values["SPEAKD_TEST_ARI_URL"],
        "user": values["SPEAKD_TEST_ARI_USER"],
        "password": values["SPEAKD_TEST_ARI_PASSWORD"],
    }


@pytest.fixture(scope="session")
def ari_url(ari_settings) -> str:
    """HTTP base of the test Asterisk, without /ari (e.g. http://127.0.0.1:18088)."""
    return ari_settings["url"]


@pytest.fixture(scope="session")
def ari_auth(ari_settings) -> tuple[str, str]:
    return ari_settings["user"], ari_settings["password"]


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def ari(ari_url, ari_auth):
    client = Ari(ari_url, *ari_auth)
    yield client
    await client.close()


@pytest.fixture(scope="session")
def _second_asterisk_session(ari_settings):
    with second_asterisk_for_session(ari_settings["url"]):
        yield


@pytest.fixture
def second_asterisk(_second_asterisk_session) -> SecondAsterisk:
    """A second Asterisk, up (the sandbox's instance 2: harness/second_asterisk.py); skips where
    the sandbox cannot run it."""
    return second_asterisk_up()


@pytest_asyncio.fixture(loop_scope="session")
async def second_ari(second_asterisk):
    client = Ari(second_asterisk.url, second_asterisk.user, second_asterisk.password)
    yield client
    await client.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def harness_app(ari):
    """The tests' own Stasis app (its websocket stays open for the session)."""
    app = await AriApp(ari, f"speakd-test-harness-{uuid.uuid4().hex[:6]}").connect()
    yield app
    await app.close()


@pytest_asyncio.fixture(loop_scope="session")
async def make_two_party_call(ari):
    """`await make_two_party_call(max_seconds=300)` -> a ready TwoPartyCall; all hung up at teardown."""
    made: list[TwoPartyCall] = []

    async def make(max_seconds: int = 300, variables: dict[str, str] | None = None) -> TwoPartyCall:
        call = await start_two_party_call(ari, max_seconds=max_seconds, variables=variables)
        made.append(call)
        return call

    yield make
    for call in made:
        await call.hangup()


@pytest_asyncio.fixture(loop_scope="session")
async def two_party_call(make_two_party_call) -> TwoPartyCall:
    """One ready alice<->bob call; `.channel_id` is the call (A1)."""
    return await make_two_party_call()


@pytest_asyncio.fixture(loop_scope="session")
async def mixing_conference(ari, harness_app):
    """`await mixing_conference(n=3)` -> an ARI mixing bridge (`.bridge_id`) with n phones."""
    made: list[MixingConference] = []

    async def make(n: int = 2, max_seconds: int = 300, variables: dict[str, str] | None = None) -> MixingConference:
        conf = await start_mixing_conference(ari, harness_app, n=n, max_seconds=max_seconds, variables=variables)
        made.append(conf)
        return conf

    yield make
    for conf in made:
        await conf.hangup()


@pytest_asyncio.fixture(loop_scope="session")
async def confbridge_room(ari):
    """`await confbridge_room(n=3, room=None)` -> a dialplan ConfBridge room (`.room`) with n phones."""
    made: list[ConfBridgeRoom] = []

    async def make(
        n: int = 2, room: str | None = None, max_seconds: int = 300, variables: dict[str, str] | None = None
    ) -> ConfBridgeRoom:
        conf = await start_confbridge_room(ari, n=n, room=room, max_seconds=max_seconds, variables=variables)
        made.append(conf)
        return conf

    yield make
    for conf in made:
        await conf.hangup()
