"""Pronunciation lexicons: the rules of matching (whole words, any case, longest first, one
pass, never inside an SSML tag), the map from what the provider read back to what the
application sent, the entries a PUT may hold, and the store keeping each customer's lexicons
on both engines (another customer's are not found)."""

from __future__ import annotations

import dataclasses

import pytest
import test_service

from speakd.errors import InvalidRequest, NotFound
from speakd.sessions.lexicons import MAX_ENTRIES, Lexicon, Lexicons, parse_entries
from speakd.sessions.requests import SayRequest
from speakd.sessions.says import SayItem

LEXICON = Lexicon("names", (("Nguyen", "Win"), ("New York", "Noo Yawk"), ("AI", "A.I."), ("York", "Yark")))


def test_whole_words_in_any_case_are_replaced_as_written():
    rewrite = LEXICON.apply("Mr NGUYEN and mr nguyen, not Nguyens or xNguyen; Nguyen.")
    assert rewrite.text == "Mr Win and mr Win, not Nguyens or xNguyen; Win."


def test_the_longest_entry_wins_and_a_replacement_is_not_replaced_again():
    assert LEXICON.apply("From new\n york to York.").text == "From Noo Yawk to Yark."
    chained = Lexicon("chain", (("alpha", "beta"), ("beta", "gamma")))
    assert chained.apply("alpha beta").text == "beta gamma"


def test_ssml_tags_are_left_alone_and_replacements_escaped():
    lexicon = Lexicon("ssml", (("Nguyen", "Win & co"), ("speak", "talk")))
    rewrite = lexicon.apply('<speak>Nguyen <say-as interpret-as="Nguyen">speak</say-as></speak>', "ssml")
    assert rewrite.text == '<speak>Win &amp; co <say-as interpret-as="Nguyen">talk</say-as></speak>'
    # As text, the same characters are only text.
    assert lexicon.apply("<speak>", "text").text == "<talk>"


@pytest.mark.parametrize(
    ("spoken", "original"),
    [
        ("Mr ", "Mr "),  # before any replacement: the same
        ("Mr W", "Mr Nguyen"),  # inside one: to the end of the word it replaced
        ("Mr Win", "Mr Nguyen"),
        ("Mr Win from N", "Mr Nguyen from New York"),
        ("Mr Win from Noo Yawk", "Mr Nguyen from New York"),
        ("Mr Win from Noo Yawk, fine", "Mr Nguyen from New York, fine"),  # after: shifted back
    ],
)
def test_marks_in_the_spoken_text_map_back_to_the_words_sent(spoken, original):
    text = "Mr Nguyen from New York, fine"
    rewrite = LEXICON.apply(text)
    assert rewrite.text == "Mr Win from Noo Yawk, fine"
    assert text[: rewrite.original_chars(len(spoken))] == original
    assert rewrite.original_chars(len(rewrite.text) + 5) == len(text)  # never past the text


def test_a_says_marks_and_heard_text_name_the_words_sent():
    item = SayItem("s", "Call Nguyen today")
    item.rewrite = LEXICON.apply(item.text)
    assert item.spoken_text == "Call Win today"
    for chars, ms in ((4, 200), (8, 500), (14, 800)):  # word ends in "Call Win today"
        item.add_word_mark(ms, chars)
    assert item.word_marks == [(200, 4), (500, 11), (800, 17)]
    assert item.chars_heard_by(600) == 11 and item.text[:11] == "Call Nguyen"
    assert [word for word, _, _ in item.word_times()] == ["Call", "Nguyen", "today"]


def test_entries_are_checked_with_a_message_naming_what_to_fix():
    assert parse_entries({"entries": [{"from": " New   York ", "to": "Noo Yawk"}]}) == [
        {"from": "New York", "to": "Noo Yawk"}
    ]
    bad = [
        ({}, "'entries' must be a list"),
        ({"entries": []}, "'entries' must be a list of 1"),
        ({"entries": [{"from": "a", "to": "b"}] * (MAX_ENTRIES + 1)}, f"1 to {MAX_ENTRIES}"),
        ({"entries": ["x"]}, "entries[0] must be an object"),
        ({"entries": [{"from": "a"}]}, "entries[0] needs 'from' and 'to'"),
        ({"entries": [{"from": "a", "to": "b", "x": 1}]}, "entries[0] has unknown field(s) x"),
        ({"entries": [{"from": "...", "to": "b"}]}, "entries[0].from must be a word"),
        ({"entries": [{"from": "a" * 101, "to": "b"}]}, "entries[0].from must be a word"),
        ({"entries": [{"from": "a", "to": " "}]}, "entries[0].to must be 1-200"),
        ({"entries": [{"from": "a\x00", "to": "b"}]}, "no control characters"),
        ({"entries": [{"from": "Nguyen", "to": "b"}, {"from": "NGUYEN", "to": "c"}]}, "is entries[0].from again"),
        ({"entries": [], "other": 1}, "unknown field(s) other"),
    ]
    for body, message in bad:
        with pytest.raises(InvalidRequest) as refused:
            parse_entries(body)
        assert message in refused.value.message, (body, refused.value.message)


async def test_each_customer_keeps_its_own_lexicons_in_the_store(engine):
    async with engine.store() as store:
        book = Lexicons(store)
        made, new = await book.put("c1", "names", [{"from": "Nguyen", "to": "Win"}])
        assert new and made["name"] == "names" and made["entries"] == [{"from": "Nguyen", "to": "Win"}]
        again, new = await book.put("c1", "names", [{"from": "Nguyen", "to": "Noo-yen"}])
        assert not new and again["tm_create"] == made["tm_create"] and again["tm_update"] > made["tm_update"]
        await book.put("c1", "brands", [{"from": "speakd", "to": "speak dee"}])
        assert [lx["name"] for lx in await book.list("c1")] == ["brands", "names"]
        # Another customer's of the same name: not found, not listed, not deletable, not usable.
        assert await book.list("c2") == []
        with pytest.raises(NotFound):
            await book.get("c2", "names")
        with pytest.raises(NotFound):
            await book.delete("c2", "names")
        with pytest.raises(InvalidRequest, match="names lexicon 'names', and you have none"):
            await book.named("c2", "names", "'lexicon'")
        assert (await book.named("c1", "names", "'lexicon'")).apply("Nguyen").text == "Noo-yen"
    async with engine.store() as store:  # committed
        book = Lexicons(store)
        assert (await book.get("c1", "names"))["entries"] == [{"from": "Nguyen", "to": "Noo-yen"}]
        await book.delete("c1", "names")
        with pytest.raises(NotFound):
            await book.get("c1", "names")
        assert [lx["name"] for lx in await book.list("c1")] == ["brands"]


async def test_a_lexicon_name_is_checked(engine):
    async with engine.store() as store:
        with pytest.raises(InvalidRequest, match="1-64 letters"):
            await Lexicons(store).put("c1", "-bad name", [{"from": "a", "to": "b"}])


service_env = test_service.env  # test_service's fixture (a service over a fake ARI), by this name here


async def test_a_session_and_its_says_name_lexicons_of_their_customer(service_env):
    _ari, service = service_env
    with pytest.raises(InvalidRequest, match="'lexicon' names lexicon 'names', and you have none"):
        await service.create("c1", dataclasses.replace(test_service.request(), lexicon="names"))
    await service.lexicons.put("c1", "names", [{"from": "Nguyen", "to": "Win"}])
    await service.lexicons.put("c1", "brands", [{"from": "speakd", "to": "speak dee"}])
    with pytest.raises(InvalidRequest, match="names lexicon 'names'"):  # c1's is not c2's
        await service.create("c2", dataclasses.replace(test_service.request("call-2"), lexicon="names"))
    record = await service.create("c1", dataclasses.replace(test_service.request(), lexicon="names"))
    _, by_session = await service.say("c1", record.id, SayRequest("Ask Nguyen about speakd"))
    _, by_say = await service.say("c1", record.id, SayRequest("Ask Nguyen about speakd", lexicon="brands"))
    _, by_none = await service.say("c1", record.id, SayRequest("Ask Nguyen about speakd", lexicon=""))
    assert (by_session.lexicon, by_session.spoken_text) == ("names", "Ask Win about speakd")
    assert (by_say.lexicon, by_say.spoken_text) == ("brands", "Ask Nguyen about speak dee")
    assert (by_none.lexicon, by_none.spoken_text) == ("", "Ask Nguyen about speakd")
    assert [s["lexicon"] for s in await service.says("c1", record.id)] == ["names", "brands", ""]
    # Grown past the bound by its replacements: refused, naming the lexicon; nothing queued.
    await service.lexicons.put("c1", "long", [{"from": "a", "to": "b" * 200}])
    with pytest.raises(InvalidRequest, match="lexicon 'long' makes this say's text 50249 characters"):
        await service.say("c1", record.id, SayRequest(" ".join(["a"] * 250), lexicon="long"))
    assert len(await service.says("c1", record.id)) == 3
    # The session's lexicon deleted: its says are refused, naming it, until another is named.
    await service.lexicons.delete("c1", "names")
    with pytest.raises(InvalidRequest, match="the session's 'lexicon' names lexicon 'names'"):
        await service.say("c1", record.id, SayRequest("Hello"))
    _, item = await service.say("c1", record.id, SayRequest("Hello Nguyen", lexicon=""))
    assert item.spoken_text == "Hello Nguyen"
