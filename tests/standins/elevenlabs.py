"""ElevenLabs stand-in: ``POST /v1/text-to-speech/{voice_id}/stream`` (chunked HTTP streaming,
``output_format`` query, ``xi-api-key`` header) and ``GET /v1/voices``."""

from __future__ import annotations

import asyncio

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

    def provider_section(self, **extra) -> dict:
        """The speakd ``[elevenlabs]`` section pointing at this stand-in."""
        return {"api_key": self.api_key, "endpoint": self.url, **extra}

    def _routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/text-to-speech/{voice_id}/stream", self._tts_stream)
        app.router.add_get("/v1/voices", self._voices)

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
            data = await asyncio.to_thread(audio.render, body.get("text", ""), encoding, rate)
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
