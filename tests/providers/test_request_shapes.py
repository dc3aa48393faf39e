"""What each provider sends (voice, language, format, rate, model, SSML) and what it yields."""

from __future__ import annotations

import pytest
from providers_support import FAST, collect, make_provider

from speakd.audio import AudioFormat
from speakd.errors import InvalidRequest, UnsupportedLanguage
from speakd.providers import SynthesisRequest, elevenlabs, gcp

TEXT = "Good morning."


@pytest.fixture
async def eleven(elevenlabs_standin, standin_speech_ready):
    provider = make_provider("elevenlabs", elevenlabs_standin.provider_section(**FAST))
    yield provider
    await provider.aclose()


@pytest.fixture
async def google(gcp_standin, standin_speech_ready):
    provider = make_provider("gcp", gcp_standin.provider_section(**FAST))
    yield provider
    await provider.aclose()


@pytest.fixture
async def polly(aws_standin, standin_speech_ready):
    provider = make_provider("aws", aws_standin.provider_section(**FAST))
    yield provider
    await provider.aclose()


# -- ElevenLabs --------------------------------------------------------------------------------


@pytest.mark.parametrize(("codec", "output_format"), [("ulaw", "ulaw_8000"), ("alaw", "alaw_8000")])
async def test_elevenlabs_asks_for_the_session_codec(eleven, elevenlabs_standin, codec, output_format):
    chunks = await collect(eleven, SynthesisRequest(TEXT, "en-US", "", codec=codec))
    (req,) = elevenlabs_standin.synth_requests()
    assert req.format == output_format
    assert req.auth == elevenlabs_standin.api_key
    assert req.model == "eleven_flash_v2_5"
    assert req.language == "en"
    assert req.text == TEXT
    assert {c.format for c in chunks} == {AudioFormat(codec, 8000)}


async def test_elevenlabs_default_voice_follows_the_language(eleven, elevenlabs_standin):
    await collect(eleven, SynthesisRequest(TEXT, "en-US", ""))
    await collect(eleven, SynthesisRequest("Guten Morgen.", "de-DE", ""))
    en, de = elevenlabs_standin.synth_requests()
    assert de.voice != en.voice
    assert (en.voice, de.voice) == (elevenlabs.DEFAULT_VOICES["en"], elevenlabs.DEFAULT_VOICES["de"])
    assert de.language == "de"


async def test_elevenlabs_configured_voice_table_overrides_defaults(elevenlabs_standin, standin_speech_ready):
    provider = make_provider("elevenlabs", elevenlabs_standin.provider_section(**FAST, voices="de-DE=germanvoice01"))
    await collect(provider, SynthesisRequest("Guten Morgen.", "de-DE", ""))
    await collect(provider, SynthesisRequest(TEXT, "en-US", ""))
    await provider.aclose()
    de, en = elevenlabs_standin.synth_requests()
    assert (de.voice, en.voice) == ("germanvoice01", elevenlabs.DEFAULT_VOICES["en"])


async def test_elevenlabs_peer_voice_form_sets_model_and_voice(eleven, elevenlabs_standin):
    await collect(eleven, SynthesisRequest(TEXT, "fr-FR", "ElevenLabs.eleven_multilingual_v2.XB0fDUnXU5powFXDhCwa"))
    (req,) = elevenlabs_standin.synth_requests()
    assert req.voice == "XB0fDUnXU5powFXDhCwa"
    assert req.model == "eleven_multilingual_v2"
    assert req.language == ""  # multilingual_v2 takes no language_code


async def test_elevenlabs_rejects_ssml(eleven, elevenlabs_standin):
    with pytest.raises(InvalidRequest, match=r"elevenlabs.*SSML"):
        eleven.check("en-US", "", "ssml")
    with pytest.raises(InvalidRequest, match="SSML"):
        await collect(eleven, SynthesisRequest("<speak>Hi</speak>", "en-US", "", payload_type="ssml"))
    assert elevenlabs_standin.synth_requests() == []


def test_elevenlabs_unsupported_language_names_provider_and_language(eleven):
    with pytest.raises(UnsupportedLanguage) as info:
        eleven.check("xh-ZA", "")
    assert "elevenlabs" in info.value.message and "xh-ZA" in info.value.message
    with pytest.raises(UnsupportedLanguage, match="hu-HU"):
        eleven.check("hu-HU", "ElevenLabs.eleven_multilingual_v2.abc")
    eleven.check("hu-HU", "")  # flash v2.5 speaks Hungarian


# -- Google ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("codec", "encoding"), [("ulaw", "MULAW"), ("alaw", "ALAW")])
async def test_google_chirp3_voice_streams(google, gcp_standin, codec, encoding):
    chunks = await collect(google, SynthesisRequest(TEXT, "en-US", "Google.en-US-Chirp3-HD-Charon", codec=codec))
    (req,) = gcp_standin.synth_requests()
    assert req.kind == "stream"
    assert (req.voice, req.language, req.format, req.sample_rate) == ("en-US-Chirp3-HD-Charon", "en-US", encoding, 8000)
    assert req.auth == gcp_standin.api_key
    assert {c.format for c in chunks} == {AudioFormat(codec, 8000)}


async def test_google_other_voices_use_unary_synthesis_without_wav_header(google, gcp_standin):
    chunks = await collect(google, SynthesisRequest(TEXT, "en-US", "en-US-Standard-C"))
    (req,) = gcp_standin.synth_requests()
    assert req.kind == "synthesize"
    assert (req.voice, req.format, req.sample_rate) == ("en-US-Standard-C", "MULAW", 8000)
    data = b"".join(c.data for c in chunks)
    assert not data.startswith(b"RIFF")
    from standins import audio

    assert data == audio.render(TEXT, "ulaw", 8000)  # exactly the samples, header stripped


async def test_google_ssml_goes_through_unary_as_ssml(google, gcp_standin):
    ssml = "<speak>Good <break time='200ms'/> morning.</speak>"
    await collect(google, SynthesisRequest(ssml, "en-US", "", payload_type="ssml"))
    (req,) = gcp_standin.synth_requests()
    assert req.kind == "synthesize" and req.ssml and req.text == ssml


async def test_google_default_voice_follows_the_language(google, gcp_standin):
    await collect(google, SynthesisRequest("Guten Morgen.", "de-DE", ""))
    (req,) = gcp_standin.synth_requests()
    assert (req.voice, req.language) == (gcp.DEFAULT_VOICES["de-DE"], "de-DE")
    assert req.voice != gcp.DEFAULT_VOICES["en-US"]


def test_google_unsupported_language_and_mismatched_voice(google):
    with pytest.raises(UnsupportedLanguage) as info:
        google.check("xx-XX", "")
    assert "gcp" in info.value.message and "xx-XX" in info.value.message
    with pytest.raises(InvalidRequest, match="de-DE"):
        google.check("en-US", "de-DE-Chirp3-HD-Kore")


# -- Polly -------------------------------------------------------------------------------------


async def test_polly_asks_pcm_8000_with_the_configured_engine(polly, aws_standin):
    chunks = await collect(polly, SynthesisRequest(TEXT, "en-US", ""))
    (req,) = aws_standin.synth_requests()
    assert (req.voice, req.language, req.format, req.sample_rate, req.engine) == (
        "Joanna",
        "en-US",
        "pcm",
        8000,
        "neural",
    )
    assert f"Credential={aws_standin.access_key_id}/" in req.auth
    assert not req.ssml
    assert {c.format for c in chunks} == {AudioFormat("pcm_s16le", 8000)}


async def test_polly_sample_rate_engine_and_g711_from_config(aws_standin, standin_speech_ready):
    provider = make_provider("aws", aws_standin.provider_section(sample_rate="16000", engine="standard"))
    chunks = await collect(provider, SynthesisRequest(TEXT, "en-US", "Matthew"))
    provider = make_provider("aws", aws_standin.provider_section(output_format="g711"))
    g711 = await collect(provider, SynthesisRequest(TEXT, "en-US", "", codec="alaw"))
    pcm16, alaw = aws_standin.synth_requests()
    assert (pcm16.voice, pcm16.sample_rate, pcm16.engine) == ("Matthew", 16000, "standard")
    assert chunks[0].format == AudioFormat("pcm_s16le", 16000)
    assert (alaw.format, alaw.sample_rate) == ("alaw", 8000)
    assert g711[0].format == AudioFormat("alaw", 8000)


@pytest.mark.parametrize(
    ("voice", "expected"),
    [
        ("AWS.Polly.Joanna-Neural", ("Joanna", "neural")),
        ("AWS.Polly.Matthew-Standard", ("Matthew", "standard")),
        ("Joanna-Generative", ("Joanna", "generative")),
        ("Joanna", ("Joanna", "neural")),
    ],
)
async def test_polly_peer_voice_form_and_engine_suffix(polly, aws_standin, voice, expected):
    await collect(polly, SynthesisRequest(TEXT, "en-US", voice))
    (req,) = aws_standin.synth_requests()
    assert (req.voice, req.engine) == expected


async def test_polly_ssml_is_sent_as_ssml(polly, aws_standin):
    ssml = "<speak>Good <break time='200ms'/> morning.</speak>"
    await collect(polly, SynthesisRequest(ssml, "en-US", "", payload_type="ssml"))
    (req,) = aws_standin.synth_requests()
    assert req.ssml and req.text == ssml


async def test_polly_default_voice_follows_the_language(polly, aws_standin):
    await collect(polly, SynthesisRequest("Guten Morgen.", "de-DE", ""))
    await collect(polly, SynthesisRequest("Здравствуйте.", "ru-RU", ""))
    de, ru = aws_standin.synth_requests()
    assert (de.voice, de.language) == ("Vicki", "de-DE")
    assert (ru.voice, ru.engine) == ("Tatyana", "standard"), "a standard-only voice is not asked for neural"


async def test_polly_configured_voice_table_overrides_defaults(aws_standin, standin_speech_ready):
    provider = make_provider("aws", aws_standin.provider_section(**FAST, voices="de-DE=Daniel,fr-FR=Remi"))
    await collect(provider, SynthesisRequest("Guten Morgen.", "de-DE", ""))
    await collect(provider, SynthesisRequest("Bonjour.", "fr", ""))
    de, fr = aws_standin.synth_requests()
    assert (de.voice, de.language) == ("Daniel", "de-DE")
    assert (fr.voice, fr.language) == ("Remi", "fr-FR")  # a bare language: the table's locale for it


def test_polly_unsupported_language_names_provider_and_language(polly):
    with pytest.raises(UnsupportedLanguage) as info:
        polly.check("xh-ZA", "")
    assert "aws" in info.value.message and "xh-ZA" in info.value.message


def test_peer_form_for_another_provider_is_rejected(polly, eleven):
    with pytest.raises(InvalidRequest, match="gcp"):
        polly.check("en-US", "Google.en-US-Chirp3-HD-Charon")
    with pytest.raises(InvalidRequest, match="aws"):
        eleven.check("en-US", "AWS.Polly.Joanna-Neural")
