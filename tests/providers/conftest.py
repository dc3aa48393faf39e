"""Provider tests: each cloud provider, through its official SDK, against its local stand-in."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from standins.conftest_plugin import aws_standin, blackhole, elevenlabs_standin, gcp_standin, standin_speech_ready

from speakd.providers.voices import clear_voice_cache

__all__ = ["aws_standin", "blackhole", "elevenlabs_standin", "gcp_standin", "standin_speech_ready"]

FAST = {"connect_timeout": "0.5", "first_byte_timeout": "3", "read_timeout": "3"}


def make_provider(name: str, section: dict[str, Any]):
    return importlib.import_module(f"speakd.providers.{name}").create(section)


@pytest.fixture(autouse=True)
def _fresh_voice_cache():
    clear_voice_cache()
    yield
    clear_voice_cache()


@pytest.fixture(params=["elevenlabs", "gcp", "aws"])
async def cloud(request, standin_speech_ready):
    """(provider name, started stand-in, factory(**section overrides) -> provider)."""
    name = request.param
    standin = request.getfixturevalue(f"{name}_standin")
    made = []

    def factory(**extra):
        provider = make_provider(name, standin.provider_section(**{**FAST, **extra}))
        made.append(provider)
        return provider

    yield name, standin, factory
    for provider in made:
        await provider.aclose()


async def collect(provider, request) -> list:
    return [chunk async for chunk in provider.synthesize(request)]
