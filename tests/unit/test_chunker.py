# ruff: noqa: RUF001 - the cases are other scripts' punctuation
"""The stream chunker: where streamed text is cut into says (speakd/sessions/chunker.py).

Most cases feed one character at a time (the worst token split) with no timer, so a boundary
that appears is one the chunker chose on the text alone. Thresholds are set to 0 where a case
is about *where* a cut may fall, so a wrong cut is not hidden by a minimum length.
"""

from __future__ import annotations

import random
import re

import pytest

from speakd.sessions.chunker import TextChunker

EAGER = {"min_chars": 0, "first_min_chars": 0}


def by_char(chunker: TextChunker, text: str, now: float = 0.0) -> list[str]:
    out: list[str] = []
    for c in text:
        out += chunker.feed(c, now)
    return out


def chunks_of(text: str, **options) -> list[str]:
    """Chunks of ``text`` fed a character at a time, then flushed."""
    chunker = TextChunker(**options)
    return by_char(chunker, text) + chunker.flush()


# -- sentence ends ---------------------------------------------------------------------------------


def test_a_sentence_is_released_once_text_follows_its_end():
    chunker = TextChunker(**EAGER)
    assert by_char(chunker, "Hello there.") == []
    assert chunker.feed(" ", 0.0) == []  # still undecided: "etc. and" is not an end
    assert chunker.feed("H", 0.0) == ["Hello there."]
    assert chunker.buffered == " H"


def test_a_final_period_waits_because_the_next_token_may_continue_the_word():
    chunker = TextChunker(**EAGER)
    assert by_char(chunker, "Go to example.") == []
    assert chunker.feed("com now. ", 0.0) == []
    assert chunker.feed("It", 0.0) == ["Go to example.com now."]


@pytest.mark.parametrize(
    "ending",
    ["?!", "!!!", "...", "…", '."', ".'", ".)", '?")', ".”", "!»"],
)
def test_runs_of_end_marks_and_closing_quotes_stay_with_their_sentence(ending):
    text = f"He asked why{ending} Then he left."
    assert chunks_of(text, **EAGER) == [f"He asked why{ending}", "Then he left."]


@pytest.mark.parametrize(
    "unit",
    [
        "example.com",
        "www.example.co.uk",
        "https://a.b/c?d=e.f",
        "https://example.com/path/file.html?x=1.5&y=2!",
        "jane.doe@example.org",
        "3.14",
        "1,000.50",
        "v2.5.1",
        "10:30",
        "node.js",
    ],
)
def test_never_split_inside_domains_urls_addresses_and_numbers(unit):
    text = f"Look at {unit} again. Next sentence."
    assert chunks_of(text, **EAGER) == [f"Look at {unit} again.", "Next sentence."]


@pytest.mark.parametrize(
    ("text", "first_chunk"),
    [
        ("I met Dr. Smith today. Next one.", "I met Dr. Smith today."),
        ("Ask Mr. Jones and Mrs. Jones. Next one.", "Ask Mr. Jones and Mrs. Jones."),
        ("It is on Baker St. Mary lives there. Next one.", "It is on Baker St. Mary lives there."),
        ("Bring fruit e.g. apples. Next one.", "Bring fruit e.g. apples."),
        ("Bring fruit i.e. Apples and pears. Next one.", "Bring fruit i.e. Apples and pears."),
        ("Bring fruit etc. and more. Next one.", "Bring fruit etc. and more."),
        ("I live in the U.S. Army base. Next one.", "I live in the U.S. Army base."),
        ("I read J. R. R. Tolkien. Next one.", "I read J. R. R. Tolkien."),
        ("See No. 5 and p. 12 of Vol. 3 from Jan. 4 on. Next one.", "See No. 5 and p. 12 of Vol. 3 from Jan. 4 on."),
        ("She has a Ph.D. From Oxford. Next one.", "She has a Ph.D. From Oxford."),
        ("Well... maybe not. Next one.", "Well... maybe not."),
        ("Well… maybe not. Next one.", "Well… maybe not."),
        ("Yahoo! is a company. Next one.", "Yahoo! is a company."),
        ('"Stop!" he said. Next one.', '"Stop!" he said.'),
        ("It was Smith vs. Jones. Next one.", "It was Smith vs. Jones."),
    ],
)
def test_abbreviations_initials_and_lowercase_continuations_do_not_end_a_sentence(text, first_chunk):
    assert chunks_of(text, **EAGER) == [first_chunk, "Next one."]


@pytest.mark.parametrize(
    ("text", "chunks"),
    [
        ("Apples and pears etc. The list goes on.", ["Apples and pears etc.", "The list goes on."]),
        ("Wait... Then go.", ["Wait...", "Then go."]),
        ("I was born in 1990. Then I grew.", ["I was born in 1990.", "Then I grew."]),
        ("Visit www.example.com. It is good.", ["Visit www.example.com.", "It is good."]),
        ("Is 3 < 4? Yes it is.", ["Is 3 < 4?", "Yes it is."]),
    ],
)
def test_what_does_end_a_sentence(text, chunks):
    assert chunks_of(text, **EAGER) == chunks


def test_a_list_number_at_the_start_of_a_line_is_not_a_sentence_end_but_the_line_break_is():
    text = "Steps:\n1. Open the box.\n2. Take it out."
    assert chunks_of(text, **EAGER) == ["Steps:", "1. Open the box.", "2. Take it out."]


# -- other scripts -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "chunks"),
    [
        ("你好。我是机器人！你呢？好的", ["你好。", "我是机器人！", "你呢？", "好的"]),
        ("「行くよ。」と言った。次", ["「行くよ。」", "と言った。", "次"]),
        ("円周率は３．１４です。次", ["円周率は３．１４です。", "次"]),
        ("यह किताब है। वह कलम है॥ और", ["यह किताब है।", "वह कलम है॥", "और"]),
        ("كيف حالك؟ أنا بخير۔ و", ["كيف حالك؟", "أنا بخير۔", "و"]),
        ("Բարև։ Ինչպես ես։ Լավ", ["Բարև։", "Ինչպես ես։", "Լավ"]),
        ("ሰላም ነው። እንዴት ነህ። ደህና", ["ሰላም ነው።", "እንዴት ነህ።", "ደህና"]),
        # Greek: ";" after a Greek letter is the question mark, "·" (ano teleia) is a clause end.
        ("Τι κάνεις; Καλά· ευχαριστώ. Εσύ", ["Τι κάνεις;", "Καλά· ευχαριστώ.", "Εσύ"]),
        ("Τι κάνεις\u037e Καλά", ["Τι κάνεις\u037e", "Καλά"]),
    ],
)
def test_other_scripts_sentence_ends(text, chunks):
    assert chunks_of(text, **EAGER) == chunks


def test_a_semicolon_outside_greek_is_a_clause_end_not_a_sentence_end():
    # Only the first chunk is cut at clauses: after it, "; " does not cut.
    assert chunks_of("One thing; another thing; a third. Done.", **EAGER) == [
        "One thing;",
        "another thing; a third.",
        "Done.",
    ]


def test_thai_without_sentence_punctuation_is_cut_at_spaces_past_max_chars():
    phrase = "สวัสดีครับ"
    text = " ".join([phrase] * 12)
    chunks = chunks_of(text, min_chars=0, first_min_chars=0, max_chars=30)
    assert len(chunks) > 1
    assert all(c.split(" ") == [phrase] * len(c.split(" ")) for c in chunks)  # whole words only
    assert " ".join(chunks) == text


def test_cjk_without_punctuation_is_cut_between_characters_past_max_chars():
    text = "这是一个很长的句子没有任何标点符号" * 3
    chunks = chunks_of(text, max_chars=20)
    assert "".join(chunks) == text
    assert len(chunks) > 1
    assert all(len(c) <= 11 for c in chunks)  # wide characters count two


def test_the_text_after_a_long_run_of_spaces_still_decides_the_end():
    spaces = " " * 50
    assert chunks_of(f"Fruit etc.{spaces}and more. Next one.", **EAGER) == [f"Fruit etc.{spaces}and more.", "Next one."]
    assert chunks_of(f"Fruit and more.{spaces}Next one.", **EAGER) == ["Fruit and more.", "Next one."]


# -- clauses, minimum and maximum lengths --------------------------------------------------------------


def test_the_first_chunk_is_a_clause_when_that_starts_speech_sooner():
    text = "Well, let me think about that, because it is hard. It is, in fact, very hard. Yes."
    chunks = chunks_of(text, min_chars=20, first_min_chars=12)
    assert chunks == [
        "Well, let me think about that,",  # "Well," alone is shorter than first_min_chars
        # Later chunks are whole sentences, and a short one joins the next.
        "because it is hard. It is, in fact, very hard.",
        "Yes.",
    ]


@pytest.mark.parametrize("how", ["flush", "reset", None])
def test_a_flush_or_reset_makes_the_next_chunk_a_first_chunk_again(how):
    chunker = TextChunker(min_chars=20, first_min_chars=12)
    assert by_char(chunker, "To begin with, this part. ") == ["To begin with,"]
    if how is not None:
        getattr(chunker, how)()
    second = by_char(chunker, "After all of that, we start a new part. Then")
    if how is None:
        assert second == ["this part. After all of that, we start a new part."]
    else:
        assert second == ["After all of that,"]


def test_a_short_sentence_waits_to_join_the_next():
    chunker = TextChunker(min_chars=20, first_min_chars=12)
    assert by_char(chunker, "Yes. I think so, definitely. Ok") == ["Yes. I think so,"]
    assert by_char(chunker, ". No. It is what it is. A") == ["definitely. Ok. No. It is what it is."]
    assert chunker.flush() == ["A"]


def test_a_long_sentence_is_cut_at_a_clause_past_max_chars():
    clause = "this clause goes on and on, "
    text = "Start here. Then " + clause * 10 + "and it ends."
    chunks = chunks_of(text, min_chars=0, first_min_chars=0, max_chars=80)
    assert chunks[0] == "Start here."
    assert all(c.endswith(",") for c in chunks[1:-1])
    assert len(chunks) > 3
    assert " ".join(chunks) == text


def test_a_long_sentence_without_clauses_is_cut_at_a_word_boundary():
    text = "Start here. " + "word " * 40 + "end."
    chunks = chunks_of(text, min_chars=0, first_min_chars=0, max_chars=50)
    assert len(chunks) > 3
    assert all(set(c.split()) <= {"word", "end.", "Start", "here."} for c in chunks)
    assert " ".join(chunks) == text


def test_a_word_longer_than_max_chars_is_never_cut():
    url = "https://example.com/" + "a" * 100 + ".html"
    text = f"Open {url} now please, and then wait."
    chunks = chunks_of(text, **EAGER, max_chars=40)
    assert any(url in c for c in chunks)
    assert " ".join(chunks) == text


# -- markup ---------------------------------------------------------------------------------------------


def test_never_released_inside_a_tag():
    text = 'One. <break time="500ms"/> Two. <sub alias="Doctor. Who. Yes">Dr. W</sub> three. Four.'
    chunker = TextChunker(**EAGER)
    released = []
    for c in text:
        for chunk in chunker.feed(c, 0.0):
            # Every chunk ends outside a tag: its "<" and ">" balance.
            assert chunk.count("<") == chunk.count(">"), chunk
            released.append(chunk)
    released += chunker.flush()
    assert released == [
        "One.",
        '<break time="500ms"/> Two.',
        '<sub alias="Doctor. Who. Yes">Dr. W</sub> three.',
        "Four.",
    ]


def test_a_tag_right_after_an_end_starts_the_next_chunk():
    assert chunks_of('Hello.<break time="1s"/>World is here.', **EAGER) == [
        "Hello.",
        '<break time="1s"/>World is here.',
    ]


def test_no_cut_inside_say_as_sub_or_phoneme():
    text = (
        '<say-as interpret-as="characters">A. B. C.</say-as> Then more. '
        '<phoneme alphabet="ipa" ph="x">Go. Now</phoneme>, ok. End.'
    )
    assert chunks_of(text, **EAGER) == [
        '<say-as interpret-as="characters">A. B. C.</say-as> Then more.',
        '<phoneme alphabet="ipa" ph="x">Go. Now</phoneme>, ok.',
        "End.",
    ]


def test_a_cut_inside_ssml_containers_closes_them_and_reopens_them_in_the_next_chunk():
    text = '<speak><prosody rate="slow">First sentence here. Second one here.</prosody> Third one.</speak>'
    assert chunks_of(text, **EAGER) == [
        '<speak><prosody rate="slow">First sentence here.</prosody></speak>',
        '<speak><prosody rate="slow">Second one here.</prosody></speak>',
        "<speak>Third one.</speak>",
    ]


def test_a_less_than_sign_that_never_closes_is_text():
    text = "Is a <b true? " + "X " * 120 + "Yes."
    chunker = TextChunker(**EAGER)
    chunks = by_char(chunker, text)
    assert chunks[0] == "Is a <b true?"


def test_markup_does_not_count_toward_the_minimum_length():
    chunker = TextChunker(min_chars=10, first_min_chars=10)
    assert by_char(chunker, '<break time="1000ms"/> Hi. There you are. X') == [
        '<break time="1000ms"/> Hi. There you are.'
    ]


def test_a_reset_forgets_open_ssml_elements():
    chunker = TextChunker(**EAGER)
    assert by_char(chunker, "<speak>One here. Tw") == ["<speak>One here.</speak>"]
    assert chunker.reset() == " Tw"
    assert by_char(chunker, "Plain text. More") == ["Plain text."]


# -- waits ------------------------------------------------------------------------------------------------


def test_an_undecided_final_period_is_released_after_max_wait():
    chunker = TextChunker(max_wait_s=0.5, **EAGER)
    assert chunker.feed("It costs 5.", 10.0) == []
    assert chunker.next_due() == pytest.approx(10.5)
    assert chunker.due(10.4) == []
    assert chunker.due(10.5) == ["It costs 5."]
    assert chunker.next_due() is None
    assert chunker.buffered == ""


def test_the_wait_runs_from_when_the_end_arrived_not_from_the_last_token():
    chunker = TextChunker(max_wait_s=0.5, min_chars=20, first_min_chars=12)
    assert chunker.feed("Yes. ", 1.0) == []
    assert chunker.feed("I think", 1.3) == []
    assert chunker.next_due() == pytest.approx(1.5)
    assert chunker.due(1.5) == ["Yes."]  # the sentence after it stays: it is not finished
    assert chunker.buffered.strip() == "I think"


def test_a_short_sentence_is_held_until_the_wait_passes():
    chunker = TextChunker(max_wait_s=0.5, min_chars=20, first_min_chars=12)
    assert chunker.feed("Yes. ", 0.0) == []
    assert chunker.feed("S", 0.1) == []
    assert chunker.due(0.49) == []
    assert chunker.due(0.5) == ["Yes."]


def test_text_without_an_end_is_released_after_the_stall_wait_up_to_its_last_word_if_long_enough():
    chunker = TextChunker(stall_wait_s=2.0, min_chars=20, first_min_chars=12)
    assert chunker.feed("The best option here is to wai", 5.0) == []
    assert chunker.next_due() == pytest.approx(7.0)
    assert chunker.due(6.9) == []
    assert chunker.due(7.0) == ["The best option here is to"]  # "wai" may be half a word
    assert chunker.buffered == " wai"
    assert chunker.next_due() is None  # too short to go out on its own: a flush or more text


def test_short_text_without_an_end_waits_for_more_text_or_a_flush():
    chunker = TextChunker(stall_wait_s=2.0)
    assert chunker.feed("Okay so ", 0.0) == []
    assert chunker.next_due() is None
    assert chunker.due(100.0) == []
    assert chunker.flush() == ["Okay so"]


def test_an_undecided_end_after_a_held_sentence_releases_both_after_the_wait():
    chunker = TextChunker(max_wait_s=0.5, min_chars=20, first_min_chars=12)
    assert chunker.feed("Hi. ", 0.0) == []
    assert chunker.feed("It is 5.", 0.2) == []
    assert chunker.due(0.5) == ["Hi."]  # the held one's wait is over; "5." waits until 0.7
    assert chunker.next_due() == pytest.approx(0.7)
    assert chunker.due(0.7) == ["It is 5."]


def test_next_due_is_when_due_releases_something():
    chunker = TextChunker(max_wait_s=0.5, min_chars=20, first_min_chars=12)
    chunker.feed("Sure. ", 3.0)
    due = chunker.next_due()
    assert chunker.due(due - 0.001) == []
    assert chunker.due(due) == ["Sure."]


# -- flush, reset, whitespace -------------------------------------------------------------------------------


def test_flush_releases_everything_and_reset_drops_it():
    chunker = TextChunker()
    chunker.feed("  Some text without an end  ", 0.0)
    assert chunker.flush() == ["Some text without an end"]
    assert chunker.flush() == []
    assert chunker.feed("Dropped, all of it. Gone", 0.0) == ["Dropped, all of it."]
    assert chunker.reset() == " Gone"
    assert chunker.buffered == ""
    assert chunker.next_due() is None
    assert chunker.feed("Fresh start again, after the reset. ", 0.0) == ["Fresh start again,"]


def test_chunks_are_stripped_and_keep_their_inner_spacing():
    assert chunks_of("  Two  spaces\there.   Next\n", **EAGER) == ["Two  spaces\there.", "Next"]


def test_tokens_split_mid_word_are_joined():
    chunker = TextChunker(**EAGER)
    out = []
    for token in ["Go to exam", "ple.c", "om. Th", "en 3", ".", "14", "! D", "one"]:
        out += chunker.feed(token, 0.0)
    assert out + chunker.flush() == ["Go to example.com.", "Then 3.14!", "Done"]


def test_options_are_checked():
    with pytest.raises(ValueError, match="max_chars"):
        TextChunker(min_chars=500, max_chars=100)
    with pytest.raises(ValueError, match="negative"):
        TextChunker(max_wait_s=-1)


# -- any token split gives the same chunks ---------------------------------------------------------------

PARAGRAPH = (
    "Hello, and welcome to the support line of Example Corp. My name is Anna; I will help you today. "
    "Dr. Smith asked me to check your order No. 4521, placed on Jan. 3 at 10:30 a.m. from the U.S. office. "
    "It costs 1,000.50 dollars, i.e. about 3.14 times the usual price... that is a lot! "
    'Did you say "cancel it"?! You can read more at https://www.example.co.uk/help?topic=orders.v2 or write '
    "to support@example.com, e.g. with your order number. J. R. R. Tolkien fans get 10% off. "
    "Version v2.5.1 fixes that — we think. Yes. Okay.\n"
    "1. Open the app.\n2. Tap the order.\n\n"
    'Finally: <break time="300ms"/> thank you <emphasis level="strong">very</emphasis> much. '
    "谢谢你的耐心。再见！ Τι άλλο; Τίποτα. 好"
)


def random_tokens(text: str, rnd: random.Random) -> list[str]:
    tokens, i = [], 0
    while i < len(text):
        n = rnd.randint(1, 4)
        tokens.append(text[i : i + n])
        i += n
    return tokens


def feed_tokens(tokens: list[str], **options) -> list[str]:
    chunker = TextChunker(**options)
    out: list[str] = []
    for k, token in enumerate(tokens):
        out += chunker.feed(token, k * 0.03)
    return out + chunker.flush()


@pytest.mark.parametrize(
    "options",
    [{}, EAGER, {"min_chars": 40, "first_min_chars": 5, "max_chars": 60}, {"max_chars": 25}],
    ids=["defaults", "eager", "long-min-short-max", "short-max"],
)
def test_chunks_do_not_depend_on_how_the_text_was_split_into_tokens(options):
    whole = feed_tokens([PARAGRAPH], **options)
    assert len(whole) > 3
    rnd = random.Random(9)
    for _ in range(200):
        assert feed_tokens(random_tokens(PARAGRAPH, rnd), **options) == whole


def test_the_chunks_are_the_text():
    chunks = feed_tokens(random_tokens(PARAGRAPH, random.Random(1)), **EAGER)
    assert re.sub(r"\s", "", "".join(chunks)) == re.sub(r"\s", "", PARAGRAPH)
    latin = PARAGRAPH[: PARAGRAPH.index("Finally")]  # cut at whitespace only (no markup, no CJK)
    chunks = feed_tokens(random_tokens(latin, random.Random(2)), **EAGER)
    assert " ".join(chunks).split() == latin.split()
    assert len(chunks) > 10


def test_random_text_never_breaks_the_chunker():
    alphabet = "ab .,!?;:<>/\"'\n。，3—…é<"
    rnd = random.Random(5)
    for _ in range(300):
        text = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 80)))
        tokens = random_tokens(text, rnd)
        whole = feed_tokens([text], max_chars=10, min_chars=3, first_min_chars=2)
        assert feed_tokens(tokens, max_chars=10, min_chars=3, first_min_chars=2) == whole
        if "<" not in text:  # markup is re-wrapped; plain text comes out as it went in
            assert re.sub(r"\s", "", "".join(whole)) == re.sub(r"\s", "", text)
