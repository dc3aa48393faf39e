"""A real Asterisk for development and tests: a Debian sid chroot beside the host.

    python -m speakd.sandbox up|down|status|env|crash|call|hangup

Debian bookworm ships no Asterisk and installing sid packages on it would replace libc,
so `up` builds a minimal sid root with debootstrap (cached outside the repo, keyed by the
package list), copies the repo's asterisk-config/ into it and runs Asterisk there. The
chroot shares the host network: ARI on 127.0.0.1:18088, RTP on 31000-31999, no SIP.

Standard library only: it must run before the daemon's dependencies are installed.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
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
from collections.abc import Callable, Iterable
from pathlib import Path

SUITE = "sid"
VARIANT = "minbase"
PACKAGES = ("asterisk", "asterisk-modules")
MIRROR = os.environ.get("SPEAKD_SANDBOX_MIRROR", "http://deb.debian.org/debian")
REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = Path(os.environ.get("SPEAKD_SANDBOX_CONFIG", REPO / "asterisk-config"))
START_TIMEOUT = 60.0
ASTERISK_LOG = "var/log/asterisk/messages"
STDOUT_LOG = "var/log/asterisk/sandbox-stdout.log"


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


def state_path() -> Path:
    return cache_dir() / "state.json"


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


def ari_settings() -> dict[str, str]:
    http = _parse_conf(CONFIG_DIR / "http.conf").get("general", {})
    host = http.get("bindaddr", "127.0.0.1")
    port = http.get("bindport", "8088")
    users = [(name, s) for name, s in _parse_conf(CONFIG_DIR / "ari.conf").items() if s.get("type") == "user"]
    if not users:
        raise SandboxError(f"no type=user section in {CONFIG_DIR / 'ari.conf'}")
    name, section = users[0]
    return {"url": f"http://{host}:{port}", "user": name, "password": section.get("password", "")}


def config_hash() -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in CONFIG_DIR.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(CONFIG_DIR)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def install_config(root: Path) -> None:
    """Replace the root's /etc/asterisk with exactly what we ship (stock config pulls in Lua/DUNDi)."""
    etc = root / "etc/asterisk"
    if etc.exists():
        shutil.rmtree(etc)
    etc.mkdir(parents=True)
    for path in CONFIG_DIR.iterdir():
        if path.is_file() and path.suffix == ".conf":
            shutil.copy2(path, etc / path.name)
    sounds = CONFIG_DIR / "sounds"
    if sounds.is_dir():
        shutil.copytree(sounds, root / "usr/share/asterisk/sounds", dirs_exist_ok=True)
    for d in ("var/spool/asterisk/recording", "var/run/asterisk", "var/log/asterisk"):
        (root / d).mkdir(parents=True, exist_ok=True)
    # test recordings pile up otherwise; a day is long enough to look at a failed run's files
    for rec in (root / "var/spool/asterisk/recording").glob("*.wav"):
        with contextlib.suppress(OSError):
            if time.time() - rec.stat().st_mtime > 86400:
                rec.unlink()


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
    """Every process whose filesystem root is our chroot (Asterisk and anything it spawned)."""
    want = str(root.resolve())
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.readlink(entry / "root") == want:
                pids.append(int(entry.name))
    return pids


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


def start_asterisk(root: Path, settings: dict[str, str]) -> int:
    log = root / STDOUT_LOG
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            # Ahead of ordinary work (busy-host tests), as a PBX's Asterisk is; not real-time
            # priority: here Asterisk also runs every test phone, and real-time threads that
            # busy would starve the whole host.
            ["nice", "-n", str(ASTERISK_NICE), "chroot", str(root), "/usr/sbin/asterisk", "-f", "-n"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives this command and the terminal it ran in
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"},
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if _ari_ok(settings):
            return proc.pid
        time.sleep(0.3)
    reason = "exited" if proc.poll() is not None else f"did not answer ARI within {START_TIMEOUT:.0f} s"
    stop_asterisk(root)
    raise SandboxError(
        f"Asterisk {reason} ({settings['url']}/ari/asterisk/info as {settings['user']}).\n"
        f"--- {ASTERISK_LOG} ---\n{_tail(root / ASTERISK_LOG)}\n--- {STDOUT_LOG} ---\n{_tail(log)}"
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


def stop_asterisk(root: Path) -> None:
    seen = set(_root_pids(root))
    if not seen:
        return

    def remaining() -> set[int]:
        # /proc/<pid>/root stops resolving once the main thread exits, while other threads
        # may still hold sockets: also wait for every pid we saw to be fully gone
        seen.update(_root_pids(root))
        return {pid for pid in seen if _alive(pid)}

    if (root / "proc/self").exists():  # `asterisk -rx` needs /proc in the chroot
        subprocess.run(
            ["chroot", str(root), "/usr/sbin/asterisk", "-rx", "core stop now"],
            check=False,
            capture_output=True,
            timeout=15,
        )
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if _signal_until_gone(remaining, sig, 5):
            return
    raise SandboxError(f"processes in {root} would not stop: {sorted(remaining())}")


# --------------------------------------------------------------------------- state


def read_state() -> dict | None:
    try:
        return json.loads(state_path().read_text())
    except (OSError, ValueError):
        return None


def write_state(state: dict) -> None:
    tmp = state_path().with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(state_path())


def is_running(state: dict | None) -> bool:
    if not state:
        return False
    root = Path(state["root"])
    return state.get("pid") in _root_pids(root)


# --------------------------------------------------------------------------- commands


def _require_root() -> None:
    if os.geteuid() != 0:
        raise SandboxError("the sandbox needs root (debootstrap, chroot, mount)")


def cmd_up() -> int:
    _require_root()
    settings = ari_settings()
    wanted = config_hash()
    state = read_state()
    if is_running(state) and _ari_ok(settings):
        if state.get("config_hash") == wanted:
            print(f"sandbox: already up (pid {state['pid']}, {settings['url']})", file=sys.stderr)
            return 0
        print("sandbox: asterisk-config changed; restarting Asterisk", file=sys.stderr)
    root = ensure_root()
    if state and state.get("root") and Path(state["root"]) != root:
        _down_root(Path(state["root"]))  # the package list changed: retire the old root
    stop_asterisk(root)
    _check_port_free(settings)
    install_config(root)
    mount_all(root)
    t0 = time.monotonic()
    pid = start_asterisk(root, settings)
    write_state(
        {"pid": pid, "root": str(root), "config_hash": wanted, "ari_url": settings["url"], "started_at": time.time()}
    )
    print(
        f"sandbox: up in {time.monotonic() - t0:.1f} s (pid {pid}, ARI {settings['url']}, user {settings['user']})",
        file=sys.stderr,
    )
    return 0


def _down_root(root: Path) -> None:
    stop_asterisk(root)
    unmount_all(root)
    left = _mounts_under(root)
    if left:
        raise SandboxError(f"still mounted: {', '.join(map(str, left))}")


def cmd_down() -> int:
    _require_root()
    state = read_state()
    roots = {root_path()}
    if state and state.get("root"):
        roots.add(Path(state["root"]))
    for root in roots:
        if root.exists():
            _down_root(root)
    with contextlib.suppress(FileNotFoundError):
        state_path().unlink()
    print("sandbox: down", file=sys.stderr)
    return 0


def cmd_crash() -> int:
    """SIGKILL Asterisk, as a crash would: no hangups, no events. `up` starts it again."""
    _require_root()
    state = read_state()
    if not is_running(state):
        raise SandboxError("the sandbox is not running")
    root = Path(state["root"])
    _signal_until_gone(lambda: _root_pids(root), signal.SIGKILL, 10)
    print("sandbox: Asterisk killed (SIGKILL)", file=sys.stderr)
    return 0


def cmd_status() -> int:
    settings = ari_settings()
    state = read_state()
    running = is_running(state)
    ari = _ari_ok(settings)
    fresh = bool(state) and state.get("config_hash") == config_hash()
    print(f"root:    {state['root'] if state else root_path()} ({'built' if root_path().is_dir() else 'not built'})")
    print(f"asterisk: {'running, pid ' + str(state['pid']) if running else 'not running'}")
    print(f"ari:     {settings['url']} {'answers' if ari else 'does not answer'}")
    if running:
        print(f"config:  {'current' if fresh else 'CHANGED since start (run up to apply)'}")
    return 0 if running and ari else 3


def cmd_env() -> int:
    s = ari_settings()
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


def cmd_call(minutes: float) -> int:
    """Place the test two-party call (alice <-> bob), wait until both phones have answered and
    send audio, and print the channel to speak into."""
    settings = ari_settings()
    if not _ari_ok(settings):
        raise SandboxError("ARI does not answer: run `python -m speakd.sandbox up` first")
    test_id = "manual-" + uuid.uuid4().hex[:8]
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
        f"Hang up and keep what alice heard: python -m speakd.sandbox hangup {a1} --save alice.wav",
        file=sys.stderr,
    )
    return 0


def cmd_hangup(channel_id: str, save: Path | None, party: str) -> int:
    """Hang up a call placed by `call` and, with ``save``, write what ``party`` heard (the phone's
    recording, complete once the call has ended) to that file."""
    settings = ari_settings()
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
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up", help="build (once) and start the sandbox Asterisk; apply config changes")
    sub.add_parser("down", help="stop Asterisk and unmount; keep the cached root")
    sub.add_parser("status", help="say whether it is up (exit 0) or not (exit 3)")
    sub.add_parser("env", help="print SPEAKD_TEST_ARI_* settings for the tests")
    sub.add_parser("crash", help="SIGKILL Asterisk as a crash would (tests); `up` starts it again")
    call = sub.add_parser("call", help="place a test two-party call; prints the channel id to speak into")
    call.add_argument("--minutes", type=float, default=10.0)
    hangup = sub.add_parser("hangup", help="hang up a call placed by `call`; --save FILE keeps what a phone heard")
    hangup.add_argument("channel", help="the channel id `call` printed")
    hangup.add_argument("--save", type=Path, help="write the phone's recording (WAV, 8 kHz) to this file")
    hangup.add_argument("--party", choices=PHONES, default="alice", help="whose recording (default: alice)")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "up":
            return cmd_up()
        if args.cmd == "down":
            return cmd_down()
        if args.cmd == "status":
            return cmd_status()
        if args.cmd == "env":
            return cmd_env()
        if args.cmd == "crash":
            return cmd_crash()
        if args.cmd == "hangup":
            return cmd_hangup(args.channel, args.save, args.party)
        return cmd_call(args.minutes)
    except (SandboxError, subprocess.CalledProcessError, urllib.error.URLError) as exc:
        print(f"sandbox: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
