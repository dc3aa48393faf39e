"""Rootful podman as the container tests run it, on a machine that reaches Debian's packages and
PyPI but no image registry: base images from docker/local-base-images, runc, and limits this
machine can grant. `.ci/run` installs what it needs (podman podman-compose runc iptables
netavark aardvark-dns debootstrap)."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
BASE_IMAGES_TIMEOUT_S = 900


def missing_engine(*tools: str) -> str | None:
    """Why the container tests cannot run here (they skip saying so), or None."""
    if os.environ.get("SPEAKD_TEST_CONTAINERS") == "0":
        return "SPEAKD_TEST_CONTAINERS=0"
    if os.geteuid() != 0:
        return "needs root (rootful podman, debootstrap for the base images)"
    missing = [tool for tool in ("podman", "runc", "debootstrap", *tools) if not shutil.which(tool)]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install podman podman-compose runc debootstrap iptables)"
    return None


def containers_conf(directory: Path) -> Path:
    """This machine's podman settings, in a file of the test's own (CONTAINERS_CONF).

    runc: crun 1.8 refuses a hybrid cgroup layout (v1 controllers beside a v2 hierarchy that
    has one), which is what a container host like this one can have; runc runs on both.
    Ulimits: rootful podman asks for the kernel's maximum open files and processes, which a
    process without CAP_SYS_RESOURCE cannot raise its limits to: ask for what we have.
    """
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 32768)  # podman's own limit here
    path = directory / "containers.conf"
    path.write_text(
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
        '[engine]\nruntime = "runc"\n'
    )
    return path


def engine_env(directory: Path) -> dict[str, str]:
    """The environment podman runs in: this one, with the settings of containers_conf."""
    return {**os.environ, "CONTAINERS_CONF": str(containers_conf(directory))}


def run(
    cmd: list[str], env: dict[str, str], timeout: float, log: Path, cwd: Path = DOCKER
) -> subprocess.CompletedProcess[str]:
    """Runs `cmd`, its stderr (and then its stdout) appended to `log`; returns its stdout."""
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.run(
            cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=out, text=True, timeout=timeout, check=False
        )
        out.write(proc.stdout)
    return proc


def tail(log: Path, lines: int = 60) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def prepare_base_images(env: dict[str, str], log: Path) -> None:
    """docker/local-base-images (builds what podman's storage lacks), its image names added to
    `env` (SPEAKD_BOOKWORM_IMAGE, SPEAKD_SID_IMAGE); fails the test where podman is installed
    but cannot run a container."""
    base = run([str(DOCKER / "local-base-images")], env, BASE_IMAGES_TIMEOUT_S, log)
    if base.returncode:
        pytest.fail(f"docker/local-base-images failed:\n{tail(log)}")
    env.update(line.split("=", 1) for line in base.stdout.splitlines() if "=" in line)
    probe = run(["podman", "run", "--rm", "--network", "none", env["SPEAKD_BOOKWORM_IMAGE"], "true"], env, 120, log)
    if probe.returncode:
        pytest.fail(f"podman is installed but cannot run a container here:\n{tail(log, 10)}")
