"""systemd/speakd.service run by a real systemd: a Debian bookworm container booting systemd as
PID 1, speakd installed in it as the operations steps say, and what systemctl reports checked
against what speakd does with the sandbox Asterisk.

- start: `systemctl enable --now speakd` returns, and the unit reads active, only once ARI is
  connected: speakd reaches ARI through a proxy on this host that forwards to a closed port
  until the test opens it (meanwhile the unit is `activating` and the API answers 503);
- reload: `systemctl reload speakd` after a new `[auth] access_keys` in speakd.toml: the old
  key is a 401 and the new one a 200, and the process is the same;
- watchdog: a daemon that pings lives on, a stopped one (SIGSTOP) is killed and restarted.
  The unit's WatchdogSec=30 is shortened to 5 s by a drop-in, so the test waits seconds;
- stop: `systemctl stop speakd` with two sessions on live calls (one speaking) ends both
  (`stopped` in the store, `speaking_stopped` with reason `shutdown` to a client), removes every
  Asterisk object under speakd's app prefix, leaves the calls up, and exits 0 within
  TimeoutStopSec.

Install steps run (in /src/speakd, a copy of this repository), as docs/operations.md gives them
(steps 2 and 3, then "As a systemd service"), read from the page: documented_install_steps().

The container: `--network host` (speakd reaches the proxy and the test reaches speakd's API on
this host's loopback), `--cap-add SYS_ADMIN` (systemd builds the unit's namespaces:
ProtectSystem=, PrivateTmp=, ...) and `SYS_NICE` (the unit's ambient capability), not
`--privileged`: /proc/sys and /sys stay read-only to it, so its systemd leaves this host's
settings alone. This machine grants no CAP_SYS_RESOURCE, so systemd caps LimitNOFILE= and
LimitRTPRIO= at what it has.
The image (tests/containers/systemd.Containerfile, from docker/local-base-images' bookworm,
with speakd's pinned dependencies already in /opt/speakd/.venv) stays in podman's storage: a
warm run builds nothing and takes about 40 s. Skips as tests/containers/
test_compose.py does (no podman, not root, SPEAKD_TEST_CONTAINERS=0).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import shutil
import time
import tomllib
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from harness.calls import start_two_party_call
from harness.daemon import CUSTOMER_A, Api, free_port
from harness.events import WsEvents
from harness.hearing import LONG
from harness.proxy import TcpProxy
from podman import REPO, engine_env, missing_engine, prepare_base_images, run, tail

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.containers]

IMAGE = "localhost/speakd-systemd-test:latest"
CONTAINER = "speakd-systemd-test"
CONTAINERFILE = Path(__file__).with_name("systemd.Containerfile")
BUILD_TIMEOUT_S = 1500
WATCHDOG_S = 5
# What `pip install /path/to/speakd` needs of the repository, and what the steps install from it.
SOURCE = ["pyproject.toml", "README.md", "LICENSE", "speakd", "systemd", "speakd.example.toml"]
OPERATIONS = REPO / "docs" / "operations.md"
START = "systemctl daemon-reload && systemctl enable --now speakd"


def documented_install_steps() -> str:
    """docs/operations.md's steps as an admin follows them, read from the page (not copied here, so
    the page cannot drift from what is tested): step 2's venv and pip install (of /src/speakd, this
    repository's copy), then "As a systemd service" up to the start, which the test runs itself
    once it has edited the config as the page says to."""
    page = OPERATIONS.read_text()
    step2 = re.search(r"^2\. `(python3 -m venv .*)`$", page, re.M)
    assert step2, "docs/operations.md's step 2 (venv and pip install) not found"
    service = page[page.index("## As a systemd service") :]
    block = re.search(r"^```sh\n(.*?)^```$", service, re.S | re.M)
    assert block, "no sh block under docs/operations.md's 'As a systemd service'"
    lines = block.group(1).splitlines()
    assert START in lines, f"the documented steps no longer start the unit with `{START}`"
    install = lines[: lines.index(START)]
    return "\n".join(["cd /src/speakd", step2.group(1).replace("/path/to/speakd", "/src/speakd"), *install])


CONFIG = "/etc/speakd/speakd.toml"


def set_key(text: str, section: str, key: str, value: str) -> str:
    """`key = value` in `[section]` of a TOML text, as an admin edits the copied example: the
    key's line replaced, or written under the section's header when the section has none (an
    example that only shows it in a comment)."""
    lines = text.splitlines()
    headers = [i for i, line in enumerate(lines) if line.split("#")[0].strip() == f"[{section}]"]
    assert len(headers) == 1, f"speakd.example.toml has {len(headers)} [{section}] sections"
    start = headers[0] + 1
    end = next((i for i in range(start, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
    found = [i for i in range(start, end) if re.match(rf"{re.escape(key)}\s*=", lines[i])]
    if found:
        lines[found[0]] = f"{key} = {value}"
    else:
        lines.insert(start, f"{key} = {value}")
    return "\n".join(lines) + "\n"


def toml_string(value: str) -> str:
    return json.dumps(value)  # a TOML basic string, for the ASCII values written here


def access_keys(key: str) -> str:
    return f"{{ {toml_string(key)} = {toml_string(CUSTOMER_A)} }}"


@dataclass
class PbxHost:
    """The container: systemd as PID 1, speakd installed and configured, not yet started."""

    env: dict[str, str]
    log: Path
    api: str  # speakd's API, on this host's loopback
    app: str  # [ari] app: every Asterisk object speakd makes is named "<app>-..."
    key: str  # the access key speakd.toml holds now

    async def spawn(self, script: str, stdin: bytes | None = None) -> asyncio.subprocess.Process:
        with self.log.open("a") as out:
            out.write(f"\n$ podman exec {CONTAINER} sh -ec {script!r}\n")
        return await asyncio.create_subprocess_exec(
            *("podman", "exec", "-i", CONTAINER, "sh", "-ec", script),
            env=self.env,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )

    async def sh(self, script: str, stdin: bytes | None = None, timeout: float = 120, check: bool = True) -> str:
        proc = await self.spawn(script, stdin)
        out, _ = await asyncio.wait_for(proc.communicate(stdin), timeout)
        text = out.decode(errors="replace")
        with self.log.open("a") as log:
            log.write(text)
        if check and proc.returncode:
            raise AssertionError(f"`{script.strip()}` exited {proc.returncode}:\n{text}")
        return text

    async def unit(self) -> dict[str, str]:
        props = "ActiveState,SubState,StatusText,MainPID,NRestarts,Result,ExecMainCode,ExecMainStatus,WatchdogUSec"
        out = await self.sh(f"systemctl show speakd -p {props}")
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    async def require_active(self) -> dict[str, str]:
        unit = await self.unit()
        assert unit["ActiveState"] == "active", f"speakd is not running (did an earlier test fail?): {unit}"
        return unit

    async def write_config(self, text: str) -> None:
        await self.sh(f"cat > {CONFIG}", stdin=text.encode())  # the file keeps its owner and mode

    async def journal(self, lines: int = 60) -> str:
        return await self.sh(f"journalctl -u speakd --no-pager -o short-precise -n {lines}", check=False)

    async def health(self) -> tuple[int, dict]:
        """/health's status and body; (0, {}) while nothing listens."""
        try:
            async with aiohttp.ClientSession() as http, http.get(f"{self.api}/health") as resp:
                return resp.status, await resp.json(content_type=None)
        except aiohttp.ClientConnectionError:
            return 0, {}

    @contextlib.asynccontextmanager
    async def explained(self):
        """A failure prints speakd's journal and the end of the test's podman log."""
        try:
            yield
        except BaseException:
            print(f"--- journalctl -u speakd ---\n{await self.journal()}\n--- podman log ---\n{tail(self.log, 40)}")
            raise


async def until(check, within: float, what: str, interval: float = 0.5):
    """The first truthy value of `await check()` within `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        if value := await check():
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within} s")
        await asyncio.sleep(interval)


def _copy_source(dest: Path) -> Path:
    for name in SOURCE:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


@pytest.fixture(scope="module")
def pbx_image(tmp_path_factory):
    """The image, built where podman's storage lacks it or its dependencies changed."""
    reason = missing_engine()
    if reason:
        pytest.skip(f"container test skipped: {reason}")
    work = tmp_path_factory.mktemp("systemd")
    log = work / "podman.log"
    env = engine_env(work)
    prepare_base_images(env, log)
    context = work / "image"
    context.mkdir()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    (context / "requirements.txt").write_text("\n".join(pyproject["project"]["dependencies"]) + "\n")
    build = run(
        [
            *("podman", "build", "-f", str(CONTAINERFILE), "-t", IMAGE),
            *("--build-arg", f"DEBIAN_IMAGE={env['SPEAKD_BOOKWORM_IMAGE']}", str(context)),
        ],
        env,
        BUILD_TIMEOUT_S,
        log,
    )
    if build.returncode:
        pytest.fail(f"podman build of {CONTAINERFILE.name} failed:\n{tail(log)}")
    return env, log, work


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def ari_gate():
    """speakd's way to ARI: forwards to a port where nothing listens (Asterisk not up yet) until
    a test points `target` at the sandbox's ARI."""
    async with TcpProxy("127.0.0.1", free_port()) as proxy:
        yield proxy


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def pbx(pbx_image, ari_gate, ari_settings):
    env, log, work = pbx_image
    await asyncio.to_thread(run, ["podman", "rm", "-f", "-t", "10", CONTAINER], env, 60, log)  # a killed run's
    started = await asyncio.to_thread(
        run,
        [
            *("podman", "run", "-d", "--name", CONTAINER, "--systemd=always"),
            *("--network", "host", "--uts", "private", "--hostname", "pbx"),
            *("--cap-add", "SYS_ADMIN", "--cap-add", "SYS_NICE", IMAGE),
        ],
        env,
        120,
        log,
    )
    if started.returncode:
        pytest.fail(f"the systemd container did not start:\n{tail(log)}")
    host = PbxHost(
        env, log, f"http://127.0.0.1:{free_port()}", f"speakd-sd{uuid.uuid4().hex[:6]}", secrets.token_urlsafe(24)
    )
    try:
        # running, or degraded (a unit of the image's own failed: logged, not ours to judge)
        booted = await host.sh(
            "for i in $(seq 300); do [ -S /run/systemd/private ] && break; sleep 0.1; done\n"  # systemctl's socket
            "systemctl is-system-running --wait; systemctl --failed --no-pager",
            check=False,
        )
        assert re.match(r"(running|degraded)\n", booted), f"systemd did not boot: {booted}"

        source = _copy_source(work / "speakd")
        await host.sh("mkdir -p /src")
        copied = await asyncio.to_thread(run, ["podman", "cp", str(source), f"{CONTAINER}:/src/speakd"], env, 120, log)
        assert copied.returncode == 0, tail(log)
        await host.sh(documented_install_steps(), timeout=600)

        # "then edit it": where speakd listens, its ARI (through the gate) and app, the offline
        # voice as the default, an access key; the ARI password as a secret in speakd.env
        config = await host.sh(f"cat {CONFIG}")
        for section, key, value in [
            ("server", "port", str(urllib.parse.urlsplit(host.api).port)),
            ("ari", "url", toml_string(f"http://127.0.0.1:{ari_gate.port}")),
            ("ari", "username", toml_string(ari_settings["user"])),
            ("ari", "app", toml_string(host.app)),
            ("tts", "default_provider", toml_string("piper")),
            ("auth", "access_keys", access_keys(host.key)),
        ]:
            config = set_key(config, section, key, value)
        await host.write_config(config)
        secrets_env = f"SPEAKD_ARI_PASSWORD={ari_settings['password']}\n"
        await host.sh("cat > /etc/speakd/speakd.env", stdin=secrets_env.encode())
        checked = json.loads(await host.sh(f"/opt/speakd/.venv/bin/speakd check-config -c {CONFIG} 2>/dev/null"))
        # what speakd will use, as check-config prints it (keys masked)
        assert checked["auth"]["access_keys"] == {f"{host.key[:2]}***": CUSTOMER_A}, checked
        assert (checked["ari"]["app"], checked["server"]["port"]) == (host.app, urllib.parse.urlsplit(host.api).port)
        yield host
    finally:
        with contextlib.suppress(Exception):
            await host.journal(400)  # into the log
        await asyncio.to_thread(run, ["podman", "rm", "-f", "-t", "20", CONTAINER], env, 120, log)


async def test_start_reports_ready_only_once_ari_is_connected(pbx, ari_gate, ari_settings):
    async with pbx.explained():
        start = await pbx.spawn(START)
        try:

            async def waiting_for_ari():
                assert start.returncode is None, f"`{START}` returned while ARI was unreachable: {await pbx.unit()}"
                status, _ = await pbx.health()
                unit = await pbx.unit()
                return status == 503 and "not connected to Asterisk" in unit["StatusText"] and unit

            unit = await until(waiting_for_ari, 60, "speakd serving (503) and saying it waits for ARI")
            assert (unit["ActiveState"], unit["SubState"]) == ("activating", "start"), unit
            await asyncio.sleep(3)  # a few of speakd's connection attempts
            unit = await pbx.unit()
            assert start.returncode is None and unit["ActiveState"] == "activating", unit

            ari = urllib.parse.urlsplit(ari_settings["url"])
            ari_gate.target = (ari.hostname, ari.port)  # Asterisk is up
            out, _ = await asyncio.wait_for(start.communicate(), 45)
            assert start.returncode == 0, out.decode()
        finally:
            if start.returncode is None:
                start.kill()
                await start.wait()
        unit = await pbx.unit()
        assert (unit["ActiveState"], unit["SubState"]) == ("active", "running"), unit
        assert unit["StatusText"] == "0 live sessions; connected to Asterisk", unit
        status, health = await pbx.health()
        assert (status, health.get("ari_connected")) == (200, True), health
        # as the unit says: the user from speakd.sysusers, the store in its StateDirectory
        owners = await pbx.sh(f"stat -c %U /proc/{unit['MainPID']} /var/lib/speakd/speakd.sqlite3")
        assert owners.split() == ["speakd", "speakd"], owners
        # nothing in the unit as installed that systemd warns of
        warnings = await pbx.sh("journalctl -u speakd -p warning -o cat --no-pager")
        assert warnings.strip() == "", warnings


async def test_reload_applies_a_new_access_key(pbx):
    async with pbx.explained():
        pid = (await pbx.require_active())["MainPID"]
        old, new = pbx.key, secrets.token_urlsafe(24)
        api = Api(pbx.api, old)
        try:

            async def status_with(key: str) -> int:
                return (await api.as_customer(key).request("GET", "/speakings")).status

            assert (await status_with(old), await status_with(new)) == (200, 401)
            config = await pbx.sh(f"cat {CONFIG}")
            await pbx.write_config(set_key(config, "auth", "access_keys", access_keys(new)))
            await pbx.sh("systemctl reload speakd")
            pbx.key = new

            async def old_refused():
                return await status_with(old) == 401

            await until(old_refused, 10, "the old access key refused after the reload", interval=0.2)
            assert await status_with(new) == 200
        finally:
            await api.close()
        unit = await pbx.unit()
        assert (unit["ActiveState"], unit["MainPID"]) == ("active", pid), unit  # reloaded, not restarted


async def test_watchdog_restarts_a_hung_daemon(pbx):
    async with pbx.explained():
        await pbx.require_active()
        await pbx.sh(
            "mkdir -p /etc/systemd/system/speakd.service.d\n"
            f"printf '[Service]\\nWatchdogSec={WATCHDOG_S}\\n' > /etc/systemd/system/speakd.service.d/watchdog.conf\n"
            "systemctl daemon-reload && systemctl restart speakd"  # WATCHDOG_USEC is read at start
        )
        before = await pbx.require_active()
        assert before["WatchdogUSec"] == f"{WATCHDOG_S}s", before
        await asyncio.sleep(2 * WATCHDOG_S + 2)  # a daemon that pings is left alone
        unit = await pbx.require_active()
        assert (unit["MainPID"], unit["NRestarts"]) == (before["MainPID"], before["NRestarts"]), unit

        since = (await pbx.sh("date +%s")).strip()
        await pbx.sh("systemctl kill -s SIGSTOP speakd")  # its event loop stops turning

        async def restarted():
            unit = await pbx.unit()
            return unit["NRestarts"] == str(int(before["NRestarts"]) + 1) and unit["ActiveState"] == "active" and unit

        unit = await until(restarted, WATCHDOG_S + 30, "speakd killed by the watchdog and started again")
        assert unit["MainPID"] != before["MainPID"], unit
        journal = await pbx.sh(f"journalctl -u speakd --since @{since} -o cat --no-pager")
        assert "Watchdog timeout" in journal and "Failed with result 'watchdog'" in journal, journal
        status, health = await pbx.health()
        assert (status, health.get("ari_connected")) == (200, True), health


async def _store_rows(pbx: PbxHost, speaking_ids: list[str]) -> dict[str, tuple[str, list[str]]]:
    """id -> (status, its says' statuses), read from the SQLite store with speakd stopped."""
    script = (
        "import json, sqlite3, sys\n"
        "db = sqlite3.connect('file:/var/lib/speakd/speakd.sqlite3?mode=ro', uri=True)\n"
        "print(json.dumps({i: [db.execute('SELECT status FROM speakings WHERE id = ?', (i,)).fetchone()[0],"
        " [s for (s,) in db.execute('SELECT status FROM says WHERE speaking_id = ? ORDER BY seq', (i,))]]"
        " for i in sys.argv[1:]}))\n"
    )
    out = await pbx.sh(f'python3 -c "$(cat)" {" ".join(speaking_ids)}', stdin=script.encode())
    return {k: (v[0], v[1]) for k, v in json.loads(out).items()}


async def test_stop_ends_every_session_cleanly(pbx, ari):
    async with pbx.explained():
        await pbx.require_active()
        api = Api(pbx.api, pbx.key)
        calls = []
        try:
            async with WsEvents(pbx.api, pbx.key) as events:
                assert (await events.subscribe([f"customer_id:{CUSTOMER_A}:speaking:*"]))["type"] == "subscribed"
                for _ in range(2):
                    calls.append(await start_two_party_call(ari, max_seconds=120, test_id=f"sd{uuid.uuid4().hex[:8]}"))
                speaking = [await api.start_session(call.channel_id, direction="out") for call in calls]
                said = await api.say(speaking[0], LONG)
                assert said.status == 200, said

                async def playing():
                    says = (await api.request("GET", f"/speakings/{speaking[0]}/says")).body["result"]
                    return says[0]["status"] == "playing"

                await until(playing, 30, "the say playing", interval=0.1)

                async def speakd_objects() -> list[str]:
                    ids = [c["id"] for c in await ari.get("/channels")] + [b["id"] for b in await ari.get("/bridges")]
                    return [i for i in ids if i.startswith(f"{pbx.app}-")]

                made = await speakd_objects()
                assert all(any(s in i for i in made) for s in speaking), made  # what the stop must remove

                await pbx.sh("systemctl stop speakd", timeout=60)
                for speaking_id in speaking:
                    stopped = (await events.wait_stopped(speaking_id, timeout=5))[-1]
                    assert stopped["data"]["reason"] == "shutdown", stopped

            unit = await pbx.unit()
            # exited by itself (ExecMainCode 1, CLD_EXITED) with 0, not killed at TimeoutStopSec=20
            assert (unit["ActiveState"], unit["Result"], unit["ExecMainCode"], unit["ExecMainStatus"]) == (
                "inactive",
                "success",
                "1",
                "0",
            ), unit
            rows = await _store_rows(pbx, speaking)
            assert all(status == "stopped" for status, _ in rows.values()), rows
            assert all(s not in ("queued", "playing") for _, says in rows.values() for s in says), rows
            assert await speakd_objects() == []
            for call in calls:  # speakd ends its sessions, not the calls
                assert await ari.exists(f"/channels/{call.channel_id}"), call.channel_id
        finally:
            await api.close()
            for call in calls:
                await call.hangup()
