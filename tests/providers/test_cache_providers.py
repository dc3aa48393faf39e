"""The audio cache around each cloud provider, through its official SDK, against its stand-in: a
second identical say asks the provider nothing and gets the same audio; another codec or voice
asks again; a streamed say's chunks are cached one by one."""

from __future__ import annotations

import pytest
from providers_support import FAST, collect, make_provider

from speakd.providers import SynthesisRequest
from speakd.providers.cache import AudioCache, CachingProvider

TEXT = "Thank you for calling. Your call is important to us."


@pytest.fixture
async def cache(tmp_path):
    made = AudioCache(tmp_path / "cache", 64 * 1024 * 1024, 3600)
    await made.open()
    return made


def audio(chunks) -> bytes:
    return b"".join(chunk.data for chunk in chunks)


async def test_a_second_identical_say_makes_no_provider_request(cloud, cache):
    name, standin, factory = cloud
    provider = CachingProvider(factory(), cache)
    before = len(standin.synth_requests())
    first = await collect(provider, SynthesisRequest(TEXT, "en-US", ""))
    assert len(standin.synth_requests()) == before + 1
    second = await collect(provider, SynthesisRequest(TEXT, "en-US", ""))
    assert len(standin.synth_requests()) == before + 1, f"{name}: the cached say asked the provider"
    assert audio(second) == audio(first) and len(audio(first)) > 8000
    assert {c.format for c in second} == {first[0].format}

    # Another codec: asked again where the provider's audio is in it (ElevenLabs, Google: G.711 as the
    # session asks); Polly's PCM is the same for either codec (the session encodes it), so a hit.
    alaw = await collect(provider, SynthesisRequest(TEXT, "en-US", "", codec="alaw"))
    asked = before + (1 if name == "aws" else 2)
    assert len(standin.synth_requests()) == asked
    assert alaw[0].format.encoding == ("pcm_s16le" if name == "aws" else "alaw")
    # Another voice: asked again.
    voice = {"elevenlabs": "pNInz6obpgDQGcFmaJgB", "gcp": "en-US-Standard-B", "aws": "Matthew"}[name]
    await collect(provider, SynthesisRequest(TEXT, "en-US", voice))
    assert len(standin.synth_requests()) == asked + 1
    # With cache false: asked, and nothing more kept.
    entries = cache.entries
    await collect(provider, SynthesisRequest(TEXT, "en-US", "", cache=False))
    assert len(standin.synth_requests()) == asked + 2 and cache.entries == entries


@pytest.mark.parametrize("name", ["elevenlabs", "gcp"])
async def test_a_streamed_says_chunks_are_cached_one_by_one(
    name, cache, standin_speech_ready, elevenlabs_standin, gcp_standin
):
    standin = elevenlabs_standin if name == "elevenlabs" else gcp_standin
    inner = make_provider(name, standin.provider_section(**FAST))
    provider = CachingProvider(inner, cache)
    chunks = ["Hello there, this is the first sentence.", "Here comes a second one."]
    try:
        heard = []
        for _ in range(2):
            stream = provider.open_text_stream("en-US", "", "ulaw")
            assert stream is not None
            before = len(standin.synth_requests())
            heard.append([audio(await collect(stream, SynthesisRequest(text, "en-US", ""))) for text in chunks])
            asked = len(standin.synth_requests()) - before
            await stream.aclose()
        assert asked == 0, "the second stream's sentences came from the cache"
        assert heard[0] == heard[1]
    finally:
        await inner.aclose()
