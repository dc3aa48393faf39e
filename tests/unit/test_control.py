"""chan_websocket's control protocol, pure: parsing Asterisk's text messages, building marks,
and splitting audio into messages Asterisk accepts."""

from __future__ import annotations

import pytest

from speakd.media import control
from speakd.media.control import MAX_MESSAGE_BYTES, ControlMessage, mark_media, parse, split_audio

FRAME = 160


# -- parse --------------------------------------------------------------------------------------


def test_parse_a_mark_processed():
    assert parse("MEDIA_MARK_PROCESSED correlation_id:m17") == ControlMessage(
        control.MEDIA_MARK_PROCESSED, {"correlation_id": "m17"}
    )


def test_parse_status_with_many_parameters():
    message = parse("STATUS queue_length:179 xon_level:800 xoff_level:900 queue_full:false bulk_media:false")
    assert message.command == "STATUS"
    assert message.params == {
        "queue_length": "179",
        "xon_level": "800",
        "xoff_level": "900",
        "queue_full": "false",
        "bulk_media": "false",
    }


@pytest.mark.parametrize("command", [control.MEDIA_XOFF, control.MEDIA_XON])
def test_parse_a_bare_command(command):
    assert parse(command) == ControlMessage(command, {})


def test_parse_media_start_keeps_values_with_colons():
    message = parse("MEDIA_START connection_id:abc channel:WebSocket/INCOMING-0000 format:ulaw optimal_frame_size:160")
    assert message.command == control.MEDIA_START
    assert message.params["channel"] == "WebSocket/INCOMING-0000"
    assert message.params["optimal_frame_size"] == "160"
    assert parse("X url:ws://host:8088/media").params == {"url": "ws://host:8088/media"}  # split on the first colon


def test_parse_tolerates_whitespace_and_stray_tokens():
    message = parse("  MEDIA_MARK_PROCESSED   correlation_id:m1  junk  \r\n")
    assert message == ControlMessage(control.MEDIA_MARK_PROCESSED, {"correlation_id": "m1"})
    assert parse("STATUS empty:").params == {"empty": ""}


def test_parse_unknown_and_empty_messages():
    assert parse("SOMETHING_NEW a:1") == ControlMessage("SOMETHING_NEW", {"a": "1"})  # the caller ignores it
    assert parse("") == ControlMessage("", {})
    assert parse("   ") == ControlMessage("", {})


def test_a_mark_round_trips_through_what_asterisk_echoes():
    sent = mark_media("m42")
    assert sent == "MARK_MEDIA correlation_id:m42"
    # Asterisk answers with the same correlation id once playout reaches the mark.
    echoed = parse(sent.replace("MARK_MEDIA", control.MEDIA_MARK_PROCESSED, 1))
    assert echoed.params["correlation_id"] == "m42"


# -- mark_media ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", " ", "m 1", "m\t1", "m1\n"])
def test_a_mark_id_must_be_one_non_empty_token(bad):
    with pytest.raises(ValueError, match="mark id"):
        mark_media(bad)


# -- split_audio --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frames",
    [0, 1, 2, MAX_MESSAGE_BYTES // FRAME - 1, MAX_MESSAGE_BYTES // FRAME, MAX_MESSAGE_BYTES // FRAME + 1, 1000, 2047],
)
def test_split_audio_never_exceeds_the_limit_and_keeps_whole_frames(frames):
    data = bytes(i % 251 for i in range(frames * FRAME))
    messages = list(split_audio(data, FRAME))
    assert b"".join(messages) == data  # nothing lost, nothing reordered
    assert all(0 < len(m) <= MAX_MESSAGE_BYTES for m in messages)
    assert all(len(m) % FRAME == 0 for m in messages)
    # As few messages as the limit allows.
    per_message = MAX_MESSAGE_BYTES // FRAME
    assert len(messages) == -(-frames // per_message)


@pytest.mark.parametrize(("frame_bytes", "limit"), [(320, MAX_MESSAGE_BYTES), (160, 1000), (160, 160), (480, 1000)])
def test_split_audio_with_other_frame_sizes_and_limits(frame_bytes, limit):
    data = b"\x01" * (frame_bytes * (limit // frame_bytes * 2 + 3))
    messages = list(split_audio(data, frame_bytes, limit))
    assert b"".join(messages) == data
    assert all(len(m) <= limit and len(m) % frame_bytes == 0 for m in messages)
    assert max(len(m) for m in messages) == limit - limit % frame_bytes


def test_split_audio_of_nothing_sends_nothing():
    assert list(split_audio(b"", FRAME)) == []
