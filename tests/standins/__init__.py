"""Local stand-ins for the cloud TTS providers, speaking each one's real wire protocol.

Each stand-in runs its server on its own thread and event loop (so sync and async tests, and a
speakd daemon in another process, can all use it), records the requests it got, streams real
speech rendered by Piper in chunks with delays, and fails on command. Fixtures are in
:mod:`standins.conftest_plugin`.
"""

from standins.base import Blackhole, FailMode, Recorded, Standin
from standins.elevenlabs import ElevenLabsStandin
from standins.google import GoogleStandin
from standins.polly import PollyStandin

__all__ = [
    "Blackhole",
    "ElevenLabsStandin",
    "FailMode",
    "GoogleStandin",
    "PollyStandin",
    "Recorded",
    "Standin",
]
