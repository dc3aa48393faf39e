"""Session ordering and barge-in with a scripted provider (no Asterisk): what reaches the wire."""

from __future__ import annotations

import asyncio

import pytest

from speakd.errors import ProviderError
from speakd.media.pacer import Pacer
from speakd.providers.base import AudioChunk, AudioFormat, Provider, SynthesisRequest
from speakd.sessions.model import Speaking
from speakd.sessions.session import Session

FMT = AudioFormat("ulaw", 8000)


class ScriptedProvider(Provider):
    """Each text is 'LETTER:frames'; yields that many frames of the letter, one chunk a frame."""

    name = "scripted"

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}
        self.closed: list[str] = []
        self.fail_after: dict[str, int] = {}

    def check(self, language, voice_id, payload_type="text"):
        pass

    async def synthesize(self, request: SynthesisRequest):
        letter, count = request.text.split(":")
        try:
            for i in range(int(count)):
                gate = self.gates.get(letter)
                if gate is not None and i >= 2:
                    await gate.wait()
                if self.fail_after.get(letter) == i:
                    raise ProviderError(f"provider cut off {letter}")
                yield AudioChunk(letter.encode() * 160, FMT)
                await asyncio.sleep(0)
        finally:
            self.closed.append(letter)


def record() -> Speaking:
    return Speaking("s1", "c", "call", "ch", "en-US", "scripted", "", "out", "active", "t", "t")


async def drain(session: Session, pacer: Pacer, ticks: int) -> list[bytes]:
    sent: list[bytes] = []
    for _ in range(ticks):
        await asyncio.sleep(0.001)
        frame = session.frames.pop()
        if frame is not None:
            sent.append(frame[:1])
    return sent


@pytest.fixture
def pacer():
    return Pacer(lambda packet, addr: None)


async def test_items_play_in_order_back_to_back(pacer):
    session = Session(record(), ScriptedProvider(), "ulaw", pacer)
    session.start_synthesis()
    session.say("A:3")
    session.say("B:2")
    session.say("C:1")
    sent = await drain(session, pacer, 40)
    await session.close()
    assert b"".join(sent) == b"AAABBC"  # in order, and no empty tick between items once queued


async def test_flush_drops_queued_and_in_flight_audio_and_next_say_plays(pacer):
    provider = ScriptedProvider()
    provider.gates["A"] = asyncio.Event()  # A stalls after 2 frames, as a slow provider would
    session = Session(record(), provider, "ulaw", pacer)
    session.start_synthesis()
    session.say("A:50")
    session.say("B:5")
    sent = await drain(session, pacer, 10)
    assert b"".join(sent) == b"AA"
    result = session.flush()
    assert result["dropped_items"] == 2
    provider.gates["A"].set()  # whatever A would still produce must never be sent
    assert session.frames.pop() is None
    session.say("C:3")
    sent = await drain(session, pacer, 30)
    await session.close()
    assert b"".join(sent) == b"CCC"
    assert "A" in provider.closed  # the in-flight synthesis was cancelled and closed


async def test_provider_failure_keeps_what_played_and_the_session_goes_on(pacer):
    provider = ScriptedProvider()
    provider.fail_after["A"] = 3
    session = Session(record(), provider, "ulaw", pacer)
    session.start_synthesis()
    session.say("A:10")
    session.say("B:2")
    sent = await drain(session, pacer, 30)
    await session.close()
    assert b"".join(sent) == b"AAABB"  # nothing of A replayed, B still plays
    assert "cut off" in session.last_error


async def test_close_reports_dropped_items(pacer):
    provider = ScriptedProvider()
    provider.gates["A"] = asyncio.Event()
    session = Session(record(), provider, "ulaw", pacer)
    session.start_synthesis()
    session.say("A:10")
    session.say("B:1")
    await asyncio.sleep(0.01)
    assert await session.close() == 2
