"""Must-play says and pronunciation lexicons, judged on what the party recorded.

A must-play say (``interruptible: false``) survives a flush and a ``stop: all`` and is heard
whole, the says queued after it are not heard, and the next say plays after it; a hangup still
ends it at once. A lexicon entry changes what is heard (the recording matches a rendering of the
replacement, not of the text sent), while the say reports what was heard in the words sent; one
customer's lexicons are invisible to another.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest_helpers import says_of, wait_statuses
from harness.audio import FRAME, FRAME_S, RATE, envelope_correlation, render_piper
from harness.daemon import CUSTOMER_A, KEY_A, KEY_B
from harness.events import WsEvents
from harness.hearing import (
    LONG,
    assert_heard,
    assert_heard_text_within_a_word,
    assert_nothing_else,
    judge_intact,
    where_speech_stops,
)
from harness.stream import StreamClient

pytestmark = pytest.mark.asyncio(loop_scope="session")

SECOND = "And this is the second thing I wanted to say."
AFTER = "Thank you for waiting."
# "ASAP" is read as one short word; its replacement takes about a second longer.
SENT = "Please call the office back ASAP, thank you."
READ = "Please call the office back as soon as you possibly can, thank you."
# Streamed: one sentence (the stream's chunker may send a first clause ahead of the rest).
STREAMED = "Tell Nguyen to call back ASAP."
STREAMED_READ = "Tell Win to call back as soon as you possibly can."
ENTRIES = [{"from": "asap", "to": "as soon as you possibly can"}, {"from": "Nguyen", "to": "Win"}]


async def say_id_of(api, speaking_id: str, text: str, **fields) -> str:
    reply = await api.say(speaking_id, text, **fields)
    assert reply.status == 200, reply
    return reply.body["say_id"]


def span(recording, text: str, who: str) -> tuple[float, float]:
    reference = render_piper(text)
    start = assert_heard(recording, reference, who) * FRAME_S
    return start, start + len(reference) / RATE


# -- must-play ------------------------------------------------------------------------------------


@pytest.mark.by_ear
@pytest.mark.one_transport
async def test_a_must_play_say_survives_a_flush_and_a_stop_all_and_is_heard_whole(api, speakd, two_party_call):
    async with WsEvents(speakd.base, KEY_A) as events:
        assert (await events.subscribe([f"customer_id:{CUSTOMER_A}:speaking:*"]))["type"] == "subscribed"
        await _must_play_survives(api, events, two_party_call)


async def _must_play_survives(api, events, two_party_call):
    speaking_id = await api.start_session(two_party_call.channel_id, direction="out")
    notice = await say_id_of(api, speaking_id, LONG, interruptible=False)
    queued = await say_id_of(api, speaking_id, SECOND)
    await wait_statuses(api, speaking_id, {notice: "playing"})
    await asyncio.sleep(1.5)
    asked = time.monotonic()
    flushed = await api.flush(speaking_id)
    assert time.monotonic() - asked < 0.5, "the flush answers at once, not when the notice ends"
    assert flushed.status == 200 and flushed.body["protected_says"] == [notice], flushed
    await asyncio.sleep(1.0)
    dropped = await say_id_of(api, speaking_id, SECOND)  # queued after the notice, then cut by stop: all
    after = await say_id_of(api, speaking_id, AFTER, stop="all")
    says = await wait_statuses(api, speaking_id, {notice: "played", after: "played"})
    assert says[notice]["interruptible"] is False and says[notice]["heard_text"] == LONG
    for cut in (queued, dropped):
        assert says[cut]["status"] == "interrupted" and says[cut]["heard_chars"] == 0, says[cut]
        assert says[cut]["interruptible"] is True
    assert says[notice]["tm_play_end"] <= says[after]["tm_play_start"]
    # Its events say it was protected; only the cut says were interrupted.
    await events.wait_for(
        lambda _: ("speaking_say_finished", after) in events.sequence(speaking_id), 5.0, "the last say's end"
    )  # (events come in order: the notice's are in by then)
    of_notice = [e for e in events.of(speaking_id) if e["data"].get("say_id") == notice]
    assert [e["event_type"] for e in of_notice] == ["speaking_say_started", "speaking_say_finished"], of_notice
    assert all(e["data"]["interruptible"] is False for e in of_notice)
    interrupted = {e["data"]["say_id"] for e in events.of(speaking_id) if e["event_type"] == "speaking_say_interrupted"}
    assert interrupted == {queued, dropped}
    await asyncio.sleep(1.0)

    recording = await two_party_call.recording("alice")
    intact = judge_intact(recording, render_piper(LONG), "alice (the must-play say)")
    print(intact.summary())
    assert intact.problems() == [], intact.summary()
    notice_span = (intact.start_s, intact.start_s + len(render_piper(LONG)) / RATE)
    after_span = span(recording, AFTER, "alice (the say after it)")
    assert after_span[0] >= notice_span[1] - 0.1, f"the next say plays after it: {notice_span} then {after_span}"
    # Nothing of the says that were cut: only the notice and the say after it.
    assert_nothing_else(recording, [notice_span, after_span], "flush and stop: all over a must-play say")


@pytest.mark.by_ear
@pytest.mark.one_transport
async def test_a_hangup_ends_a_must_play_say_at_once(api, ari, two_party_call):
    speaking_id = await api.start_session(two_party_call.channel_id, direction="out")
    notice = await say_id_of(api, speaking_id, LONG, interruptible=False)
    await wait_statuses(api, speaking_id, {notice: "playing"})
    await asyncio.sleep(1.5)
    hung_up = time.monotonic()
    await ari.delete(f"/channels/{two_party_call.channel_id}")
    await api.wait_status(speaking_id, "stopped", timeout=1.0)
    assert time.monotonic() - hung_up < 1.0
    (say,) = (await says_of(api, speaking_id)).values()
    assert say["status"] == "interrupted" and 0 < say["heard_chars"] < len(LONG), say
    assert LONG.startswith(say["heard_text"])


async def test_a_streams_reset_does_not_cut_a_must_play_say(api, speakd, two_party_call):
    speaking_id = await api.start_session(two_party_call.channel_id, direction="out")
    notice = await say_id_of(api, speaking_id, SECOND, interruptible=False)
    async with StreamClient(speakd.base, speaking_id) as client:
        await client.send({"type": "text", "text": "This sentence is streamed after the notice. "})
        await client.send({"type": "flush", "nonce": 1})
        await client.expect("flush_complete")
        await client.send({"type": "reset", "nonce": 2})
        reset = await client.expect("reset_complete")
    assert reset["protected_says"] == [notice] and reset["heard_text"] == "", reset
    says = await wait_statuses(api, speaking_id, {notice: "played"})
    assert says[notice]["heard_text"] == SECOND
    assert [s["status"] for s in says.values() if s["say_id"] != notice] == ["interrupted"]


async def test_stop_and_delete_end_a_must_play_say(api, two_party_call):
    speaking_id = await api.start_session(two_party_call.channel_id, direction="out")
    notice = await say_id_of(api, speaking_id, LONG, interruptible=False)
    await wait_statuses(api, speaking_id, {notice: "playing"})
    asked = time.monotonic()
    assert (await api.delete(speaking_id)).status == 200
    assert time.monotonic() - asked < 1.0
    (say,) = (await says_of(api, speaking_id)).values()
    assert say["status"] == "interrupted" and say["heard_chars"] < len(LONG), say


# -- lexicons -------------------------------------------------------------------------------------


@pytest.mark.by_ear
@pytest.mark.one_transport
async def test_a_lexicon_changes_what_is_heard_and_the_say_names_the_words_sent(api, speakd, two_party_call):
    put = await api.request("PUT", "/lexicons/office", json={"entries": ENTRIES})
    assert put.status in (200, 201), put
    speaking_id = await api.start_session(two_party_call.channel_id, direction="out", lexicon="office")
    say_id = await say_id_of(api, speaking_id, SENT)
    says = await wait_statuses(api, speaking_id, {say_id: "played"})
    assert says[say_id]["text"] == says[say_id]["heard_text"] == SENT
    assert says[say_id]["lexicon"] == "office"
    # Streamed text goes through the session's lexicon too; its timestamps name the words sent.
    async with StreamClient(speakd.base, speaking_id, timestamps=True) as client:
        await client.send({"type": "text", "text": STREAMED})
        await client.send({"type": "finish"})
        await client.expect("played", timeout=40)
    stamps = [m for m in client.received if m["type"] == "timestamps"]
    assert [w["word"] for m in stamps for w in m["words"]] == STREAMED.split()
    await asyncio.sleep(1.0)

    recording = await two_party_call.recording("alice")
    rest = recording
    for which, sent_text, read_text in (("the say", SENT, READ), ("the stream", STREAMED, STREAMED_READ)):
        read, sent = render_piper(read_text), render_piper(sent_text)
        assert len(read) - len(sent) > 0.5 * RATE, "the replacement must be heard to be longer"
        heard = judge_intact(rest, read, f"alice ({which})")
        here = rest[heard.lag_frames * FRAME :]
        as_sent, _ = envelope_correlation(here, sent, max_lag_s=0.2)  # the text sent, read as written
        print(heard.summary(), f"; the text as sent: corr {as_sent:.2f}")
        assert heard.corr > 0.85 and heard.corr > as_sent + 0.1, heard.summary()
        assert 0.85 * heard.reference_speech_s <= heard.speech_s <= 1.15 * heard.reference_speech_s, heard.summary()
        rest = here[len(read) - RATE // 2 :]


@pytest.mark.by_ear
@pytest.mark.one_transport
async def test_heard_text_after_a_cut_names_the_words_sent(api, two_party_call):
    put = await api.request("PUT", "/lexicons/office", json={"entries": ENTRIES})
    assert put.status in (200, 201), put
    # One sentence: heard_text is judged against renderings of its beginnings (a sentence cut short
    # is read like the whole one only up to its end).
    text = (
        "Doctor Nguyen asks you to hold for a moment while the office looks up the opening hours, "
        "the traffic and the weather for the rest of the week ahead of us."
    )
    speaking_id = await api.start_session(two_party_call.channel_id, direction="out")
    say_id = await say_id_of(api, speaking_id, text, lexicon="office")
    await wait_statuses(api, speaking_id, {say_id: "playing"})
    # Cut inside "office" (about 2.44-2.71 s into the say), away from a word's end, where which
    # side of the cut the word falls is a matter of milliseconds.
    await asyncio.sleep(2.55)
    assert (await api.flush(speaking_id)).status == 200
    says = await wait_statuses(api, speaking_id, {say_id: "interrupted"})
    heard = says[say_id]["heard_text"]
    assert 0 < len(heard) < len(text) and text.startswith(heard), heard
    assert heard.startswith("Doctor Nguyen asks") and "Win" not in heard, heard  # 2.55 s in: past "Nguyen"
    await asyncio.sleep(1.0)
    recording = await two_party_call.recording("alice")
    # The replaced text was heard up to the cut, and heard_text (in the words sent) ends within a
    # word of where the speech stopped, measured on a rendering of the replaced text.
    read = text.replace("Nguyen", "Win")
    _, stopped_at = where_speech_stops(recording, read, says[say_id]["played_ms"])
    heard_read = heard.replace("Nguyen", "Win")
    assert_heard_text_within_a_word(read, heard_read, len(heard_read), stopped_at)


async def test_one_customers_lexicons_are_invisible_to_another(api, two_party_call):
    mine = await api.request("PUT", "/lexicons/private-names", json={"entries": ENTRIES})
    assert mine.status in (200, 201) and mine.body["entries"] == ENTRIES, mine
    again = await api.request("PUT", "/lexicons/private-names", json={"entries": ENTRIES[:1]})
    assert again.status == 200 and again.body["entries"] == ENTRIES[:1], again
    other = api.as_customer(KEY_B)
    for method in ("GET", "DELETE"):
        reply = await other.request(method, "/lexicons/private-names")
        assert reply.status == 404 and reply.body["error"]["message"], reply
    listed = await other.request("GET", "/lexicons")
    assert listed.status == 200 and "private-names" not in [lx["name"] for lx in listed.body["result"]]
    assert "private-names" in [lx["name"] for lx in (await api.request("GET", "/lexicons")).body["result"]]
    # Naming it is a 400 that names it: the other customer has none of that name.
    created = await other.create(two_party_call.channel_id, lexicon="private-names")
    assert created.status == 400 and "private-names" in created.body["error"]["message"], created
    speaking_id = await api.start_session(two_party_call.channel_id, direction="out")
    unknown = await api.say(speaking_id, "Hello.", lexicon="no-such-lexicon")
    assert unknown.status == 400 and "no-such-lexicon" in unknown.body["error"]["message"], unknown
    bad = await api.request("PUT", "/lexicons/x", json={"entries": [{"from": "a", "to": ""}]})
    assert bad.status == 400 and "entries[0].to" in bad.body["error"]["message"], bad
    deleted = await api.request("DELETE", "/lexicons/private-names")
    assert deleted.status == 200 and deleted.body["name"] == "private-names"
    assert (await api.request("GET", "/lexicons/private-names")).status == 404
