"""The ``websocket`` transport: ExternalMedia over chan_websocket, Asterisk paces.

speakd connects to ``ws(s)://<ARI host:port>/media/<MEDIA_WEBSOCKET_CONNECTION_ID>`` (the
channel was created with ``connection_type=server``), with the ARI credentials. Audio goes
as binary messages into Asterisk's own queue, played at one frame per 20 ms by Asterisk's
timer, so nothing speakd's interpreter does once audio is queued can make a dropout. Asterisk
says when its queue ran empty (``QUEUE_DRAINED``): a say that ran dry is known, however briefly.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

import aiohttp
import structlog

from speakd.config import TransportKind
from speakd.media import control
from speakd.media.transport import MediaTransport, TransportError
from speakd.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

START_TIMEOUT = 5.0
_FLUSH = object()  # queued in place of dropped audio: FLUSH_MEDIA


class WebSocketTransport(MediaTransport):
    kind = TransportKind.WEBSOCKET

    def __init__(self, connect: Any, frame_bytes: int, log_context: dict[str, str] | None = None) -> None:
        """``connect()`` opens the media WebSocket (an aiohttp ``ws_connect`` context)."""
        super().__init__()
        self._connect = connect
        self.frame_bytes = frame_bytes
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._outgoing: deque[bytes | str | object] = deque()
        self._has_outgoing = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._log = log.bind(**(log_context or {}))
        # QUEUE_DRAINED is asked for once at a time (REPORT_QUEUE_DRAINED is used up by the report):
        # asked after audio, and asked again at a report if audio was sent since the last ask.
        self._drain_asked = False
        self._audio_since_ask = False

    async def start(self) -> None:
        try:
            self._ws = await self._connect()
            started = await asyncio.wait_for(self._ws.receive(), START_TIMEOUT)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            await self.aclose()
            raise TransportError(f"could not open the media WebSocket: {exc or type(exc).__name__}") from None
        if started.type != aiohttp.WSMsgType.TEXT or not started.data.startswith(control.MEDIA_START):
            await self.aclose()
            raise TransportError(f"Asterisk did not start the media WebSocket (got {started.type.name})")
        self._tasks = [
            asyncio.create_task(self._read(), name="speakd-media-ws-read"),
            asyncio.create_task(self._write(), name="speakd-media-ws-write"),
        ]

    # -- the session's calls: ordered, synchronous -------------------------------------------

    def send_audio(self, data: bytes) -> None:
        self._outgoing.extend(control.split_audio(data, self.frame_bytes))
        if self._drain_asked:
            self._audio_since_ask = True
        else:
            self._ask_drained()
        self._has_outgoing.set()

    def _ask_drained(self) -> None:
        # After the audio: asked before it, an empty queue could answer at once.
        self._outgoing.append(control.REPORT_QUEUE_DRAINED)
        self._drain_asked, self._audio_since_ask = True, False

    def mark(self, mark_id: str) -> None:
        self._outgoing.append(control.mark_media(mark_id))
        self._has_outgoing.set()

    def flush(self) -> None:
        # What the writer has not sent yet never leaves; what it has is dropped by Asterisk.
        self._outgoing.clear()
        self._outgoing.append(_FLUSH)
        # An ask not written yet went with the rest; one written is answered after the flush.
        self._drain_asked = False
        self._has_outgoing.set()

    async def aclose(self) -> None:
        await cancel_and_wait(*self._tasks)
        self._tasks = []
        if self._ws is not None:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                await self._ws.close()
            self._ws = None

    # -- tasks ------------------------------------------------------------------------------

    async def _write(self) -> None:
        assert self._ws is not None
        ws = self._ws
        try:
            while True:
                while not self._outgoing:
                    self._has_outgoing.clear()
                    await self._has_outgoing.wait()
                item = self._outgoing.popleft()
                if isinstance(item, bytes):
                    await ws.send_bytes(item)
                elif isinstance(item, str):
                    await ws.send_str(item)
                else:
                    await ws.send_str(control.FLUSH_MEDIA)
        except (aiohttp.ClientError, ConnectionError) as exc:
            self._far_end_closed(f"media WebSocket write failed: {exc}")

    async def _read(self) -> None:
        assert self._ws is not None
        ws = self._ws
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            message = control.parse(msg.data)
            if message.command == control.MEDIA_MARK_PROCESSED:
                self.on_mark(message.params.get("correlation_id", ""))
            elif message.command == control.QUEUE_DRAINED:
                self._drain_asked = False
                if self._audio_since_ask:  # audio sent after the ask: its own end is to be reported too
                    self._ask_drained()
                    self._has_outgoing.set()
                self.on_drained()
            elif message.command == control.MEDIA_XOFF:
                self.writable.clear()
                self._log.info("media_xoff")
            elif message.command == control.MEDIA_XON:
                self.writable.set()
        code = ws.close_code
        self._far_end_closed(f"the media WebSocket closed (code {code})")
