"""Pytest fixtures for the provider stand-ins (register with ``pytest_plugins``).

Each fixture yields a started stand-in with ``.url`` / ``.address``, ``.requests`` (what it
received), ``.fail_next(mode, count=1)`` (``unauthorized``, ``forbidden``, ``server_error``,
``hang``, ``cut``, ``empty``), ``.hold_after_first_chunk()`` / ``.release()``, the ``first_chunk_sent`` /
``finished`` / ``client_closed`` events, and ``.provider_section(**extra)``: the speakd config
section (``[elevenlabs]``, ``[gcp]``, ``[aws]``) that points speakd at it, e.g.
``{"aws": aws_standin.provider_section()}`` for ``ProviderRegistry.from_config``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from standins.base import Blackhole
from standins.elevenlabs import ElevenLabsStandin
from standins.google import GoogleStandin
from standins.polly import PollyStandin


@pytest.fixture
def elevenlabs_standin() -> Iterator[ElevenLabsStandin]:
    with ElevenLabsStandin() as standin:
        yield standin


@pytest.fixture
def gcp_standin() -> Iterator[GoogleStandin]:
    with GoogleStandin() as standin:
        yield standin


@pytest.fixture
def aws_standin() -> Iterator[PollyStandin]:
    with PollyStandin() as standin:
        yield standin


@pytest.fixture
def blackhole() -> Iterator[Blackhole]:
    """An address where TCP connects hang (for connect timeouts)."""
    hole = Blackhole()
    yield hole
    hole.close()


@pytest.fixture(scope="session")
def standin_speech_ready() -> None:
    """Load Piper once up front so the first stand-in request is not slowed by it."""
    from standins import audio

    audio.speech("Ready.", 8000)
