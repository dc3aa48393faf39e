"""Streaming text into a session (``/v1.0/speakings/{id}/stream``), judged on the recordings:
LLM-like tokens are heard as natural sentences, reset is a barge-in that reports what was heard,
timestamps match the recording, and a client's mistakes break nothing."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import aiohttp
import pytest
from harness.audio import FRAME_S, RATE, envelope_correlation, noise_floor_db, render_piper, window_dbfs
from harness.daemon import KEY_A, KEY_B
from harness.hearing import (
    assert_heard,
    assert_heard_text_within_a_word,
    assert_nothing_else,
    longest_quiet_inside_speech,
    where_speech_stops,
)
from harness.stream import StreamClient, tokens

pytestmark = pytest.mark.asyncio(loop_scope="session")

REPLY = (
    "Thanks for waiting. I found your booking for Dr. Smith on the 3rd floor. "
    "The appointment is at 2.30 in the afternoon, and you can reach the clinic at example.com."
)
AFTER = "Sure, let me check that for you."


async def says_of(api, speaking_id: str) -> list[dict]:
    reply = await api.request("GET", f"/speakings/{speaking_id}/says")
    assert reply.status == 200, reply
    return reply.body["result"]


def wall(stamp: str) -> float:
    return dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=dt.UTC).timestamp()


@pytest.mark.by_ear
@pytest.mark.one_transport
async def test_tokens_are_heard_as_natural_sentences(api, speakd, two_party_call):
    speaking_id = await api.start_session(two_party_call.channel_id, direction="out")
    async with StreamClient(speakd.base, speaking_id) as client:
        last_token_at = await tokens(client, REPLY)
        await client.send({"type": "finish"})
        played = await client.expect("played", timeout=60)
        await client.expect("_closed")
    assert client.close_code == 1000
    says = await says_of(api, speaking_id)
    # Sentence by sentence, never split inside "Dr. Smith", "2.30" or "example.com".
    assert [s["text"] for s in says] == [
        "Thanks for waiting.",
        "I found your booking for Dr. Smith on the 3rd floor.",
        "The appointment is at 2.30 in the afternoon, and you can reach the clinic at example.com.",
    ], says
    assert all(s["status"] == "played" for s in says)
    assert played["heard_text"] == " ".join(s["text"] for s in says)
    # Speech started while the model was still "writing".
    assert wall(says[0]["tm_play_start"]) < last_token_at, (says[0]["tm_play_start"], last_token_at)
    await asyncio.sleep(1.0)  # MixMonitor drops what it has not written when the call ends

    recording = await two_party_call.recording("alice")
    # The same text said in one say: the same speech, and no unnatural gap between sentences.
    whole = render_piper(REPLY)
    corr, lag = envelope_correlation(recording, whole)
    print(f"streamed vs one say: correlation {corr:.2f}")
    heard = recording[int(lag * FRAME_S * RATE) :]
    for say in says:
        assert_heard(recording, render_piper(say["text"]), f"alice: {say['text'][:30]}")
    gap = longest_quiet_inside_speech(heard[: int((len(whole) / RATE + 1.5) * RATE)])
    natural = longest_quiet_inside_speech(whole)
    assert gap < natural + 0.35, f"a {gap:.2f}s gap between sentences (one say's longest pause: {natural:.2f}s)"


# One sentence (no sentence end before its last word, no clause mark): one chunk, one say, so
# what was heard of it can be judged as test_played_positions.py judges a flushed say.
ONE_SENTENCE = (
    "We are sorry to tell you that the flight you asked about this morning has been moved to the "
    "later slot at the other terminal because the crew arrived late from the previous city"
)
# Piper pauses at commas: each word before one ends where the recording goes quiet, and stays
# quiet for a pause: 185-290 ms after these words, while a stop's closure ('grapes') or a dip inside
# a word's tail (between the 'n' and 'z' of 'melons') is quiet for 5-50 ms (taken for the pause, such
# a dip read 'melons,' 75 ms early: the rendering's noise decides where, and the cache kept it).
QUIET_ABOVE_FLOOR_DB = 6.0
PAUSE_S = 0.1
LISTED = "Apples, oranges, bananas, grapes, melons, and cherries are on the list today."


@pytest.mark.by_ear
async def test_reset_mid_sentence_is_a_barge_in_that_reports_what_was_heard(api, speakd, two_party_call):
    speaking_id = await api.start_session(two_party_call.channel_id, direction="out")
    async with StreamClient(speakd.base, speaking_id) as client:
        await client.send({"type": "text", "text": ONE_SENTENCE})
        await client.send({"type": "flush", "nonce": 1})
        assert (await client.expect("flush_complete"))["nonce"] == 1
        deadline = time.monotonic() + 20
        while not any(s["status"] == "playing" for s in await says_of(api, speaking_id)):
            assert time.monotonic() < deadline, "the streamed text never started playing"
            await asyncio.sleep(0.05)
        await asyncio.sleep(2.6)
        await client.send({"type": "text", "text": "This part is still being written and is never"})
        await client.send({"type": "reset", "nonce": "r1"})
        reset = await client.expect("reset_complete")
        assert reset["nonce"] == "r1"
        await asyncio.sleep(1.0)
        await client.send({"type": "text", "text": AFTER})
        await client.send({"type": "finish"})
        played = await client.expect("played", timeout=40)
    says = await says_of(api, speaking_id)
    assert [(s["text"], s["status"]) for s in says] == [(ONE_SENTENCE, "interrupted"), (AFTER, "played")], says
    assert played["heard_text"] == AFTER  # since the reset: a stream's turn, not all it ever said
    cut = says[0]
    assert reset["heard_text"] == cut["heard_text"]
    await asyncio.sleep(1.0)

    recording = await two_party_call.recording("alice")
    after_start = assert_heard(recording, render_piper(AFTER), "alice (after the reset)") * FRAME_S
    start, stopped_at = where_speech_stops(
        recording[: int((after_start - 0.05) * RATE)], ONE_SENTENCE, cut["played_ms"]
    )
    assert_heard_text_within_a_word(ONE_SENTENCE, reset["heard_text"], len(reset["heard_text"]), stopped_at)
    # Nothing after the reset point but the new text (the unfinished sentence was never said).
    after_end = after_start + len(render_piper(AFTER)) / RATE
    assert_nothing_else(recording, [(start, start + stopped_at), (after_start, after_end)], "reset")


@pytest.mark.by_ear
async def test_timestamps_match_the_recording(api, speakd, two_party_call):
    speaking_id = await api.start_session(two_party_call.channel_id, direction="out")
    async with StreamClient(speakd.base, speaking_id, timestamps=True) as client:
        await client.send({"type": "text", "text": LISTED})
        await client.send({"type": "finish"})
        await client.expect("played", timeout=40)
    stamps = [m for m in client.received if m["type"] == "timestamps"]
    assert " ".join(m["text"] for m in stamps) == LISTED
    assert all(m["estimated"] is False for m in stamps)  # Piper's own alignment
    words = [w for m in stamps for w in m["words"]]
    assert [w["word"] for w in words] == LISTED.split()
    await asyncio.sleep(1.0)
    recording = await two_party_call.recording("alice")
    origin = await two_party_call.recording_started_at("alice")
    # Where the recording goes quiet after each word before a comma (Piper pauses there). Quiet:
    # near the carrier, not merely below speech level: a word's last sound is often a fricative
    # the phone's 4 kHz band leaves faint (-45 dBFS), and it is still the word.
    step = RATE // 200  # 5 ms: the 20 ms grid would add up to 20 ms of error by itself
    levels = window_dbfs(recording, 2 * step)[::step]
    quiet = levels <= noise_floor_db(recording) + QUIET_ABOVE_FLOOR_DB
    pause = int(PAUSE_S * 200)
    errors = {}
    for word in words:
        if not word["word"].endswith(","):
            continue
        reported = wall(word["start"]) + word["duration_ms"] / 1000 - origin  # into the recording
        near = range(max(int((reported - 0.5) * 200), 1), min(int((reported + 0.5) * 200), len(quiet)))
        onsets = [i / 200 for i in near if quiet[i] and not quiet[i - 1] and quiet[i : i + pause].all()]
        assert onsets, f"no pause in the recording near {word['word']!r} ({reported:.2f}s)"
        measured = min(onsets, key=lambda t: abs(t - reported))
        errors[word["word"]] = round((reported - measured) * 1000)
    print("word end - pause onset in the recording (ms):", errors)
    assert len(errors) >= 4 and all(abs(e) <= 60 for e in errors.values()), errors


async def test_a_malformed_message_is_an_error_and_the_session_goes_on(api, speakd, two_party_call):
    speaking_id = await api.start_session(two_party_call.channel_id, direction="out")
    for bad in ("not json", '{"type": "shout"}', '{"type": "text", "text": 5}', '{"type": "flush", "nonce": [1]}'):
        async with StreamClient(speakd.base, speaking_id) as client:
            await client.send(bad)
            error = await client.expect("error")
            assert error["message"], error
            await client.expect("_closed")
    # One stream at a time; a second is a 409 before any upgrade, as JSON.
    async with StreamClient(speakd.base, speaking_id), aiohttp.ClientSession() as http:
        async with http.get(f"{speakd.base}/v1.0/speakings/{speaking_id}/stream?accesskey={KEY_A}") as resp:
            assert resp.status == 409
            assert (await resp.json())["error"]["reason"] == "conflict"
        async with http.get(f"{speakd.base}/v1.0/speakings/{speaking_id}/stream?accesskey={KEY_B}") as resp:
            assert resp.status == 404  # another customer's session
        async with http.get(f"{speakd.base}/v1.0/speakings/{speaking_id}/stream?accesskey={KEY_A}&x=1") as r:
            assert r.status == 400
    # The session is untouched: REST say still plays.
    reply = await api.say(speaking_id, "Still here.")
    assert reply.status == 200
    deadline = time.monotonic() + 20
    while (await says_of(api, speaking_id))[-1]["status"] != "played":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert (await api.get(speaking_id)).body["status"] == "active"


async def test_stopping_the_session_ends_the_stream(api, speakd, two_party_call):
    speaking_id = await api.start_session(two_party_call.channel_id, direction="out")
    async with StreamClient(speakd.base, speaking_id) as client:
        await client.send({"type": "text", "text": "Hello there. "})
        assert (await api.stop(speaking_id)).status == 200
        error = await client.expect("error")
        assert error["reason"] == "stopped"
        await client.expect("_closed")
