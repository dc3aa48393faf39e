"""Google Cloud Text-to-Speech, through the official ``google-cloud-texttospeech`` SDK (gRPC).

Chirp 3 HD voices stream (``StreamingSynthesize``: audio arrives while the rest is synthesized);
every other voice, and any SSML, goes through unary ``SynthesizeSpeech``. Audio is asked for as
8 kHz MULAW/ALAW matching the session codec; WAV headers are stripped.

Config (``[gcp]`` in the config file, or ``SPEAKD_GCP_<KEY>``):

``credentials_file``      path of a service-account JSON key file, or
``api_key``               an API key (sent as ``x-goog-api-key``), or
``application_default``   ``true`` to use Application Default Credentials. One is required.
``endpoint``              ``host:port`` of the gRPC endpoint (default ``texttospeech.googleapis.com``);
                          a private endpoint or a local stand-in.
``insecure``              ``true`` for a plain-text gRPC endpoint (a local stand-in); then only
                          ``api_key`` is sent, as metadata.
``streaming``             ``false`` to use unary synthesis even for Chirp 3 HD voices (default true).
``stream_reopen_after``   seconds a pre-opened streaming call waits for a streamed speaking's next
                          chunk before it is replaced (default 4; Google closes it after about 5).

and the keys every cloud provider reads (:mod:`speakd.providers.settings`); ``connect_timeout``
bounds getting the gRPC channel ready, ``voices`` is keyed by locale, e.g.
``{ "de-DE" = "de-DE-Chirp3-HD-Puck" }``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import structlog

from speakd.audio import TELEPHONY_RATE, Codec, strip_wav_header, telephony_format
from speakd.errors import InvalidRequest, ProviderNotConfigured
from speakd.languages import pick_locale
from speakd.providers.base import AudioChunk, SynthesisRequest, TextStream, Voice
from speakd.providers.cloud import CloudProvider
from speakd.providers.peer_voices import split_voice
from speakd.providers.resilience import (
    ConnectTimeout,
    Failure,
    credentials_rejected,
    listing_voices,
    resilient_stream,
)
from speakd.providers.settings import CloudSettings, Section

log = structlog.get_logger(__name__)

NAME = "gcp"
DEFAULT_ENDPOINT = "texttospeech.googleapis.com"
CHUNK_BYTES = 1600  # 200 ms of 8 kHz G.711: how a unary response is handed on
# Google's AudioEncoding (by name) for a session codec.
_ENCODINGS: dict[Codec, str] = {"ulaw": "MULAW", "alaw": "ALAW"}


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# Locales with Chirp 3 HD voices (streaming); their default is a Chirp 3 HD voice.
CHIRP3_LOCALES = _words(
    "ar-XA bn-IN cmn-CN de-DE en-AU en-GB en-IN en-US es-ES es-US fr-CA fr-FR gu-IN hi-IN id-ID it-IT "
    "ja-JP kn-IN ko-KR ml-IN mr-IN nl-BE nl-NL pl-PL pt-BR ru-RU sw-KE ta-IN te-IN th-TH tr-TR uk-UA "
    "ur-IN vi-VN"
)
# Other locales Google speaks, with Standard voices.
STANDARD_LOCALES = _words(
    "af-ZA am-ET bg-BG ca-ES cmn-TW cs-CZ da-DK el-GR es-MX et-EE eu-ES fi-FI fil-PH gl-ES he-IL "
    "hr-HR hu-HU is-IS lt-LT lv-LV ms-MY nb-NO pa-IN pt-PT ro-RO sk-SK sr-RS sv-SE yue-HK"
)
DEFAULT_VOICES: dict[str, str] = {
    **{loc: f"{loc}-Chirp3-HD-Kore" for loc in CHIRP3_LOCALES},
    **{loc: f"{loc}-Standard-A" for loc in STANDARD_LOCALES},
    "en-US": "en-US-Chirp3-HD-Charon",
}
_ALIASES = {
    "zh": "cmn-CN",
    "zh-CN": "cmn-CN",
    "zh-TW": "cmn-TW",
    "zh-HK": "yue-HK",
    "ar": "ar-XA",
    "no": "nb-NO",
    "nb": "nb-NO",
    "nn-NO": "nb-NO",
    "tl": "fil-PH",
    "iw-IL": "he-IL",
    "en": "en-US",
    "es": "es-ES",
    "pt": "pt-BR",
    "fr": "fr-FR",
    "de": "de-DE",
}


def is_streaming_voice(voice: str) -> bool:
    """Voices ``StreamingSynthesize`` serves: Chirp 3 HD (and Chirp HD)."""
    return "-Chirp3-HD-" in voice or "-Chirp-HD-" in voice


def voice_locale(voice: str) -> str:
    """``en-US-Chirp3-HD-Charon`` → ``en-US``."""
    parts = voice.split("-")
    return "-".join(parts[:2]) if len(parts) >= 3 else ""


def voice_config(locale: str, voice: str, codec: Codec) -> tuple[Any, Any]:
    """The ``VoiceSelectionParams`` and ``AudioEncoding`` of a request."""
    from google.cloud import texttospeech_v1 as tts

    return tts.VoiceSelectionParams(language_code=locale, name=voice), tts.AudioEncoding[_ENCODINGS[codec]]


def create(section: Mapping[str, Any]) -> GoogleProvider:
    cfg = Section(NAME, section)
    credentials_file = cfg.str("credentials_file")
    api_key = cfg.str("api_key")
    adc = cfg.bool("application_default", False)
    if not (credentials_file or api_key or adc):
        raise ProviderNotConfigured(
            "gcp: no credentials configured: set credentials_file (a service-account JSON key), "
            "api_key, or application_default = true in [gcp] (or SPEAKD_GCP_CREDENTIALS_FILE / "
            "SPEAKD_GCP_API_KEY)"
        )
    if credentials_file and not os.path.isfile(credentials_file):
        raise ProviderNotConfigured(f"gcp: credentials_file '{credentials_file}' does not exist")
    insecure = cfg.bool("insecure", False)
    if insecure and not api_key and not adc:
        raise ProviderNotConfigured("gcp: an insecure endpoint takes only api_key as credentials: set api_key")
    return GoogleProvider(
        CloudSettings.from_section(cfg),
        credentials_file=credentials_file,
        api_key=api_key,
        endpoint=cfg.str("endpoint", DEFAULT_ENDPOINT),
        insecure=insecure,
        streaming=cfg.bool("streaming", True),
        stream_reopen_after=cfg.float("stream_reopen_after", 4.0),
    )


class GoogleProvider(CloudProvider):
    name = NAME
    supports_ssml = True

    def __init__(
        self,
        settings: CloudSettings,
        *,
        credentials_file: str = "",
        api_key: str = "",
        endpoint: str = DEFAULT_ENDPOINT,
        insecure: bool = False,
        streaming: bool = True,
        stream_reopen_after: float = 4.0,
    ) -> None:
        super().__init__(settings)
        self.stream_reopen_after = stream_reopen_after
        self.credentials_file = credentials_file
        self.api_key = api_key
        self.endpoint = endpoint
        self.insecure = insecure
        self.streaming = streaming
        self.voices = dict(DEFAULT_VOICES)
        for lang, voice in settings.voices.items():
            self.voices[pick_locale(NAME, lang, self.voices, _ALIASES)] = voice
        self._client: Any = None
        self._channel: Any = None

    # -- lifecycle -------------------------------------------------------------------------

    def _sdk(self) -> Any:
        if self._client is not None:
            return self._client
        from google.api_core.client_options import ClientOptions
        from google.cloud import texttospeech_v1 as tts

        if self.insecure:
            import grpc
            from google.cloud.texttospeech_v1.services.text_to_speech.transports import (
                TextToSpeechGrpcAsyncIOTransport,
            )

            channel = grpc.aio.insecure_channel(self.endpoint)
            self._client = tts.TextToSpeechAsyncClient(transport=TextToSpeechGrpcAsyncIOTransport(channel=channel))
        else:
            credentials = None
            options: dict[str, Any] = {}
            if self.endpoint != DEFAULT_ENDPOINT:
                options["api_endpoint"] = self.endpoint
            if self.credentials_file:
                from google.oauth2 import service_account

                credentials = service_account.Credentials.from_service_account_file(
                    self.credentials_file, scopes=["https://www.googleapis.com/auth/cloud-platform"]
                )
            elif self.api_key:
                options["api_key"] = self.api_key
            self._client = tts.TextToSpeechAsyncClient(
                credentials=credentials,
                client_options=ClientOptions(**options),
                transport="grpc_asyncio",
            )
        self._channel = self._client.transport.grpc_channel
        return self._client

    async def start(self) -> None:
        self._sdk()

    async def aclose(self) -> None:
        client, self._client, self._channel = self._client, None, None
        if client is not None:
            await client.transport.close()

    def _metadata(self) -> list[tuple[str, str]]:
        # Over an insecure channel no call credentials are attached: send the key ourselves.
        return [("x-goog-api-key", self.api_key)] if self.insecure and self.api_key else []

    # -- requests --------------------------------------------------------------------------

    def _resolve(self, language: str, voice_id: str, model: str = "") -> tuple[str, str]:
        """(locale, voice name) or a 400; Google has no models to choose."""
        locale = pick_locale(NAME, language, self.voices, _ALIASES)
        _model, voice = split_voice(NAME, voice_id)
        if not voice:
            return locale, self.voices[locale]
        vloc = voice_locale(voice)
        if vloc and vloc.lower() != locale.lower():
            raise InvalidRequest(f"gcp voice '{voice}' speaks {vloc}, not the requested language '{language}'")
        return locale, voice

    async def synthesize(self, request: SynthesisRequest) -> AsyncIterator[AudioChunk]:
        locale, voice = self._checked(request.language, request.voice_id, request.payload_type)
        from google.cloud import texttospeech_v1 as tts

        client = self._sdk()
        params, encoding = voice_config(locale, voice, request.codec)
        streaming = self.streaming and is_streaming_voice(voice) and request.payload_type == "text"

        def attempt() -> AsyncIterator[bytes]:
            if streaming:
                return self._stream_attempt(params, encoding, request.text)
            return self._unary_attempt(client, tts, params, encoding, request)

        async for chunk in resilient_stream(NAME, attempt, _classify, self.timeouts, telephony_format(request.codec)):
            yield chunk

    async def _connect(self) -> None:
        try:
            async with asyncio.timeout(self.timeouts.connect):
                await self._channel.channel_ready()
        except TimeoutError:
            raise ConnectTimeout(f"gRPC channel to {self.endpoint} not ready") from None

    async def _open_streaming(self, params: Any, encoding: Any) -> StreamingCall:
        """A ``StreamingSynthesize`` call with its config sent, waiting for text."""
        from google.cloud import texttospeech_v1 as tts

        client = self._sdk()
        await self._connect()
        texts: asyncio.Queue[str | None] = asyncio.Queue()
        config = tts.StreamingSynthesizeRequest(
            streaming_config=tts.StreamingSynthesizeConfig(
                voice=params,
                streaming_audio_config=tts.StreamingAudioConfig(
                    audio_encoding=encoding, sample_rate_hertz=TELEPHONY_RATE
                ),
            )
        )

        async def requests():
            yield config
            while (text := await texts.get()) is not None:
                yield tts.StreamingSynthesizeRequest(input=tts.StreamingSynthesisInput(text=text))

        call = await client.streaming_synthesize(requests=requests(), retry=None, metadata=self._metadata())
        return StreamingCall(call, texts)

    async def _stream_attempt(self, params: Any, encoding: Any, text: str) -> AsyncIterator[bytes]:
        call = await self._open_streaming(params, encoding)
        async for data in call.speak(text):
            yield data

    async def _unary_attempt(self, client: Any, tts: Any, params: Any, encoding: Any, request: SynthesisRequest):
        await self._connect()
        if request.payload_type == "ssml":
            synthesis_input = tts.SynthesisInput(ssml=request.text)
        else:
            synthesis_input = tts.SynthesisInput(text=request.text)
        response = await client.synthesize_speech(
            input=synthesis_input,
            voice=params,
            audio_config=tts.AudioConfig(audio_encoding=encoding, sample_rate_hertz=TELEPHONY_RATE),
            retry=None,
            timeout=self.timeouts.first_byte,
            metadata=self._metadata(),
        )
        audio = strip_wav_header(response.audio_content)
        for start in range(0, len(audio), CHUNK_BYTES):
            yield audio[start : start + CHUNK_BYTES]

    def rendering(self, request: SynthesisRequest) -> dict[str, str]:
        locale, voice = self._resolve(request.language, request.voice_id)
        return {
            "endpoint": self.endpoint,
            "voice": voice,
            "language": locale,
            "encoding": _ENCODINGS[request.codec],
            "sample_rate": str(TELEPHONY_RATE),
            "payload_type": request.payload_type,
        }

    def open_text_stream(self, language: str, voice_id: str, codec: Codec, model: str = "") -> TextStream | None:
        locale, voice = self._resolve(language, voice_id)
        if not (self.streaming and is_streaming_voice(voice)):
            return None  # each chunk through synthesize(): unary for voices that do not stream
        return GoogleTextStream(self, locale=locale, voice=voice, codec=codec)

    async def list_voices(self, language: str | None = None) -> list[Voice]:
        client = self._sdk()
        with listing_voices(NAME, _classify):
            await self._connect()
            response = await client.list_voices(
                language_code=language or "",
                retry=None,
                timeout=self.timeouts.first_byte,
                metadata=self._metadata(),
            )
        from google.cloud import texttospeech_v1 as tts

        return [
            Voice(
                provider=NAME,
                voice_id=v.name,
                name=v.name,
                languages=tuple(v.language_codes),
                gender=tts.SsmlVoiceGender(v.ssml_gender).name.lower() if v.ssml_gender else "",
            )
            for v in response.voices
        ]


class StreamingCall:
    """One ``StreamingSynthesize`` call: config sent, text queued into its request stream."""

    def __init__(self, call: Any, texts: asyncio.Queue[str | None]) -> None:
        self.call = call
        self.texts = texts
        self.opened_at = time.monotonic()

    def usable(self, max_age: float) -> bool:
        return not self.call.done() and time.monotonic() - self.opened_at < max_age

    def cancel(self) -> None:
        self.call.cancel()

    async def speak(self, text: str) -> AsyncIterator[bytes]:
        """Send ``text``, half-close, and yield the audio until the call ends: Google has no
        end-of-input marker in its responses, so the end of the call is the end of this text."""
        self.texts.put_nowait(text)
        self.texts.put_nowait(None)
        first = True
        try:
            async for response in self.call:
                data = response.audio_content
                if first and data:
                    data = strip_wav_header(data)
                    first = False
                if data:
                    yield data
        finally:
            self.call.cancel()


class GoogleTextStream(TextStream):
    """A speaking stream's ``StreamingSynthesize`` input, for Chirp 3 HD voices.

    One call per chunk, half-closed after its text: the call's end is the only end-of-audio
    Google gives (its responses carry no marker per input), and a barge-in just cancels the call,
    so no audio of a cut chunk can follow. The calls share the provider's gRPC channel (one
    HTTP/2 connection). The next chunk's call is opened as soon as a chunk is done, with its
    config sent, so the next chunk only sends text; Google closes a call that gets no input for
    about 5 s, so a pre-opened call older than ``stream_reopen_after`` (default 4 s) is replaced
    by a fresh one when the next chunk comes. No alignment comes back: the chunks carry no word
    marks and the session estimates word timings."""

    def __init__(self, provider: GoogleProvider, *, locale: str, voice: str, codec: Codec) -> None:
        self.provider = provider
        self.params, self.encoding = voice_config(locale, voice, codec)
        self.format = telephony_format(codec)
        self._ready: StreamingCall | None = None

    def _take_ready(self) -> StreamingCall | None:
        ready, self._ready = self._ready, None
        if ready is not None and not ready.usable(self.provider.stream_reopen_after):
            ready.cancel()
            return None
        return ready

    async def synthesize(self, request: SynthesisRequest) -> AsyncIterator[AudioChunk]:
        if not request.text.strip():
            return

        async def attempt() -> AsyncIterator[bytes]:
            call = self._take_ready() or await self.provider._open_streaming(self.params, self.encoding)
            async for data in call.speak(request.text):
                yield data

        async for chunk in resilient_stream(NAME, attempt, _classify, self.provider.timeouts, self.format):
            yield chunk
        try:
            self._ready = await self.provider._open_streaming(self.params, self.encoding)
        except Exception as exc:  # only a head start: the next chunk opens its own call
            log.debug("gcp_stream_preopen_failed", error=repr(exc))

    async def aclose(self) -> None:
        ready, self._ready = self._ready, None
        if ready is not None:
            ready.cancel()


_RETRYABLE = {"UNAVAILABLE", "INTERNAL", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "UNKNOWN"}


def _classify(exc: BaseException) -> Failure:
    code = None
    message = str(exc)
    status = getattr(exc, "grpc_status_code", None)  # google.api_core exceptions
    if status is not None:
        code = status.name
        message = getattr(exc, "message", message)
    elif hasattr(exc, "code") and callable(exc.code):  # a raw grpc.aio.AioRpcError
        try:
            code = exc.code().name
            message = exc.details() or message
        except Exception:
            code = None
    if code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        return credentials_rejected(NAME, f"{code}: {message}")
    if code in _RETRYABLE:
        return Failure(f"gcp: the provider failed with {code}: {message}", retryable=True)
    if code is not None:
        return Failure(f"gcp: the provider refused the request with {code}: {message}", retryable=False)
    return Failure(f"gcp: {type(exc).__name__}: {message}", retryable=False)
