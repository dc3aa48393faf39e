"""Amazon Polly, through the official ``boto3`` SDK.

``synthesize_speech`` streams its audio body; a worker thread reads it with ``iter_chunks`` and
hands the chunks to the event loop through a bounded queue, so the first chunk goes on while
Polly is still sending the rest. Cancelling the stream shuts the HTTP response down, which also
frees the worker thread. SSML is passed through (``TextType=ssml``).

Config (``[aws]`` in the config file, or ``SPEAKD_AWS_<KEY>``):

``access_key_id``, ``secret_access_key`` (and optional ``session_token``)  static credentials, or
``profile``               a profile of the shared AWS config/credentials files, or
``default_chain``         ``true`` to use boto3's default credential chain (env, instance role).
                          One of the three is required.
``region``                required unless the profile names one (e.g. ``eu-west-1``).
``endpoint``              endpoint URL (default: Polly's for the region); a private endpoint or a
                          local stand-in, e.g. ``http://127.0.0.1:8123``.
``engine``                ``neural`` (default), ``standard``, ``generative`` or ``long-form``; a voice
                          written ``Joanna-Neural`` / ``AWS.Polly.Joanna-Standard`` picks its own.
``sample_rate``           8000 (default) or 16000: PCM rate asked of Polly.
``output_format``         ``pcm`` (default) or ``g711`` (Polly's ``mulaw``/``alaw`` at 8 kHz, matching
                          the session codec, so nothing is resampled).
``connect_timeout``       seconds to connect (default 3).
``first_byte_timeout``    seconds from request to first audio byte (default 6); one retry.
``read_timeout``          seconds the stream may stall once audio flows (default 10).
``retries``               retries before any audio was yielded (default 1).
``chunk_bytes``           bytes per chunk read off the stream (default 640 = 20 ms at 16 kHz).
``voices``                per-language default voices overriding the built-in table, e.g.
                          ``{ "de-DE" = "Daniel" }`` or ``de-DE=Daniel,fr-FR=Remi``.
``voice_cache_ttl``       seconds ``GET /v1.0/voices`` caches the voice list (default 300).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import AsyncIterator, Mapping
from typing import Any

import structlog

from speakd.audio import AudioFormat, telephony_format
from speakd.errors import InvalidRequest, ProviderError, ProviderNotConfigured, UnsupportedLanguage
from speakd.languages import parse_language_tag, pick_locale
from speakd.providers.base import AudioChunk, Provider, SynthesisRequest, Voice
from speakd.providers.catalogue import DEFAULT_VOICE_CACHE_TTL
from speakd.providers.peer_voices import split_voice
from speakd.providers.resilience import Failure, http_failure, resilient_stream
from speakd.providers.settings import Section, Timeouts

log = structlog.get_logger(__name__)

NAME = "aws"
ENGINES = ("standard", "neural", "generative", "long-form")
_ENGINE_SUFFIXES = {"neural": "neural", "standard": "standard", "generative": "generative", "longform": "long-form"}
_STANDARD = ("standard",)
_NEURAL = ("standard", "neural")
_NEURAL_ONLY = ("neural",)
# locale -> (default voice, engines it supports). Override with ``voices``.
DEFAULT_VOICES: dict[str, tuple[str, tuple[str, ...]]] = {
    "en-US": ("Joanna", ("standard", "neural", "generative", "long-form")),
    "en-GB": ("Amy", ("standard", "neural", "generative")),
    "en-AU": ("Olivia", _NEURAL_ONLY),
    "en-IN": ("Kajal", _NEURAL_ONLY),
    "en-IE": ("Niamh", _NEURAL_ONLY),
    "en-NZ": ("Aria", _NEURAL_ONLY),
    "en-ZA": ("Ayanda", _NEURAL_ONLY),
    "en-SG": ("Jasmine", _NEURAL_ONLY),
    "en-GB-WLS": ("Geraint", _STANDARD),
    "cy-GB": ("Gwyneth", _STANDARD),
    "de-DE": ("Vicki", _NEURAL),
    "de-AT": ("Hannelore", _NEURAL_ONLY),
    "de-CH": ("Sabrina", _NEURAL_ONLY),
    "fr-FR": ("Lea", _NEURAL),
    "fr-CA": ("Gabrielle", _NEURAL_ONLY),
    "fr-BE": ("Isabelle", _NEURAL_ONLY),
    "es-ES": ("Lucia", _NEURAL),
    "es-MX": ("Mia", _NEURAL),
    "es-US": ("Lupe", _NEURAL),
    "it-IT": ("Bianca", _NEURAL),
    "pt-BR": ("Camila", _NEURAL),
    "pt-PT": ("Ines", _NEURAL),
    "nl-NL": ("Laura", _NEURAL_ONLY),
    "nl-BE": ("Lisa", _NEURAL_ONLY),
    "da-DK": ("Sofie", _NEURAL_ONLY),
    "sv-SE": ("Elin", _NEURAL_ONLY),
    "nb-NO": ("Ida", _NEURAL_ONLY),
    "fi-FI": ("Suvi", _NEURAL_ONLY),
    "pl-PL": ("Ola", _NEURAL_ONLY),
    "cs-CZ": ("Jitka", _NEURAL_ONLY),
    "ro-RO": ("Carmen", _STANDARD),
    "ru-RU": ("Tatyana", _STANDARD),
    "tr-TR": ("Burcu", _NEURAL_ONLY),
    "is-IS": ("Dora", _STANDARD),
    "ca-ES": ("Arlet", _NEURAL_ONLY),
    "arb": ("Zeina", _STANDARD),
    "ar-AE": ("Hala", _NEURAL_ONLY),
    "hi-IN": ("Kajal", _NEURAL_ONLY),
    "ja-JP": ("Takumi", _NEURAL),
    "ko-KR": ("Seoyeon", _NEURAL),
    "cmn-CN": ("Zhiyu", _NEURAL),
    "yue-CN": ("Hiujin", _NEURAL_ONLY),
}
_ALIASES = {
    "en": "en-US",
    "de": "de-DE",
    "fr": "fr-FR",
    "es": "es-ES",
    "pt": "pt-BR",
    "ar": "arb",
    "ar-SA": "arb",
    "zh": "cmn-CN",
    "zh-CN": "cmn-CN",
    "yue": "yue-CN",
    "zh-HK": "yue-CN",
    "no": "nb-NO",
    "nb": "nb-NO",
}


def split_engine(voice: str) -> tuple[str, str]:
    """``Joanna-Neural`` → (``Joanna``, ``neural``); a voice without a suffix → (voice, '')."""
    base, sep, suffix = voice.rpartition("-")
    engine = _ENGINE_SUFFIXES.get(suffix.lower().replace("-", "")) if sep else None
    return (base, engine) if engine and base else (voice, "")


def create(section: Mapping[str, Any]) -> PollyProvider:
    cfg = Section(NAME, section)
    key_id, secret = cfg.str("access_key_id"), cfg.str("secret_access_key")
    profile = cfg.str("profile")
    chain = cfg.bool("default_chain", False)
    if bool(key_id) != bool(secret):
        missing = "secret_access_key" if key_id else "access_key_id"
        raise ProviderNotConfigured(f"aws: {missing} is missing: set both access_key_id and secret_access_key")
    if not (key_id or profile or chain):
        raise ProviderNotConfigured(
            "aws: no credentials configured: set access_key_id and secret_access_key (or profile, or "
            "default_chain = true) and region in [aws] (or SPEAKD_AWS_ACCESS_KEY_ID, "
            "SPEAKD_AWS_SECRET_ACCESS_KEY, SPEAKD_AWS_REGION)"
        )
    region = cfg.str("region")
    if not region and not profile:
        raise ProviderNotConfigured("aws: region is missing: set region in [aws] (e.g. 'us-east-1')")
    engine = cfg.str("engine", "neural").lower()
    if engine not in ENGINES:
        raise ProviderNotConfigured(f"aws: engine must be one of {list(ENGINES)}, not '{engine}'")
    output_format = cfg.str("output_format", "pcm").lower()
    if output_format not in ("pcm", "g711"):
        raise ProviderNotConfigured(f"aws: output_format must be 'pcm' or 'g711', not '{output_format}'")
    return PollyProvider(
        access_key_id=key_id,
        secret_access_key=secret,
        session_token=cfg.str("session_token"),
        profile=profile,
        region=region,
        endpoint=cfg.str("endpoint"),
        engine=engine,
        sample_rate=cfg.int("sample_rate", 8000, choices=(8000, 16000)),
        output_format=output_format,
        timeouts=Timeouts.from_section(cfg),
        chunk_bytes=cfg.int("chunk_bytes", 640),
        voices=cfg.table("voices"),
        voice_cache_ttl=cfg.float("voice_cache_ttl", DEFAULT_VOICE_CACHE_TTL),
    )


class PollyProvider(Provider):
    name = NAME
    supports_ssml = True

    def __init__(
        self,
        *,
        access_key_id: str = "",
        secret_access_key: str = "",
        session_token: str = "",
        profile: str = "",
        region: str = "",
        endpoint: str = "",
        engine: str = "neural",
        sample_rate: int = 8000,
        output_format: str = "pcm",
        timeouts: Timeouts | None = None,
        chunk_bytes: int = 640,
        voices: Mapping[str, str] | None = None,
        voice_cache_ttl: float = DEFAULT_VOICE_CACHE_TTL,
        queue_chunks: int = 32,
    ) -> None:
        self.access_key_id = access_key_id
        self.secret_access_key = secret_access_key
        self.session_token = session_token
        self.profile = profile
        self.region = region
        self.endpoint = endpoint
        self.engine = engine
        self.sample_rate = sample_rate
        self.output_format = output_format
        self.timeouts = timeouts or Timeouts()
        self.chunk_bytes = chunk_bytes
        self.voices: dict[str, tuple[str, tuple[str, ...]]] = dict(DEFAULT_VOICES)
        for lang, voice in (voices or {}).items():
            self.voices[self._locale(lang)] = (voice, ())
        self.voice_cache_ttl = voice_cache_ttl
        self.queue_chunks = queue_chunks
        self._client: Any = None
        self._client_lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------

    def _sdk(self) -> Any:
        # Called from worker threads: botocore clients are thread-safe once made.
        with self._client_lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                session = boto3.session.Session(
                    aws_access_key_id=self.access_key_id or None,
                    aws_secret_access_key=self.secret_access_key or None,
                    aws_session_token=self.session_token or None,
                    profile_name=self.profile or None,
                    region_name=self.region or None,
                )
                self._client = session.client(
                    "polly",
                    endpoint_url=self.endpoint or None,
                    config=Config(
                        connect_timeout=self.timeouts.connect,
                        read_timeout=max(self.timeouts.first_byte, self.timeouts.read),
                        retries={"total_max_attempts": 1},  # speakd retries itself, before any audio
                    ),
                )
            return self._client

    async def start(self) -> None:
        await asyncio.to_thread(self._sdk)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    # -- requests --------------------------------------------------------------------------

    def _locale(self, language: str) -> str:
        lang = parse_language_tag(language)
        lang = _ALIASES.get(lang, lang)
        if lang in self.voices:
            return lang
        try:
            return pick_locale(NAME, lang, self.voices)
        except InvalidRequest:
            raise _unsupported(language) from None

    def _resolve(self, language: str, voice_id: str, model: str = "") -> tuple[str, str, str]:
        """(locale, voice, engine) or a 400."""
        locale = self._locale(language)
        _model, voice = split_voice(NAME, voice_id, model)
        voice, engine = split_engine(voice)
        if not voice:
            voice, engines = self.voices[locale]
            if not engine:
                engine = self.engine if not engines or self.engine in engines else engines[-1]
        return locale, voice, engine or self.engine

    def check(self, language: str, voice_id: str, payload_type: str = "text") -> None:
        self.check_payload_type(payload_type)
        self._resolve(language, voice_id)

    async def synthesize(self, request: SynthesisRequest) -> AsyncIterator[AudioChunk]:
        self.check(request.language, request.voice_id, request.payload_type)
        locale, voice, engine = self._resolve(request.language, request.voice_id, request.model)
        if self.output_format == "g711":
            fmt = telephony_format(request.codec)
            output, rate = ("alaw" if request.codec == "alaw" else "mulaw"), fmt.sample_rate
        else:
            fmt = AudioFormat("pcm_s16le", self.sample_rate)
            output, rate = "pcm", self.sample_rate
        params = {
            "Engine": engine,
            "LanguageCode": locale,
            "OutputFormat": output,
            "SampleRate": str(rate),
            "Text": request.text,
            "TextType": request.payload_type,
            "VoiceId": voice,
        }

        def attempt() -> AsyncIterator[bytes]:
            return self._attempt(params)

        async for data in resilient_stream(NAME, attempt, _classify, self.timeouts):
            yield AudioChunk(data, fmt)

    async def _attempt(self, params: dict[str, Any]) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=self.queue_chunks)
        stop = threading.Event()
        body: list[Any] = []

        def hand_over(item: tuple[str, Any]) -> bool:
            """Put ``item`` on the loop's queue, waiting while it is full; False once stopped."""
            try:
                future = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
            except RuntimeError:  # the loop is gone
                return False
            while True:
                try:
                    future.result(timeout=0.1)
                    return True
                except concurrent.futures.TimeoutError:
                    if stop.is_set():
                        future.cancel()
                        return False
                except concurrent.futures.CancelledError:
                    return False

        def work() -> None:
            try:
                response = self._sdk().synthesize_speech(**params)
                stream = response["AudioStream"]
                body.append(stream)
                if stop.is_set():
                    return
                for chunk in stream.iter_chunks(self.chunk_bytes):
                    if stop.is_set() or not hand_over(("data", chunk)):
                        return
                hand_over(("end", None))
            except BaseException as exc:
                if not stop.is_set():
                    hand_over(("error", exc))
            finally:
                for stream in body:
                    with contextlib.suppress(Exception):
                        stream.close()

        thread = threading.Thread(target=work, name="speakd-polly", daemon=True)
        thread.start()
        try:
            while True:
                kind, value = await queue.get()
                if kind == "data":
                    if value:
                        yield value
                elif kind == "end":
                    return
                else:
                    raise value
        finally:
            stop.set()
            for stream in list(body):
                _shutdown(stream)

    async def list_voices(self, language: str | None = None) -> list[Voice]:
        params: dict[str, Any] = {"IncludeAdditionalLanguageCodes": True}
        if language:
            params["LanguageCode"] = self._locale(language)

        def describe() -> list[dict[str, Any]]:
            voices: list[dict[str, Any]] = []
            token = None
            while True:
                page = self._sdk().describe_voices(**params, **({"NextToken": token} if token else {}))
                voices.extend(page.get("Voices", []))
                token = page.get("NextToken")
                if not token:
                    return voices

        try:
            raw = await asyncio.to_thread(describe)
        except Exception as exc:
            raise ProviderError(f"aws: listing voices failed: {_classify(exc).message}") from exc
        return [
            Voice(
                provider=NAME,
                voice_id=v["Id"],
                name=v.get("Name", v["Id"]),
                languages=(v["LanguageCode"], *v.get("AdditionalLanguageCodes", [])),
                gender=str(v.get("Gender", "")).lower(),
            )
            for v in raw
        ]


def _unsupported(language: str) -> InvalidRequest:
    return UnsupportedLanguage(f"provider 'aws' does not speak language '{language}'")


def _shutdown(stream: Any) -> None:
    """Interrupt a read blocked in the worker thread and close the connection."""
    raw = getattr(stream, "_raw_stream", None)
    with contextlib.suppress(Exception):
        if raw is not None and hasattr(raw, "shutdown"):
            raw.shutdown()
    with contextlib.suppress(Exception):
        stream.close()


def _classify(exc: BaseException) -> Failure:
    from botocore import exceptions as bce

    if isinstance(exc, bce.ConnectTimeoutError):
        return Failure(f"aws: could not connect: {exc}", retryable=True)
    if isinstance(exc, bce.ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = error.get("Code", "")
        detail = f"{code}: {error.get('Message', '')}".strip(": ")
        if code in (
            "UnrecognizedClientException",
            "InvalidSignatureException",
            "AccessDeniedException",
            "ExpiredTokenException",
            "InvalidClientTokenId",
        ):
            status = status if status in (401, 403) else 403
        return http_failure(NAME, status, detail)
    if isinstance(exc, bce.NoCredentialsError | bce.PartialCredentialsError):
        return Failure(f"aws: no usable credentials: {exc}", retryable=False)
    if isinstance(exc, bce.ReadTimeoutError):
        return Failure(f"aws: timed out reading from Polly: {exc}", retryable=True)
    if isinstance(exc, bce.EndpointConnectionError | bce.ConnectionClosedError | bce.ResponseStreamingError):
        return Failure(f"aws: {type(exc).__name__}: {exc}", retryable=True)
    if isinstance(exc, bce.BotoCoreError):
        return Failure(f"aws: {type(exc).__name__}: {exc}", retryable=False)
    return Failure(f"aws: {type(exc).__name__}: {exc}", retryable=False)
