"""Behaviour every cloud provider shares, each through its SDK against its stand-in: streaming,
cancellation, and every failure of issue 3 point 5."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from providers_support import collect

from speakd.errors import ProviderError
from speakd.media.codec import decode
from speakd.providers import SynthesisRequest

TEXT = "Hello, this is speakd speaking through a stand-in. It has two sentences."
REQ = SynthesisRequest(TEXT, "en-US", "")
PATIENT = {"first_byte_timeout": "60", "read_timeout": "60"}


def _pcm(chunks) -> np.ndarray:
    data = b"".join(c.data for c in chunks)
    fmt = chunks[0].format
    if fmt.encoding == "ulaw":
        return decode(data, "ulaw").astype(np.float64), fmt.sample_rate
    return np.frombuffer(data, dtype="<i2").astype(np.float64), fmt.sample_rate


async def test_streams_real_speech(cloud):
    _name, standin, factory = cloud
    chunks = await collect(factory(), REQ)
    assert len(chunks) > 1, "audio should arrive in several chunks"
    pcm, rate = _pcm(chunks)
    assert 1.5 < len(pcm) / rate < 15, "a sentence pair of speech"
    assert np.sqrt(np.mean(pcm**2)) > 300, "speech, not silence"
    assert len(standin.synth_requests()) == 1


async def test_first_chunk_is_yielded_before_the_provider_finishes(cloud):
    _name, standin, factory = cloud
    standin.hold_after_first_chunk()
    standin.chunk_bytes = 640  # smaller than any read buffer a provider might wait to fill
    gen = factory().synthesize(REQ)
    try:
        first = await asyncio.wait_for(anext(gen), 15)
        assert first.data
        assert standin.first_chunk_sent.is_set()
        assert not standin.finished.is_set(), "speakd must not wait for the whole utterance"
        standin.release()
        rest = [c async for c in gen]
    finally:
        standin.release()
        await gen.aclose()
    assert rest
    assert standin.finished.is_set()


async def test_closing_the_stream_mid_way_closes_the_providers_stream(cloud):
    _name, standin, factory = cloud
    standin.hold_after_first_chunk()
    standin.chunk_bytes = 640  # one provider read: speakd is then blocked waiting for more
    # Long provider timeouts: the stream must close because speakd closes it, not time out.
    gen = factory(**PATIENT).synthesize(REQ)
    await asyncio.wait_for(anext(gen), 15)
    await gen.aclose()
    assert await asyncio.to_thread(standin.client_closed.wait, 5), standin.events
    assert not standin.finished.is_set()


async def test_cancelling_the_consumer_propagates_and_closes_the_stream(cloud):
    _name, standin, factory = cloud
    standin.hold_after_first_chunk()
    standin.chunk_bytes = 640
    provider = factory(**PATIENT)
    got_first = asyncio.Event()

    async def consume():
        async for _ in provider.synthesize(REQ):
            got_first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_first.wait(), 15)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    assert await asyncio.to_thread(standin.client_closed.wait, 5), standin.events


async def test_connect_timeout_is_retried_once_then_reported(cloud, blackhole):
    name, _standin, factory = cloud
    endpoint = blackhole.address if name == "gcp" else blackhole.url
    provider = factory(endpoint=endpoint, connect_timeout="0.3", first_byte_timeout="2")
    with pytest.raises(ProviderError) as info:
        await collect(provider, REQ)
    message = info.value.message
    assert message.startswith(f"{name}:")
    assert "connect" in message
    assert "tried 2 times" in message


async def test_first_byte_timeout_retries_once_when_nothing_was_yielded(cloud):
    _name, standin, factory = cloud
    standin.fail_next("hang")
    chunks = await collect(factory(first_byte_timeout="1.5"), REQ)
    assert chunks
    assert len(standin.synth_requests()) == 2
    assert standin.events.count("failed:hang") == 1


async def test_first_byte_timeout_twice_is_a_clear_error(cloud):
    _name, standin, factory = cloud
    standin.fail_next("hang", count=2)
    with pytest.raises(ProviderError) as info:
        await collect(factory(first_byte_timeout="1"), REQ)
    assert "first-byte timeout of 1 s" in info.value.message
    assert "tried 2 times" in info.value.message
    assert len(standin.synth_requests()) == 2


async def test_server_error_before_audio_is_retried_once(cloud):
    _name, standin, factory = cloud
    standin.fail_next("server_error")
    chunks = await collect(factory(), REQ)
    assert chunks
    assert len(standin.synth_requests()) == 2


async def test_cut_mid_stream_is_an_error_after_partial_audio_and_never_replayed(cloud):
    _name, standin, factory = cloud
    standin.cut_after = 2
    standin.fail_next("cut")
    got: list = []

    async def consume():
        async for chunk in factory().synthesize(REQ):
            got.append(chunk)

    with pytest.raises(ProviderError) as info:
        await consume()
    assert got, "the audio before the cut is delivered"
    received = sum(len(c.data) for c in got)
    assert received <= standin.cut_after * standin.chunk_bytes
    assert "cut off" in info.value.message
    assert f"after {received} bytes" in info.value.message
    assert len(standin.synth_requests()) == 1, "what was played is not replayed"
    # The provider still works for the next request.
    assert await collect(factory(), REQ)


@pytest.mark.parametrize("mode", ["unauthorized", "forbidden"])
async def test_rejected_credentials_are_reported_as_such_without_retry(cloud, mode):
    name, standin, factory = cloud
    standin.fail_next(mode)
    with pytest.raises(ProviderError) as info:
        await collect(factory(), REQ)
    assert "credentials were rejected" in info.value.message
    assert info.value.message.startswith(f"{name}:")
    assert len(standin.synth_requests()) == 1


async def test_wrong_key_is_reported_as_rejected_credentials(cloud):
    name, _standin, factory = cloud
    wrong = {
        "elevenlabs": {"api_key": "wrong"},
        "gcp": {"api_key": "wrong"},
        "aws": {"access_key_id": "AKIDWRONG"},
    }[name]
    with pytest.raises(ProviderError, match="credentials were rejected"):
        await collect(factory(**wrong), REQ)
