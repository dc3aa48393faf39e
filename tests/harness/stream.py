"""A client of a session's text stream (``/v1.0/speakings/{id}/stream``), and LLM-like tokens."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import Any

import aiohttp

from harness.daemon import KEY_A


class StreamClient:
    def __init__(self, base: str, speaking_id: str, key: str = KEY_A, timestamps: bool = False) -> None:
        self.url = f"{base}/v1.0/speakings/{speaking_id}/stream?accesskey={key}"
        if timestamps:
            self.url += "&timestamps=true"
        self.messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.received: list[dict[str, Any]] = []
        self._http = aiohttp.ClientSession()
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self.close_code: int | None = None

    async def __aenter__(self) -> StreamClient:
        self.ws = await self._http.ws_connect(self.url)
        self._reader = asyncio.create_task(self._read())
        ready = await self.expect("ready")
        assert ready["timestamps"] in (True, False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._http.close()

    async def _read(self) -> None:
        assert self.ws is not None
        async for message in self.ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                body = message.json()
                self.received.append(body)
                await self.messages.put(body)
        self.close_code = self.ws.close_code
        await self.messages.put({"type": "_closed", "code": self.ws.close_code})

    async def send(self, message: Any) -> None:
        assert self.ws is not None
        await (self.ws.send_str(message) if isinstance(message, str) else self.ws.send_json(message))

    async def expect(self, kind: str, timeout: float = 30.0) -> dict[str, Any]:
        """The next message of this type (others before it are kept in ``received``)."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.messages.get()
                if message["type"] == kind:
                    return message
                assert message["type"] != "_closed", f"closed while waiting for {kind}: {self.received}"


async def tokens(client: StreamClient, text: str, seed: int = 7) -> float:
    """Send ``text`` as an LLM does: 1-4 characters every 20-50 ms. Returns when the last went."""
    rng = random.Random(seed)
    i = 0
    while i < len(text):
        n = rng.randint(1, 4)
        await client.send({"type": "text", "text": text[i : i + n]})
        i += n
        await asyncio.sleep(rng.uniform(0.02, 0.05))
    return time.time()
