"""A thin ARI client on aiohttp.

REST calls return the decoded JSON (or None) and raise typed :mod:`speakd.ari.errors`.
:meth:`AriClient.run_events` keeps the ``/ari/events`` WebSocket connected for our Stasis
application, reconnecting with capped exponential backoff, and hands every event to the
callback. Credentials go in the ``Authorization`` header on both, never in the URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import structlog
from yarl import URL

from speakd.ari.errors import AriNotFound, AriUnavailable, error_for_status
from speakd.config import AriConfig
from speakd.parsing import format_bool
from speakd.urls import websocket_url

log = structlog.get_logger(__name__)

EventCallback = Callable[[dict[str, Any]], Awaitable[None] | None]
ConnectCallback = Callable[[], Awaitable[None]]


def _basic_auth_header(username: str, password: str) -> str:
    encode = getattr(aiohttp, "encode_basic_auth", None)
    if encode is not None:  # aiohttp >= 3.14 deprecates BasicAuth
        return encode(username, password)
    return aiohttp.BasicAuth(username, password).encode()


def _clean_params(params: dict[str, Any] | None) -> dict[str, str] | None:
    if params is None:
        return None
    out: dict[str, str] = {}
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out[key] = format_bool(value)
        elif isinstance(value, list | tuple):
            out[key] = ",".join(str(v) for v in value)
        else:
            out[key] = str(value)
    return out


class AriClient:
    def __init__(
        self,
        url: str,
        username: str,
        password: str,
        app: str,
        *,
        request_timeout: float = AriConfig.request_timeout,
        max_backoff: float = AriConfig.reconnect_max_backoff,
    ) -> None:
        base = URL(url.rstrip("/"))
        self._base = base if base.path.endswith("/ari") else base / "ari"
        self.app = app
        self._headers = {"Authorization": _basic_auth_header(username, password)}
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self._max_backoff = max_backoff
        self._session: aiohttp.ClientSession | None = None
        self._media_session: aiohttp.ClientSession | None = None
        self.connected = asyncio.Event()
        self.connects = 0  # events WebSocket connections made (for metrics: all but the first are reconnects)

    async def __aenter__(self) -> AriClient:
        # Keep-alive pool sized for many concurrent setups; loopback calls take ~1 ms each.
        connector = aiohttp.TCPConnector(limit=64, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout, connector=connector)
        # Media WebSockets hold their connection for the whole session: a pool of their own,
        # unbounded, so neither they nor REST calls wait for a free connection.
        self._media_session = aiohttp.ClientSession(
            headers=self._headers, connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        for session in (self._session, self._media_session):
            if session is not None:
                await session.close()
        self._session = self._media_session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("AriClient used outside 'async with'")
        return self._session

    async def request(
        self, method: str, path: str, *, params: dict[str, Any] | None = None, json_body: Any = None
    ) -> Any:
        url = self._base / path.lstrip("/")
        try:
            async with self.session.request(method, url, params=_clean_params(params), json=json_body) as resp:
                body = await resp.read()
                if resp.status >= 400:
                    message = body.decode(errors="replace")
                    with contextlib.suppress(ValueError):
                        message = json.loads(body).get("message", message)
                    raise error_for_status(resp.status, message, method, path)
                if not body:
                    return None
                if resp.content_type == "application/json":
                    return json.loads(body)
                return body
        except aiohttp.ClientError as exc:
            raise AriUnavailable(f"Asterisk ARI unreachable: {exc}", method, path) from exc
        except TimeoutError as exc:
            raise AriUnavailable("Asterisk ARI request timed out", method, path) from exc

    async def get(self, path: str, **params: Any) -> Any:
        return await self.request("GET", path, params=params)

    async def post(self, path: str, **params: Any) -> Any:
        return await self.request("POST", path, params=params)

    async def delete(self, path: str, **params: Any) -> Any:
        return await self.request("DELETE", path, params=params)

    def media_websocket(self, connection_id: str) -> Any:
        """Open chan_websocket's media socket for an ExternalMedia channel made with
        ``connection_type=server`` (same host, credentials and TLS as ARI)."""
        url = websocket_url(self._base.parent / "media" / connection_id)
        if self._media_session is None:
            raise RuntimeError("AriClient used outside 'async with'")
        return self._media_session.ws_connect(
            url, protocols=("media",), heartbeat=10.0, timeout=aiohttp.ClientWSTimeout(ws_close=2)
        )

    async def has_module(self, name: str) -> bool:
        """Whether Asterisk has module ``name`` loaded and running."""
        try:
            module = await self.get(f"asterisk/modules/{name}")
        except AriNotFound:
            return False
        return (module or {}).get("status") == "Running"

    async def run_events(self, on_event: EventCallback, on_connected: ConnectCallback | None = None) -> None:
        """Keep the events WebSocket up until cancelled."""
        ws_url = websocket_url((self._base / "events").with_query({"app": self.app, "subscribeAll": "false"}))
        backoff = 0.25
        while True:
            try:
                async with self.session.ws_connect(
                    ws_url, heartbeat=10.0, timeout=aiohttp.ClientWSTimeout(ws_close=5)
                ) as ws:
                    log.info("ari_connected", url=str(self._base), app=self.app)
                    self.connects += 1
                    backoff = 0.25
                    if on_connected is not None:
                        await on_connected()  # reconcile first: "connected" means ready to serve
                    self.connected.set()
                    async for msg in ws:
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            continue
                        try:
                            event = json.loads(msg.data)
                        except ValueError:
                            log.warning("ari_bad_event", data=msg.data[:200])
                            continue
                        result = on_event(event)
                        if asyncio.iscoroutine(result):
                            await result
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                log.warning("ari_connect_failed", error=str(exc) or type(exc).__name__, retry_in=backoff)
            except asyncio.CancelledError:
                self.connected.clear()  # speakd is stopping: not a disconnection to warn about
                raise
            finally:
                if self.connected.is_set():
                    log.warning("ari_disconnected")
                self.connected.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff)
