"""Find personal data in text: one ``detect`` over all entity types, pure Python, no Django.

Each type's finder is skipped unless the text has the character it needs ("@", a digit, ":"),
so a plain chat message costs a few regex scans and set look-ups.
"""

import functools
import re
import sys
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from .addresses import find_streets, find_zips
from .patterns import find_cards, find_emails, find_ibans, find_ips, find_ssns
from .persons import find_persons
from .phones import find_phones

ENTITY_TYPES = (
    "PERSON",
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "US_SSN",
    "IBAN_CODE",
    "IP_ADDRESS",
    "LOCATION",
    "US_ZIP_CODE",
)
# National phone formats accepted without a "+": a wider list finds more foreign numbers and
# mistakes more ids for phones. The United Kingdom is "GB".
DEFAULT_REGIONS: tuple[str, ...] = (
    "US",
    "CA",
    "GB",
    "IE",
    "DE",
    "FR",
    "ES",
    "IT",
    "NL",
    "IN",
    "AU",
)


@dataclass(frozen=True, slots=True)
class Span:
    """One detected entity: ``text[start:end]`` is of ``type``, with confidence ``score``."""

    type: str
    start: int
    end: int
    score: float


_DIGIT = re.compile(r"\d")
Candidate = tuple[float, int, int, str]


def _candidates(text: str, regions: Sequence[str]) -> list[Candidate]:
    """Return ``(score, start, end, type)`` of every validated finding, overlaps included.

    One cheap pre-filter first: each finder needs some character ("@", a digit, ":") or so
    many digits, counted once here with C-level string methods, so a plain chat message runs
    the name finder and a few ``in`` tests only.
    """
    found: list[Candidate] = []

    def add(kind: str, hits: Iterable[tuple[int, int, float]]) -> None:
        found.extend((score, start, end, kind) for start, end, score in hits)

    if "@" in text:
        add("EMAIL_ADDRESS", find_emails(text))
    if _DIGIT.search(text):
        digits = sum(map(text.count, "0123456789"))
        if (digits >= 4 and text.count(".") >= 3) or text.count(":") >= 2:
            add("IP_ADDRESS", find_ips(text))
        if digits >= 12:
            add("CREDIT_CARD", find_cards(text))
        if digits >= 9:
            add("US_SSN", find_ssns(text))
        if digits >= 10:
            add("IBAN_CODE", find_ibans(text))
        if digits >= 7:
            add("PHONE_NUMBER", find_phones(text, regions))
        add("LOCATION", find_streets(text))
        if digits >= 5:
            add("US_ZIP_CODE", find_zips(text))
    elif text.count(":") >= 2:
        add("IP_ADDRESS", find_ips(text))  # "fe80::abcd:ef01" has no digit it must have
    add("PERSON", find_persons(text))
    return found


def _resolve(candidates: list[Candidate]) -> list[Span]:
    # Best first: higher score, then longer; a span overlapping one already kept is dropped.
    if len(candidates) < 2:
        return [Span(kind, start, end, score) for score, start, end, kind in candidates]
    kept: list[Candidate] = []
    for cand in sorted(candidates, key=lambda c: (-c[0], c[1] - c[2], c[1])):
        if all(cand[2] <= k[1] or cand[1] >= k[2] for k in kept):
            kept.append(cand)
    kept.sort(key=lambda c: c[1])
    return [Span(kind, start, end, score) for score, start, end, kind in kept]


def detect(text: str, *, regions: Sequence[str] = DEFAULT_REGIONS) -> list[Span]:
    """Return the personal data in ``text`` as sorted, non-overlapping spans.

    ``regions`` are the countries (ISO 3166 codes) whose national phone formats are accepted;
    international "+" numbers of any country are found whatever it holds.
    """
    if not text:
        return []
    # The finders read ASCII digits; the ASCII form has one character for each of the
    # text's, so the spans found in it are the text's own.
    form = ascii_form(text)
    readings = invisible_readings(form)
    if readings is None:
        return _resolve(_candidates(form, regions))
    # Invisible characters (a zero-width space or joiner, a soft hyphen, bidirectional
    # marks) may separate words (pasted text, Thai) or split a value ("ali\u200dce@..."):
    # the finders read the text with each as a space, where the boundaries they mark hold,
    # then without them. What only the second reading finds is added; where it overlaps
    # what the first found, both are protected as one ("email\u200bjohn@..." whole, the
    # word with the address): read wrong, a boundary costs a word, never part of a value.
    # A third reading takes each as a space only at a seam between a word and a number
    # (a letter, then a digit, "+" or "("; a digit, then a letter), else reads past it:
    # "call\u200d123-45-\u200b6789" is a word, then a number split inside.
    spaced, seams, bare = readings
    found = _resolve(_candidates(spaced.text, regions))
    for span in [*_found_in(bare, regions), *_found_in(seams, regions)]:
        overlapping = [f for f in found if f.start < span.end and span.start < f.end]
        if overlapping:
            found = [f for f in found if f not in overlapping]
            longest = max([span, *overlapping], key=lambda f: f.end - f.start)
            span = Span(
                longest.type,
                min(f.start for f in (span, *overlapping)),
                max(f.end for f in (span, *overlapping)),
                max(f.score for f in (span, *overlapping)),
            )
        found.append(span)
    return sorted(found, key=lambda span: span.start)


class Reading(NamedTuple):
    """A text read one way, and the index in the text of each of its characters (None: the
    text's own, one for one)."""

    text: str
    at: list[int] | None


def invisible_readings(text: str) -> list[Reading] | None:
    """Return the readings of ``text`` that ``detect`` makes when it holds characters it
    shows as nothing (None when it holds none):

    - each of them a space ("Vexmoria\u200bQuintaplex" two words);
    - each run read past, but a space at a seam between a word and a number ("4539\u200b1488"
      one number, "Vex\u200bmoria" one word, "card\u200c4539" a word and a number);
    - every one read past ("A\u200b7X9" one code).
    """
    if text.isascii():
        return None
    forms = _unicode_forms()
    if not forms.invisible.search(text):
        return None
    readings = [Reading(forms.invisible.sub(" ", text), None)]
    for read in (forms.seams.sub(lambda m: " " + m.group()[1:], text), text):
        at = [i for i, char in enumerate(read) if not forms.invisible.match(char)]
        readings.append(Reading("".join(read[i] for i in at), at))
    return readings


def _found_in(reading: Reading, regions: Sequence[str]) -> list[Span]:
    # The findings in a reading past invisible characters, mapped back onto the text: a
    # span starts and ends on characters read, and covers those read past inside it.
    at = reading.at
    found = _resolve(_candidates(reading.text, regions))
    return [Span(s.type, at[s.start], at[s.end - 1] + 1, s.score) for s in found]


def ascii_form(text: str) -> str:
    """Return ``text`` with the digits of every script ("４", "٤", "४", "𝟒"), the
    full-width forms of ASCII ("＋", "（", "＠"), every space ("\u00a0", "\u202f") and
    the hyphens ("\u2010", "\u2011", the figure dash, "−") as ASCII, one character for one.
    Not the en or em dash: Claude writes ranges with them ("1947–1991"), which the phone
    finder would take for a number.

    A card number typed on a Japanese keyboard, in Arabic-Indic digits, or pasted with
    no-break spaces, is read by Claude as any other: the finders must see it too.
    """
    return text if text.isascii() else text.translate(_unicode_forms().ascii_table)


# Hyphens other than ASCII's: "\u2010", the non-breaking "\u2011", the figure dash (for
# digits), the minus sign, the small hyphen-minus. (The full-width one is in the full-width
# block below.) The leak scan joins digit groups on the same characters.
HYPHENS = "\u2010\u2011\u2012\u2212\ufe63"
# Unicode's spaces (category Zs) other than ASCII's, as the table below reads them; a test
# checks the list against ``unicodedata``. The leak scan joins digit groups on them too.
SPACES = (
    "\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u202f\u205f\u3000"
)
# Characters a text shows as nothing that are not format characters (category Cf):
# Unicode's other default-ignorable code points (DerivedCoreProperties.txt): the combining
# grapheme joiner, the Hangul fillers, Khmer's inherent vowels, the Mongolian and other
# variation selectors.
IGNORABLE = (
    "\u034f\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u180f\u3164\uffa0"
    + "".join(map(chr, range(0xFE00, 0xFE10)))
    + "".join(map(chr, range(0xE0100, 0xE01F0)))
)


class _UnicodeForms(NamedTuple):
    # ``ascii_form``'s translation table: Unicode's digits, spaces and hyphens and the
    # full-width forms as ASCII, one character for one.
    ascii_table: dict[int, str]
    # One character a text shows as nothing (a format character or ``IGNORABLE``).
    invisible: re.Pattern[str]
    # A run of them at a seam between a word and a number (``detect``'s third reading).
    seams: re.Pattern[str]


@functools.cache
def _unicode_forms() -> _UnicodeForms:
    # Built once, on the first text that is not ASCII, in one pass over Unicode (0.1 to
    # 0.2 s): ``ascii_form``'s table (the decimal digits, about 650 characters; ``SPACES``
    # and ``HYPHENS``; the full-width block
    # U+FF01-FF5E and the ideographic full stops), and the format characters (category Cf:
    # zero-width space and joiners, the soft hyphen, bidirectional marks) and ``IGNORABLE``,
    # which a text shows as nothing.
    table: dict[int, str] = {}
    invisible = []
    for code in range(0x80, sys.maxunicode + 1):
        char = chr(code)
        if (digit := unicodedata.decimal(char, None)) is not None:
            table[code] = str(digit)
        elif unicodedata.category(char) == "Cf":
            invisible.append(char)
    table.update({code: chr(code - 0xFEE0) for code in range(0xFF01, 0xFF5F)})
    table.update(dict.fromkeys(map(ord, SPACES), " "))
    table.update(dict.fromkeys(map(ord, HYPHENS), "-"))
    table.update({0x3002: ".", 0xFF61: "."})
    run = f"[{re.escape(''.join(invisible) + IGNORABLE)}]"
    # And runs of them at a seam between a word and a number (``detect``'s third reading).
    seams = rf"(?<=[^\W\d_]){run}+(?=[\d+(])|(?<=\d){run}+(?=[^\W\d_])"
    return _UnicodeForms(ascii_table=table, invisible=re.compile(run), seams=re.compile(seams))
