"""The peer voice form ``Provider.Model.VoiceId`` (``AWS.Polly.Joanna-Neural``,
``ElevenLabs.eleven_flash_v2_5.<id>``, ``Google.en-US-Chirp3-HD-Charon``): split into provider
name, model and voice id. A plain voice id passes through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from speakd.errors import InvalidRequest
from speakd.provider_names import PROVIDER_NAMES

# What peers call a provider (lowercased) -> its speakd name; every speakd name stands for itself.
PROVIDER_ALIASES: dict[str, str] = {name: name for name in PROVIDER_NAMES} | {
    "amazon": "aws",
    "polly": "aws",
    "google": "gcp",
    "eleven": "elevenlabs",
    "11labs": "elevenlabs",
}


@dataclass(frozen=True, slots=True)
class ParsedVoice:
    provider: str | None
    """speakd provider name (``aws``, ``gcp``, ``elevenlabs``, ``piper``), None for a plain id."""
    model: str
    voice_id: str


def parse_voice(voice: str) -> ParsedVoice:
    """Split ``Provider.Model.VoiceId`` (or ``Provider.VoiceId``); a plain id passes through.

    Only a first part naming a known provider makes the peer form, so voice ids that contain
    dots of their own are not mangled.
    """
    voice = (voice or "").strip()
    head, sep, rest = voice.partition(".")
    provider = PROVIDER_ALIASES.get(head.lower()) if sep else None
    if provider is None or not rest:
        return ParsedVoice(None, "", voice)
    model, sep, voice_id = rest.partition(".")
    if not sep:
        # ``Google.en-US-Chirp3-HD-Charon``: provider and voice, no model.
        return ParsedVoice(provider, "", model)
    if not voice_id:
        raise InvalidRequest(f"voice_id '{voice}' has an empty voice after the model")
    return ParsedVoice(provider, model, voice_id)


def resolve_voice(provider: str | None, voice: str) -> ParsedVoice:
    """The provider, model and voice a ``say``/session asks for.

    ``provider`` is the request's ``provider`` field (None/empty when omitted). A peer-form voice
    names its provider; naming another one in ``provider`` is a 400.
    """
    parsed = parse_voice(voice)
    if parsed.provider is None:
        return ParsedVoice(provider or None, "", parsed.voice_id)
    if provider and provider != parsed.provider:
        raise InvalidRequest(f"voice_id '{voice}' is a {parsed.provider} voice but provider '{provider}' was requested")
    return parsed


def split_voice(provider_name: str, voice_id: str, model: str = "") -> tuple[str, str]:
    """(model, voice id) for a provider given a voice that may still be in peer form."""
    parsed = parse_voice(voice_id)
    if parsed.provider is None:
        return model, parsed.voice_id
    if parsed.provider != provider_name:
        raise InvalidRequest(f"voice_id '{voice_id}' is a {parsed.provider} voice, not a {provider_name} one")
    return (parsed.model or model), parsed.voice_id
