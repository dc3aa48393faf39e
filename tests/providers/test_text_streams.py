"""Streaming text input (TextStream) of ElevenLabs (multi-context WebSocket) and Google
(StreamingSynthesize), each through its provider module against its stand-in: chunks in order on
one connection, alignment marks, barge-in, idle closes, and failures mapped to ProviderError."""

from __future__ import annotations

import asyncio
import re

import pytest
from providers_support import FAST, make_provider
from standins import audio

from speakd.errors import ProviderError
from speakd.providers import SynthesisRequest

CHUNKS = ["Hello there, this is the first sentence.", "Here comes a second one.", "And a third to end."]
LONG = "This chunk is long enough that its audio is still streaming when the caller interrupts it, twice over."


def request(text: str) -> SynthesisRequest:
    return SynthesisRequest(text, "en-US", "")


def rendered(text: str) -> bytes:
    return audio.render(text.strip(), "ulaw", 8000)


async def speak(stream, text: str) -> list:
    return [chunk async for chunk in stream.synthesize(request(text))]


@pytest.fixture
async def make(standin_speech_ready, elevenlabs_standin, gcp_standin):
    """factory(name, **section overrides) -> (provider, its TextStream, its stand-in)."""
    made = []

    def factory(name: str, **extra):
        standin = elevenlabs_standin if name == "elevenlabs" else gcp_standin
        provider = make_provider(name, standin.provider_section(**{**FAST, **extra}))
        stream = provider.open_text_stream("en-US", "", "ulaw")
        made.append((provider, stream))
        return provider, stream, standin

    yield factory
    for provider, stream in made:
        await stream.aclose()
        await provider.aclose()


@pytest.mark.parametrize("name", ["elevenlabs", "gcp"])
async def test_chunks_are_spoken_in_order_over_one_connection(make, name):
    _provider, stream, standin = make(name)
    for text in CHUNKS:
        chunks = await speak(stream, text)
        assert b"".join(c.data for c in chunks) == rendered(text), "exactly this chunk's audio"
        assert {c.format for c in chunks} == {chunks[0].format}
        assert chunks[0].format.encoding == "ulaw" and chunks[0].format.sample_rate == 8000
    assert [r.text for r in standin.synth_requests()] == [t.strip() for t in CHUNKS]
    if name == "elevenlabs":
        assert standin.connections == 1
        assert standin.final_sent == ["chunk-1", "chunk-2", "chunk-3"]
    else:
        assert len(set(standin.peers)) == 1, "every call on the provider's one HTTP/2 connection"
        assert "idle_close" not in standin.events


async def test_elevenlabs_marks_come_from_the_alignment_at_word_ends(make):
    _provider, stream, _standin = make("elevenlabs")
    text = CHUNKS[0]
    chunks = await speak(stream, text)
    marks, offset = [], 0
    for chunk in chunks:
        marks += [(chars, offset + sample) for chars, sample in chunk.marks]
        offset += len(chunk.data)
    word_ends = [m.end() for m in re.finditer(r"\S+", text)]
    assert [chars for chars, _ in marks] == word_ends, "one mark at the end of every word, in order"
    # The stand-in spreads characters evenly over the audio: a word's end lies at its share of it.
    per_char = offset / len(text)
    for chars, sample in marks:
        assert abs(sample - chars * per_char) <= 24, (chars, sample, chars * per_char)


async def test_google_chunks_carry_no_marks_so_timings_are_estimated(make):
    _provider, stream, _standin = make("gcp")
    chunks = await speak(stream, CHUNKS[0])
    assert chunks and all(c.marks == () for c in chunks)


@pytest.mark.parametrize("name", ["elevenlabs", "gcp"])
async def test_a_cut_chunk_leaves_the_stream_usable_and_none_of_its_audio_follows(make, name):
    _provider, stream, standin = make(name, first_byte_timeout="60", read_timeout="60")
    standin.chunk_bytes = 640
    standin.hold_after_first_chunk()
    cut = stream.synthesize(request(LONG))
    first = await asyncio.wait_for(anext(cut), 15)
    assert first.data == rendered(LONG)[: len(first.data)]
    await cut.aclose()  # a barge-in
    standin.release()  # the cut chunk's rest is generated now, alongside the next chunk
    for text in CHUNKS[1:]:
        chunks = await speak(stream, text)
        assert b"".join(c.data for c in chunks) == rendered(text), "nothing of the cut chunk"
    if name == "elevenlabs":
        assert standin.connections == 1, "a barge-in does not cost a new connection"
        # The cut context's audio did come over the socket while the next chunks were read (and was
        # dropped there), then its isFinal; the stream goes on after it.
        assert standin.final_sent[:1] == ["chunk-2"]
        for _ in range(100):
            if "chunk-1" in standin.final_sent:
                break
            await asyncio.sleep(0.1)
        assert "chunk-1" in standin.final_sent
        chunks = await speak(stream, CHUNKS[0])
        assert b"".join(c.data for c in chunks) == rendered(CHUNKS[0])
        assert standin.connections == 1
    else:
        assert await asyncio.to_thread(standin.client_closed.wait, 5), "the cut call was cancelled"


async def test_elevenlabs_reconnects_before_its_inactivity_timeout(make):
    _provider, stream, standin = make("elevenlabs", stream_inactivity_timeout="1")
    await speak(stream, CHUNKS[0])
    assert standin.synth_requests()[0].query["inactivity_timeout"] == "1"
    await asyncio.sleep(1.3)
    assert "idle_close" in standin.events, "the stand-in closed the idle socket as ElevenLabs does"
    chunks = await speak(stream, CHUNKS[1])
    assert b"".join(c.data for c in chunks) == rendered(CHUNKS[1])
    assert standin.connections == 2


async def test_elevenlabs_survives_a_socket_closed_while_idle_that_it_did_not_expect(make):
    _provider, stream, standin = make("elevenlabs")
    standin.idle_close_after = 0.3  # sooner than the 20 s the client asked for
    await speak(stream, CHUNKS[0])
    await asyncio.sleep(0.6)
    assert "idle_close" in standin.events
    chunks = await speak(stream, CHUNKS[1])
    assert b"".join(c.data for c in chunks) == rendered(CHUNKS[1])
    assert standin.connections == 2


async def test_google_replaces_a_call_the_service_closed_while_idle(make):
    _provider, stream, standin = make("gcp")
    standin.idle_timeout = 0.5  # Google: about 5 s
    await speak(stream, CHUNKS[0])
    await asyncio.sleep(1.0)
    assert "idle_close" in standin.events, "the pre-opened call was aborted for idling"
    chunks = await speak(stream, CHUNKS[1])
    assert b"".join(c.data for c in chunks) == rendered(CHUNKS[1])
    assert [r.text for r in standin.synth_requests()] == [CHUNKS[0], CHUNKS[1]]


async def test_google_pre_opened_call_older_than_reopen_after_is_not_used(make):
    _provider, stream, standin = make("gcp", stream_reopen_after="0.3")
    await speak(stream, CHUNKS[0])
    await asyncio.sleep(0.5)
    chunks = await speak(stream, CHUNKS[1])
    assert b"".join(c.data for c in chunks) == rendered(CHUNKS[1])
    # chunk 1's call, the stale pre-opened one (cancelled unused), chunk 2's own call, the next
    # pre-opened one (which reaches the stand-in a moment after chunk 2 ends).
    for _ in range(50):
        if len(standin.peers) >= 4:
            break
        await asyncio.sleep(0.1)
    assert len(standin.peers) == 4
    assert "idle_close" not in standin.events


async def test_google_voice_without_streaming_falls_back_to_per_chunk_synthesis(make):
    provider, _stream, _standin = make("gcp")
    assert provider.open_text_stream("en-US", "en-US-Standard-C", "ulaw") is None


@pytest.mark.parametrize("name", ["elevenlabs", "gcp"])
async def test_a_server_error_before_audio_is_retried(make, name):
    _provider, stream, standin = make(name)
    standin.fail_next("server_error")
    chunks = await speak(stream, CHUNKS[0])
    assert b"".join(c.data for c in chunks) == rendered(CHUNKS[0])
    assert len(standin.synth_requests()) == 2


@pytest.mark.parametrize("name", ["elevenlabs", "gcp"])
async def test_rejected_credentials_are_reported_as_such(make, name):
    _provider, stream, standin = make(name)
    standin.fail_next("unauthorized")
    with pytest.raises(ProviderError) as info:
        await speak(stream, CHUNKS[0])
    assert info.value.message.startswith(f"{name}: the credentials were rejected")
    assert len(standin.synth_requests()) == 1


@pytest.mark.parametrize("name", ["elevenlabs", "gcp"])
async def test_a_wrong_key_is_reported_as_rejected_credentials(make, name):
    _provider, stream, _standin = make(name, api_key="wrong")
    with pytest.raises(ProviderError, match="credentials were rejected"):
        await speak(stream, CHUNKS[0])


@pytest.mark.parametrize("name", ["elevenlabs", "gcp"])
async def test_a_hung_chunk_times_out_clearly_and_the_next_chunk_works(make, name):
    _provider, stream, standin = make(name, first_byte_timeout="1")
    standin.fail_next("hang", count=2)
    with pytest.raises(ProviderError) as info:
        await speak(stream, CHUNKS[0])
    assert "first-byte timeout of 1 s" in info.value.message
    assert "tried 2 times" in info.value.message
    chunks = await speak(stream, CHUNKS[1])
    assert b"".join(c.data for c in chunks) == rendered(CHUNKS[1])


@pytest.mark.parametrize("name", ["elevenlabs", "gcp"])
async def test_a_cut_mid_chunk_is_an_error_and_the_next_chunk_works(make, name):
    _provider, stream, standin = make(name)
    standin.cut_after = 2
    standin.fail_next("cut")
    got = []

    async def consume():
        async for chunk in stream.synthesize(request(LONG)):
            got.append(chunk)

    with pytest.raises(ProviderError) as info:
        await consume()
    assert got, "the audio before the cut is delivered"
    assert "cut off" in info.value.message
    chunks = await speak(stream, CHUNKS[1])
    assert b"".join(c.data for c in chunks) == rendered(CHUNKS[1])


async def test_elevenlabs_connect_timeout_is_reported(make, blackhole):
    _provider, stream, _standin = make("elevenlabs", endpoint=blackhole.url, connect_timeout="0.3")
    with pytest.raises(ProviderError) as info:
        await speak(stream, CHUNKS[0])
    assert "could not connect within 0.3 s" in info.value.message
