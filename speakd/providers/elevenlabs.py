"""ElevenLabs, through the official ``elevenlabs`` SDK (``AsyncElevenLabs``), streaming.

Audio is asked for in the session's telephony format directly (``ulaw_8000``/``alaw_8000``), so
the session neither resamples nor encodes it. ElevenLabs takes no SSML.

Config (``[elevenlabs]`` in the config file, or ``SPEAKD_ELEVENLABS_<KEY>``):

``api_key``               required; sent as ``xi-api-key``.
``endpoint``              base URL (default ``https://api.elevenlabs.io``); a private endpoint or a
                          local stand-in.
``model``                 default ``eleven_flash_v2_5``; a ``ElevenLabs.<model>.<voice>`` voice
                          overrides it per request.
``connect_timeout``       seconds to connect (default 3).
``first_byte_timeout``    seconds from request to first audio byte (default 6); one retry.
``read_timeout``          seconds the stream may stall once audio flows (default 10).
``retries``               retries before any audio was yielded (default 1).
``optimize_streaming_latency``  0-4, passed through when set.
``voices``                per-language default voices overriding the built-in table, e.g.
                          ``{ de = "<voice id>" }`` or ``de=<id>,fr=<id>`` from the environment.
``voice_cache_ttl``       seconds ``GET /v1.0/voices`` caches the voice list (default 300).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from speakd.errors import InvalidRequest, ProviderNotConfigured, UnsupportedLanguage
from speakd.languages import parse_language_tag
from speakd.providers.base import AudioChunk, AudioFormat, Provider, SynthesisRequest, Voice
from speakd.providers.voices import (
    ConnectTimeout,
    Failure,
    Section,
    Timeouts,
    http_failure,
    resilient_stream,
    split_voice,
)

NAME = "elevenlabs"
DEFAULT_MODEL = "eleven_flash_v2_5"
DEFAULT_ENDPOINT = "https://api.elevenlabs.io"

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
    primary = parse_language_tag(language).split("-")[0]
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
        api_key=api_key,
        endpoint=cfg.str("endpoint", DEFAULT_ENDPOINT).rstrip("/"),
        model=cfg.str("model", DEFAULT_MODEL),
        timeouts=Timeouts.from_section(cfg),
        voices=cfg.table("voices"),
        optimize_streaming_latency=None if latency in (None, "") else cfg.int("optimize_streaming_latency", 0),
        voice_cache_ttl=cfg.float("voice_cache_ttl", 300.0),
    )


class ElevenLabsProvider(Provider):
    name = NAME
    supports_ssml = False

    def __init__(
        self,
        *,
        api_key: str,
        endpoint: str = DEFAULT_ENDPOINT,
        model: str = DEFAULT_MODEL,
        timeouts: Timeouts | None = None,
        voices: Mapping[str, str] | None = None,
        optimize_streaming_latency: int | None = None,
        voice_cache_ttl: float = 300.0,
    ) -> None:
        self.api_key = api_key
        self.endpoint = endpoint
        self.model = model
        self.timeouts = timeouts or Timeouts()
        self.voices = {**DEFAULT_VOICES, **{_iso(k): v for k, v in (voices or {}).items()}}
        self.optimize_streaming_latency = optimize_streaming_latency
        self.voice_cache_ttl = voice_cache_ttl
        self._client: Any = None
        self._http: Any = None

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

    async def aclose(self) -> None:
        http, self._http, self._client = self._http, None, None
        if http is not None:
            await http.aclose()

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

    def check(self, language: str, voice_id: str, payload_type: str = "text") -> None:
        if payload_type == "ssml":
            raise InvalidRequest("provider 'elevenlabs' does not accept SSML: send payload_type 'text'")
        if payload_type != "text":
            raise InvalidRequest(f"payload_type must be 'text' or 'ssml', not '{payload_type}'")
        self._resolve(language, voice_id)

    def default_voice(self, language: str) -> str:
        return self._resolve(language, "")[1]

    async def synthesize(self, request: SynthesisRequest) -> AsyncIterator[AudioChunk]:
        self.check(request.language, request.voice_id, request.payload_type)
        model, voice, iso = self._resolve(request.language, request.voice_id, request.model)
        output_format = "alaw_8000" if request.codec == "alaw" else "ulaw_8000"
        fmt = AudioFormat(request.codec, 8000)
        client = self._sdk()
        kwargs: dict[str, Any] = {
            "text": request.text,
            "model_id": model,
            "output_format": output_format,
            # The SDK's own retries would replay; speakd retries itself, once, before any audio.
            # chunk_size None: hand on every chunk as it arrives (a size would buffer up to it).
            "request_options": {"max_retries": 0, "chunk_size": None},
        }
        if model in LANGUAGE_CODE_MODELS:
            kwargs["language_code"] = iso
        if self.optimize_streaming_latency is not None:
            kwargs["optimize_streaming_latency"] = self.optimize_streaming_latency

        def attempt() -> AsyncIterator[bytes]:
            return _attempt(client, voice, kwargs)

        async for data in resilient_stream(NAME, attempt, _classify, self.timeouts):
            yield AudioChunk(data, fmt)

    async def list_voices(self, language: str | None = None) -> list[Voice]:
        from speakd.errors import ProviderError

        client = self._sdk()
        try:
            response = await client.voices.get_all(request_options={"max_retries": 0})
        except Exception as exc:
            raise ProviderError(f"elevenlabs: listing voices failed: {_classify(exc).message}") from exc
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
                    extra={"category": str(v.category or "")},
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


def _classify(exc: BaseException) -> Failure:
    import httpx
    from elevenlabs.core.api_error import ApiError

    if isinstance(exc, ApiError):
        return http_failure(NAME, exc.status_code, _detail(exc.body))
    if isinstance(exc, httpx.ConnectError):
        return Failure(f"elevenlabs: could not connect: {exc}", retryable=True)
    if isinstance(exc, httpx.TimeoutException):
        return Failure(f"elevenlabs: timed out: {exc!r}", retryable=True)
    if isinstance(exc, httpx.HTTPError):
        return Failure(f"elevenlabs: {type(exc).__name__}: {exc}", retryable=True)
    return Failure(f"elevenlabs: {type(exc).__name__}: {exc}", retryable=False)
