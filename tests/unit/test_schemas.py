from __future__ import annotations

import json
import re

import pytest

from speakd.api.openapi import OPENAPI
from speakd.api.schemas import parse_create, parse_page, parse_say
from speakd.errors import InvalidRequest
from speakd.languages import parse_language_tag


@pytest.mark.parametrize(
    ("tag", "canonical"),
    [
        ("en-US", "en-US"),
        ("en-us", "en-US"),
        ("ko-KR", "ko-KR"),
        ("zh-Hant-TW", "zh-Hant-TW"),
        ("es-419", "es-419"),
        ("de", "de"),
        ("sr-latn-rs", "sr-Latn-RS"),
        # An extended language subtag stands for itself (RFC 5646 4.5), as providers name it.
        ("zh-yue", "yue"),
        ("zh-yue-hk", "yue-HK"),
    ],
)
def test_bcp47_tags_are_accepted_and_canonicalised(tag, canonical):
    assert parse_language_tag(tag) == canonical


@pytest.mark.parametrize("tag", ["", "english", "e", "en-", "-US", "en-US-", "12-34", "en US"])
def test_malformed_language_tags_are_rejected(tag):
    with pytest.raises(InvalidRequest, match="BCP47") as raised:
        parse_language_tag(tag)
    assert raised.value.reason == "invalid_field"


@pytest.mark.parametrize(
    ("tag", "says"),
    [
        ("en_US", "send 'en-US'"),
        ("en_us", "send 'en-US'"),
        ("en-US-x-twain", "no provider speaks"),
        ("de-CH-1901", "no provider speaks"),
        ("en-a-bbb", "no provider speaks"),
    ],
)
def test_tags_no_provider_speaks_are_refused_saying_what_to_send(tag, says):
    with pytest.raises(InvalidRequest, match=says):
        parse_language_tag(tag)


def test_create_defaults():
    req = parse_create(json.dumps({"reference_type": "call", "reference_id": "abc.123"}).encode(), "piper")
    assert (req.language, req.provider, req.direction, req.voice_id) == ("en-US", "piper", "both", "")


def test_text_limit_counts_characters_not_bytes():
    req = parse_say(json.dumps({"text": "한" * 5000}, ensure_ascii=False).encode())
    assert len(req.text) == 5000 and req.payload_type == "text"
    with pytest.raises(InvalidRequest, match="5001 characters"):
        parse_say(json.dumps({"text": "한" * 5001}).encode())


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"text": "hi", "stop": "everything"}, "'stop' must be 'current' or 'all'"),
        ({"text": "hi", "stop": 1}, "'stop' must be a string"),
        ({"text": "hi", "client_state": "x" * 4097}, "'client_state' is 4097 characters"),
        ({"text": "hi", "command_id": {"a": 1}}, "'command_id' must be a string"),
        ({"text": "hi", "command_id": "c" * 257}, "at most 256"),
    ],
)
def test_say_control_fields_are_checked(body, words):
    with pytest.raises(InvalidRequest, match=re.escape(words)):
        parse_say(json.dumps(body).encode())


def test_say_control_fields_are_read():
    req = parse_say(json.dumps({"text": "hi", "client_state": "abc", "command_id": "c1", "stop": "all"}).encode())
    assert (req.client_state, req.command_id, str(req.stop)) == ("abc", "c1", "all")
    assert parse_say(b'{"text": "hi"}').stop is None


def test_orphan_detection_never_claims_another_apps_objects():
    from speakd.sessions.targets import is_own_object

    sid = "01e86610-3799-4e83-8d5d-5b863067f235"
    assert is_own_object("speakd", f"speakd-{sid}-media")
    assert is_own_object("speakd", f"speakd-{sid}")
    assert not is_own_object("speakd", f"speakd-t2794c9-{sid}-media")  # app "speakd-t2794c9"
    assert not is_own_object("speakd", "speakd-something")
    assert not is_own_object("speakd", f"other-{sid}-media")


@pytest.mark.parametrize(
    "query",
    [
        {"page_token": "\u0662\u0660\u0662\u0666-01-01 00:00:00.000000"},  # Arabic-Indic digits
        {"page_token": "2026-01-01 00:00:00.000000\n"},  # "$" alone would let this through
    ],
)
def test_a_page_token_is_exactly_the_documented_form(query):
    with pytest.raises(InvalidRequest, match="page_token"):
        parse_page(query)


@pytest.mark.parametrize(
    "token",
    ["", "2026-01-01 00:00:00.000000", "yesterday", " ", "2026-01-01 00:00:00.000000\n", "2026-01-01"],
)
def test_the_served_page_token_pattern_accepts_exactly_what_the_server_accepts(token):
    """Schemathesis found ``page_token=`` answered 200 while the document's pattern refused it
    (the document was wrong: an empty token is the first page, and the last page's
    ``next_page_token``). The document and the server must agree on every value."""
    listing = OPENAPI["paths"]["/v1.0/speakings"]["get"]
    (param,) = [p for p in listing["parameters"] if p["name"] == "page_token"]
    # JSON Schema patterns are ECMA-262: "$" is the end of the string, not also before a final newline.
    pattern = re.sub(r"\$$", r"\\Z", param["schema"]["pattern"])
    documented = re.search(pattern, token, re.ASCII) is not None
    try:
        parse_page({"page_token": token})
        served = True
    except InvalidRequest:
        served = False
    assert documented == served


@pytest.mark.parametrize("reference_id", ["abc\n", "abc\u00e9", "a\u212a"])
def test_a_reference_id_is_exactly_the_documented_form(reference_id):
    with pytest.raises(InvalidRequest, match="reference_id"):
        parse_create(json.dumps({"reference_type": "call", "reference_id": reference_id}).encode(), "piper")


@pytest.mark.parametrize("language", ["en-US\n", " en-US", "\u212a", "en-\u212aK"])
def test_a_language_is_exactly_the_documented_form(language):
    from speakd.languages import parse_language_tag

    with pytest.raises(InvalidRequest):
        parse_language_tag(language)
