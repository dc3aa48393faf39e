"""PostgreSQL servers of the tests' own, from Debian's binaries (``apt-get install postgresql``).

A server lives in a temporary data directory, listens on 127.0.0.1 on a free port, and runs as
the unprivileged ``postgres`` user when the tests run as root (initdb refuses root). It is
taken away and brought back under a running speakd by :meth:`PostgresServer.stop` (a clean
shutdown: connections get "terminating connection due to administrator command"),
:meth:`PostgresServer.crash` (``pg_ctl -m immediate``: no goodbye, crash recovery at the next
start) or :meth:`PostgresServer.kill` (SIGKILL of the postmaster; its backends follow), then
:meth:`PostgresServer.start`: the same data on the same port, so a store's URL stays valid.

The ``postgres_server`` fixture starts one server for the session and removes it at the end;
without the binaries it skips, saying what to install. :meth:`PostgresServer.new_database`
gives each test a database of its own, owned by a login role (``speakd``) with a password.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

BIN_DIRS = "/usr/lib/postgresql/*/bin"  # Debian's layout, one directory per major version
MISSING = f"PostgreSQL server binaries not found in {BIN_DIRS}: apt-get install postgresql"
RUN_AS = "postgres"  # the user Debian's package creates
SUPERUSER = "postgres"
SUPERUSER_PASSWORD = "superuser-password"
ROLE = "speakd"
ROLE_PASSWORD = "speakd p@ss:word/1"  # characters a URL must escape


def bin_dir() -> Path | None:
    """The newest installed server's binaries, or None."""
    found = [
        path
        for path in Path("/").glob(BIN_DIRS.lstrip("/"))
        if all((path / name).exists() for name in ("initdb", "pg_ctl", "postgres", "psql"))
    ]
    return max(found, key=lambda path: int(path.parent.name), default=None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            # pid (comm) state ppid ...: comm may hold spaces, so split after its ')'
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


class PostgresServer:
    def __init__(self, binaries: Path) -> None:
        self.bin = binaries
        self.root = Path(tempfile.mkdtemp(prefix="speakd-postgres-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.host = "127.0.0.1"
        self._databases = itertools.count(1)
        self._as_root = os.geteuid() == 0

    # -- running its programs ----------------------------------------------------------------------

    def _run(self, *args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess[str]:
        command = [*args]
        if self._as_root:
            command = ["runuser", "-u", RUN_AS, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)
        if check and result.returncode:
            raise RuntimeError(
                f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}\n{self.log_tail()}"
            )
        return result

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), *args, check=check)

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` as the superuser; what it printed (unaligned, tuples only)."""
        env = {**os.environ, "PGPASSWORD": SUPERUSER_PASSWORD}
        args = ["-h", self.host, "-p", str(self.port), "-U", SUPERUSER, "-d", database]
        return self._run(str(self.bin / "psql"), *args, "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql, env=env).stdout

    # -- its life ------------------------------------------------------------------------------------

    def init(self) -> None:
        if self._as_root:
            shutil.chown(self.root, RUN_AS)
        password_file = self.root / "superuser-password"
        password_file.write_text(SUPERUSER_PASSWORD)
        if self._as_root:
            shutil.chown(password_file, RUN_AS)
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER, f"--pwfile={password_file}",
            "--auth=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync",
        )  # fmt: skip
        settings = {
            "port": self.port,
            "listen_addresses": f"'{self.host}'",
            "unix_socket_directories": "''",  # TCP only: its lock would outlive a killed server
            # A test server: no flush to the disk, which only a crash of the host needs; a commit
            # still reaches the kernel before it is answered, so a killed postgres loses nothing.
            "fsync": "off",
            "full_page_writes": "off",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def start(self) -> None:
        """Start (or start again) and wait until it takes connections."""
        self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.root / "postgres.log"))

    def stop(self) -> None:
        """A clean shutdown (``-m fast``): sessions are told and ended, the data checkpointed."""
        self._pg_ctl("stop", "-w", "-m", "fast")

    def crash(self) -> None:
        """Gone without a checkpoint (``-m immediate``): the next start recovers from the WAL."""
        self._pg_ctl("stop", "-w", "-m", "immediate")

    def kill(self) -> None:
        """SIGKILL to the postmaster; waits until its backends, left without it, have gone too."""
        pid = self.postmaster_pid()
        if pid is None:
            return
        backends = _children(pid)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in [pid, *backends]):
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres backends {backends} outlived their killed postmaster {pid}")
            time.sleep(0.05)
        # Its lock file names a pid that may linger as a zombie (no init reaps it in a
        # container), which postgres would take for a live server: gone with the processes.
        (self.data / "postmaster.pid").unlink(missing_ok=True)

    def restart(self) -> None:
        self.stop()
        self.start()

    def postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            if _alive(pid):
                return pid
        return None

    @property
    def running(self) -> bool:
        return self.postmaster_pid() is not None

    def remove(self) -> None:
        if self.running:
            self._pg_ctl("stop", "-w", "-m", "immediate", check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.root / "postgres.log").read_text(errors="replace").splitlines()[-lines:])
        return ""

    # -- what the tests use --------------------------------------------------------------------------

    def url(self, database: str, user: str = ROLE, password: str = ROLE_PASSWORD) -> str:
        from urllib.parse import quote

        return f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{self.host}:{self.port}/{database}"

    def new_database(self) -> str:
        """A new, empty database owned by the ``speakd`` role; its URL."""
        name = f"speakd_{next(self._databases)}"
        self.psql(f"CREATE DATABASE {name} OWNER {ROLE}")
        return self.url(name)

    def set_read_only(self, on: bool) -> None:
        """Every session's transactions read-only, or no longer (as a standby's are), in force
        for sessions already connected too: the reload is signalled to every backend before the
        postmaster accepts another connection, which the check here makes."""
        value = "on" if on else "off"
        self.psql(f"ALTER SYSTEM SET default_transaction_read_only = {value}")
        self.psql("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 10
        while self.psql("SHOW default_transaction_read_only").strip() != value:
            assert time.monotonic() < deadline, "postgres did not reload its configuration"
            time.sleep(0.02)


def start_server() -> PostgresServer:
    """A new server, started, with the ``speakd`` role; skips the test without the binaries."""
    binaries = bin_dir()
    if binaries is None:
        pytest.skip(MISSING)
    server = PostgresServer(binaries)
    try:
        server.init()
        server.start()
        server.psql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{ROLE_PASSWORD}'")
    except BaseException:
        server.remove()
        raise
    return server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = start_server()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
def postgres(postgres_server: PostgresServer) -> Iterator[PostgresServer]:
    """The session's server, running again after the test whatever the test did to it."""
    yield postgres_server
    if not postgres_server.running:
        postgres_server.start()
    postgres_server.psql("ALTER SYSTEM RESET default_transaction_read_only")
    postgres_server.psql("SELECT pg_reload_conf()")
