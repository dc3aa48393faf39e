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
``chunk_bytes``           bytes per chunk read off the stream (default 640 = 20 ms at 16 kHz).

and the keys every cloud provider reads (:mod:`speakd.providers.settings`); ``voices`` is keyed
by locale (``de-DE``, or a language: ``de``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import threading
from collections.abc import AsyncIterator, Mapping
from typing import Any

import structlog

from speakd.audio import AudioFormat, Codec, telephony_format
from speakd.errors import ProviderNotConfigured
from speakd.languages import pick_locale
from speakd.providers.base import AudioChunk, SynthesisRequest, Voice
from speakd.providers.cloud import CloudProvider
from speakd.providers.peer_voices import split_voice
from speakd.providers.resilience import Failure, http_failure, listing_voices, resilient_stream
from speakd.providers.settings import CloudSettings, Section

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
# Polly's OutputFormat for a session codec (``output_format = "g711"``).
_G711: dict[Codec, str] = {"ulaw": "mulaw", "alaw": "alaw"}
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
        CloudSettings.from_section(cfg),
        access_key_id=key_id,
        secret_access_key=secret,
        session_token=cfg.str("session_token"),
        profile=profile,
        region=region,
        endpoint=cfg.str("endpoint"),
        engine=engine,
        sample_rate=cfg.int("sample_rate", 8000, choices=(8000, 16000)),
        output_format=output_format,
        chunk_bytes=cfg.int("chunk_bytes", 640),
    )


class PollyProvider(CloudProvider):
    name = NAME
    supports_ssml = True

    def __init__(
        self,
        settings: CloudSettings,
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
        chunk_bytes: int = 640,
        queue_chunks: int = 32,
    ) -> None:
        super().__init__(settings)
        self.access_key_id = access_key_id
        self.secret_access_key = secret_access_key
        self.session_token = session_token
        self.profile = profile
        self.region = region
        self.endpoint = endpoint
        self.engine = engine
        self.sample_rate = sample_rate
        self.output_format = output_format
        self.chunk_bytes = chunk_bytes
        self.voices: dict[str, tuple[str, tuple[str, ...]]] = dict(DEFAULT_VOICES)
        for lang, voice in settings.voices.items():
            self.voices[self._locale(lang)] = (voice, ())
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
        return pick_locale(NAME, language, self.voices, _ALIASES)

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

    def _output(self, codec: Codec) -> tuple[AudioFormat, str, int]:
        """(the format of Polly's audio, its OutputFormat, its SampleRate) for a session codec."""
        if self.output_format == "g711":
            fmt = telephony_format(codec)
            return fmt, _G711[codec], fmt.sample_rate
        return AudioFormat("pcm_s16le", self.sample_rate), "pcm", self.sample_rate

    def rendering(self, request: SynthesisRequest) -> dict[str, str]:
        locale, voice, engine = self._resolve(request.language, request.voice_id, request.model)
        _fmt, output, rate = self._output(request.codec)
        return {
            "endpoint": self.endpoint or self.region,
            "voice": voice,
            "engine": engine,
            "language": locale,
            "output_format": output,
            "sample_rate": str(rate),
            "payload_type": request.payload_type,
        }

    async def synthesize(self, request: SynthesisRequest) -> AsyncIterator[AudioChunk]:
        locale, voice, engine = self._checked(request.language, request.voice_id, request.payload_type, request.model)
        fmt, output, rate = self._output(request.codec)
        params = {
            "Engine": engine,
            "LanguageCode": locale,
            "OutputFormat": output,
            "SampleRate": str(rate),
            "Text": request.text,
            "TextType": request.payload_type,
            "VoiceId": voice,
        }
        attempt = functools.partial(self._attempt, params)
        async for chunk in resilient_stream(NAME, attempt, _classify, self.timeouts, fmt):
            yield chunk

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

        with listing_voices(NAME, _classify):
            raw = await asyncio.to_thread(describe)
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
    return Failure(f"aws: {type(exc).__name__}: {exc}", retryable=False)
