"""Amazon Polly stand-in: REST-JSON ``POST /v1/speech`` streaming the audio body (chunked) and
``GET /v1/voices``; SigV4 ``Authorization`` is checked for the expected access key id."""

from __future__ import annotations

import asyncio

from aiohttp import web

from standins import audio
from standins.base import HANG_LIMIT, ClientGone, Recorded
from standins.http_base import HttpStandin, gone

VOICES = [
    {
        "Id": "Joanna",
        "Name": "Joanna",
        "Gender": "Female",
        "LanguageCode": "en-US",
        "LanguageName": "US English",
        "SupportedEngines": ["neural", "standard", "generative", "long-form"],
    },
    {
        "Id": "Matthew",
        "Name": "Matthew",
        "Gender": "Male",
        "LanguageCode": "en-US",
        "LanguageName": "US English",
        "SupportedEngines": ["neural", "standard"],
    },
    {
        "Id": "Vicki",
        "Name": "Vicki",
        "Gender": "Female",
        "LanguageCode": "de-DE",
        "LanguageName": "German",
        "SupportedEngines": ["neural", "standard"],
    },
    {
        "Id": "Daniel",
        "Name": "Daniel",
        "Gender": "Male",
        "LanguageCode": "de-DE",
        "LanguageName": "German",
        "SupportedEngines": ["neural"],
    },
    {
        "Id": "Lea",
        "Name": "Léa",
        "Gender": "Female",
        "LanguageCode": "fr-FR",
        "LanguageName": "French",
        "SupportedEngines": ["neural", "standard"],
    },
]
CONTENT_TYPES = {"pcm": "audio/pcm", "mulaw": "audio/mulaw", "alaw": "audio/alaw"}


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response(
        {"message": message},
        status=status,
        headers={"x-amzn-ErrorType": f"{code}:http://internal.amazon.com/coral/com.amazon.coral.service/"},
    )


class PollyStandin(HttpStandin):
    def __init__(
        self, *, access_key_id: str = "AKIDSTANDIN0000000000", secret_access_key: str = "standin-secret", **kwargs
    ) -> None:
        kwargs.setdefault("chunk_bytes", 3200)
        super().__init__(**kwargs)
        self.access_key_id = access_key_id
        self.secret_access_key = secret_access_key

    def provider_section(self, **extra) -> dict:
        """The speakd ``[aws]`` section pointing at this stand-in."""
        return {
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "region": "us-east-1",
            "endpoint": self.url,
            **extra,
        }

    def _routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/speech", self._speech)
        app.router.add_get("/v1/voices", self._voices)

    def _auth_error(self, request: web.Request, mode: str | None) -> web.Response | None:
        auth = request.headers.get("Authorization", "")
        if mode == "unauthorized" or f"Credential={self.access_key_id}/" not in auth:
            return _error(403, "UnrecognizedClientException", "The security token included in the request is invalid.")
        if mode == "forbidden":
            return _error(403, "AccessDeniedException", "User is not authorized to perform: polly:SynthesizeSpeech")
        return None

    async def _voices(self, request: web.Request) -> web.StreamResponse:
        self._record(
            Recorded(
                "list_voices",
                request.path,
                query=dict(request.query),
                auth=request.headers.get("Authorization", ""),
                language=request.query.get("LanguageCode", ""),
            )
        )
        error = self._auth_error(request, None)
        if error is not None:
            return error
        lang = request.query.get("LanguageCode")
        return web.json_response({"Voices": [v for v in VOICES if not lang or v["LanguageCode"] == lang]})

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        fmt = body.get("OutputFormat", "")
        rate = int(body.get("SampleRate") or 16000)
        text = body.get("Text", "")
        ssml = body.get("TextType", "text") == "ssml"
        mode = self._record(
            Recorded(
                "synthesize",
                request.path,
                voice=body.get("VoiceId", ""),
                language=body.get("LanguageCode", ""),
                format=fmt,
                sample_rate=rate,
                ssml=ssml,
                text=text,
                engine=body.get("Engine", ""),
                auth=request.headers.get("Authorization", ""),
                body=body,
            )
        )
        error = self._auth_error(request, mode)
        if error is not None:
            return error
        if mode == "server_error":
            return _error(500, "ServiceFailureException", "Polly had an internal failure")
        if fmt not in CONTENT_TYPES:
            return _error(400, "ValidationException", f"OutputFormat {fmt!r} not supported by this stand-in")
        if fmt == "pcm" and rate not in (8000, 16000):
            return _error(400, "InvalidSampleRateException", f"SampleRate {rate} is not valid for pcm")
        if ssml and not text.lstrip().startswith("<speak"):
            return _error(400, "InvalidSsmlException", "Invalid SSML request")
        is_gone = gone(request)
        try:
            if mode == "hang":
                await self._wait(is_gone, None, HANG_LIMIT)
                return _error(500, "ServiceFailureException", "hung")
            spoken = audio.strip_ssml(text) if ssml else text
            encoding = {"pcm": "pcm", "mulaw": "ulaw", "alaw": "alaw"}[fmt]
            data = await asyncio.to_thread(audio.render, spoken, encoding, rate, self.gain_db)
            response = web.StreamResponse(
                headers={"Content-Type": CONTENT_TYPES[fmt], "x-amzn-RequestCharacters": str(len(text))}
            )
            response.enable_chunked_encoding()
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
