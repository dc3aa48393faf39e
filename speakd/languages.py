"""Language tags: the one parser every way in and every provider uses.

speakd takes the part of BCP47 (RFC 5646) that a TTS provider can act on:
``language[-extlang][-Script][-REGION]``, e.g. ``en``, ``en-US``, ``zh-Hant-TW``, ``es-419``.
The answer is the same wherever a tag arrives (session create, ``GET /v1.0/voices``, the AGI and
ARI commands, a provider's ``voices`` config table):

* case is made canonical: ``en-us`` → ``en-US``, ``sr-latn-rs`` → ``sr-Latn-RS``;
* an extended language subtag is replaced by itself, as RFC 5646 §4.5 canonicalises it:
  ``zh-yue`` → ``yue``, ``zh-yue-HK`` → ``yue-HK`` (how providers name Cantonese);
* variants, extensions and private use (``de-CH-1901``, ``en-US-x-twain``) are refused: no
  provider speaks them, so accepting the tag would only fail later, at every provider;
* ``en_US`` (a POSIX locale, not a tag) is refused with the hyphenated form to send instead.

Reading a POSIX locale name (:func:`parse_posix_locale`), a tag's parts
(:func:`primary_language`), matching tags to a voice's languages (:func:`language_matches`) and
to a provider's locales (:func:`pick_locale`) are here too, so no other module splits a tag.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from speakd.errors import UnsupportedLanguage, invalid_field

# language[-extlang][-Script][-REGION]; also the pattern of the OpenAPI document's language fields.
TAG_PATTERN = r"^([A-Za-z]{2,3})(?:-([A-Za-z]{3}))?(?:-([A-Za-z]{4}))?(?:-([A-Za-z]{2}|[0-9]{3}))?$"
# fullmatch and ASCII: "$" alone would let a trailing newline through, \d and [a-z] (ignoring
# case) other scripts' digits and letters such as the Kelvin sign.
_TAG = re.compile(TAG_PATTERN, re.ASCII)
# Anything well-formed up to the region and followed by more subtags: variants, extensions,
# private use. Told apart from a malformed tag so the message can say what to drop.
_LONGER = re.compile(r"^[a-z]{2,3}(?:-[a-z0-9]{1,8})+$", re.IGNORECASE | re.ASCII)
EXAMPLES = "such as en-US, de, zh-Hant-TW or es-419"


def parse_language_tag(value: str) -> str:
    """The canonical form of a language tag, or InvalidRequest (``invalid_field``) saying what to send."""
    tag = value if isinstance(value, str) else ""
    match = _TAG.fullmatch(tag)
    if match is None:
        hyphenated = tag.replace("_", "-")
        if "_" in tag and _TAG.fullmatch(hyphenated):
            raise invalid_field(
                f"language '{value}' uses '_': BCP47 language tags use '-'; send '{parse_language_tag(hyphenated)}'"
            )
        if _LONGER.fullmatch(tag):
            raise invalid_field(
                f"language '{value}' has variant, extension or private-use subtags, which no provider speaks; "
                f"send language[-Script][-REGION] {EXAMPLES}"
            )
        raise invalid_field(f"language must be a BCP47 language tag {EXAMPLES}; got '{value}'")
    language, extlang, script, region = match.groups()
    parts = [(extlang or language).lower()]
    if script:
        parts.append(script.title())
    if region:
        parts.append(region.upper())
    return "-".join(parts)


def parse_posix_locale(value: str) -> str:
    """The canonical tag of a POSIX locale name (``en_US`` -> ``en-US``): how Piper's voice files
    name their language. InvalidRequest as :func:`parse_language_tag` if it is no tag then."""
    return parse_language_tag(value.replace("_", "-"))


def primary_language(tag: str) -> str:
    """The language subtag, as written: ``en`` of ``en-US``, ``zh`` of ``zh-Hant-TW``."""
    return tag.split("-", 1)[0]


def language_matches(wanted: str, voice_languages: tuple[str, ...]) -> bool:
    """Case-insensitive; a bare language on either side matches any region of it
    (``en`` ~ ``en-US``), two regions must be equal (``en-US`` !~ ``en-GB``)."""
    wanted = wanted.lower()
    for lang in voice_languages:
        lang = lang.lower()
        if lang == wanted:
            return True
        if ("-" not in wanted or "-" not in lang) and primary_language(lang) == primary_language(wanted):
            return True
    return False


def pick_locale(provider: str, language: str, locales: Mapping[str, Any], aliases: Mapping[str, str]) -> str:
    """The key of ``locales`` for the tag ``language``, read through the provider's ``aliases``
    (its own name for a tag: ``zh`` → ``cmn-CN``); a bare language takes its first locale
    (``de`` → ``de-DE``). Else UnsupportedLanguage naming ``language`` as it was given."""
    tag = parse_language_tag(language)
    lang = aliases.get(tag, tag)
    if lang in locales:
        return lang
    if "-" not in lang:
        for locale in locales:
            if primary_language(locale) == lang:
                return locale
    raise UnsupportedLanguage(f"provider '{provider}' does not speak language '{language}'")
