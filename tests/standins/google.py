"""Google Cloud Text-to-Speech stand-in: gRPC ``StreamingSynthesize``, ``SynthesizeSpeech`` and
``ListVoices`` of ``google.cloud.texttospeech.v1.TextToSpeech``, served by generic handlers
using the SDK's own message types to (de)serialize. No generated stubs needed.

Like the real service, ``StreamingSynthesize`` serves only Chirp 3 HD voices, speaks each input
as it arrives, aborts a call idle for ``idle_timeout`` seconds (about 5 at Google), and unary
LINEAR16/MULAW/ALAW audio comes in a WAV container."""

from __future__ import annotations

import asyncio

import grpc
from google.cloud import texttospeech_v1 as tts

from standins import audio
from standins.base import HANG_LIMIT, ClientGone, Recorded, Standin

SERVICE = "google.cloud.texttospeech.v1.TextToSpeech"
ENCODINGS = {
    tts.AudioEncoding.MULAW: "ulaw",
    tts.AudioEncoding.ALAW: "alaw",
    tts.AudioEncoding.LINEAR16: "pcm",
    tts.AudioEncoding.PCM: "pcm",
}
VOICES = [
    ("en-US-Chirp3-HD-Charon", ["en-US"], tts.SsmlVoiceGender.MALE),
    ("en-US-Standard-C", ["en-US"], tts.SsmlVoiceGender.FEMALE),
    ("de-DE-Chirp3-HD-Kore", ["de-DE"], tts.SsmlVoiceGender.FEMALE),
    ("de-DE-Standard-B", ["de-DE"], tts.SsmlVoiceGender.MALE),
    ("fr-FR-Chirp3-HD-Kore", ["fr-FR"], tts.SsmlVoiceGender.FEMALE),
]


class GoogleStandin(Standin):
    def __init__(self, *, api_key: str = "test-google-key", idle_timeout: float = 5.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.api_key = api_key
        self.idle_timeout = idle_timeout
        """Seconds a StreamingSynthesize call may wait for its next input before it is aborted."""
        self.peers: list[str] = []
        """The client address of each StreamingSynthesize call (one address: one connection)."""

    def provider_section(self, **extra) -> dict:
        """The speakd ``[gcp]`` section pointing at this stand-in (plain-text gRPC)."""
        return {"api_key": self.api_key, "endpoint": self.address, "insecure": True, **extra}

    async def _start_server(self) -> None:
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "ListVoices": grpc.unary_unary_rpc_method_handler(
                    self._list_voices,
                    request_deserializer=tts.ListVoicesRequest.deserialize,
                    response_serializer=tts.ListVoicesResponse.serialize,
                ),
                "SynthesizeSpeech": grpc.unary_unary_rpc_method_handler(
                    self._synthesize,
                    request_deserializer=tts.SynthesizeSpeechRequest.deserialize,
                    response_serializer=tts.SynthesizeSpeechResponse.serialize,
                ),
                "StreamingSynthesize": grpc.stream_stream_rpc_method_handler(
                    self._streaming,
                    request_deserializer=tts.StreamingSynthesizeRequest.deserialize,
                    response_serializer=tts.StreamingSynthesizeResponse.serialize,
                ),
            },
        )
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers((handler,))
        self.port = self._server.add_insecure_port(f"{self.host}:0")
        await self._server.start()

    async def _stop_server(self) -> None:
        await self._server.stop(0.2)

    @staticmethod
    def _key(context: grpc.aio.ServicerContext) -> str:
        return dict(context.invocation_metadata() or ()).get("x-goog-api-key", "")

    async def _check(self, context: grpc.aio.ServicerContext, mode: str | None) -> None:
        if mode == "unauthorized" or self._key(context) != self.api_key:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "API key not valid. Please pass a valid API key.")
        if mode == "forbidden":
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "Cloud Text-to-Speech API has not been used")
        if mode == "server_error":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "The service is currently unavailable.")

    async def _hang(self, context: grpc.aio.ServicerContext) -> None:
        # A cancelled RPC cancels this coroutine: _closed() is then recorded by the caller.
        await self._wait(lambda: context.done(), None, HANG_LIMIT)
        await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "hung")

    async def _list_voices(self, request, context):
        self._record(Recorded("list_voices", "ListVoices", language=request.language_code, auth=self._key(context)))
        await self._check(context, None)
        voices = [
            tts.Voice(name=name, language_codes=langs, ssml_gender=gender, natural_sample_rate_hertz=24000)
            for name, langs, gender in VOICES
            if not request.language_code or request.language_code in langs
        ]
        return tts.ListVoicesResponse(voices=voices)

    async def _synthesize(self, request, context):
        ssml = bool(request.input.ssml)
        encoding = ENCODINGS.get(request.audio_config.audio_encoding, "")
        rate = request.audio_config.sample_rate_hertz or 24000
        mode = self._record(
            Recorded(
                "synthesize",
                "SynthesizeSpeech",
                voice=request.voice.name,
                language=request.voice.language_code,
                format=tts.AudioEncoding(request.audio_config.audio_encoding).name,
                sample_rate=rate,
                ssml=ssml,
                text=request.input.ssml or request.input.text,
                auth=self._key(context),
            )
        )
        await self._check(context, mode)
        if not encoding:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "unsupported audio encoding in this stand-in")
        try:
            if mode == "hang":
                await self._hang(context)
        except asyncio.CancelledError:
            self._closed()
            raise
        text = audio.strip_ssml(request.input.ssml) if ssml else request.input.text
        data = await asyncio.to_thread(audio.render, text, encoding, rate, self.gain_db)
        if request.audio_config.audio_encoding != tts.AudioEncoding.PCM:
            data = audio.wav(data, encoding, rate)
        self.events.append("first_chunk")
        self.first_chunk_sent.set()
        self.events.append("finished")
        self.finished.set()
        return tts.SynthesizeSpeechResponse(audio_content=data)

    async def _streaming(self, request_iterator, context):
        """Like the service: the config first, then each input's audio as it comes, until the
        client half-closes; a call with no input for ``idle_timeout`` seconds is aborted."""
        self.peers.append(context.peer())
        inputs: asyncio.Queue = asyncio.Queue()

        async def read() -> None:
            try:
                async for message in request_iterator:
                    await inputs.put(message)
            finally:
                await inputs.put(None)

        reader = asyncio.create_task(read())
        try:
            config = await self._next_input(inputs, context)
            if config is None or "streaming_config" not in config:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first request must be streaming_config")
            config = config.streaming_config
            audio_config = config.streaming_audio_config
            encoding = ENCODINGS.get(audio_config.audio_encoding, "")
            rate = audio_config.sample_rate_hertz or 24000
            texts: list[str] = []
            while (message := await self._next_input(inputs, context)) is not None:
                texts.append(message.input.text)
                if len(texts) > 1:
                    self.events.append("input")  # a later input of the same call
                    async for response in self._speak(message.input.text, encoding, rate, context, None):
                        yield response
                    continue
                mode = self._record(
                    Recorded(
                        "stream",
                        "StreamingSynthesize",
                        voice=config.voice.name,
                        language=config.voice.language_code,
                        format=tts.AudioEncoding(audio_config.audio_encoding).name,
                        sample_rate=rate,
                        text=message.input.text,
                        auth=self._key(context),
                    )
                )
                await self._check(context, mode)
                if "Chirp3-HD" not in config.voice.name and "Chirp-HD" not in config.voice.name:
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"voice {config.voice.name} does not support streaming synthesis",
                    )
                if not encoding or audio_config.audio_encoding == tts.AudioEncoding.LINEAR16:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "streaming takes PCM, MULAW or ALAW")
                if mode == "hang":
                    await self._hang(context)
                async for response in self._speak(message.input.text, encoding, rate, context, mode):
                    yield response
            if texts:
                self.events.append("finished")
                self.finished.set()
        except (asyncio.CancelledError, ClientGone):
            self._closed()
            raise
        finally:
            reader.cancel()

    async def _next_input(self, inputs: asyncio.Queue, context):
        """The next request, None at the client's half-close; aborts an idle call as Google does."""
        try:
            return await asyncio.wait_for(inputs.get(), self.idle_timeout)
        except TimeoutError:
            self.events.append("idle_close")
            await context.abort(
                grpc.StatusCode.ABORTED, "Stream aborted due to long duration elapsed without input sent"
            )

    async def _speak(self, text: str, encoding: str, rate: int, context, mode: str | None):
        data = await asyncio.to_thread(audio.render, text, encoding, rate, self.gain_db)
        for index, part in enumerate(audio.chunks(data, self.chunk_bytes)):
            if mode == "cut" and index >= self.cut_after:
                self.events.append("cut")
                await context.abort(grpc.StatusCode.UNAVAILABLE, "Connection reset by peer")
            if index and self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
            if index == 0:  # marked before sending: the client may see it before we resume
                self.events.append("first_chunk")
                self.first_chunk_sent.set()
            yield tts.StreamingSynthesizeResponse(audio_content=part)
            if index == 0 and self._hold is not None:
                await self._wait(lambda: context.done(), self._hold, HANG_LIMIT)
