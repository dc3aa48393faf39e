"""The RTP pacer process, its control protocol and the daemon-side transport.

The process tests start a real pacer with a real UDP socket and listen on another one on
127.0.0.1. They check behaviour and ordering only: the machine is shared, so timing gets
generous slack.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import time

import pytest
from harness.rtp import parse_header

from speakd.config import TransportKind
from speakd.media import pacer_protocol as proto
from speakd.media.rtp_pacer import SLOTS, RtpPacer
from speakd.media.rtp_transport import PacerProcess, RtpTransport
from speakd.media.transport import TransportError

FRAME = 160
PT_ULAW = 0


def frames(first: int, count: int) -> bytes:
    """``count`` frames, each filled with its own number, so the receiver can tell them apart."""
    return b"".join(bytes([(first + i) % 256]) * FRAME for i in range(count))


# -- the protocol (pure) ------------------------------------------------------------------------

ALL_MESSAGES = [
    proto.Add(1, "127.0.0.1", 40000, 0),
    proto.Add(2**32 - 1, "::1", 65535, 127),
    proto.Audio(7, frames(0, 3)),
    proto.Audio(7, b""),
    proto.Mark(7, "m1"),
    proto.Mark(7, "säy-ünïcode"),
    proto.Flush(7),
    proto.Remove(7),
    proto.Ready(True, 10, ""),
    proto.Ready(False, 0, "Operation not permitted"),
    proto.MarkPlayed(7, "m1"),
    proto.Removed(7),
    proto.Xoff(7),
    proto.Xon(7),
    proto.Drained(7),
    proto.Stats(1.5, 12.25, 3, 1, 123456),
]


def test_protocol_round_trips_every_message():
    data = b"".join(proto.encode(m) for m in ALL_MESSAGES)
    assert proto.Decoder().feed(data) == ALL_MESSAGES


@pytest.mark.parametrize("piece", [1, 2, 3, 5, 7, 64, 1000])
def test_protocol_decodes_whatever_the_reads_cut(piece):
    data = b"".join(proto.encode(m) for m in ALL_MESSAGES)
    decoder = proto.Decoder()
    got = []
    for start in range(0, len(data), piece):
        got += decoder.feed(data[start : start + piece])
    assert got == ALL_MESSAGES
    assert decoder.pending == 0


def test_protocol_holds_back_a_partial_frame():
    first, second = proto.encode(proto.Mark(1, "a")), proto.encode(proto.Flush(1))
    decoder = proto.Decoder()
    assert decoder.feed(first + second[:3]) == [proto.Mark(1, "a")]
    assert decoder.pending == 3
    assert decoder.feed(second[3:]) == [proto.Flush(1)]


def test_protocol_rejects_garbage():
    with pytest.raises(proto.ProtocolError):
        proto.Decoder().feed(b"\x00\x00\x00\x00\x01")  # zero length
    with pytest.raises(proto.ProtocolError):
        proto.Decoder().feed(b"\xff\xff\xff\xff\x01")  # absurd length
    with pytest.raises(proto.ProtocolError):
        proto.Decoder().feed(b"\x00\x00\x00\x01\x63")  # unknown opcode
    with pytest.raises(proto.ProtocolError):
        proto.Decoder().feed(b"\x00\x00\x00\x03\x04ab")  # FLUSH with a short body


# -- the pacing logic, ticked by hand -------------------------------------------------------------


class FakeRtp:
    def __init__(self) -> None:
        self.sent: list[tuple[int, bytes]] = []  # (sub-tick, packet)
        self.pacer: RtpPacer | None = None

    def sendto(self, packet: bytes, destination: tuple[str, int]) -> None:
        assert self.pacer is not None
        self.sent.append((self.pacer.subticks, packet))


def hand_pacer(cushion: int = 0) -> tuple[RtpPacer, FakeRtp]:
    rtp = FakeRtp()
    pacer = RtpPacer(rtp, None, cushion=cushion)  # type: ignore[arg-type]
    rtp.pacer = pacer
    pacer._apply(proto.Add(1, "127.0.0.1", 9, PT_ULAW))
    return pacer, rtp


def played_marks(pacer: RtpPacer) -> list[str]:
    return [m.mark_id for m in proto.Decoder().feed(bytes(pacer.outgoing)) if isinstance(m, proto.MarkPlayed)]


def test_one_frame_per_period_and_marks_at_playout():
    pacer, rtp = hand_pacer()
    pacer.tick()  # an idle sub-tick first: the talkspurt may start on any sub-tick
    pacer._apply(proto.Audio(1, frames(0, 3)))
    pacer._apply(proto.Mark(1, "end"))
    for _ in range(5 * SLOTS):
        pacer.tick()
    ticks = [t for t, _ in rtp.sent]
    assert ticks == [1, 1 + SLOTS, 1 + 2 * SLOTS]
    headers = [parse_header(p) for _, p in rtp.sent]
    assert [h["marker"] for h in headers] == [1, 0, 0]
    # The mark fires one period after the last frame left (when it has played), not with it.
    assert played_marks(pacer) == ["end"]


def test_mark_on_an_idle_stream_fires_at_once():
    pacer, _ = hand_pacer()
    pacer._apply(proto.Mark(1, "now"))
    assert played_marks(pacer) == ["now"]


def test_cushion_sends_the_first_frames_back_to_back_then_paces():
    pacer, rtp = hand_pacer(cushion=1)
    pacer._apply(proto.Audio(1, frames(0, 4)))
    for _ in range(4 * SLOTS):
        pacer.tick()
    assert [t for t, _ in rtp.sent] == [0, 0, SLOTS, 2 * SLOTS]
    headers = [parse_header(p) for _, p in rtp.sent]
    assert [h["marker"] for h in headers] == [1, 0, 0, 0]
    assert [h["timestamp"] - headers[0]["timestamp"] for h in headers] == [0, 160, 320, 480]


@pytest.mark.parametrize("cushion", [0, 1, 2])
def test_a_mark_is_reported_when_the_far_end_plays_up_to_it_whatever_the_cushion(cushion):
    pacer, rtp = hand_pacer(cushion=cushion)
    pacer._apply(proto.Audio(1, frames(0, 3)))
    pacer._apply(proto.Mark(1, "second say"))
    pacer._apply(proto.Audio(1, frames(3, 3)))
    pacer._apply(proto.Mark(1, "end"))
    reported = {}
    for _ in range(10 * SLOTS):
        pacer.tick()
        for mark_id in played_marks(pacer):
            reported.setdefault(mark_id, pacer.subticks - 1)
    sent = [t for t, _ in rtp.sent]
    assert sent[: 1 + cushion] == [0] * (1 + cushion)  # the cushion goes out with the first frame
    # The far end plays a frame a period from the first: the 4th frame from 3 periods on, and the
    # 6th ends at 6, however early they were sent (reported at the send, "second say" was
    # `cushion` periods early: its words' timestamps with it).
    assert reported == {"second say": 3 * SLOTS, "end": 6 * SLOTS}, (sent, reported)


def test_a_mark_after_a_talkspurt_waits_for_the_far_end_to_play_its_cushion():
    pacer, _ = hand_pacer(cushion=2)
    pacer._apply(proto.Audio(1, frames(0, 3)))  # all three sent at once, played by 3 periods
    pacer.tick()
    pacer._apply(proto.Mark(1, "after"))
    assert played_marks(pacer) == []
    for _ in range(3 * SLOTS - 1):  # sub-ticks 1 to 3 periods less one
        pacer.tick()
    assert played_marks(pacer) == []
    pacer.tick()
    assert played_marks(pacer) == ["after"]


def tick_and_report(pacer: RtpPacer, subticks: int) -> list[tuple[int, str]]:
    """Tick; (sub-tick, mark id or "drained") of each playout report, at the sub-tick it went out."""
    got = []
    for _ in range(subticks):
        pacer.tick()
        for message in proto.Decoder().feed(bytes(pacer.outgoing)):
            if isinstance(message, proto.MarkPlayed | proto.Drained):
                got.append((pacer.subticks - 1, getattr(message, "mark_id", "drained")))
        pacer.outgoing.clear()
    return got


@pytest.mark.parametrize("cushion", [0, 2])
def test_the_end_of_a_talkspurt_is_reported_after_its_marks_once_the_far_end_played_it(cushion):
    """The daemon tells a say that ran dry by it: once a talkspurt, when the far end has played
    its last frame and has nothing more (not when that frame was sent)."""
    pacer, rtp = hand_pacer(cushion=cushion)
    pacer._apply(proto.Audio(1, frames(0, 3)))
    pacer._apply(proto.Mark(1, "end"))
    got = tick_and_report(pacer, 6 * SLOTS)
    assert len(rtp.sent) == 3
    # The far end plays a frame a period from when the first arrived (the cushion's go at once).
    played_out = rtp.sent[0][0] + 3 * SLOTS
    assert got == [(played_out, "end"), (played_out, "drained")]
    # Once: an idle stream reports nothing more; the next talkspurt's end is reported again.
    assert tick_and_report(pacer, 3 * SLOTS) == []
    pacer._apply(proto.Audio(1, frames(3, 1)))
    assert [what for _, what in tick_and_report(pacer, 3 * SLOTS)] == ["drained"]


def test_timestamp_runs_through_silence_between_talkspurts():
    pacer, rtp = hand_pacer()
    pacer._apply(proto.Audio(1, frames(0, 1)))
    for _ in range(10 * SLOTS + 2):  # 200 ms of silence after one frame, then 2 more sub-ticks
        pacer.tick()
    pacer._apply(proto.Audio(1, frames(1, 1)))
    pacer.tick()
    first, second = (parse_header(p) for _, p in rtp.sent)
    assert second["marker"] == 1
    assert second["sequence"] == (first["sequence"] + 1) & 0xFFFF
    assert second["timestamp"] - first["timestamp"] == (10 * SLOTS + 2) * 160 // SLOTS


def test_flush_drops_frames_and_marks():
    pacer, rtp = hand_pacer()
    pacer._apply(proto.Audio(1, frames(0, 5)))
    pacer._apply(proto.Mark(1, "dropped"))
    pacer.tick()
    pacer._apply(proto.Flush(1))
    for _ in range(3 * SLOTS):
        pacer.tick()
    assert len(rtp.sent) == 1
    assert played_marks(pacer) == []


# -- the real process ---------------------------------------------------------------------------


class Receiver:
    """The far end: a UDP socket on 127.0.0.1 that collects (arrival time, header, payload)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.packets: list[tuple[float, dict[str, int], bytes]] = []

    @property
    def address(self) -> tuple[str, int]:
        return self.sock.getsockname()

    def drain(self) -> int:
        """Collect what has arrived; returns how many packets there are in total."""
        while True:
            try:
                data = self.sock.recv(2048)
            except BlockingIOError:
                return len(self.packets)
            self.packets.append((time.monotonic(), parse_header(data), data[12:]))

    async def wait_for(self, count: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self.drain() < count:
            assert time.monotonic() < deadline, f"{len(self.packets)} of {count} packets arrived"
            await asyncio.sleep(0.005)

    def labels(self) -> list[int]:
        return [payload[0] for _, _, payload in self.packets]


@pytest.fixture
def rtp_socket():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    yield sock
    sock.close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.sock.close()


@pytest.fixture
async def pacer(rtp_socket):
    async with PacerProcess(rtp_socket, realtime_priority=10, cushion_frames=0) as p:
        yield p


async def open_transport(pacer: PacerProcess, receiver: Receiver) -> tuple[RtpTransport, list[tuple[str, int]]]:
    """A started transport whose marks are recorded with the packet count at that moment."""
    transport = RtpTransport(pacer, receiver.address, PT_ULAW)
    marks: list[tuple[str, int]] = []
    # Draining in the callback tells how many packets had reached the receiver when the mark came.
    transport.on_mark = lambda mark_id: marks.append((mark_id, receiver.drain()))
    await transport.start()
    return transport, marks


async def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def test_pacer_starts_and_reports_its_priority(pacer):
    assert pacer.running
    assert pacer.pid is not None
    # What it reports is what the kernel gave it (SCHED_FIFO where allowed: root, CAP_SYS_NICE).
    assert pacer.realtime == (os.sched_getscheduler(pacer.pid) == os.SCHED_FIFO)
    if pacer.realtime:
        assert os.sched_getparam(pacer.pid).sched_priority == 10


async def test_frames_are_paced_with_continuous_headers(pacer, receiver):
    transport, marks = await open_transport(pacer, receiver)
    assert transport.kind is TransportKind.RTP
    try:
        transport.send_audio(frames(0, 25))
        transport.mark("end")
        await receiver.wait_for(25)
        await wait_until(lambda: marks)
        headers = [h for _, h, _ in receiver.packets]
        assert receiver.labels() == list(range(25))
        assert all(h["payload_type"] == PT_ULAW and h["ssrc"] == headers[0]["ssrc"] for h in headers)
        assert [h["marker"] for h in headers] == [1] + [0] * 24
        assert [(h["sequence"] - headers[0]["sequence"]) & 0xFFFF for h in headers] == list(range(25))
        assert [(h["timestamp"] - headers[0]["timestamp"]) & 0xFFFFFFFF for h in headers] == [
            160 * i for i in range(25)
        ]
        # Paced, not burst: 24 periods are 480 ms (slack for a noisy machine).
        span = receiver.packets[-1][0] - receiver.packets[0][0]
        assert 0.35 < span < 2.0, span
        assert marks == [("end", 25)]

        # A second talkspurt after a silence: marker again, the clock ran through the silence.
        await asyncio.sleep(0.2)
        transport.send_audio(frames(100, 3))
        await receiver.wait_for(28)
        second = receiver.packets[25][1]
        assert second["marker"] == 1
        assert second["sequence"] == (headers[-1]["sequence"] + 1) & 0xFFFF
        gap = (second["timestamp"] - headers[-1]["timestamp"]) & 0xFFFFFFFF
        assert gap >= 160 + 0.2 * 8000 - 160  # at least the silence we slept (minus a frame of slack)
    finally:
        await transport.aclose()


async def test_marks_come_back_in_order_after_the_frames_before_them(pacer, receiver):
    transport, marks = await open_transport(pacer, receiver)
    try:
        transport.mark("first")  # nothing before it: fires at once
        await wait_until(lambda: marks)
        transport.send_audio(frames(0, 5))
        transport.mark("a")
        transport.send_audio(frames(5, 5))
        transport.mark("b")
        transport.mark("c")
        await wait_until(lambda: len(marks) == 4)
        assert [m for m, _ in marks] == ["first", "a", "b", "c"]
        assert marks[0][1] == 0
        assert marks[1][1] >= 5
        assert marks[2][1] == 10 and marks[3][1] == 10
    finally:
        await transport.aclose()


async def test_flush_drops_queued_frames_and_their_marks(pacer, receiver):
    transport, marks = await open_transport(pacer, receiver)
    try:
        transport.send_audio(frames(0, 50))  # labels 0..49
        transport.mark("never")
        await receiver.wait_for(5)
        transport.flush()
        flushed_at = receiver.drain()
        transport.send_audio(frames(200, 10))  # labels 200..209
        transport.mark("after")
        await wait_until(lambda: marks)
        await asyncio.sleep(0.1)
        receiver.drain()
        labels = receiver.labels()
        first_b = labels.index(200)
        assert all(label < 50 for label in labels[:first_b])
        assert labels[first_b:] == list(range(200, 210)), "a frame queued before the flush came after it"
        assert first_b - flushed_at <= 3, "the flush took effect late"
        # One stream, one clock: what follows the flush continues the sequence.
        sequences = [h["sequence"] for _, h, _ in receiver.packets]
        assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(sequences))
        assert [m for m, _ in marks] == ["after"]
    finally:
        await transport.aclose()


async def test_aclose_stops_the_packets(pacer, receiver):
    transport, _ = await open_transport(pacer, receiver)
    transport.send_audio(frames(0, 100))
    await receiver.wait_for(3)
    await transport.aclose()
    stopped_at = receiver.drain()
    await asyncio.sleep(0.2)
    assert receiver.drain() == stopped_at
    transport.send_audio(frames(0, 5))  # after close: ignored, not an error
    await transport.aclose()  # idempotent
    assert not transport.closed.done()


async def test_streams_are_independent(pacer, receiver):
    other = Receiver()
    try:
        one, _ = await open_transport(pacer, receiver)
        two, _ = await open_transport(pacer, other)
        one.send_audio(frames(0, 10))
        two.send_audio(frames(50, 10))
        two.flush()
        two.send_audio(frames(100, 3))
        await receiver.wait_for(10)
        await other.wait_for(3)
        assert receiver.labels() == list(range(10))
        assert other.labels()[-3:] == [100, 101, 102]
        ssrcs = {h["ssrc"] for _, h, _ in receiver.packets}, {h["ssrc"] for _, h, _ in other.packets}
        assert len(ssrcs[0]) == 1 and len(ssrcs[1]) == 1 and ssrcs[0] != ssrcs[1]
        await one.aclose()
        await two.aclose()
    finally:
        other.sock.close()


async def test_xoff_and_xon_follow_the_pacer_queue(rtp_socket, receiver):
    async with PacerProcess(rtp_socket, realtime_priority=0, xoff_frames=20, xon_frames=10) as pacer:
        transport, _ = await open_transport(pacer, receiver)
        transport.send_audio(frames(0, 25))
        await wait_until(lambda: not transport.writable.is_set())
        await wait_until(transport.writable.is_set)
        assert receiver.drain() >= 25 - 10 - 3  # played down to the XON level (a few in flight)
        await transport.aclose()


async def test_child_death_resolves_closed_and_the_next_start_restarts_it(pacer, receiver):
    transport, _ = await open_transport(pacer, receiver)
    transport.send_audio(frames(0, 100))
    await receiver.wait_for(2)
    os.kill(pacer.pid, signal.SIGKILL)
    reason = await asyncio.wait_for(transport.closed, 5.0)
    assert "exited" in reason
    assert not pacer.running
    transport.send_audio(frames(0, 5))  # the pacer is gone: ignored
    await transport.aclose()  # still fine

    again, _ = await open_transport(pacer, receiver)
    assert pacer.running and pacer.starts == 2
    before = receiver.drain()
    again.send_audio(frames(0, 3))
    await receiver.wait_for(before + 3)
    await again.aclose()


async def test_stopping_the_pacer_closes_open_transports(rtp_socket, receiver):
    async with PacerProcess(rtp_socket, realtime_priority=0) as pacer:
        transport, _ = await open_transport(pacer, receiver)
        transport.send_audio(frames(0, 100))
        await receiver.wait_for(2)
    assert transport.closed.done()
    stopped_at = receiver.drain()
    await asyncio.sleep(0.1)
    assert receiver.drain() == stopped_at
    with pytest.raises(TransportError):
        await RtpTransport(pacer, receiver.address, PT_ULAW).start()


async def test_start_refuses_a_host_name(pacer):
    with pytest.raises(TransportError, match="IP address"):
        await RtpTransport(pacer, ("localhost", 4000), PT_ULAW).start()


async def test_send_audio_wants_whole_frames(pacer, receiver):
    transport, _ = await open_transport(pacer, receiver)
    try:
        with pytest.raises(ValueError, match="whole"):
            transport.send_audio(b"\xff" * 100)
    finally:
        await transport.aclose()
