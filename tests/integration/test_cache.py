"""The audio cache end to end: the real daemon (its cache on, as by default) with the ElevenLabs
stand-in, speaking into real calls in the sandbox Asterisk; what the stand-in was asked, and what
alice recorded.

The stand-in renders with Piper and keeps its rendering of a text (``standins.audio.speech``), so
what it streamed is known exactly; a say from the cache must sound the same, envelope for envelope.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from conftest_helpers import wait_for
from harness.audio import FRAME_S, RATE, at_loudness, envelope_correlation
from harness.daemon import Api, SpeakdProcess
from harness.hearing import assert_nothing_else
from harness.stream import StreamClient
from standins import audio as standin_audio
from standins.elevenlabs import ElevenLabsStandin

pytestmark = pytest.mark.asyncio(loop_scope="session")

SAID_TWICE = "Thank you for calling the city library. Your call is important to us."
PROMPT = "For opening hours, press one. To renew a book, press two."
PERSONAL = "Your card ending in four two four two expires in March."
STREAMED = "Sure, I can help with that today. Your parcel left our warehouse this morning and is on its way."
TEXTS = (SAID_TWICE, PROMPT, PERSONAL)
TIMEOUTS = {"connect_timeout": 1.0, "first_byte_timeout": 2.0, "read_timeout": 4.0, "retries": 0}
HEARD_CORR = 0.8  # as tests/integration/test_providers_e2e.py: 0.95-1.00 measured for a whole say


def section(values: dict) -> str:
    return "[elevenlabs]\n" + "".join(
        f"{key} = {value!r}\n" if isinstance(value, int | float) else f'{key} = "{value}"\n'
        for key, value in values.items()
    )


@pytest.fixture(scope="module")
def standin():
    for text in TEXTS:  # rendered before: no slow first byte by accident
        standin_audio.speech(text, 8000)
    with ElevenLabsStandin() as elevenlabs:
        yield elevenlabs


@pytest_asyncio.fixture(loop_scope="session")
async def daemon(standin, ari_settings, tmp_path):
    process = SpeakdProcess(
        tmp_path,
        ari_settings["url"],
        ari_settings["user"],
        ari_settings["password"],
        transport="websocket",
        extra_config=section(standin.provider_section(**TIMEOUTS)),
    )
    await process.start()
    yield process
    await process.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def api(daemon):
    client = Api(daemon.base)
    yield client
    await client.close()


def asked(standin, text: str) -> int:
    return sum(1 for r in standin.synth_requests() if r.text == text)


def entries(daemon: SpeakdProcess) -> list[Path]:
    return sorted(p for p in (daemon.workdir / "cache").rglob("*") if p.is_file())


async def said(api: Api, call, text: str, **fields) -> dict:
    """A session on the call says ``text``; its say item once played."""
    speaking_id = await api.start_session(call.channel_id, provider="elevenlabs", direction="out")
    reply = await api.say(speaking_id, text, **fields)
    assert reply.status == 200, reply

    async def played():
        says = (await api.request("GET", f"/speakings/{speaking_id}/says")).body["result"]
        return says[0]["status"] in ("played", "failed", "interrupted") and says[0]

    item = await wait_for(played, timeout=30, what=f"the say of {text!r} to end")
    assert item["status"] == "played", item
    await asyncio.sleep(0.5)  # the last frame reaches the recording
    return item


def assert_heard_alone(recording: np.ndarray, text: str) -> None:
    """What the stand-in sent for ``text`` is in the recording, at the level speakd sends it on
    (the one loudness), and nothing else."""
    reference = at_loudness(standin_audio.speech(text, 8000))
    corr, lag = envelope_correlation(recording, reference)
    assert corr > HEARD_CORR, f"alice should hear {text!r}: envelope correlation {corr:.2f}"
    start = lag * FRAME_S
    segment = recording[int(start * RATE) : int(start * RATE) + len(reference)].astype(np.float64)
    gain_db = 10 * np.log10(np.mean(segment**2) / np.mean(reference.astype(np.float64) ** 2))
    assert gain_db > -10.0, f"{text!r} is heard {gain_db:.1f} dB below what speakd sent"
    assert_nothing_else(recording, [(start, start + len(reference) / RATE)], text)


async def cache_metrics(daemon: SpeakdProcess) -> dict[str, float]:
    client = Api(daemon.base)
    try:
        async with client._http.get(f"{daemon.base}/metrics") as response:
            text = await response.text()
    finally:
        await client.close()
    return {
        name: float(value)
        for name, value in (line.split() for line in text.splitlines() if line.startswith("speakd_cache_"))
    }


@pytest.mark.by_ear
async def test_a_second_session_saying_the_same_text_asks_no_provider_and_is_heard(
    daemon, api, standin, make_two_party_call
):
    first_call = await make_two_party_call()
    await said(api, first_call, SAID_TWICE)
    assert asked(standin, SAID_TWICE) == 1
    assert len(entries(daemon)) == 1, "the rendering is kept"

    second_call = await make_two_party_call()
    await said(api, second_call, SAID_TWICE)
    assert asked(standin, SAID_TWICE) == 1, "the second session's say asked the provider"
    assert_heard_alone(await second_call.recording("alice"), SAID_TWICE)
    metrics = await cache_metrics(daemon)
    assert metrics["speakd_cache_hits_total"] == 1 and metrics["speakd_cache_misses_total"] == 1, metrics

    # Restarted, speakd still has it.
    await daemon.stop()
    await daemon.start()
    third_call = await make_two_party_call()
    await said(api, third_call, SAID_TWICE)
    assert asked(standin, SAID_TWICE) == 1, "the cache did not survive the restart"
    assert_heard_alone(await third_call.recording("alice"), SAID_TWICE)


@pytest.mark.by_ear
async def test_a_prompt_rendered_ahead_then_said_asks_no_provider(daemon, api, standin, make_two_party_call):
    body = {"text": PROMPT, "provider": "elevenlabs", "language": "en-US"}
    rendered = await api.request("POST", "/prompts", json=body)
    assert rendered.status == 201, rendered
    assert asked(standin, PROMPT) == 1 and rendered.body["duration_ms"] > 2000
    again = await api.request("POST", "/prompts", json=body)
    assert again.status == 200 and again.body == rendered.body, again
    assert asked(standin, PROMPT) == 1

    call = await make_two_party_call()
    await said(api, call, PROMPT)
    assert asked(standin, PROMPT) == 1, "the say of a prompt rendered ahead asked the provider"
    assert_heard_alone(await call.recording("alice"), PROMPT)


async def test_a_prompt_rendered_through_a_lexicon_is_what_a_say_through_it_plays(
    daemon, api, standin, make_two_party_call
):
    entries = [{"from": "renew", "to": "re-new"}]
    assert (await api.request("PUT", "/lexicons/library", json={"entries": entries})).status in (200, 201)
    spoken = PROMPT.replace("renew", "re-new")
    body = {"text": PROMPT, "provider": "elevenlabs", "lexicon": "library"}
    rendered = await api.request("POST", "/prompts", json=body)
    assert rendered.status in (200, 201) and rendered.body["lexicon"] == "library", rendered
    before = asked(standin, spoken)
    assert before >= 1  # the stand-in was asked for the text with the replacement, not as written
    item = await said(api, await make_two_party_call(), PROMPT, lexicon="library")
    assert asked(standin, spoken) == before, "the say through the lexicon missed its prompt"
    assert item["heard_text"] == PROMPT  # the words sent, not the replacements


async def test_a_say_with_cache_false_leaves_nothing_on_disk(daemon, api, standin, make_two_party_call):
    before = entries(daemon)
    for _ in range(2):
        await said(api, await make_two_party_call(), PERSONAL, cache=False)
    assert entries(daemon) == before, "a say with cache false was written to disk"
    assert asked(standin, PERSONAL) == 2, "each say with cache false asks the provider"


async def test_streamed_text_is_cached_sentence_by_sentence_unless_the_stream_says_cache_false(
    daemon, api, standin, make_two_party_call
):
    async def stream(cache: bool) -> int:
        """Stream STREAMED into a new session on a new call; how many requests the stand-in got."""
        before = len(standin.synth_requests())
        call = await make_two_party_call()
        speaking_id = await api.start_session(call.channel_id, provider="elevenlabs", direction="out")
        client = StreamClient(daemon.base, speaking_id)
        client.url += "" if cache else "&cache=false"
        async with client:
            await client.send({"type": "text", "text": STREAMED})
            await client.send({"type": "finish"})
            await client.expect("played", timeout=60)
        says = (await api.request("GET", f"/speakings/{speaking_id}/says")).body["result"]
        assert len(says) >= 2 and all(s["status"] == "played" for s in says), says
        return len(standin.synth_requests()) - before

    first = await stream(cache=True)
    assert first >= 2, "each sentence is asked of the provider"
    kept = entries(daemon)
    assert len(kept) == first, "one entry per sentence"
    assert await stream(cache=True) == 0, "a second stream of the same sentences asked the provider"
    assert await stream(cache=False) == first, "a stream with cache=false is asked of the provider"
    assert entries(daemon) == kept, "a stream with cache=false was written to disk"
