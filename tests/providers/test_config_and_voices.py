"""Config sections (credentials, env strings), the peer voice form, and the voices listing."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from aiohttp.test_utils import make_mocked_request
from providers_support import FAST, make_provider

from speakd.api.voices import voices_response
from speakd.errors import InvalidRequest, ProviderNotConfigured, UnsupportedLanguage
from speakd.providers import ProviderRegistry
from speakd.providers.peer_voices import ParsedVoice, parse_voice, resolve_voice

# -- credentials -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "section", "missing"),
    [
        ("elevenlabs", {}, "api_key"),
        ("elevenlabs", {"endpoint": "http://127.0.0.1:1"}, "SPEAKD_ELEVENLABS_API_KEY"),
        ("gcp", {}, "credentials_file"),
        ("gcp", {"credentials_file": "/nonexistent/sa.json"}, "/nonexistent/sa.json"),
        ("gcp", {"endpoint": "127.0.0.1:1", "insecure": "true", "application_default": "false"}, "api_key"),
        ("aws", {"region": "us-east-1"}, "access_key_id"),
        ("aws", {"access_key_id": "AKID", "region": "us-east-1"}, "secret_access_key"),
        ("aws", {"access_key_id": "AKID", "secret_access_key": "s"}, "region"),
    ],
)
def test_missing_credentials_say_what_is_missing(name, section, missing):
    with pytest.raises(ProviderNotConfigured) as info:
        make_provider(name, section)
    assert missing in info.value.message
    assert info.value.message.startswith(f"{name}:")


def test_registry_keeps_running_without_credentials_and_answers_400_with_the_reason():
    registry = ProviderRegistry.from_config({"piper": {"enabled": False}, "elevenlabs": {}, "aws": {"region": "x"}})
    assert registry.names() == []
    with pytest.raises(ProviderNotConfigured, match="api_key") as info:
        registry.get("elevenlabs")
    assert info.value.status == 400
    with pytest.raises(ProviderNotConfigured, match="access_key_id"):
        registry.get("aws")


def test_env_strings_are_parsed():
    provider = make_provider(
        "aws",
        {
            "access_key_id": "AKID",
            "secret_access_key": "s",
            "region": "eu-west-1",
            "sample_rate": "16000",
            "connect_timeout": "0.25",
            "retries": "0",
            "voices": "de-DE=Daniel,fr-FR=Remi",
        },
    )
    assert provider.sample_rate == 16000
    assert provider.timeouts.connect == 0.25 and provider.timeouts.retries == 0
    assert provider.voices["de-DE"] == ("Daniel", ()) and provider.voices["fr-FR"] == ("Remi", ())
    gcp = make_provider("gcp", {"api_key": "k", "endpoint": "127.0.0.1:9", "insecure": "true", "streaming": "no"})
    assert gcp.insecure is True and gcp.streaming is False


@pytest.mark.parametrize(
    ("name", "section"),
    [
        ("aws", {"access_key_id": "A", "secret_access_key": "s", "region": "r", "sample_rate": "22050"}),
        ("aws", {"access_key_id": "A", "secret_access_key": "s", "region": "r", "engine": "turbo"}),
        ("elevenlabs", {"api_key": "k", "first_byte_timeout": "soon"}),
        ("gcp", {"api_key": "k", "insecure": "maybe"}),
        ("piper", {"nice": "25"}),
    ],
)
def test_bad_values_name_the_key(name, section):
    with pytest.raises(ProviderNotConfigured) as info:
        make_provider(name, section)
    bad = next(k for k in section if k not in ("access_key_id", "secret_access_key", "region", "api_key"))
    assert bad in info.value.message


# -- the peer voice form -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("voice", "parsed"),
    [
        ("AWS.Polly.Joanna-Neural", ParsedVoice("aws", "Polly", "Joanna-Neural")),
        (
            "ElevenLabs.eleven_flash_v2_5.21m00Tcm4TlvDq8ikWAM",
            ParsedVoice("elevenlabs", "eleven_flash_v2_5", "21m00Tcm4TlvDq8ikWAM"),
        ),
        ("Google.en-US-Chirp3-HD-Charon", ParsedVoice("gcp", "", "en-US-Chirp3-HD-Charon")),
        ("google.en-US-Standard-C", ParsedVoice("gcp", "", "en-US-Standard-C")),
        ("Joanna", ParsedVoice(None, "", "Joanna")),
        ("en-US-Chirp3-HD-Charon", ParsedVoice(None, "", "en-US-Chirp3-HD-Charon")),
        ("my.custom.voice", ParsedVoice(None, "", "my.custom.voice")),
        ("", ParsedVoice(None, "", "")),
    ],
)
def test_parse_voice(voice, parsed):
    assert parse_voice(voice) == parsed


def test_resolve_voice_takes_the_provider_from_the_peer_form_and_rejects_a_conflict():
    assert resolve_voice(None, "AWS.Polly.Joanna-Neural").provider == "aws"
    assert resolve_voice("aws", "AWS.Polly.Joanna-Neural").voice_id == "Joanna-Neural"
    assert resolve_voice("gcp", "de-DE-Standard-B") == ParsedVoice("gcp", "", "de-DE-Standard-B")
    with pytest.raises(InvalidRequest, match="aws"):
        resolve_voice("elevenlabs", "AWS.Polly.Joanna")


# -- GET /v1.0/voices --------------------------------------------------------------------------


@pytest.fixture
async def registry(elevenlabs_standin, gcp_standin, aws_standin):
    reg = ProviderRegistry.from_config(
        {
            "piper": {"enabled": False},
            "elevenlabs": elevenlabs_standin.provider_section(**FAST),
            "gcp": gcp_standin.provider_section(**FAST),
            "aws": aws_standin.provider_section(**FAST),
        }
    )
    yield reg
    await reg.aclose()


async def _get(registry, query: str):
    async def voices(provider: str, language: str):  # what SpeakingService.voices answers
        return await registry.voices(provider, language)

    request = make_mocked_request("GET", f"/v1.0/voices?{query}")
    response = await voices_response(SimpleNamespace(voices=voices), request.query)
    import json

    return json.loads(response.body)["result"]


async def test_voices_lists_every_configured_provider_from_its_own_list_call(registry, elevenlabs_standin):
    result = await _get(registry, "")
    assert {v["provider"] for v in result} == {"elevenlabs", "gcp", "aws"}
    joanna = next(v for v in result if v["voice_id"] == "Joanna")
    assert joanna == {
        "provider": "aws",
        "voice_id": "Joanna",
        "name": "Joanna",
        "languages": ["en-US"],
        "gender": "female",
    }
    charon = next(v for v in result if v["voice_id"] == "en-US-Chirp3-HD-Charon")
    assert charon["gender"] == "male" and charon["languages"] == ["en-US"]
    assert any(v["voice_id"] == "21m00Tcm4TlvDq8ikWAM" for v in result)


async def test_voices_filters_by_provider_and_language(registry, aws_standin, gcp_standin):
    result = await _get(registry, "provider=aws&language=de-DE")
    assert {v["voice_id"] for v in result} == {"Vicki", "Daniel"}
    assert aws_standin.requests[-1].language == "de-DE"
    result = await _get(registry, "language=de-DE")
    assert {v["provider"] for v in result} == {"elevenlabs", "gcp", "aws"}
    assert all(any(lang.startswith("de") for lang in v["languages"]) for v in result)


async def test_voices_list_is_cached(registry, aws_standin):
    await _get(registry, "provider=aws")
    await _get(registry, "provider=aws")
    assert len([r for r in aws_standin.requests if r.kind == "list_voices"]) == 1
    await registry.catalogue.voices(registry.get("aws"), None, ttl=0)
    assert len([r for r in aws_standin.requests if r.kind == "list_voices"]) == 2


async def test_voices_errors(registry):
    with pytest.raises(ProviderNotConfigured, match="piper"):
        await _get(registry, "provider=piper")
    with pytest.raises(UnsupportedLanguage, match="aws"):
        await _get(registry, "provider=aws&language=xh-ZA")
    with pytest.raises(InvalidRequest, match="language"):
        await _get(registry, "language=!!")
