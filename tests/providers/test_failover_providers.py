"""Failover through the real SDKs against the stand-ins: ElevenLabs failing each way a provider
fails in production (a 500, an empty 200, a stream cut after 0.3 s of audio, a stream stalled
after its first chunk), with ``fallback = ["gcp", "piper"]``: the say's audio is the whole text
once, the switch costs no more than the timeout configured for it, and a provider that failed
five times in a row gets no request during its cool-off and one after it. What a call hears of
it, on recordings: tests/integration/test_failover.py."""

from __future__ import annotations

import asyncio
import time

import pytest
from providers_support import FAST, make_provider

from speakd.providers import SynthesisRequest
from speakd.providers.fallback import Failover, FailoverSettings

TEXT = (
    "Hello, this is speakd speaking through a stand-in. It has two sentences, and then it goes on for "
    "a while longer, so that a provider can fail in the middle of it."
)
ULAW_BYTES_PER_S = 8000


@pytest.fixture
async def chain(elevenlabs_standin, gcp_standin, standin_speech_ready):
    """factory(**[tts] settings) -> (ElevenLabs provider, Failover over gcp and piper)."""
    made = []

    def factory(**settings):
        providers = {
            "elevenlabs": make_provider("elevenlabs", elevenlabs_standin.provider_section(**FAST)),
            "gcp": make_provider("gcp", gcp_standin.provider_section(**FAST)),
            "piper": make_provider("piper", {}),
        }
        made.extend(providers.values())
        failover = Failover(FailoverSettings(("gcp", "piper"), **settings), providers.__getitem__)
        return providers["elevenlabs"], failover

    yield factory
    elevenlabs_standin.release()
    for provider in made:
        await provider.aclose()


class Heard:
    """A say's audio through the chain: who spoke, each part's seconds, when each part began."""

    def __init__(self) -> None:
        self.spoke: list[tuple[str, str]] = []
        self.failed: list[tuple[str, str]] = []  # (provider, stage) of each failure on the say
        self.seconds: list[float] = []
        self.began: list[float] = []  # time.monotonic() of each part's first chunk
        self.last_chunk_at = 0.0
        self.gaps: list[float] = []  # silence between the last chunk of a part and the next part's first

    @property
    def total(self) -> float:
        return sum(self.seconds)


async def say(own, failover: Failover, text: str = TEXT, text_stream=None) -> Heard:
    heard = Heard()

    def spoke(provider: str, voice: str) -> None:
        heard.spoke.append((provider, voice))
        heard.seconds.append(0.0)
        now = time.monotonic()
        if heard.last_chunk_at:
            heard.gaps.append(now - heard.last_chunk_at)
        heard.began.append(now)

    def failed(provider: str, voice: str, stage: str, error: str) -> None:
        assert error.startswith(f"{provider}:"), error
        heard.failed.append((provider, stage))

    request = SynthesisRequest(text, "en-US", "")
    async for chunk in failover.synthesize(own, request, text_stream, spoke, failed):
        assert chunk.format.encoding == "ulaw" or chunk.format.encoding == "pcm_s16le"
        width = 1 if chunk.format.encoding == "ulaw" else 2
        heard.seconds[-1] += len(chunk.data) / width / chunk.format.sample_rate
        heard.last_chunk_at = time.monotonic()
    return heard


@pytest.fixture
def one_rendering(gcp_standin) -> float:
    """Seconds of TEXT said once (every stand-in renders with the same voice)."""
    from standins import audio

    return len(audio.speech(TEXT, 8000)) / 8000


def assert_once(heard: Heard, one_rendering: float) -> None:
    assert abs(heard.total - one_rendering) <= 0.15 * one_rendering, (heard.seconds, one_rendering)


async def test_elevenlabs_answering_500_goes_on_with_gcp_at_once(chain, elevenlabs_standin, gcp_standin, one_rendering):
    own, failover = chain()
    elevenlabs_standin.fail_next("server_error", count=2)  # speakd's own retry gets the second
    started = time.monotonic()
    heard = await say(own, failover)
    assert [p for p, _ in heard.spoke] == ["gcp"]
    assert heard.failed == [("elevenlabs", "before_audio")]
    assert heard.spoke[0][1] == own_default_voice(failover, "gcp")
    assert heard.began[0] - started < failover.settings.first_audio_timeout
    assert [r.text for r in gcp_standin.synth_requests()] == [TEXT]
    assert_once(heard, one_rendering)


async def test_an_empty_200_is_a_failure_and_gcp_says_it_all(chain, elevenlabs_standin, gcp_standin, one_rendering):
    own, failover = chain()
    elevenlabs_standin.fail_next("empty")
    heard = await say(own, failover)
    assert [p for p, _ in heard.spoke] == ["gcp"]
    assert heard.failed == [("elevenlabs", "before_audio")]
    assert len(elevenlabs_standin.synth_requests()) == 1, "an empty answer is not retried: the next one is asked"
    assert [r.text for r in gcp_standin.synth_requests()] == [TEXT]
    assert_once(heard, one_rendering)


async def test_a_stream_cut_after_300_ms_is_continued_not_restarted(
    chain, elevenlabs_standin, gcp_standin, one_rendering
):
    own, failover = chain()
    elevenlabs_standin.chunk_bytes, elevenlabs_standin.cut_after = 800, 3  # 3 chunks of 0.1 s
    elevenlabs_standin.fail_next("cut")
    heard = await say(own, failover)
    assert [p for p, _ in heard.spoke] == ["elevenlabs", "gcp"]
    assert heard.failed == [("elevenlabs", "mid_say")]
    assert heard.seconds[0] == pytest.approx(0.3)
    # Not one word had all arrived ("Hello," takes longer): gcp says it from the start.
    assert [r.text for r in gcp_standin.synth_requests()] == [TEXT]
    assert_once(heard, one_rendering)


async def test_a_stream_cut_later_goes_on_from_a_word_whose_audio_had_not_all_come(
    chain, elevenlabs_standin, gcp_standin, one_rendering
):
    own, failover = chain()
    elevenlabs_standin.chunk_bytes, elevenlabs_standin.cut_after = 800, 20  # 2 s
    elevenlabs_standin.fail_next("cut")
    heard = await say(own, failover)
    (rest,) = [r.text for r in gcp_standin.synth_requests()]
    said = TEXT[: len(TEXT) - len(rest)]
    assert TEXT.endswith(rest) and said and said.endswith(" "), "the rest starts at a word"
    # 2 s of this voice is about 37 characters: what gcp says again is at most a few words.
    assert len(said) <= 2 * 11
    assert_once(heard, one_rendering)


async def test_a_stream_stalled_after_its_first_chunk_goes_on_after_the_stall_timeout(
    chain, elevenlabs_standin, gcp_standin, one_rendering
):
    own, failover = chain(stall_timeout=1.0)
    elevenlabs_standin.hold_after_first_chunk()
    heard = await say(own, failover)
    assert [p for p, _ in heard.spoke] == ["elevenlabs", "gcp"]
    (gap,) = heard.gaps
    assert 1.0 <= gap <= 1.0 + 0.5, "the switch waits the stall timeout, and no longer"
    assert await asyncio.to_thread(elevenlabs_standin.client_closed.wait, 5), "the stalled stream is closed"
    assert_once(heard, one_rendering)


async def test_a_streaming_input_cut_goes_on_from_the_word_after_its_last_word_mark(
    chain, elevenlabs_standin, gcp_standin
):
    """The WebSocket input gives alignments: the rest starts exactly after the last word heard."""
    own, failover = chain()
    elevenlabs_standin.chunk_bytes, elevenlabs_standin.cut_after = 800, 12
    elevenlabs_standin.fail_next("cut")
    stream = own.open_text_stream("en-US", "", "ulaw")
    marks: list[int] = []
    try:
        request = SynthesisRequest(TEXT, "en-US", "")
        async for chunk in failover.synthesize(own, request, stream):
            marks.extend(chars for chars, _ in chunk.marks)
    finally:
        await stream.aclose()
    (rest,) = [r.text for r in gcp_standin.synth_requests()]
    assert marks and marks == sorted(marks)  # elevenlabs' (gcp's streaming voices give none)
    assert rest == TEXT[marks[-1] :].lstrip()


async def test_a_provider_failing_five_times_in_a_row_is_skipped_during_its_cool_off_then_tried_once(
    chain, elevenlabs_standin, gcp_standin
):
    own, failover = chain(breaker_failures=5, breaker_cool_off=2.0)
    elevenlabs_standin.fail_next("server_error", count=10)  # 5 says, each tried twice
    for _ in range(5):
        assert [p for p, _ in (await say(own, failover, "Five times.")).spoke] == ["gcp"]
    assert len(elevenlabs_standin.synth_requests()) == 10
    assert failover.degraded() == ["elevenlabs"]
    started = time.monotonic()
    heard = await say(own, failover, "Skipped now.")
    assert [p for p, _ in heard.spoke] == ["gcp"]
    assert heard.began[0] - started < 1.0, "no time lost on it"
    assert len(elevenlabs_standin.synth_requests()) == 10, "no request during the cool-off"
    await asyncio.sleep(2.1)
    heard = await say(own, failover, "Tried again.")
    assert [p for p, _ in heard.spoke] == ["elevenlabs"]
    assert len(elevenlabs_standin.synth_requests()) == 11
    assert failover.degraded() == []


def own_default_voice(failover: Failover, name: str) -> str:
    return failover._lookup(name).voice_for("en-US", "")
