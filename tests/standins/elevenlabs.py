"""ElevenLabs stand-in: ``POST /v1/text-to-speech/{voice_id}/stream`` (chunked HTTP streaming,
``output_format`` query, ``xi-api-key`` header), the multi-context WebSocket
``GET /v1/text-to-speech/{voice_id}/multi-stream-input`` and ``GET /v1/voices``.

The WebSocket behaves like the service: a context opens with ``{"text": " ", "context_id"}``, text
accumulates until ``flush``, whose audio comes as base64 ``audio`` messages with ``alignment`` /
``normalizedAlignment`` (per-message character times) and ``contextId``; a closed context ends with
``{"isFinal": true, "contextId"}`` after its audio; at most 5 live contexts; a connection without
text for its ``inactivity_timeout`` (query, default 20 s) gets an error message and is closed."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json

from aiohttp import web

from standins import audio
from standins.base import HANG_LIMIT, ClientGone, Recorded
from standins.http_base import HttpStandin, gone

FORMATS = {
    "ulaw_8000": ("ulaw", 8000),
    "alaw_8000": ("alaw", 8000),
    "pcm_8000": ("pcm", 8000),
    "pcm_16000": ("pcm", 16000),
    "pcm_22050": ("pcm", 22050),
    "pcm_24000": ("pcm", 24000),
}
CONTENT_TYPES = {"ulaw": "audio/basic", "alaw": "audio/x-alaw-basic", "pcm": "audio/pcm"}

VOICES = [
    {
        "voice_id": "21m00Tcm4TlvDq8ikWAM",
        "name": "Rachel",
        "category": "premade",
        "labels": {"gender": "female", "accent": "american"},
        "verified_languages": [{"language": "en", "model_id": "eleven_flash_v2_5", "locale": "en-US"}],
    },
    {
        "voice_id": "pNInz6obpgDQGcFmaJgB",
        "name": "Adam",
        "category": "premade",
        "labels": {"gender": "male", "accent": "american"},
        "verified_languages": [
            {"language": "en", "model_id": "eleven_flash_v2_5", "locale": "en-US"},
            {"language": "de", "model_id": "eleven_flash_v2_5", "locale": "de-DE"},
        ],
    },
    {
        "voice_id": "XB0fDUnXU5powFXDhCwa",
        "name": "Charlotte",
        "category": "premade",
        "labels": {"gender": "female", "accent": "swedish"},
        "verified_languages": [{"language": "fr", "model_id": "eleven_multilingual_v2", "locale": "fr-FR"}],
    },
]


class ElevenLabsStandin(HttpStandin):
    def __init__(self, *, api_key: str = "test-elevenlabs-key", **kwargs) -> None:
        super().__init__(**kwargs)
        self.api_key = api_key
        self.connections = 0
        """WebSocket connections accepted."""
        self.idle_close_after: float | None = None
        """Close idle sockets after this many seconds whatever the client asked (None: as asked)."""
        self.final_sent: list[str] = []
        """Context ids in the order their ``isFinal`` was sent."""
        self._handlers: set[asyncio.Task] = set()

    async def _stop_server(self) -> None:
        # WebSocket handlers outlive aiohttp's shutdown grace: end them before the loop goes.
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await super()._stop_server()

    def provider_section(self, **extra) -> dict:
        """The speakd ``[elevenlabs]`` section pointing at this stand-in."""
        return {"api_key": self.api_key, "endpoint": self.url, **extra}

    def _routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/text-to-speech/{voice_id}/stream", self._tts_stream)
        app.router.add_get("/v1/voices", self._voices)
        app.router.add_get("/v1/text-to-speech/{voice_id}/multi-stream-input", self._multi_stream_input)

    def _auth_error(self, request: web.Request, mode: str | None) -> web.Response | None:
        if mode == "unauthorized" or request.headers.get("xi-api-key") != self.api_key:
            return web.json_response(
                {"detail": {"status": "invalid_api_key", "message": "Invalid API key"}}, status=401
            )
        if mode == "forbidden":
            return web.json_response(
                {"detail": {"status": "missing_permissions", "message": "The API key lacks text_to_speech"}},
                status=403,
            )
        return None

    async def _voices(self, request: web.Request) -> web.StreamResponse:
        self._record(Recorded("list_voices", request.path, auth=request.headers.get("xi-api-key", "")))
        error = self._auth_error(request, None)
        return error or web.json_response({"voices": VOICES})

    async def _tts_stream(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        output_format = request.query.get("output_format", "mp3_44100_128")
        encoding, rate = FORMATS.get(output_format, ("", 0))
        mode = self._record(
            Recorded(
                "stream",
                request.path,
                voice=request.match_info["voice_id"],
                language=body.get("language_code") or "",
                format=output_format,
                sample_rate=rate,
                ssml="<speak" in body.get("text", ""),
                text=body.get("text", ""),
                model=body.get("model_id") or "",
                auth=request.headers.get("xi-api-key", ""),
                query=dict(request.query),
                body=body,
            )
        )
        error = self._auth_error(request, mode)
        if error is not None:
            return error
        if mode == "server_error":
            return web.json_response({"detail": {"status": "internal_error", "message": "boom"}}, status=500)
        if mode == "empty":  # 200, the audio's content type, and not one byte
            return web.Response(
                status=200, body=b"", headers={"Content-Type": CONTENT_TYPES.get(encoding, "audio/basic")}
            )
        if not encoding:
            return web.json_response(
                {"detail": [{"loc": ["query", "output_format"], "msg": f"unsupported {output_format}"}]},
                status=422,
            )
        is_gone = gone(request)
        try:
            if mode == "hang":
                await self._wait(is_gone, None, HANG_LIMIT)
                return web.Response(status=504)
            data = await asyncio.to_thread(audio.render, body.get("text", ""), encoding, rate, self.gain_db)
            response = web.StreamResponse(headers={"Content-Type": CONTENT_TYPES[encoding]})
            await response.prepare(request)
            complete = await self._stream(audio.chunks(data, self.chunk_bytes), response.write, is_gone, mode)
            if not complete:
                request.transport.abort()  # type: ignore[union-attr]
                return response
            await response.write_eof()
            return response
        except (ClientGone, ConnectionResetError):
            self._closed()
            raise asyncio.CancelledError from None

    # -- multi-context WebSocket -----------------------------------------------------------------

    async def _multi_stream_input(self, request: web.Request) -> web.StreamResponse:
        error = self._auth_error(request, None)
        if error is not None:
            return error  # the handshake is refused, as for any request with a bad key
        output_format = request.query.get("output_format", "mp3_44100_128")
        encoding, rate = FORMATS.get(output_format, ("", 0))
        if not encoding:
            return web.json_response({"detail": {"status": "invalid_output_format", "message": output_format}}, 400)
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        self.connections += 1
        self.events.append("ws_open")
        inactivity = float(request.query.get("inactivity_timeout", "20"))
        idle_limit = self.idle_close_after or inactivity
        texts: dict[str, list[str]] = {}  # live contexts and their text not yet flushed
        closing: set[str] = set()
        senders: dict[str, asyncio.Task] = {}
        send_lock = asyncio.Lock()

        async def send(message: dict) -> None:
            async with send_lock:
                await ws.send_str(json.dumps(message))

        async def fail(message: str, error: str, code: int) -> None:
            await send({"message": message, "error": error, "code": code})
            await ws.close(code=code, message=message.encode()[:120])

        async def generate(context_id: str, text: str, previous: asyncio.Task | None) -> None:
            if previous is not None:  # a context's flushes are spoken in order
                await asyncio.gather(previous, return_exceptions=True)
            mode = self._record(
                Recorded(
                    "stream",
                    request.path,
                    voice=request.match_info["voice_id"],
                    language=request.query.get("language_code", ""),
                    format=output_format,
                    sample_rate=rate,
                    text=text,
                    model=request.query.get("model_id", ""),
                    auth=request.headers.get("xi-api-key", ""),
                    query=dict(request.query),
                    body={"context_id": context_id},
                )
            )
            if mode in ("unauthorized", "forbidden"):
                error = "invalid_api_key" if mode == "unauthorized" else "missing_permissions"
                await fail(f"{error} for this request", error, 1008)
                return
            if mode == "server_error":
                await fail("An internal server error occurred", "internal_error", 1011)
                return
            if mode == "hang":
                await self._wait(lambda: ws.closed, None, HANG_LIMIT)
                return
            data = await asyncio.to_thread(audio.render, text, encoding, rate, self.gain_db)
            parts = audio.chunks(data, self.chunk_bytes)
            alignment = _Alignment(text, len(data), rate)

            async def send_part(part: bytes) -> None:
                chars = alignment.next(len(part))
                await send(
                    {
                        "audio": base64.b64encode(part).decode(),
                        "alignment": chars,
                        "normalizedAlignment": chars,
                        "contextId": context_id,
                    }
                )

            if not await self._stream(parts, send_part, lambda: ws.closed, mode):
                request.transport.abort()  # type: ignore[union-attr]

        async def finish(context_id: str) -> None:
            with contextlib.suppress(Exception):
                sender = senders.get(context_id)
                if sender is not None:
                    await sender
                if not ws.closed:
                    self.final_sent.append(context_id)  # before: the client may see it before we resume
                    await send({"isFinal": True, "contextId": context_id})
            texts.pop(context_id, None)
            closing.discard(context_id)

        try:
            while True:
                try:
                    frame = await asyncio.wait_for(ws.receive(), idle_limit)
                except TimeoutError:
                    if any(not t.done() for t in senders.values()):
                        continue  # generating is not inactivity
                    self.events.append("idle_close")
                    await fail(
                        "Have not received a new text in the last timeout period", "input_timeout_exceeded", 1008
                    )
                    break
                if frame.type != web.WSMsgType.TEXT:
                    break
                message = json.loads(frame.data)
                if message.get("close_socket"):
                    await asyncio.gather(*senders.values(), return_exceptions=True)
                    await ws.close()
                    break
                context_id = message.get("context_id") or "default"
                if context_id not in texts:
                    if len(texts) >= 5:
                        await fail(
                            "Maximum simultaneous contexts per WebSocket connection exceeded (5)",
                            "max_active_conversations",
                            1008,
                        )
                        break
                    texts[context_id] = []
                text = message.get("text") or ""
                if text.strip():
                    texts[context_id].append(text)
                if message.get("flush") and "".join(texts[context_id]).strip():
                    pending = "".join(texts[context_id]).strip()
                    texts[context_id] = []
                    senders[context_id] = asyncio.create_task(generate(context_id, pending, senders.get(context_id)))
                if message.get("close_context") and context_id not in closing:
                    closing.add(context_id)
                    senders[f"close:{context_id}"] = asyncio.create_task(finish(context_id))
        except (ClientGone, ConnectionResetError):
            pass
        finally:
            for task in senders.values():
                task.cancel()
            await asyncio.gather(*senders.values(), return_exceptions=True)
            self._closed()
            self.events.append("ws_closed")
            self._handlers.discard(handler)
        return ws


class _Alignment:
    """Character times spread evenly over the audio, handed out per audio message with times
    relative to that message, as ElevenLabs' ``alignment``."""

    def __init__(self, text: str, total_bytes: int, rate: int) -> None:
        self.text = text
        self.total = max(1, total_bytes)
        self.rate = rate
        self.offset = 0
        self.next_char = 0

    def next(self, size: int) -> dict:
        start, end = self.offset, self.offset + size
        self.offset = end
        per_char = self.total / max(1, len(self.text))
        chars, starts, durations = [], [], []
        while self.next_char < len(self.text) and self.next_char * per_char < end:
            at = self.next_char * per_char
            chars.append(self.text[self.next_char])
            starts.append(round((at - start) * 1000 / self.rate))
            durations.append(round(per_char * 1000 / self.rate))
            self.next_char += 1
        return {"chars": chars, "charStartTimesMs": starts, "charDurationsMs": durations}
