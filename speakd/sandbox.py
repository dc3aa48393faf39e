"""A real Asterisk for development and tests: a Debian sid chroot beside the host.

    python -m speakd.sandbox up|down|status|env|crash|call|hangup [--instance N]

Debian bookworm ships no Asterisk and installing sid packages on it would replace libc,
so `up` builds a minimal sid root with debootstrap (cached outside the repo, keyed by the
package list), copies the repo's asterisk-config/ into it and runs Asterisk there. The
chroot shares the host network: ARI on 127.0.0.1:18088, RTP on 31000-31999, no SIP.

More Asterisks run from the same root as instances 2, 3, ... (`--instance N` or
SPEAKD_SANDBOX_INSTANCE=N; instance 1 is the one above), each with asterisk-config/ rewritten
for it: ARI port +N-1 (18089), RTP ports +1000*(N-1) (32000-32999), its own /etc/asterisk-N,
/var/{lib,spool,log,cache}/asterisk-N and /run/asterisk-N, system name speakd-sandbox-N and
its own entity id. Each instance starts, stops and crashes alone; the root's /proc and /dev
mounts go once no instance runs. The tests drive them with start(), stop(), crash() and
ari_settings().

Standard library only: it must run before the daemon's dependencies are installed.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath

SUITE = "sid"
VARIANT = "minbase"
PACKAGES = ("asterisk", "asterisk-modules")
MIRROR = os.environ.get("SPEAKD_SANDBOX_MIRROR", "http://deb.debian.org/debian")
REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = Path(os.environ.get("SPEAKD_SANDBOX_CONFIG", REPO / "asterisk-config"))
START_TIMEOUT = 60.0
ASTERISK_LOG = "messages"  # in the instance's astlogdir
STDOUT_LOG = "sandbox-stdout.log"

# Instances: 1 runs asterisk-config/ as it is; N > 1 a copy with the settings below.
INSTANCE_ENV = "SPEAKD_SANDBOX_INSTANCE"  # also in each Asterisk's environment: whose process it is
MAX_INSTANCE = 9
RTP_PORTS_PER_INSTANCE = 1000
# asterisk.conf [directories] an Asterisk writes to; modules, sounds and binaries are shared
OWN_DIRECTORIES = (
    "astetcdir",
    "astvarlibdir",
    "astdbdir",
    "astkeydir",
    "astspooldir",
    "astrundir",
    "astlogdir",
    "astcachedir",
)


class SandboxError(Exception):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("SPEAKD_SANDBOX_DIR", "/var/cache/speakd/sandbox"))


def root_key() -> str:
    # The mirror is not part of the key: the same packages from another mirror are the same root.
    spec = json.dumps({"suite": SUITE, "variant": VARIANT, "packages": sorted(PACKAGES)}, sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:12]


def root_path() -> Path:
    return cache_dir() / f"root-{root_key()}"


def state_path(instance: int = 1) -> Path:
    return cache_dir() / ("state.json" if instance == 1 else f"state-{instance}.json")


def check_instance(instance: int) -> int:
    if not 1 <= instance <= MAX_INSTANCE:
        raise SandboxError(f"instance {instance}: the sandbox runs instances 1 to {MAX_INSTANCE}")
    return instance


def default_instance() -> int:
    value = os.environ.get(INSTANCE_ENV, "1")
    try:
        return check_instance(int(value))
    except ValueError:
        raise SandboxError(f"{INSTANCE_ENV}={value!r}: give an instance number, 1 to {MAX_INSTANCE}") from None


# --------------------------------------------------------------------------- config


def _parse_conf(path: Path) -> dict[str, dict[str, str]]:
    """Asterisk .conf as {section: {key: value}} (last value wins; enough for http/ari)."""
    sections: dict[str, dict[str, str]] = {}
    current = sections.setdefault("", {})
    for raw in path.read_text().splitlines():
        line = raw.split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            current = sections.setdefault(line[1 : line.index("]")], {})
        elif "=" in line:
            key, value = line.split("=", 1)
            current[key.strip()] = value.lstrip(">").strip()
    return sections


def _http_port(instance: int) -> int:
    return int(_parse_conf(CONFIG_DIR / "http.conf").get("general", {}).get("bindport", "8088")) + instance - 1


def rtp_port_range(instance: int = 1) -> range:
    """The UDP ports instance ``instance`` gives RTP (ExternalMedia) channels."""
    rtp = _parse_conf(CONFIG_DIR / "rtp.conf").get("general", {})
    offset = RTP_PORTS_PER_INSTANCE * (check_instance(instance) - 1)
    return range(int(rtp.get("rtpstart", "5000")) + offset, int(rtp.get("rtpend", "31000")) + offset + 1)


def ari_settings(instance: int = 1) -> dict[str, str]:
    """url, user and password of instance ``instance``'s ARI."""
    host = _parse_conf(CONFIG_DIR / "http.conf").get("general", {}).get("bindaddr", "127.0.0.1")
    port = _http_port(check_instance(instance))
    users = [(name, s) for name, s in _parse_conf(CONFIG_DIR / "ari.conf").items() if s.get("type") == "user"]
    if not users:
        raise SandboxError(f"no type=user section in {CONFIG_DIR / 'ari.conf'}")
    name, section = users[0]
    return {"url": f"http://{host}:{port}", "user": name, "password": section.get("password", "")}


def config_hash() -> str:
    h = hashlib.sha256()
    # What Asterisk reads: a change restarts it at the next `up`; the README is not that.
    for path in sorted(p for p in CONFIG_DIR.rglob("*") if p.is_file() and p.suffix != ".md"):
        h.update(str(path.relative_to(CONFIG_DIR)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def system_name(instance: int = 1) -> str:
    """asterisk.conf's systemname (ARI: /asterisk/info config.name); instance 1 keeps the repo's (none)."""
    if check_instance(instance) == 1:
        return _parse_conf(CONFIG_DIR / "asterisk.conf").get("options", {}).get("systemname", "")
    return f"speakd-sandbox-{instance}"


def entity_id(instance: int) -> str:
    """Instance N > 1's EID (instance 1 keeps Asterisk's default, the host's MAC address, which
    every instance would share): a locally administered address, "spkd" and N."""
    return f"02:73:70:6b:64:{check_instance(instance):02x}"


def directories(instance: int = 1) -> dict[str, str]:
    """asterisk.conf's [directories] for ``instance``: the repo's, each one it writes suffixed -N."""
    dirs = _parse_conf(CONFIG_DIR / "asterisk.conf").get("directories", {})
    if check_instance(instance) == 1:
        return dirs
    return {key: f"{path}-{instance}" if key in OWN_DIRECTORIES else path for key, path in dirs.items()}


def _conf_set(text: str, section: str, values: dict[str, str]) -> str:
    """``text`` (an Asterisk .conf) with ``values`` set in ``section``: replaced where the key is,
    else added at the top of the section."""
    lines = text.splitlines()
    header = None
    current = ""
    found = set()
    for i, raw in enumerate(lines):
        line = raw.split(";", 1)[0].strip()
        if line.startswith("["):
            current = line[1 : line.index("]")]
            if current == section and header is None:
                header = i
        elif current == section and "=" in line:
            key, value = (part.strip() for part in line.split("=", 1))
            if key in values:
                lines[i] = f"{key} {'=>' if value.startswith('>') else '='} {values[key]}"
                found.add(key)
    if header is None:
        raise SandboxError(f"no [{section}] section to set {', '.join(values)} in")
    lines[header + 1 : header + 1] = [f"{key} = {value}" for key, value in values.items() if key not in found]
    return "\n".join(lines) + "\n"


def instance_config(instance: int) -> dict[str, str]:
    """asterisk-config/'s *.conf as instance ``instance`` (> 1) runs them: {file name: text}."""
    check_instance(instance)
    files = {p.name: p.read_text() for p in sorted(CONFIG_DIR.glob("*.conf"))}
    rtp = rtp_port_range(instance)
    rec_dir = _parse_conf(CONFIG_DIR / "extensions.conf").get("globals", {}).get("SPEAKD_REC_DIR", "")
    spool, own_spool = directories(1)["astspooldir"], directories(instance)["astspooldir"]
    if not rec_dir.startswith(spool + "/"):
        # ARI serves stored recordings from the spool: one outside it would be heard by no test
        raise SandboxError(f"extensions.conf's SPEAKD_REC_DIR ({rec_dir!r}) is not under astspooldir ({spool})")
    edits = {
        "http.conf": {"general": {"bindport": str(_http_port(instance)), "servername": system_name(instance)}},
        "rtp.conf": {"general": {"rtpstart": str(rtp.start), "rtpend": str(rtp.stop - 1)}},
        "asterisk.conf": {
            "directories": directories(instance),
            "options": {"systemname": system_name(instance), "entityid": entity_id(instance)},
        },
        "extensions.conf": {"globals": {"SPEAKD_REC_DIR": own_spool + rec_dir.removeprefix(spool)}},
    }
    for name, sections in edits.items():
        for section, values in sections.items():
            files[name] = _conf_set(files[name], section, values)
    # "(!)" makes the section a template, which Asterisk does not read: instance 1 runs on
    # Asterisk's built-in paths (which the repo's file repeats), the others on these
    files["asterisk.conf"] = files["asterisk.conf"].replace("[directories](!)", "[directories]", 1)
    return files


def instance_config_hash(instance: int) -> str:
    """What `up` compares to restart an instance on a change: config_hash() for instance 1 (as
    it always was), the rewritten files for the others."""
    if instance == 1:
        return config_hash()
    h = hashlib.sha256(config_hash().encode())
    for name, text in sorted(instance_config(instance).items()):
        h.update(name.encode() + b"\0" + text.encode() + b"\0")
    return h.hexdigest()


def in_root(root: Path, path: str) -> Path:
    """An absolute path of the chroot seen from outside it (for paths without symlinks: /etc, /var/log)."""
    return root / PurePosixPath(path).relative_to("/")


def _mkdirs_in_root(root: Path, instance: int, paths: Iterable[str]) -> None:
    # in the chroot: there Debian's /var/run -> /run is the root's own /run, not the host's
    _run(["chroot", str(root), "mkdir", "-p", *paths], env=_chroot_env(instance))


def install_config(root: Path, instance: int = 1) -> None:
    """Replace the instance's /etc/asterisk with exactly what we ship (stock config pulls in
    Lua/DUNDi), rewritten for instances above 1."""
    dirs = directories(instance)
    etc = in_root(root, dirs["astetcdir"])
    if etc.exists():
        shutil.rmtree(etc)
    etc.mkdir(parents=True)
    if instance == 1:
        for path in CONFIG_DIR.iterdir():
            if path.is_file() and path.suffix == ".conf":
                shutil.copy2(path, etc / path.name)
    else:
        for name, text in instance_config(instance).items():
            (etc / name).write_text(text)
    sounds = CONFIG_DIR / "sounds"
    if sounds.is_dir():
        _copy_changed(sounds, root / "usr/share/asterisk/sounds")
    recordings = f"{dirs['astspooldir']}/recording"
    _mkdirs_in_root(root, instance, [recordings, *(dirs[key] for key in OWN_DIRECTORIES)])
    # test recordings pile up otherwise; a day is long enough to look at a failed run's files
    for rec in in_root(root, recordings).glob("*.wav"):
        with contextlib.suppress(OSError):
            if time.time() - rec.stat().st_mtime > 86400:
                rec.unlink()


def _copy_changed(src: Path, dst: Path) -> None:
    """Copy the tree ``src`` onto ``dst``, writing only files that differ: another instance may
    be playing them."""
    for path in src.rglob("*"):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif not target.is_file() or target.read_bytes() != path.read_bytes():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


# --------------------------------------------------------------------------- root build


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, **kw)


def ensure_debootstrap() -> None:
    if shutil.which("debootstrap"):
        return
    print("sandbox: installing debootstrap", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(["apt-get", "install", "-y", "debootstrap"], env=env, check=False).returncode:
        _run(["apt-get", "update"], env=env)
        _run(["apt-get", "install", "-y", "debootstrap"], env=env)


def ensure_root() -> Path:
    root = root_path()
    if root.is_dir():
        return root  # only ever created by the rename below, so it is complete
    ensure_debootstrap()
    cache_dir().mkdir(parents=True, exist_ok=True)
    for stale in cache_dir().glob(f"{root.name}.tmp-*"):
        _remove_tree(stale)
    tmp = cache_dir() / f"{root.name}.tmp-{os.getpid()}"
    print(f"sandbox: building Debian {SUITE} root with {', '.join(PACKAGES)} (about a minute)", file=sys.stderr)
    cmd = ["debootstrap", f"--variant={VARIANT}", f"--include={','.join(PACKAGES)}", SUITE, str(tmp), MIRROR]
    try:
        _run(cmd, stdout=sys.stderr)
    except (subprocess.CalledProcessError, KeyboardInterrupt):
        _remove_tree(tmp)
        raise
    tmp.rename(root)
    return root


def _remove_tree(path: Path) -> None:
    unmount_all(path)
    if any(_mounts_under(path)):
        raise SandboxError(f"{path} still has mounts; not removing it")
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


# --------------------------------------------------------------------------- mounts


def _mounts_under(root: Path) -> list[Path]:
    prefix = str(root.resolve())
    found = []
    with open("/proc/mounts") as f:
        for line in f:
            # /proc/mounts escapes spaces etc. as octal (\040)
            target = line.split()[1].encode().decode("unicode_escape")
            if target == prefix or target.startswith(prefix + "/"):
                found.append(Path(target))
    return found


def mount_all(root: Path) -> None:
    mounted = set(_mounts_under(root))
    if root / "proc" not in mounted:
        _run(["mount", "-t", "proc", "proc", str(root / "proc")])
    if root / "dev" not in mounted:
        # non-recursive bind: Asterisk needs /dev/null, /dev/urandom; no pts (it never gets a console)
        _run(["mount", "--bind", "/dev", str(root / "dev")])


def unmount_all(root: Path) -> None:
    for target in sorted(_mounts_under(root), key=lambda p: len(str(p)), reverse=True):
        if subprocess.run(["umount", str(target)], check=False, capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(target)], check=False)


# --------------------------------------------------------------------------- process


def _root_pids(root: Path) -> list[int]:
    """Every process whose filesystem root is our chroot (every instance's Asterisk and anything it spawned)."""
    want = str(root.resolve())
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.readlink(entry / "root") == want:
                pids.append(int(entry.name))
    return pids


def _chroot_env(instance: int) -> dict[str, str]:
    """The environment of whatever we run in the root; INSTANCE_ENV marks the instance it belongs to."""
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root", INSTANCE_ENV: str(instance)}


def _pid_instance(pid: int) -> int | None:
    """The instance process ``pid`` belongs to (by the environment it started with; an Asterisk
    started before instances existed has none and is instance 1); None once it is gone."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    for var in environ.split(b"\0"):
        if var.startswith(INSTANCE_ENV.encode() + b"="):
            with contextlib.suppress(ValueError):
                return int(var.split(b"=", 1)[1])
    return 1


def instance_pids(root: Path, instance: int = 1) -> list[int]:
    """The processes of instance ``instance`` in the root."""
    return [pid for pid in _root_pids(root) if _pid_instance(pid) == instance]


def _ari_auth(settings: dict[str, str]) -> dict[str, str]:
    token = base64.b64encode(f"{settings['user']}:{settings['password']}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _ari_ok(settings: dict[str, str], timeout: float = 2.0) -> bool:
    req = urllib.request.Request(settings["url"] + "/ari/asterisk/info", headers=_ari_auth(settings))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _check_port_free(settings: dict[str, str]) -> None:
    # else our ARI check would be answered by whatever else holds the port
    host, port = settings["url"].rsplit("/", 1)[-1].rsplit(":", 1)
    # a stopping Asterisk's last threads can hold the socket briefly after its pid looks gone
    deadline = time.monotonic() + 5
    while True:
        with socket.socket() as s:
            s.settimeout(1)
            if s.connect_ex((host, int(port))) != 0:
                return
        if time.monotonic() > deadline:
            raise SandboxError(
                f"{host}:{port} is already in use by another process (another sandbox "
                f"with a different SPEAKD_SANDBOX_DIR?); stop it first"
            )
        time.sleep(0.1)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} not readable)"


ASTERISK_NICE = -15


def _asterisk_cmd(instance: int) -> list[str]:
    """asterisk in the root, reading the instance's asterisk.conf (instance 1: the default one)."""
    if instance == 1:
        return ["/usr/sbin/asterisk"]
    return ["/usr/sbin/asterisk", "-C", f"{directories(instance)['astetcdir']}/asterisk.conf"]


def start_asterisk(root: Path, settings: dict[str, str], instance: int = 1) -> int:
    logdir = in_root(root, directories(instance)["astlogdir"])
    log = logdir / STDOUT_LOG
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            # Ahead of ordinary work (busy-host tests), as a PBX's Asterisk is; not real-time
            # priority: here Asterisk also runs every test phone, and real-time threads that
            # busy would starve the whole host.
            ["nice", "-n", str(ASTERISK_NICE), "chroot", str(root), *_asterisk_cmd(instance), "-f", "-n"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives this command and the terminal it ran in
            env=_chroot_env(instance),
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if _ari_ok(settings):
            return proc.pid
        time.sleep(0.3)
    reason = "exited" if proc.poll() is not None else f"did not answer ARI within {START_TIMEOUT:.0f} s"
    stop_asterisk(root, instance)
    raise SandboxError(
        f"Asterisk {reason} ({settings['url']}/ari/asterisk/info as {settings['user']}).\n"
        f"--- {logdir / ASTERISK_LOG} ---\n{_tail(logdir / ASTERISK_LOG)}\n--- {log} ---\n{_tail(log)}"
    )


def _alive(pid: int) -> bool:
    """Still running (a zombie or an exited pid is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _signal_until_gone(pids: Callable[[], Iterable[int]], sig: signal.Signals | None, timeout: float) -> bool:
    """Send ``sig`` (None: none) to every pid ``pids()`` names, then wait up to ``timeout``
    seconds for it to name none; True if it does."""
    if sig is not None:
        for pid in pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while pids() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not pids()


def stop_asterisk(root: Path, instance: int = 1) -> None:
    """Stop instance ``instance``'s Asterisk (and whatever else of it runs in the root)."""
    seen = set(instance_pids(root, instance))
    if not seen:
        return

    def remaining() -> set[int]:
        # /proc/<pid>/root stops resolving once the main thread exits, while other threads
        # may still hold sockets: also wait for every pid we saw to be fully gone
        seen.update(instance_pids(root, instance))
        return {pid for pid in seen if _alive(pid)}

    if (root / "proc/self").exists():  # `asterisk -rx` needs /proc in the chroot
        # A hung Asterisk (a deadlock) never answers its console: the signals below end it.
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(
                ["chroot", str(root), *_asterisk_cmd(instance), "-rx", "core stop now"],
                check=False,
                capture_output=True,
                timeout=15,
                env=_chroot_env(instance),
            )
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if _signal_until_gone(remaining, sig, 5):
            return
    raise SandboxError(f"processes in {root} would not stop: {sorted(remaining())}")


# --------------------------------------------------------------------------- state


def read_state(instance: int = 1) -> dict | None:
    try:
        return json.loads(state_path(instance).read_text())
    except (OSError, ValueError):
        return None


def write_state(state: dict, instance: int = 1) -> None:
    tmp = state_path(instance).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(state_path(instance))


def is_running(state: dict | None, instance: int = 1) -> bool:
    if not state:
        return False
    root = Path(state["root"])
    return state.get("pid") in instance_pids(root, instance)


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    """One start/stop at a time: instances share the root's mounts."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / "lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


# --------------------------------------------------------------------------- commands


def _require_root() -> None:
    if os.geteuid() != 0:
        raise SandboxError("the sandbox needs root (debootstrap, chroot, mount)")


def _label(instance: int) -> str:
    return "sandbox" if instance == 1 else f"sandbox instance {instance}"


def start(instance: int = 1) -> dict[str, str]:
    """Bring instance ``instance`` up (building the root once) and return its ARI settings. A
    running instance is left alone unless asterisk-config changed since it started (then it
    restarts). Raises SandboxError."""
    check_instance(instance)
    _require_root()
    settings = ari_settings(instance)
    wanted = instance_config_hash(instance)
    with _lock():
        state = read_state(instance)
        if is_running(state, instance) and _ari_ok(settings):
            if state.get("config_hash") == wanted:
                print(f"{_label(instance)}: already up (pid {state['pid']}, {settings['url']})", file=sys.stderr)
                return settings
            print(f"{_label(instance)}: asterisk-config changed; restarting Asterisk", file=sys.stderr)
        root = ensure_root()
        if state and state.get("root") and Path(state["root"]) != root:
            _down_root(Path(state["root"]), instance)  # the package list changed: retire the old root
        stop_asterisk(root, instance)
        _check_port_free(settings)
        install_config(root, instance)
        mount_all(root)
        t0 = time.monotonic()
        pid = start_asterisk(root, settings, instance)
        write_state(
            {
                "pid": pid,
                "root": str(root),
                "config_hash": wanted,
                "ari_url": settings["url"],
                "started_at": time.time(),
                "instance": instance,
            },
            instance,
        )
    print(
        f"{_label(instance)}: up in {time.monotonic() - t0:.1f} s "
        f"(pid {pid}, ARI {settings['url']}, user {settings['user']})",
        file=sys.stderr,
    )
    return settings


def _down_root(root: Path, instance: int) -> bool:
    """Stop the instance in ``root`` and unmount the root unless another instance runs there;
    True if it was unmounted."""
    stop_asterisk(root, instance)
    if _root_pids(root):
        return False
    unmount_all(root)
    left = _mounts_under(root)
    if left:
        raise SandboxError(f"still mounted: {', '.join(map(str, left))}")
    return True


def stop(instance: int = 1) -> None:
    """Stop instance ``instance``; the root's mounts go with the last instance. Keeps the root."""
    check_instance(instance)
    _require_root()
    with _lock():
        state = read_state(instance)
        roots = {root_path()}
        if state and state.get("root"):
            roots.add(Path(state["root"]))
        kept = [root for root in roots if root.exists() and not _down_root(root, instance)]
        with contextlib.suppress(FileNotFoundError):
            state_path(instance).unlink()
    print(f"{_label(instance)}: down{' (other instances still run: mounts kept)' if kept else ''}", file=sys.stderr)


def crash(instance: int = 1) -> None:
    """SIGKILL instance ``instance``'s Asterisk, as a crash would: no hangups, no events."""
    check_instance(instance)
    _require_root()
    with _lock():
        state = read_state(instance)
        if not is_running(state, instance):
            raise SandboxError(f"{_label(instance)} is not running")
        root = Path(state["root"])
        _signal_until_gone(lambda: instance_pids(root, instance), signal.SIGKILL, 10)
    print(f"{_label(instance)}: Asterisk killed (SIGKILL)", file=sys.stderr)


def is_up(instance: int = 1) -> bool:
    """Instance ``instance`` runs and its ARI answers."""
    return is_running(read_state(instance), instance) and _ari_ok(ari_settings(instance))


def cmd_up(instance: int = 1) -> int:
    start(instance)
    return 0


def cmd_down(instance: int = 1) -> int:
    stop(instance)
    return 0


def cmd_crash(instance: int = 1) -> int:
    crash(instance)
    return 0


def cmd_status(instance: int = 1) -> int:
    settings = ari_settings(instance)
    state = read_state(instance)
    running = is_running(state, instance)
    ari = _ari_ok(settings)
    fresh = bool(state) and state.get("config_hash") == instance_config_hash(instance)
    rtp = rtp_port_range(instance)
    if instance != 1:
        print(f"instance: {instance} (system name {system_name(instance)}, entity id {entity_id(instance)})")
    print(f"root:    {state['root'] if state else root_path()} ({'built' if root_path().is_dir() else 'not built'})")
    print(f"asterisk: {'running, pid ' + str(state['pid']) if running else 'not running'}")
    print(f"ari:     {settings['url']} {'answers' if ari else 'does not answer'}")
    print(f"rtp:     {rtp.start}-{rtp.stop - 1}")
    if running:
        print(f"config:  {'current' if fresh else 'CHANGED since start (run up to apply)'}")
    return 0 if running and ari else 3


def cmd_env(instance: int = 1) -> int:
    s = ari_settings(instance)
    print(f"SPEAKD_TEST_ARI_URL={s['url']}")
    print(f"SPEAKD_TEST_ARI_USER={s['user']}")
    print(f"SPEAKD_TEST_ARI_PASSWORD={s['password']}")
    return 0


def _ari(settings: dict[str, str], method: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        settings["url"] + "/ari" + path,
        data=data,
        method=method,
        headers={**_ari_auth(settings), "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else {}


PHONES = ("alice", "bob")
CALL_READY_S = 15.0
RECORDING_FINAL_S = 15.0


def _ari_or_none(settings: dict[str, str], path: str) -> dict | None:
    """GET ``path``; None where ARI answers 404 (no such object)."""
    try:
        return _ari(settings, "GET", path)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def _wait(check: Callable[[], object], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise SandboxError(f"gave up after {within:g} s waiting for {what}")
        time.sleep(0.1)


def wav_is_final(data: bytes) -> bool:
    """True once the writer has closed the WAV file: its data chunk's size matches the bytes present."""
    pos = 12
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        if data[pos : pos + 4] == b"data":
            return size == len(data) - pos - 8
        pos += 8 + size + (size & 1)
    return False


def _instance_args(instance: int) -> str:
    return "" if instance == 1 else f" --instance {instance}"


def cmd_call(minutes: float, instance: int = 1) -> int:
    """Place the test two-party call (alice <-> bob), wait until both phones have answered and
    send audio, and print the channel to speak into."""
    settings = ari_settings(instance)
    if not _ari_ok(settings):
        raise SandboxError(f"ARI does not answer: run `python -m speakd.sandbox up{_instance_args(instance)}` first")
    # Led by the system name, as Asterisk names the channels it makes itself once it has one: a
    # fleet's nodes route a create for this call to its Asterisk's node by it (docs/fleet.md).
    name = system_name(instance)
    test_id = f"{name}-" * bool(name) + "manual-" + uuid.uuid4().hex[:8]
    a1, a2 = f"{test_id}-a1", f"{test_id}-a2"
    query = (
        f"endpoint=Local/alice@speakd-test/n&context=speakd-test&extension=dialbob&channelId={a1}&otherChannelId={a2}"
    )
    _ari(
        settings,
        "POST",
        f"/channels?{query}",
        {"variables": {"_SPEAKD_TEST_ID": test_id, "_SPEAKD_TEST_MAX_SECONDS": str(int(minutes * 60))}},
    )

    def answered() -> bool:
        # Each phone sets GLOBAL(SPEAKD_READY_<id>_<party>) once it records and sends (extensions.conf).
        ready = [_ari_or_none(settings, f"/asterisk/variable?variable=SPEAKD_READY_{test_id}_{p}") for p in PHONES]
        channel = _ari_or_none(settings, f"/channels/{a1}")
        return all(r and r.get("value") == "1" for r in ready) and bool(channel) and channel["state"] == "Up"

    _wait(answered, CALL_READY_S, f"the call {a1} to be answered by both phones")
    print(a1)
    print(
        f"sandbox: call up for {minutes:g} min; alice hears whisper=out on {a1}. "
        f"Hang up and keep what alice heard: "
        f"python -m speakd.sandbox hangup {a1} --save alice.wav{_instance_args(instance)}",
        file=sys.stderr,
    )
    return 0


def cmd_hangup(channel_id: str, save: Path | None, party: str, instance: int = 1) -> int:
    """Hang up a call placed by `call` and, with ``save``, write what ``party`` heard (the phone's
    recording, complete once the call has ended) to that file."""
    settings = ari_settings(instance)
    test_id = channel_id.removesuffix("-a1")
    legs = (f"{test_id}-a1", f"{test_id}-a2")
    for leg in legs:
        with contextlib.suppress(urllib.error.HTTPError):  # already gone
            _ari(settings, "DELETE", f"/channels/{leg}")
    _wait(lambda: all(_ari_or_none(settings, f"/channels/{leg}") is None for leg in legs), 10.0, "the call to end")
    if save is None:
        return 0
    url = f"{settings['url']}/ari/recordings/stored/{test_id}-{party}/file"
    previous: list[bytes] = []

    def final() -> bool:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=_ari_auth(settings)), timeout=10) as resp:
                data = resp.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:  # not written yet
                return False
            raise
        done = wav_is_final(data) and previous[-1:] == [data]
        previous[:] = [data]
        return done

    _wait(final, RECORDING_FINAL_S, f"{party}'s recording of {test_id} to be complete")
    save.write_bytes(previous[0])
    print(f"sandbox: {save} holds what {party} heard ({len(previous[0]) / 16000:.1f} s)", file=sys.stderr)
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="speakd sandbox", description=__doc__.split("\n\n")[0])
    instance_help = f"which Asterisk, 1 to {MAX_INSTANCE} (default: ${INSTANCE_ENV}, else 1)"
    parser.add_argument("--instance", type=int, help=instance_help)
    # also after the command (`up --instance 2`); there it wins
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--instance", type=int, default=argparse.SUPPRESS, help=instance_help)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up", parents=[common], help="build (once) and start the sandbox Asterisk; apply config changes")
    sub.add_parser("down", parents=[common], help="stop Asterisk and unmount; keep the cached root")
    sub.add_parser("status", parents=[common], help="say whether it is up (exit 0) or not (exit 3)")
    sub.add_parser("env", parents=[common], help="print SPEAKD_TEST_ARI_* settings for the tests")
    sub.add_parser("crash", parents=[common], help="SIGKILL Asterisk as a crash would (tests); `up` starts it again")
    call = sub.add_parser(
        "call", parents=[common], help="place a test two-party call; prints the channel id to speak into"
    )
    call.add_argument("--minutes", type=float, default=10.0)
    hangup = sub.add_parser(
        "hangup", parents=[common], help="hang up a call placed by `call`; --save FILE keeps what a phone heard"
    )
    hangup.add_argument("channel", help="the channel id `call` printed")
    hangup.add_argument("--save", type=Path, help="write the phone's recording (WAV, 8 kHz) to this file")
    hangup.add_argument("--party", choices=PHONES, default="alice", help="whose recording (default: alice)")
    args = parser.parse_args(argv)
    try:
        instance = default_instance() if args.instance is None else check_instance(args.instance)
        if args.cmd == "up":
            return cmd_up(instance)
        if args.cmd == "down":
            return cmd_down(instance)
        if args.cmd == "status":
            return cmd_status(instance)
        if args.cmd == "env":
            return cmd_env(instance)
        if args.cmd == "crash":
            return cmd_crash(instance)
        if args.cmd == "hangup":
            return cmd_hangup(args.channel, args.save, args.party, instance)
        return cmd_call(args.minutes, instance)
    except (SandboxError, subprocess.CalledProcessError, urllib.error.URLError) as exc:
        print(f"sandbox: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
