"""ElevenLabs, through the official ``elevenlabs`` SDK (``AsyncElevenLabs``), streaming.

Audio is asked for in the session's telephony format directly (``ulaw_8000``/``alaw_8000``), so
the session neither resamples nor encodes it. ElevenLabs takes no SSML.

Config (``[elevenlabs]`` in the config file, or ``SPEAKD_ELEVENLABS_<KEY>``):

``api_key``               required; sent as ``xi-api-key``.
``endpoint``              base URL (default ``https://api.elevenlabs.io``); a private endpoint or a
                          local stand-in.
``model``                 default ``eleven_flash_v2_5``; a ``ElevenLabs.<model>.<voice>`` voice
                          overrides it per request.
``optimize_streaming_latency``  0-4, passed through when set.
``stream_inactivity_timeout``  seconds ElevenLabs keeps a streaming-input socket open without
                          text (its ``inactivity_timeout``, default 20, at most 180); a stream idle
                          longer reconnects on its next chunk.

and the keys every cloud provider reads (:mod:`speakd.providers.settings`); ``voices`` is keyed
by language (a region is ignored), e.g. ``{ de = "<voice id>" }``.

A streamed speaking (text sent in chunks) uses the multi-context WebSocket
``/v1/text-to-speech/{voice}/multi-stream-input``, one connection per stream and one context per
chunk, with word marks from its character alignment (see :class:`ElevenLabsTextStream`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import re
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlencode

from speakd.audio import Codec, telephony_format
from speakd.errors import ProviderNotConfigured, UnsupportedLanguage
from speakd.languages import parse_language_tag, primary_language
from speakd.providers.base import AudioChunk, SynthesisRequest, TextStream, Voice
from speakd.providers.cloud import CloudProvider
from speakd.providers.peer_voices import split_voice
from speakd.providers.resilience import (
    ConnectTimeout,
    Failure,
    credentials_rejected,
    http_failure,
    listing_voices,
    resilient_stream,
)
from speakd.providers.settings import CloudSettings, Section
from speakd.urls import websocket_url

NAME = "elevenlabs"
DEFAULT_MODEL = "eleven_flash_v2_5"
DEFAULT_ENDPOINT = "https://api.elevenlabs.io"
# ElevenLabs' output_format for a session codec.
OUTPUT_FORMATS: dict[Codec, str] = {"ulaw": "ulaw_8000", "alaw": "alaw_8000"}

_V2 = "en ja zh de hi fr ko pt it es id nl tr fil pl sv bg ro ar cs el fi hr ms sk da ta uk ru"
_LANGS_V2 = tuple(_V2.split())
_LANGS_V25 = (*_LANGS_V2, "hu", "no", "vi")
# Languages each model speaks (ISO 639-1, ``fil`` for Filipino). An unknown model is not checked.
MODEL_LANGUAGES: dict[str, tuple[str, ...]] = {
    "eleven_flash_v2_5": _LANGS_V25,
    "eleven_turbo_v2_5": _LANGS_V25,
    "eleven_multilingual_v2": _LANGS_V2,
    "eleven_flash_v2": ("en",),
    "eleven_turbo_v2": ("en",),
    "eleven_monolingual_v1": ("en",),
}
# Models that take ``language_code`` to enforce the language of a multilingual voice.
LANGUAGE_CODE_MODELS = frozenset({"eleven_flash_v2_5", "eleven_turbo_v2_5"})

# Default voice per language: premade voices (every premade voice is multilingual), one chosen per
# language so that a German call does not get the English default. Override with ``voices``.
DEFAULT_VOICES: dict[str, str] = {
    "en": "21m00Tcm4TlvDq8ikWAM",  # Rachel
    "de": "pNInz6obpgDQGcFmaJgB",  # Adam
    "fr": "XB0fDUnXU5powFXDhCwa",  # Charlotte
    "es": "EXAVITQu4vr4xnSDxMaL",  # Sarah
    "it": "XrExE9yKIg1WjnnlVkGX",  # Matilda
    "pt": "Xb7hH8MSUJpSbSDYk0k2",  # Alice
    "nl": "FGY2WhTYpPnrIDTdsKH5",  # Laura
    "pl": "onwK4e9ZLuTAKqWW03F9",  # Daniel
    "sv": "pFZP5JQG7iQjIQuC4Bku",  # Lily
    "da": "cgSgspJ2msm6clMCkdW9",  # Jessica
    "fi": "IKne3meq5aSn9XLyUdCD",  # Charlie
    "no": "N2lVS1w4EtoT3dr4eOWO",  # Callum
    "ja": "JBFqnCBsd6RMkjVDRZzb",  # George
    "zh": "nPczCjzI2devNBz1zQrb",  # Brian
    "ko": "TX3LPaxmHKxFdv7VOQHJ",  # Liam
    "hi": "iP95p4xoKVk53GoZ742B",  # Chris
    "ar": "bIHbv24MWmeRgasZH58o",  # Will
    "tr": "cjVigY5qzO86Huf0OWal",  # Eric
    "ru": "SAz9YHcvj6GT2YYXdXww",  # River
    "uk": "pqHfZKP75CyZ1xhnxDDR",  # Bill
    "cs": "CwhRBWXzGAHq8TQ4Fs17",  # Roger
}
# Languages without an entry of their own use this (multilingual) voice.
FALLBACK_VOICE = "9BWtsMINqrJLrRacOk9x"  # Aria

_LANG_ALIASES = {"nb": "no", "nn": "no", "cmn": "zh", "yue": "zh", "tl": "fil", "iw": "he", "in": "id"}


def _iso(language: str) -> str:
    primary = primary_language(parse_language_tag(language))
    return _LANG_ALIASES.get(primary, primary)


def create(section: Mapping[str, Any]) -> ElevenLabsProvider:
    cfg = Section(NAME, section)
    api_key = cfg.str("api_key")
    if not api_key:
        raise ProviderNotConfigured(
            "elevenlabs: no API key configured: set api_key in [elevenlabs] (or SPEAKD_ELEVENLABS_API_KEY)"
        )
    latency = cfg.data.get("optimize_streaming_latency")
    return ElevenLabsProvider(
        CloudSettings.from_section(cfg),
        api_key=api_key,
        endpoint=cfg.str("endpoint", DEFAULT_ENDPOINT).rstrip("/"),
        model=cfg.str("model", DEFAULT_MODEL),
        optimize_streaming_latency=None if latency in (None, "") else cfg.int("optimize_streaming_latency", 0),
        stream_inactivity_timeout=_inactivity_timeout(cfg),
    )


def _inactivity_timeout(cfg: Section) -> int:
    seconds = cfg.float("stream_inactivity_timeout", 20.0)
    if not 1 <= seconds <= 180:
        raise ProviderNotConfigured("elevenlabs: 'stream_inactivity_timeout' must be 1 to 180 seconds")
    return int(seconds)


class ElevenLabsProvider(CloudProvider):
    name = NAME
    supports_ssml = False

    def __init__(
        self,
        settings: CloudSettings,
        *,
        api_key: str,
        endpoint: str = DEFAULT_ENDPOINT,
        model: str = DEFAULT_MODEL,
        optimize_streaming_latency: int | None = None,
        stream_inactivity_timeout: int = 20,
    ) -> None:
        super().__init__(settings)
        self.api_key = api_key
        self.stream_inactivity_timeout = stream_inactivity_timeout
        self.endpoint = endpoint
        self.model = model
        self.voices = {**DEFAULT_VOICES, **{_iso(k): v for k, v in settings.voices.items()}}
        self.optimize_streaming_latency = optimize_streaming_latency
        self._client: Any = None
        self._http: Any = None
        self._ws_http: Any = None  # aiohttp session of the streaming-input sockets

    # -- lifecycle -------------------------------------------------------------------------

    def _sdk(self) -> Any:
        if self._client is None:
            import httpx
            from elevenlabs.client import AsyncElevenLabs

            t = self.timeouts
            # An httpx.Timeout rather than a float so connect and read are bounded separately
            # (the SDK hands the client's timeout to every request).
            timeout = httpx.Timeout(connect=t.connect, read=max(t.first_byte, t.read), write=t.read, pool=t.connect)
            self._http = httpx.AsyncClient(timeout=timeout, follow_redirects=True)
            self._client = AsyncElevenLabs(
                api_key=self.api_key,
                base_url=self.endpoint,
                timeout=timeout,  # type: ignore[arg-type]
                httpx_client=self._http,
            )
        return self._client

    async def start(self) -> None:
        self._sdk()

    def _ws_session(self) -> Any:
        if self._ws_http is None:
            import aiohttp

            self._ws_http = aiohttp.ClientSession()
        return self._ws_http

    async def aclose(self) -> None:
        http, self._http, self._client = self._http, None, None
        if http is not None:
            await http.aclose()
        ws_http, self._ws_http = self._ws_http, None
        if ws_http is not None:
            await ws_http.close()

    # -- requests --------------------------------------------------------------------------

    def _resolve(self, language: str, voice_id: str, model: str = "") -> tuple[str, str, str]:
        """(model, voice id, iso language) or a 400."""
        model, voice = split_voice(NAME, voice_id, model or self.model)
        model = model or self.model
        iso = _iso(language)
        supported = MODEL_LANGUAGES.get(model)
        if supported is not None and iso not in supported:
            raise UnsupportedLanguage(
                f"provider 'elevenlabs' does not speak language '{language}' with model '{model}'"
            )
        if not voice:
            voice = self.voices.get(iso, FALLBACK_VOICE)
        return model, voice, iso

    async def synthesize(self, request: SynthesisRequest) -> AsyncIterator[AudioChunk]:
        model, voice, iso = self._checked(request.language, request.voice_id, request.payload_type, request.model)
        client = self._sdk()
        kwargs: dict[str, Any] = {
            "text": request.text,
            "model_id": model,
            "output_format": OUTPUT_FORMATS[request.codec],
            # The SDK's own retries would replay; speakd retries itself, once, before any audio.
            # chunk_size None: hand on every chunk as it arrives (a size would buffer up to it).
            "request_options": {"max_retries": 0, "chunk_size": None},
        }
        if model in LANGUAGE_CODE_MODELS:
            kwargs["language_code"] = iso
        if self.optimize_streaming_latency is not None:
            kwargs["optimize_streaming_latency"] = self.optimize_streaming_latency
        attempt = functools.partial(_attempt, client, voice, kwargs)
        async for chunk in resilient_stream(NAME, attempt, _classify, self.timeouts, telephony_format(request.codec)):
            yield chunk

    def open_text_stream(self, language: str, voice_id: str, codec: Codec, model: str = "") -> TextStream | None:
        model, voice, iso = self._resolve(language, voice_id, model)
        return ElevenLabsTextStream(self, voice=voice, model=model, iso=iso, codec=codec)

    def rendering(self, request: SynthesisRequest) -> dict[str, str]:
        model, voice, iso = self._resolve(request.language, request.voice_id, request.model)
        latency = self.optimize_streaming_latency
        return {
            "endpoint": self.endpoint,
            "model": model,
            "voice": voice,
            "language": iso,
            "output_format": OUTPUT_FORMATS[request.codec],
            "optimize_streaming_latency": "" if latency is None else str(latency),
            "payload_type": request.payload_type,
        }

    async def list_voices(self, language: str | None = None) -> list[Voice]:
        client = self._sdk()
        with listing_voices(NAME, _classify):
            response = await client.voices.get_all(request_options={"max_retries": 0})
        iso = _iso(language) if language else ""
        voices = []
        for v in response.voices:
            labels = dict(v.labels or {})
            langs = sorted(
                {_iso(x.language) for x in (getattr(v, "verified_languages", None) or []) if x.language}
                | ({_iso(labels["language"])} if labels.get("language") else set())
            ) or list(MODEL_LANGUAGES[DEFAULT_MODEL])
            if iso and iso not in langs:
                continue
            voices.append(
                Voice(
                    provider=NAME,
                    voice_id=v.voice_id,
                    name=v.name or v.voice_id,
                    languages=tuple(langs),
                    gender=str(labels.get("gender", "")),
                )
            )
        return voices


async def _attempt(client: Any, voice: str, kwargs: dict[str, Any]) -> AsyncIterator[bytes]:
    import httpx

    try:
        async for chunk in client.text_to_speech.stream(voice, **kwargs):
            if chunk:
                yield chunk
    except httpx.ConnectTimeout as exc:
        raise ConnectTimeout(str(exc) or "connect timed out") from exc


def _detail(body: Any) -> str:
    if isinstance(body, dict):
        detail = body.get("detail", body)
        if isinstance(detail, dict):
            return str(detail.get("message") or detail.get("status") or json.dumps(detail))
        return str(detail)
    return str(body)[:200]


_CREDENTIAL_ERRORS = frozenset({"invalid_api_key", "unauthorized", "missing_permissions", "permission_denied"})
WS_POLICY_VIOLATION = 1008  # ElevenLabs closes a refused stream with it (bad request, limits)


def _classify(exc: BaseException) -> Failure:
    import aiohttp
    import httpx
    from elevenlabs.core.api_error import ApiError

    if isinstance(exc, StreamClosed):
        if exc.http_status is not None:
            return http_failure(NAME, exc.http_status, str(exc))
        if exc.error in _CREDENTIAL_ERRORS:
            return credentials_rejected(NAME, f"{exc.error}: {exc}")
        if exc.stale or exc.error == "input_timeout_exceeded":
            return Failure(f"elevenlabs: the stream's connection was closed: {exc}", retryable=True)
        if exc.close_code == WS_POLICY_VIOLATION:
            return Failure(f"elevenlabs: the provider refused the stream: {exc}", retryable=False)
        return Failure(f"elevenlabs: the stream failed: {exc}", retryable=True)
    if isinstance(exc, aiohttp.ClientConnectionError | OSError):
        return Failure(f"elevenlabs: could not connect: {exc}", retryable=True)
    if isinstance(exc, ApiError):
        return http_failure(NAME, exc.status_code, _detail(exc.body))
    if isinstance(exc, httpx.ConnectError):
        return Failure(f"elevenlabs: could not connect: {exc}", retryable=True)
    if isinstance(exc, httpx.TimeoutException):
        return Failure(f"elevenlabs: timed out: {exc!r}", retryable=True)
    if isinstance(exc, httpx.HTTPError):
        return Failure(f"elevenlabs: {type(exc).__name__}: {exc}", retryable=True)
    return Failure(f"elevenlabs: {type(exc).__name__}: {exc}", retryable=False)


# -- streaming text input ------------------------------------------------------------------------
#
# The multi-context WebSocket (``/multi-stream-input``) rather than ``/stream-input``: one context per
# chunk on one connection. A chunk's text goes with ``flush`` and the context is closed at once, so
# the server ends its audio with ``isFinal`` for that context: a reliable end of chunk (on
# ``stream-input`` a flush has no end marker, only counting alignment characters would tell). A
# barge-in leaves the socket open: the cut context was already closed, what it still sends is
# dropped by its context id, and the next chunk starts at once without a new handshake.
# ElevenLabs allows 5 live contexts per connection; a closed context lives until its isFinal, so
# when cut contexts pile up (rapid interruptions) the connection is replaced instead.
# The official SDK has no asyncio client for these sockets (only a blocking single-context
# ``convert_realtime``): aiohttp's WebSocket client carries the SDK's own message types.

MAX_CONTEXTS = 5  # ElevenLabs' limit of simultaneous contexts per connection
_CLOSED_TYPES = ("CLOSE", "CLOSING", "CLOSED", "ERROR")
WORD_END = re.compile(r"\S(?=\s|$)")


class StreamClosed(Exception):
    """The stream-input socket closed or reported an error."""

    def __init__(self, message: str, *, http_status: int | None = None, close_code: int | None = None, error: str = ""):
        super().__init__(message)
        self.http_status = http_status  # the handshake was refused with this HTTP status
        self.close_code = close_code  # the WebSocket closed with this code
        self.error = error  # ElevenLabs' error code in an error message (``invalid_api_key``, ...)
        self.stale = False  # a kept socket that failed before answering this chunk


async def _receive(ws: Any) -> dict[str, Any]:
    """The next message of a stream-input socket; StreamClosed for a close or an error message."""
    import aiohttp

    frame = await ws.receive()
    if frame.type != aiohttp.WSMsgType.TEXT:
        reason = ws.close_code if frame.type.name in _CLOSED_TYPES else frame.type.name
        raise StreamClosed(f"the connection closed ({reason} {frame.extra or ''})".strip(), close_code=ws.close_code)
    message = json.loads(frame.data)
    if message.get("error") or (message.get("message") and "audio" not in message):
        raise StreamClosed(
            str(message.get("message") or message["error"]),
            error=str(message.get("error") or ""),
            close_code=message.get("code"),
        )
    return message


class AlignmentMarks:
    """Word marks of one chunk from ElevenLabs' character alignment: at each word's last
    character, (characters of the text spoken, sample offset into the audio message)."""

    def __init__(self, text: str, sample_rate: int) -> None:
        self.text = text
        self.rate = sample_rate
        self.word_ends = {m.end() for m in WORD_END.finditer(text)}
        self.cursor = 0

    def marks(self, alignment: Mapping[str, Any] | None) -> tuple[tuple[int, int], ...]:
        if not alignment:
            return ()
        chars = alignment.get("chars") or []
        starts = alignment.get("charStartTimesMs") or []
        durations = alignment.get("charDurationsMs") or []
        marks = []
        for char, start, duration in zip(chars, starts, durations, strict=False):
            # The alignment spells the text as sent; find each character at or just after the cursor
            # (it may leave out or add whitespace).
            found = self.text.find(char, self.cursor, self.cursor + 8) if char.strip() else -1
            if found < 0:
                continue
            self.cursor = found + 1
            if self.cursor in self.word_ends:
                marks.append((self.cursor, (start + duration) * self.rate // 1000))
        return tuple(marks)


class ElevenLabsTextStream(TextStream):
    """One speaking stream's multi-context WebSocket (see above). Not task-safe: one chunk at a time."""

    def __init__(self, provider: ElevenLabsProvider, *, voice: str, model: str, iso: str, codec: Codec) -> None:
        self.provider = provider
        self.format = telephony_format(codec)
        query = {
            "model_id": model,
            "output_format": OUTPUT_FORMATS[codec],
            "sync_alignment": "true",
            "inactivity_timeout": str(provider.stream_inactivity_timeout),
        }
        if model in LANGUAGE_CODE_MODELS:
            query["language_code"] = iso
        base = websocket_url(provider.endpoint)
        self.url = f"{base}/v1/text-to-speech/{voice}/multi-stream-input?{urlencode(query)}"
        self._ws: Any = None
        self._last_used = 0.0
        self._contexts = 0
        self._draining: set[str] = set()  # closed contexts whose isFinal has not come yet

    async def _socket(self) -> Any:
        """The open connection, replaced when closed, idle for most of the inactivity timeout
        (the server would close it as we speak), or when cut contexts are about to hit the limit."""
        import aiohttp

        ws = self._ws
        idle = time.monotonic() - self._last_used
        if ws is not None and (
            ws.closed or idle > 0.8 * self.provider.stream_inactivity_timeout or len(self._draining) >= MAX_CONTEXTS - 1
        ):
            await self._drop()
            ws = None
        if ws is None:
            session = self.provider._ws_session()
            try:
                async with asyncio.timeout(self.provider.timeouts.connect):
                    ws = await session.ws_connect(
                        self.url, headers={"xi-api-key": self.provider.api_key}, autoping=True, heartbeat=None
                    )
            except TimeoutError:
                raise ConnectTimeout(f"WebSocket handshake with {self.provider.endpoint} timed out") from None
            except aiohttp.WSServerHandshakeError as exc:
                raise StreamClosed(exc.message or "handshake refused", http_status=exc.status) from exc
            self._ws = ws
        return ws

    async def _drop(self) -> None:
        ws, self._ws = self._ws, None
        self._draining.clear()
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()

    async def synthesize(self, request: SynthesisRequest) -> AsyncIterator[AudioChunk]:
        if not request.text.strip():
            return
        mapper = AlignmentMarks(request.text, self.format.sample_rate)
        attempt = functools.partial(self._attempt, request.text, mapper)
        async for chunk in resilient_stream(NAME, attempt, _classify, self.provider.timeouts, self.format):
            yield chunk

    async def _attempt(self, text: str, mapper: AlignmentMarks) -> AsyncIterator[AudioChunk]:
        import aiohttp
        from elevenlabs.types import CloseContext, InitialiseContext, SendTextMulti

        reused = self._ws is not None
        ws = await self._socket()
        answered = False
        self._contexts += 1
        context_id = f"chunk-{self._contexts}"
        mapper.cursor = 0
        finished = False
        try:
            for outgoing in (
                InitialiseContext(text=" ", context_id=context_id),
                SendTextMulti(text=text.strip() + " ", context_id=context_id, flush=True),
                CloseContext(context_id=context_id, close_context=True),
            ):
                await ws.send_str(outgoing.json())
            while True:
                self._last_used = time.monotonic()
                message = await _receive(ws)
                owner = message.get("contextId") or message.get("context_id")
                final = message.get("isFinal") or message.get("is_final")
                answered = answered or owner == context_id
                if owner != context_id:  # a cut context still draining
                    if final:
                        self._draining.discard(owner)
                    continue
                if message.get("audio"):
                    data = base64.b64decode(message["audio"])
                    yield AudioChunk(data, self.format, mapper.marks(message.get("alignment")))
                if final:
                    finished = True
                    return
        except StreamClosed as exc:
            await self._drop()  # a broken socket is not reused; the retry opens a new one
            # A kept socket the server closed while it idled: the chunk is simply retried on a new one.
            exc.stale = reused and not answered
            raise
        except (aiohttp.ClientError, OSError, ValueError):
            await self._drop()
            raise
        finally:
            self._last_used = time.monotonic()
            if not finished and self._ws is ws:
                self._draining.add(context_id)

    async def aclose(self) -> None:
        from elevenlabs.types import CloseSocket

        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(Exception):
                await self._ws.send_str(CloseSocket(close_socket=True).json())
        await self._drop()
