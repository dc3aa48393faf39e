"""Run the real speakd daemon as a subprocess for tests, and talk to it over HTTP."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[2]
CUSTOMER_A = "5e4a0680-804e-11ec-8477-2fea5968d85b"
CUSTOMER_B = "7b1c2d3e-0000-4000-8000-00000000000b"
KEY_A = "key-customer-a"
KEY_B = "key-customer-b"
JWT_SECRET = "test-jwt-secret-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Reply:
    status: int
    body: Any

    @property
    def message(self) -> str:
        return (self.body or {}).get("error", {}).get("message", "") if isinstance(self.body, dict) else ""


@dataclass
class SpeakdProcess:
    """One speakd daemon: its config, its process, its log file."""

    workdir: Path
    ari_url: str
    ari_user: str
    ari_password: str
    app: str = field(default_factory=lambda: f"speakd-t{uuid.uuid4().hex[:6]}")
    port: int = field(default_factory=free_port)
    extra_config: str = ""
    transport: str = "auto"  # [media] transport
    codec: str = "ulaw"  # [media] codec
    env: dict[str, str] = field(default_factory=dict)
    store_url: str = ""  # [store] url: PostgreSQL (tests/harness/postgres.py); empty: SQLite in workdir
    # [cache] enabled: the audio cache, in workdir (so one test's renderings never reach another's); off
    # for a test that needs every say to ask its provider.
    cache: bool = True
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "speakd.log"

    def write_config(self) -> Path:
        path = self.workdir / "speakd.toml"
        path.write_text(
            f"""
[server]
host = "127.0.0.1"
port = {self.port}

[ari]
url = "{self.ari_url}"
username = "{self.ari_user}"
password = "{self.ari_password}"
app = "{self.app}"
reconnect_max_backoff = 1.0

[media]
transport = "{self.transport}"
codec = "{self.codec}"

[tts]
default_provider = "piper"

[auth]
access_keys = {{ "{KEY_A}" = "{CUSTOMER_A}", "{KEY_B}" = "{CUSTOMER_B}" }}
jwt_secret = "{JWT_SECRET}"

[store]
{f'url = "{self.store_url}"' if self.store_url else f'path = "{self.workdir / "speakd.sqlite3"}"'}

[cache]
enabled = {str(self.cache).lower()}
dir = "{self.workdir / "cache"}"

[log]
level = "info"
format = "json"

[piper]
# Same timing on every rendering, so the recordings can be compared with a reference.
noise_w_scale = 0.0
{self.extra_config}
"""
        )
        return path

    async def start(self, timeout: float = 60.0) -> None:
        config = self.write_config()
        log = open(self.log_path, "ab")  # noqa: SIM115, ASYNC230 - handed to the child process
        env = {**os.environ, **self.env}
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - starts it, does not wait for it
            [sys.executable, "-m", "speakd", "run", "--config", str(config)],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        log.close()
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"speakd exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    async with http.get(f"{self.base}/health") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError(f"speakd did not become ready:\n{self.log_tail()}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    async def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        for _ in range(300):
            if self.proc.poll() is not None:
                return self.proc.returncode
            await asyncio.sleep(0.05)
        self.proc.kill()
        return self.proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def log_text(self) -> str:
        return self.log_path.read_text()


class Api:
    """The Speaking API as a client sees it."""

    def __init__(self, base: str, accesskey: str | None = KEY_A) -> None:
        self.base = base
        self.accesskey = accesskey
        self._http = aiohttp.ClientSession()

    async def close(self) -> None:
        await self._http.close()

    def as_customer(self, accesskey: str | None) -> Api:
        other = Api.__new__(Api)
        other.base, other.accesskey, other._http = self.base, accesskey, self._http
        return other

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: bytes | str | None = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        params = dict(params or {})
        if self.accesskey is not None and "token" not in params and not (headers or {}).get("Authorization"):
            params.setdefault("accesskey", self.accesskey)
        async with self._http.request(
            method, f"{self.base}/v1.0{path}", json=json, data=data, params=params, headers=headers
        ) as resp:
            try:
                body = await resp.json(content_type=None)
            except ValueError:
                body = await resp.text()
            return Reply(resp.status, body)

    async def create(self, reference_id: str, **fields: Any) -> Reply:
        body = {"reference_type": "call", "reference_id": reference_id, "language": "en-US", **fields}
        return await self.request("POST", "/speakings", json=body)

    async def get(self, speaking_id: str) -> Reply:
        return await self.request("GET", f"/speakings/{speaking_id}")

    async def say(self, speaking_id: str, text: str, **fields: Any) -> Reply:
        return await self.request("POST", f"/speakings/{speaking_id}/say", json={"text": text, **fields})

    async def flush(self, speaking_id: str) -> Reply:
        return await self.request("POST", f"/speakings/{speaking_id}/flush")

    async def stop(self, speaking_id: str) -> Reply:
        return await self.request("POST", f"/speakings/{speaking_id}/stop")

    async def delete(self, speaking_id: str) -> Reply:
        return await self.request("DELETE", f"/speakings/{speaking_id}")

    async def wait_status(self, speaking_id: str, status: str, timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            reply = await self.get(speaking_id)
            last = reply.body
            if reply.status == 200 and reply.body["status"] == status:
                return reply.body
            await asyncio.sleep(0.02)
        raise AssertionError(f"speaking {speaking_id} did not reach {status!r} in {timeout}s; last: {last}")

    async def start_session(self, reference_id: str, **fields: Any) -> str:
        reply = await self.create(reference_id, **fields)
        assert reply.status == 201, reply
        await self.wait_status(reply.body["id"], "active")
        return reply.body["id"]
