"""Provider tests: each cloud provider, through its official SDK, against its local stand-in."""

from __future__ import annotations

import pytest
from providers_support import FAST, make_provider
from standins.conftest_plugin import aws_standin, blackhole, elevenlabs_standin, gcp_standin, standin_speech_ready

__all__ = ["aws_standin", "blackhole", "elevenlabs_standin", "gcp_standin", "standin_speech_ready"]


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
