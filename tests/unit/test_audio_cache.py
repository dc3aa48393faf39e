"""The audio cache (speakd.providers.cache) around a provider of this file: what a hit serves
(the same audio and marks, no provider asked), what the key tells apart, the bound in bytes and
in age, a damaged entry, a say whose text is personal, a restart, and `speakd cache clear`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from speakd.audio import AudioFormat
from speakd.errors import InvalidRequest, ProviderError
from speakd.providers import ProviderRegistry
from speakd.providers.base import AudioChunk, Provider, SynthesisRequest, TextStream
from speakd.providers.cache import FOOTER, TEMP_DIR, AudioCache, CachingProvider, cache_key
from speakd.sessions.lexicons import Lexicons

PCM = AudioFormat("pcm_s16le", 16000)
MB = 1024 * 1024


class Recorder(Provider):
    """Audio that depends on the whole request (so a wrong hit shows), with marks; counts its syntheses."""

    name = "recorder"
    format = PCM

    def __init__(self, chunks: int = 3, chunk_bytes: int = 40_000, fail_after: int | None = None) -> None:
        self.asked: list[SynthesisRequest] = []
        self.chunks = chunks
        self.chunk_bytes = chunk_bytes
        self.fail_after = fail_after
        self.started = asyncio.Event()

    def check(self, language: str, voice_id: str, payload_type: str = "text") -> None:
        pass

    async def synthesize(self, request: SynthesisRequest) -> AsyncIterator[AudioChunk]:
        self.asked.append(request)
        seed = hash((request.text, request.voice_id, request.model, request.codec)) & 0xFF
        for index in range(self.chunks):
            if self.fail_after is not None and index == self.fail_after:
                raise ProviderError("recorder: the stream was cut off")
            self.started.set()
            await asyncio.sleep(0)
            data = bytes([(seed + index) & 0xFF]) * self.chunk_bytes
            samples = self.chunk_bytes // (2 if self.format is PCM else 1)
            yield AudioChunk(data, self.format, ((index * 10 + 5, samples // 3), (index * 10 + 9, samples)))


def request(text: str = "Thank you for calling.", **fields) -> SynthesisRequest:
    return SynthesisRequest(text, fields.pop("language", "en-US"), fields.pop("voice_id", ""), **fields)


async def spoken(provider: Provider, req: SynthesisRequest) -> tuple[bytes, list[tuple[int, int]]]:
    """(the audio, its marks as sample offsets from the start)."""
    audio, marks, samples = b"", [], 0
    async for chunk in provider.synthesize(req):
        marks += [(chars, samples + sample) for chars, sample in chunk.marks]
        audio += chunk.data
        samples += len(chunk.data) // 2
    return audio, marks


def disk_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def entry_files(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file() and p.parent.name != TEMP_DIR]


@pytest.fixture
async def cache(tmp_path) -> AudioCache:
    made = AudioCache(tmp_path / "cache", 10 * MB, 3600)
    await made.open()
    return made


async def test_a_second_rendering_comes_from_the_cache_with_its_marks_and_asks_no_provider(cache):
    provider = Recorder()
    cached = CachingProvider(provider, cache)
    first = await spoken(cached, request())
    second = await spoken(cached, request())
    assert len(provider.asked) == 1, "the hit asked the provider"
    assert second == first and len(first[0]) == 3 * 40_000 and len(first[1]) == 6
    assert (cache.hits, cache.misses, cache.entries) == (1, 1, 1)
    assert cache.bytes == disk_bytes(cache.directory)


async def test_the_key_tells_apart_everything_that_changes_the_sound(cache):
    provider = Recorder()
    cached = CachingProvider(provider, cache)
    base = request()
    variants = [
        base,
        request(voice_id="another"),
        request(model="another_model"),
        request(codec="alaw"),
        request(language="de-DE"),
        request(payload_type="ssml"),
        request("Thank you for calling!"),
    ]
    for each in variants:
        await spoken(cached, each)
    assert len(provider.asked) == len(variants), "each variant is its own entry"
    await spoken(cached, base)
    assert len(provider.asked) == len(variants), "the first one again is a hit"
    # The provider's name is in the key, and so is every rendering field it states.
    assert cache_key("a", {"voice": "x"}, "t") != cache_key("b", {"voice": "x"}, "t")
    assert cache_key("a", {"voice": "x"}, "t") != cache_key("a", {"voice": "x", "speed": "1.1"}, "t")


def test_each_provider_states_what_its_sound_depends_on():
    """The real providers' renderings: the voice as resolved, the model, the audio asked for, the
    settings; a setting changed in the config is another key."""
    from speakd.providers import aws, elevenlabs, gcp, piper

    eleven = elevenlabs.create({"api_key": "k"})
    base = eleven.rendering(request())
    assert base["voice"] == elevenlabs.DEFAULT_VOICES["en"] and base["model"] == elevenlabs.DEFAULT_MODEL
    assert eleven.rendering(request(codec="alaw")) != base
    assert eleven.rendering(request(voice_id="ElevenLabs.eleven_multilingual_v2.abc")) != base
    assert elevenlabs.create({"api_key": "k", "optimize_streaming_latency": 3}).rendering(request()) != base
    # An explicit voice that is the default is the same sound.
    assert eleven.rendering(request(voice_id=elevenlabs.DEFAULT_VOICES["en"])) == base

    google = gcp.create({"api_key": "k"})
    assert google.rendering(request(codec="alaw")) != google.rendering(request())
    assert google.rendering(request(voice_id="en-US-Standard-B")) != google.rendering(request())

    polly = aws.create({"access_key_id": "a", "secret_access_key": "s", "region": "eu-west-1"})
    assert aws.create(
        {"access_key_id": "a", "secret_access_key": "s", "region": "eu-west-1", "engine": "standard"}
    ).rendering(request(voice_id="Matthew")) != polly.rendering(request(voice_id="Matthew"))
    assert aws.create(
        {"access_key_id": "a", "secret_access_key": "s", "region": "eu-west-1", "sample_rate": 16000}
    ).rendering(request()) != polly.rendering(request())

    joe = piper.create({})
    assert piper.create({"length_scale": 1.2}).rendering(request()) != joe.rendering(request())
    # Piper's audio is the same whatever the session's codec (the session encodes it).
    assert joe.rendering(request(codec="alaw")) == joe.rendering(request())


async def test_the_bound_is_never_passed_and_the_least_recently_used_go_first(tmp_path):
    cache = AudioCache(tmp_path / "cache", 1 * MB, 3600)
    await cache.open()
    provider = Recorder(chunks=2, chunk_bytes=60_000)  # about 120 kB an entry: 8 fit
    cached = CachingProvider(provider, cache)
    await spoken(cached, request("kept"))
    for index in range(30):
        await spoken(cached, request(f"filler {index}"))
        await spoken(cached, request("kept"))  # used again and again: never the least recent
        assert disk_bytes(cache.directory) <= cache.max_bytes, f"past the bound after {index + 1} fillers"
        assert cache.bytes == disk_bytes(cache.directory)
    assert cache.evictions >= 20 and 6 <= cache.entries <= 8
    asked = len(provider.asked)
    await spoken(cached, request("kept"))
    await spoken(cached, request("filler 29"))
    assert len(provider.asked) == asked, "the recently used are still there"
    await spoken(cached, request("filler 0"))
    assert len(provider.asked) == asked + 1, "the first filler went long ago"


async def test_an_entry_bigger_than_the_bound_is_not_kept(tmp_path):
    cache = AudioCache(tmp_path / "cache", 100_000, 3600)
    await cache.open()
    cached = CachingProvider(Recorder(), cache)  # 120 kB
    await spoken(cached, request())
    assert cache.entries == 0 and entry_files(cache.directory) == []


async def test_an_entry_older_than_max_age_is_a_miss_and_removed(tmp_path):
    now = [1_000_000.0]
    cache = AudioCache(tmp_path / "cache", 10 * MB, 3600, clock=lambda: now[0])
    await cache.open()
    provider = Recorder()
    cached = CachingProvider(provider, cache)
    await spoken(cached, request())
    now[0] += 3599
    await spoken(cached, request())
    assert len(provider.asked) == 1
    now[0] += 2
    await spoken(cached, request())
    assert len(provider.asked) == 2, "expired: rendered anew"
    assert len(entry_files(cache.directory)) == 1 and cache.entries == 1


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[: len(data) // 2], id="cut-short"),
        pytest.param(lambda data: data[:-3], id="footer-cut"),
        pytest.param(lambda data: b"", id="empty"),
        pytest.param(lambda data: data[:100] + b"x" + data[100:], id="one-byte-more"),
        pytest.param(lambda data: data[: -FOOTER.size - 20] + b"}" * 20 + data[-FOOTER.size :], id="trailer-garbled"),
    ],
)
async def test_a_damaged_entry_is_a_miss_and_rendered_again(cache, damage):
    provider = Recorder()
    cached = CachingProvider(provider, cache)
    first = await spoken(cached, request())
    (path,) = entry_files(cache.directory)
    path.write_bytes(damage(path.read_bytes()))
    assert await spoken(cached, request()) == first, "the provider's audio, not the damaged file's"
    assert len(provider.asked) == 2
    assert await spoken(cached, request()) == first and len(provider.asked) == 2, "stored again, whole"
    assert cache.bytes == disk_bytes(cache.directory)


async def test_a_say_with_cache_false_leaves_nothing_on_disk_and_is_not_served_from_it(cache):
    provider = Recorder()
    cached = CachingProvider(provider, cache)
    await spoken(cached, request("My card number is 4111 1111 1111 1111.", cache=False))
    assert disk_bytes(cache.directory) == 0 and cache.entries == 0
    assert (cache.hits, cache.misses) == (0, 0)
    await spoken(cached, request("Hello."))
    await spoken(cached, request("Hello.", cache=False))
    assert len(provider.asked) == 3, "cache false asks the provider even when the text is cached"


async def test_a_cut_or_failed_rendering_is_never_an_entry(cache):
    cached = CachingProvider(Recorder(fail_after=2), cache)
    with pytest.raises(ProviderError):
        await spoken(cached, request())
    provider = Recorder(chunks=5)
    cached = CachingProvider(provider, cache)
    async with contextlib.aclosing(cached.synthesize(request())) as chunks:  # a flush after the first chunk
        await anext(chunks)
    assert disk_bytes(cache.directory) == 0 and cache.entries == 0, "no entry and no temporary file"
    await spoken(cached, request())
    assert len(provider.asked) == 2


async def test_identical_misses_at_once_both_synthesize_and_leave_one_whole_entry(cache):
    provider = Recorder(chunks=4)
    cached = CachingProvider(provider, cache)
    results = await asyncio.gather(*(spoken(cached, request()) for _ in range(3)))
    assert len(provider.asked) == 3 and results[0] == results[1] == results[2]
    assert len(entry_files(cache.directory)) == 1 and cache.entries == 1
    assert cache.bytes == disk_bytes(cache.directory)
    assert await spoken(cached, request()) == results[0] and len(provider.asked) == 3


async def test_the_cache_survives_a_restart_with_its_recency(tmp_path):
    directory = tmp_path / "cache"
    cache = AudioCache(directory, 1 * MB, 3600)
    await cache.open()
    provider = Recorder(chunks=2, chunk_bytes=100_000)  # 200 kB an entry: 5 fit
    cached = CachingProvider(provider, cache)
    for index in range(4):
        await spoken(cached, request(f"prompt {index}"))
    heard = await spoken(cached, request("prompt 0"))  # the most recently used now
    (directory / TEMP_DIR / "left-by-a-crash").write_bytes(b"x" * 1000)

    again = AudioCache(directory, 650_000, 3600)  # restarted with a smaller bound: 3 fit
    await again.open()
    assert again.entries == 3 and again.bytes == disk_bytes(directory) <= 650_000, "the temporary file went too"
    provider2 = Recorder(chunks=2, chunk_bytes=100_000)
    cached2 = CachingProvider(provider2, again)
    assert await spoken(cached2, request("prompt 0")) == heard
    await spoken(cached2, request("prompt 3"))
    assert provider2.asked == [], "both kept across the restart"
    await spoken(cached2, request("prompt 1"))
    assert len(provider2.asked) == 1, "the least recently used went at start"


async def test_a_text_stream_is_cached_per_chunk_apart_from_says(cache):
    class Streams(Recorder):
        def open_text_stream(self, language, voice_id, codec, model=""):
            outer = self

            class Stream(TextStream):
                def synthesize(self, request):
                    return outer.synthesize(request)

            return Stream()

    provider = Streams()
    cached = CachingProvider(provider, cache)
    stream = cached.open_text_stream("en-US", "", "ulaw")
    assert stream is not None
    sentences = ["Hello there.", "How can I help?"]
    for text in sentences:
        [c async for c in stream.synthesize(request(text))]
    again = cached.open_text_stream("en-US", "", "ulaw")
    for text in sentences:
        [c async for c in again.synthesize(request(text))]
    assert len(provider.asked) == 2, "each sentence once"
    await spoken(cached, request("Hello there."))
    assert len(provider.asked) == 3, "a say of the same text is keyed apart (its prosody is its own)"


async def test_render_ahead_then_hit(cache):
    provider = Recorder()
    cached = CachingProvider(provider, cache)
    entry, made = await cache.render(cached, request())
    assert made and entry.bytes == disk_bytes(cache.directory) and entry.duration_ms == 3 * 40_000 // 2 * 1000 // 16000
    again, made = await cache.render(cached, request())
    assert not made and again == entry and len(provider.asked) == 1
    await spoken(cached, request())
    assert len(provider.asked) == 1, "a say of the prompt asks no provider"

    silent = CachingProvider(Recorder(chunks=0), cache)
    with pytest.raises(InvalidRequest, match="no audio"):
        await cache.render(silent, request("..."))


async def test_a_reload_keeps_the_cache_around_a_rebuilt_provider(tmp_path):
    cache = AudioCache(tmp_path / "cache", 10 * MB, 3600)
    await cache.open()
    registry = ProviderRegistry({"elevenlabs": Recorder()}, {}, {"elevenlabs": {"api_key": "one"}})
    registry.wrap(cache.wrap)
    before = registry.get("elevenlabs")
    await registry.reload({"elevenlabs": {"api_key": "two"}})
    assert registry.get("elevenlabs") is before and isinstance(before, CachingProvider)
    await registry.aclose()


def test_cache_clear_removes_every_entry(tmp_path, capsys):
    from speakd.__main__ import main

    directory = tmp_path / "cache"

    async def fill():
        cache = AudioCache(directory, 10 * MB, 3600)
        await cache.open()
        for text in ("one", "two"):
            await spoken(CachingProvider(Recorder(), cache), request(text))

    asyncio.run(fill())
    assert len(entry_files(directory)) == 2
    config = tmp_path / "speakd.toml"
    config.write_text(f'[cache]\ndir = "{directory}"\n')
    assert main(["cache", "clear", "--config", str(config)]) == 0
    assert entry_files(directory) == [] and "removed 2 entries" in capsys.readouterr().out


# -- configuration, the say's field, the prompts endpoint, the metrics ------------------------------


def test_the_default_directory_is_where_the_systemd_unit_lets_speakd_write():
    from speakd.config import load_config

    unit = (Path(__file__).resolve().parents[2] / "systemd" / "speakd.service").read_text()
    keys = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
    config = load_config(None, {})
    assert config.cache.enabled and config.cache.dir == f"/var/cache/{keys['CacheDirectory']}"


def test_cache_keys_are_read_and_checked(tmp_path):
    from speakd.config import read_config

    path = tmp_path / "speakd.toml"
    path.write_text('[cache]\nenabled = false\ndir = "/srv/tts"\nmax_mb = 20\nmax_age = 60\n')
    reading = read_config(path, {"SPEAKD_CACHE_MAX_MB": "30"})
    assert not reading.problems
    cache = reading.config.cache
    assert (cache.enabled, cache.dir, cache.max_mb, cache.max_age) == (False, "/srv/tts", 30, 60.0)
    path.write_text("[cache]\nmax_mb = 0\nmax_age = -1\nsize = 3\n")
    problems = " ".join(read_config(path, {}).problems)
    assert "cache.max_mb" in problems and "cache.max_age" in problems and "size" in problems


def test_a_say_cache_field_is_a_boolean_in_json_and_true_or_false_from_the_dialplan():
    from speakd.api.schemas import parse_say
    from speakd.sessions.requests import say_request

    assert parse_say(b'{"text": "Hi", "cache": false}').cache is False
    assert parse_say(b'{"text": "Hi"}').cache is True
    with pytest.raises(InvalidRequest, match="'cache' must be true or false"):
        parse_say(b'{"text": "Hi", "cache": "false"}')
    assert say_request({"text": "Hi", "cache": "false"}).cache is False  # AGI arguments, ARI variables
    with pytest.raises(InvalidRequest, match="'cache'"):
        say_request({"text": "Hi", "cache": "maybe"})


def test_the_openapi_document_takes_the_fields_parsed():
    from speakd.api.openapi import OPENAPI
    from speakd.sessions.requests import PROMPT_FIELDS

    post = OPENAPI["paths"]["/v1.0/prompts"]["post"]
    assert list(post["requestBody"]["content"]["application/json"]["schema"]["properties"]) == list(PROMPT_FIELDS)
    assert {"200", "201", "400", "401", "409", "502"} <= set(post["responses"])
    say = OPENAPI["paths"]["/v1.0/speakings/{id}/say"]["post"]["requestBody"]["content"]["application/json"]
    assert say["schema"]["properties"]["cache"]["type"] == "boolean"


async def test_post_prompts_renders_once_and_answers_errors_as_json(tmp_path):
    from aiohttp.test_utils import TestClient, TestServer

    from speakd.api.app import create_app
    from speakd.api.auth import Authenticator
    from speakd.sessions.prompts import PromptRenderer

    cache = AudioCache(tmp_path / "cache", 10 * MB, 3600)
    await cache.open()
    provider = Recorder()
    registry = ProviderRegistry({"piper": provider}, {"elevenlabs": "provider 'elevenlabs' is not configured"})
    registry.wrap(cache.wrap)
    auth = Authenticator({"key": "customer"}, "")
    lexicons = Lexicons(SimpleNamespace())  # type: ignore[arg-type]  # (none named here)
    for renderer, expected in (
        (PromptRenderer(registry, cache, "ulaw", lexicons), 201),
        (PromptRenderer(registry, None, "ulaw", lexicons), 409),
    ):
        app = create_app(SimpleNamespace(), auth, "piper", prompts=renderer)  # type: ignore[arg-type]
        async with TestClient(TestServer(app)) as client:
            body = {"text": "Press one for sales.", "voice_id": "", "language": "en-us"}
            first = await client.post("/v1.0/prompts?accesskey=key", json=body)
            assert first.status == expected, await first.text()
            if expected == 409:
                assert (await first.json())["error"]["reason"] == "cache_disabled"
                continue
            made = await first.json()
            assert made["bytes"] == disk_bytes(cache.directory) and made["duration_ms"] == 3750
            assert made["language"] == "en-US" and made["provider"] == "piper"
            again = await client.post("/v1.0/prompts?accesskey=key", json=body)
            assert again.status == 200 and await again.json() == made
            assert len(provider.asked) == 1
            assert provider.asked[0].codec == "ulaw" and provider.asked[0].deadline() > 0
            for bad, status in (
                ({"text": "  "}, 400),
                ({"text": "Hi", "colour": "red"}, 400),
                ({"text": "Hi", "provider": "elevenlabs"}, 400),
                ({"text": "Hi", "cache": False}, 400),
            ):
                refused = await client.post("/v1.0/prompts?accesskey=key", json=bad)
                assert refused.status == status and "message" in (await refused.json())["error"], bad
            assert (await client.post("/v1.0/prompts", json=body)).status == 401


async def test_a_prompt_goes_through_the_customers_lexicon_as_its_says_will(tmp_path):
    """A say naming a lexicon is synthesized (and cached) as its text with the replacements: a
    prompt rendered ahead of it names the same lexicon, or the say would miss it."""
    from speakd.sessions.prompts import PromptRenderer
    from speakd.sessions.requests import prompt_request
    from speakd.store.sqlite import SqliteStore

    cache = AudioCache(tmp_path / "cache", 10 * MB, 3600)
    await cache.open()
    provider = Recorder()
    registry = ProviderRegistry({"piper": provider}, {})
    registry.wrap(cache.wrap)
    async with SqliteStore(":memory:") as store:
        lexicons = Lexicons(store)
        await lexicons.put("c1", "names", [{"from": "Siobhan", "to": "Shiv awn"}])
        renderer = PromptRenderer(registry, cache, "ulaw", lexicons)
        text = {"text": "Siobhan will call you back."}
        entry, made = await renderer.render("c1", prompt_request({**text, "lexicon": "names"}, "piper"))
        assert made and entry["lexicon"] == "names"
        assert provider.asked[-1].text == "Shiv awn will call you back."
        plain, made = await renderer.render("c1", prompt_request(text, "piper"))
        assert made and plain["key"] != entry["key"] and provider.asked[-1].text == text["text"]
        with pytest.raises(InvalidRequest, match="'lexicon' names lexicon 'names', and you have none"):
            await renderer.render("c2", prompt_request({**text, "lexicon": "names"}, "piper"))  # another customer's
        with pytest.raises(InvalidRequest, match="'lexicon'"):
            prompt_request({**text, "lexicon": "-bad"}, "piper")
    assert len(provider.asked) == 2


def test_the_metrics_read_the_cache():
    from speakd.metrics import Metrics

    metrics = Metrics()
    cache = AudioCache("/nonexistent", MB, 60)
    cache.hits, cache.misses, cache.evictions, cache.bytes = 3, 2, 1, 4096
    metrics.watch_cache(cache)
    text = metrics.exposition("")[0].decode()
    for line in (
        "speakd_cache_hits_total 3.0",
        "speakd_cache_misses_total 2.0",
        "speakd_cache_evictions_total 1.0",
        "speakd_cache_bytes 4096.0",
        "speakd_cache_entries 0.0",
    ):
        assert line in text, text


async def test_a_sessions_says_go_through_the_cache_and_cache_false_reaches_the_provider(tmp_path):
    """The service as the daemon builds it (the registry wrapped): a say repeated in a session is a
    hit, a say with cache false is asked of the provider as such."""
    from test_service import FakeAri, FakeMedia, request, until

    from speakd.sessions.requests import SayRequest
    from speakd.sessions.service import SpeakingService
    from speakd.store.sqlite import SqliteStore

    class Piper(Recorder):
        name = "piper"
        format = AudioFormat("ulaw", 8000)  # as the session sends it: no resampling to blur the marks

    provider = Piper(chunks=2, chunk_bytes=1600)
    cache = AudioCache(tmp_path / "cache", 10 * MB, 3600)
    await cache.open()
    registry = ProviderRegistry({"piper": provider}, {})
    registry.wrap(cache.wrap)
    ari = FakeAri()
    async with SqliteStore(":memory:") as store:
        service = SpeakingService(
            store=store,
            ari=ari,  # type: ignore[arg-type]
            providers=registry,
            media=FakeMedia(),  # type: ignore[arg-type]
            owner_variable="SPEAKD_CUSTOMER_ID",
            lead_ms=300,
            mark_every_ms=100,
        )
        ari.service = service
        try:
            record = await service.create("c1", request())
            items = [
                (await service.say("c1", record.id, SayRequest(text, cache=cache_it)))[1]
                for text, cache_it in (("Hello.", True), ("Hello.", True), ("Private.", False))
            ]
            await until(lambda: all(item.status == "played" for item in items), timeout=5)
        finally:
            await asyncio.wait_for(service.shutdown(), 10)
    assert [(r.text, r.cache) for r in provider.asked] == [("Hello.", True), ("Private.", False)]
    assert (cache.hits, cache.misses, cache.entries) == (1, 1, 1)
    assert items[0].word_marks == items[1].word_marks and items[1].word_marks, "the hit's marks are the miss's"


def test_a_prompt_is_at_most_an_ivr_prompt_long():
    from speakd.api.openapi import OPENAPI
    from speakd.sessions.requests import MAX_PROMPT_CHARS, prompt_request

    assert prompt_request({"text": "x" * MAX_PROMPT_CHARS}, "piper").text
    with pytest.raises(InvalidRequest, match=f"at most {MAX_PROMPT_CHARS}"):
        prompt_request({"text": "x" * (MAX_PROMPT_CHARS + 1)}, "piper")
    body = OPENAPI["paths"]["/v1.0/prompts"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["text"]["maxLength"] == MAX_PROMPT_CHARS


async def test_a_provider_that_crashes_on_a_prompts_text_is_a_json_400(tmp_path):
    from speakd.sessions.prompts import PromptRenderer
    from speakd.sessions.requests import prompt_request

    class Crashes(Recorder):
        async def synthesize(self, request):
            raise KeyError("a phoneme it has no sound for")
            yield

    cache = AudioCache(tmp_path / "cache", MB, 60)
    await cache.open()
    registry = ProviderRegistry({"piper": Crashes()}, {})
    registry.wrap(cache.wrap)
    with pytest.raises(InvalidRequest, match="'piper' cannot render this text: KeyError"):
        await PromptRenderer(registry, cache, "ulaw", Lexicons(SimpleNamespace())).render(  # type: ignore[arg-type]
            "c1", prompt_request({"text": "Hi"}, "piper")
        )
    assert cache.entries == 0
    for text in ("Hi\x00", "Hi \ud800"):  # what schemathesis sent: refused before any provider
        with pytest.raises(InvalidRequest, match="NUL characters, no lone surrogates"):
            prompt_request({"text": text}, "piper")


def test_a_stream_takes_cache_false_in_its_query():
    from speakd.api.openapi import OPENAPI
    from speakd.api.schemas import parse_stream_query

    assert parse_stream_query({}) == (False, True)
    assert parse_stream_query({"cache": "false", "timestamps": "true", "accesskey": "k"}) == (True, False)
    with pytest.raises(InvalidRequest, match="'cache'"):
        parse_stream_query({"cache": "sometimes"})
    parameters = OPENAPI["paths"]["/v1.0/speakings/{id}/stream"]["get"]["parameters"]
    assert [p["name"] for p in parameters] == ["timestamps", "cache"]
