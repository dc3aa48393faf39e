"""A small ARI client for tests only (not the daemon's): REST calls plus one app's event stream."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import aiohttp


def basic_auth_header(user: str, password: str) -> str:
    # aiohttp 3.14 deprecates BasicAuth/auth=; older versions lack encode_basic_auth
    encode = getattr(aiohttp, "encode_basic_auth", None)
    if encode is not None:
        return encode(user, password)
    return aiohttp.BasicAuth(user, password).encode()


class AriError(Exception):
    def __init__(self, method: str, path: str, status: int, body: str):
        super().__init__(f"{method} {path} -> {status}: {body[:300]}")
        self.status = status
        self.body = body


class Ari:
    """REST access to one Asterisk. `url` is the HTTP base (no /ari)."""

    def __init__(self, url: str, user: str, password: str):
        self.url = url.rstrip("/")
        self.user = user
        self.password = password
        self._headers = {"Authorization": basic_auth_header(user, password)}
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self._headers)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(
        self, method: str, path: str, *, params: dict | None = None, json: Any = None, raw: bool = False
    ) -> Any:
        params = {
            k: ("true" if v is True else "false" if v is False else str(v))
            for k, v in (params or {}).items()
            if v is not None
        }
        async with self.session.request(
            method, f"{self.url}/ari{path}", params=params, json=json, timeout=aiohttp.ClientTimeout(total=15)
        ) as resp:
            body = await resp.read()
            if resp.status >= 300:
                raise AriError(method, path, resp.status, body.decode(errors="replace"))
            if raw:
                return body
            return await resp.json() if body else None

    async def get(self, path: str, **params: Any) -> Any:
        return await self.request("GET", path, params=params)

    async def post(self, path: str, json: Any = None, **params: Any) -> Any:
        return await self.request("POST", path, params=params, json=json)

    async def delete(self, path: str, **params: Any) -> Any:
        return await self.request("DELETE", path, params=params)

    async def delete_quietly(self, path: str, **params: Any) -> None:
        """Delete something that may already be gone (teardown)."""
        with contextlib.suppress(AriError):
            await self.delete(path, **params)

    async def exists(self, path: str) -> bool:
        try:
            await self.get(path)
        except AriError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def global_var(self, name: str) -> str:
        try:
            return (await self.get("/asterisk/variable", variable=name)).get("value", "")
        except AriError as exc:
            if exc.status == 404:
                return ""
            raise

    async def wait_until(self, check: Callable[[], Any], within: float, what: str, interval: float = 0.05):
        """Poll an async `check` until it returns something truthy."""
        deadline = time.monotonic() + within
        while True:
            result = await check()
            if result:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {within} s waiting for {what}")
            await asyncio.sleep(interval)

    async def wait_gone(self, path: str, within: float = 10.0) -> None:
        async def gone():
            return not await self.exists(path)

        await self.wait_until(gone, within, f"{path} to go away")

    def app(self, name: str) -> AriApp:
        return AriApp(self, name)


class AriApp:
    """One Stasis application's /ari/events websocket, owned by a test.

    Every event is kept, so a test can wait for one that arrived before it asked (a StasisStart
    can arrive before the POST that caused it returns).
    """

    def __init__(self, ari: Ari, name: str):
        self.ari = ari
        self.name = name
        self.events: list[dict] = []
        self._changed = asyncio.Condition()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task | None = None

    async def connect(self) -> AriApp:
        ws_url = self.ari.url.replace("http", "ws", 1) + "/ari/events"
        self._ws = await self.ari.session.ws_connect(
            ws_url, params={"app": self.name, "subscribeAll": "false"}, heartbeat=10
        )
        self._reader = asyncio.create_task(self._read(), name=f"ari-app-{self.name}")
        return self

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                event = msg.json()
                event["_received"] = time.monotonic()
                async with self._changed:
                    self.events.append(event)
                    self._changed.notify_all()

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def wait_for(self, match: Callable[[dict], bool], within: float = 10.0, what: str = "event") -> dict:
        async def found():
            return next((e for e in self.events if match(e)), None)

        async with self._changed:
            try:
                async with asyncio.timeout(within):
                    while (event := await found()) is None:
                        await self._changed.wait()
            except TimeoutError:
                types = [e.get("type") for e in self.events[-20:]]
                raise TimeoutError(f"{self.name}: no {what} within {within} s (last events: {types})") from None
        return event

    async def wait_stasis_start(self, channel_id: str, within: float = 10.0) -> dict:
        return await self.wait_for(
            lambda e: e.get("type") == "StasisStart" and e.get("channel", {}).get("id") == channel_id,
            within,
            f"StasisStart for {channel_id}",
        )

    def of_type(self, event_type: str, channel_id: str | None = None) -> list[dict]:
        return [
            e
            for e in self.events
            if e.get("type") == event_type and (channel_id is None or e.get("channel", {}).get("id") == channel_id)
        ]
