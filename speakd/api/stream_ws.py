"""``GET /v1.0/speakings/{id}/stream``: the WebSocket of a client's text stream (see
:mod:`speakd.sessions.stream` for the protocol). This handler only moves messages: a writer
task sends what the stream produces, in order; a protocol error is sent as ``error`` and the
socket closes; the session itself is untouched by anything a client sends wrong."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from speakd.api.schemas import websocket_response
from speakd.errors import SpeakdError
from speakd.sessions.chunker import TextChunker
from speakd.sessions.service import SpeakingService
from speakd.sessions.stream import StreamProtocolError, error_message
from speakd.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

OUTBOX_MESSAGES = 1000


async def serve(
    request: web.Request,
    service: SpeakingService,
    customer_id: str,
    speaking_id: str,
    timestamps: bool,
    cache: bool = True,
) -> web.WebSocketResponse:
    outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(OUTBOX_MESSAGES)

    async def send(message: dict[str, Any]) -> None:
        await outbox.put(message)

    async def close() -> None:  # after what is queued has been sent
        await outbox.put(None)

    # Refusals (unknown session, one already open, stopped) are JSON errors before the upgrade.
    stream = await service.open_stream(customer_id, speaking_id, send, close, TextChunker(), timestamps, cache)
    # timeout: how long a close waits for the client's close frame (a stopped session, shutdown).
    ws = websocket_response(timeout=2.0)
    try:
        await ws.prepare(request)
        writer = asyncio.create_task(_write(ws, outbox), name=f"speakd-stream-writer-{speaking_id}")
        try:
            await stream.start()
            await _read(ws, stream, send)
            await close()
            await writer
        finally:
            await cancel_and_wait(writer)
            if not ws.closed:
                await ws.close()
    finally:
        service.close_stream(stream)
        await stream.aclose()
    return ws


async def _read(ws: web.WebSocketResponse, stream: Any, send: Any) -> None:
    async for message in ws:
        if message.type == WSMsgType.BINARY:
            await send(error_message("send JSON text messages, not binary"))
            return
        if message.type != WSMsgType.TEXT:
            continue
        try:
            await stream.handle(message.data)
        except StreamProtocolError as exc:
            await send(error_message(str(exc)))
            return
        except SpeakdError as exc:  # e.g. the session stopped, or 100 says already wait
            await send(error_message(exc.message, exc.reason))
            return
        if stream.finishing:
            await stream.wait_played()
            return


async def _write(ws: web.WebSocketResponse, outbox: asyncio.Queue[dict[str, Any] | None]) -> None:
    while (message := await outbox.get()) is not None:
        await ws.send_json(message)
    await ws.close(code=WSCloseCode.OK)
