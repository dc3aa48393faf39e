"""scripts/dev-up's parts, each run by bash from the script itself (sourced: it runs nothing then).
The whole script is not run here: it installs packages and brings up the shared sandbox."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from speakd.config import read_config
from speakd.config_check import PUBLIC_ACCESS_KEYS

REPO = Path(__file__).resolve().parents[2]
DEV_UP = REPO / "scripts" / "dev-up"


def _bash(script: str, cwd: Path = REPO, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``script`` after sourcing dev-up, in ``cwd``."""
    return subprocess.run(
        ["bash", "-c", f'source "{DEV_UP}"\n{script}'],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("SPEAKD_")}, **(env or {})},
        check=False,
    )


def test_dev_up_parses_and_sourcing_it_runs_nothing(tmp_path):
    assert subprocess.run(["bash", "-n", str(DEV_UP)], check=False).returncode == 0
    result = _bash("echo sourced", cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "sourced\n", "")
    assert list(tmp_path.iterdir()) == []


def test_the_dev_config_is_the_example_set_up_for_the_sandbox_with_its_published_key(tmp_path):
    written = tmp_path / "dev.toml"
    result = _bash(f'write_dev_config "{written}"\necho "$DEV_ACCESS_KEY $DEV_CUSTOMER_ID"')
    assert result.returncode == 0, result.stderr
    key, customer = result.stdout.split()
    reading = read_config(written, environ={})
    assert reading.problems == []
    config = reading.config
    assert config.auth.access_keys == {key: customer}  # its own key: the example ships none
    assert (config.ari.url, config.ari.password) == ("http://127.0.0.1:18088", "speakd")
    assert (config.tts.default_provider, config.store.path) == ("piper", "var/speakd.sqlite3")
    # The key is public (it is in the script): check-config warns of it, and still passes.
    assert key in PUBLIC_ACCESS_KEYS and "scripts/dev-up" in PUBLIC_ACCESS_KEYS[key]
    check = subprocess.run(
        [sys.executable, "-m", "speakd", "check-config", "-c", str(written)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    assert check.stderr.startswith(f"speakd: warning: auth.access_keys in {written}: the access key of customer ")


def test_missing_packages_asks_dpkg():
    if not shutil.which("dpkg-query"):
        pytest.skip("no dpkg-query: not a Debian system")
    result = _bash("PACKAGES=(bash no-such-package-speakd)\nmissing_packages")
    assert (result.returncode, result.stdout) == (0, "no-such-package-speakd\n")
    listed = _bash('echo "${PACKAGES[*]}"').stdout.split()
    assert {"debootstrap", "python3-venv", "curl", "jq"} <= set(listed)  # jq: the quick start needs it


def test_the_plan_on_a_fresh_machine_says_everything_it_will_do(tmp_path):
    # A directory with no .venv and no var/dev.toml, an empty sandbox cache, packages missing.
    result = _bash(
        "PACKAGES=(bash no-such-package-speakd)\nplan",
        cwd=tmp_path,
        env={"SPEAKD_SANDBOX_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr
    plan = result.stdout
    assert "install Debian packages with apt-get: no-such-package-speakd\n" in plan
    assert "create .venv" in plan
    assert f"about 500 MB, under {tmp_path / 'cache'} (once" in plan
    assert "mounting /proc and /dev into it" in plan
    assert "write var/dev.toml" in plan
    assert "run speakd in the foreground on var/dev.toml" in plan


def test_the_plan_leaves_out_what_is_done(tmp_path):
    # This repository: .venv exists; a root once built is not built again.
    built = tmp_path / "cache"
    root = _bash("sandbox_root", env={"SPEAKD_SANDBOX_DIR": str(built)}).stdout.strip()
    assert root.startswith(f"{built}/root-")
    Path(root).mkdir(parents=True)
    result = _bash("PACKAGES=(bash)\nplan", env={"SPEAKD_SANDBOX_DIR": str(built)})
    assert result.returncode == 0, result.stderr
    assert "install Debian packages" not in result.stdout
    assert "create .venv" not in result.stdout
    assert "500 MB" not in result.stdout
    assert "mounting /proc and /dev" in result.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_once_speakd_answers_it_prints_the_key_and_customer_id(tmp_path):
    # A stand-in that answers /health as speakd does (a 200), on the port the config names.
    port = _free_port()
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "health").write_text("ok")
    config = tmp_path / "dev.toml"
    config.write_text(f'[server]\nport = {port}\n[auth]\naccess_keys = {{ "k1" = "c1", "dev-accesskey" = "c2" }}\n')
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path / "www")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        result = _bash(f'announce_when_up "{config}" {server.pid}')
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert result.returncode == 0
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"dev-up: speakd is up: API http://127.0.0.1:{port}/v1.0 (config {config})",
        "dev-up:   access key k1   customer id c1",
        "dev-up:   access key dev-accesskey   customer id c2",
        "dev-up:   (speakd warns of this key, published in this script: fine for the sandbox, never for a PBX)",
        "dev-up: the README's quick start uses them; the events example's topics need the customer id",
    ]


def test_it_stops_waiting_quietly_when_speakd_ends(tmp_path):
    config = tmp_path / "dev.toml"
    config.write_text(f"[server]\nport = {_free_port()}\n")
    ended = subprocess.Popen(["true"])
    ended.wait()
    result = _bash(f'announce_when_up "{config}" {ended.pid}')
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


FLEET_UP = REPO / "scripts" / "fleet-up"


def test_fleet_up_writes_a_config_per_node_on_the_shared_postgresql(tmp_path):
    """scripts/fleet-up's node configs: dev-up's, each with its node id, API port, Asterisk and the fleet's store."""
    assert subprocess.run(["bash", "-n", str(FLEET_UP)], check=False).returncode == 0
    script = f'source "{FLEET_UP}"\nwrite_node_config "{tmp_path}/b.toml" node-b 8091 2\necho "$STORE_URL"'
    result = subprocess.run(["bash", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    reading = read_config(tmp_path / "b.toml", environ={})
    assert reading.problems == []
    config = reading.config
    assert (config.node.id, config.server.port, config.ari.url) == ("node-b", 8091, "http://127.0.0.1:18089")
    assert config.store.url == result.stdout.strip() and config.store.url.startswith("postgresql://speakd:")
    assert list(tmp_path.iterdir()) == [tmp_path / "b.toml"]
