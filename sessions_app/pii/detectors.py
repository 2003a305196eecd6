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
    invisible = None if form.isascii() else _unicode_forms()[1]
    if invisible is None or not invisible.search(form):
        return _resolve(_candidates(form, regions))
    # Invisible characters (a zero-width space or joiner, a soft hyphen) may separate words
    # (pasted text, Thai) or split a value ("ali\u200dce@..."): the finders read the text
    # with each as a space, where the boundaries it marks hold, then without them, which
    # adds what only they had split (mapped back over them) where nothing was found.
    found = _resolve(_candidates(invisible.sub(" ", form), regions))
    kept = [i for i, char in enumerate(form) if not invisible.match(char)]
    joined = _resolve(_candidates("".join(form[i] for i in kept), regions))
    for s in joined:
        start, end = kept[s.start], kept[s.end - 1] + 1
        if all(end <= f.start or start >= f.end for f in found):
            found.append(Span(s.type, start, end, s.score))
    return sorted(found, key=lambda span: span.start)


def ascii_form(text: str) -> str:
    """Return ``text`` with the digits of every script ("４", "٤", "४", "𝟒"), the
    full-width forms of ASCII ("＋", "（", "＠"), every space ("\u00a0", "\u202f") and
    the hyphens ("\u2010", "\u2011", the figure dash, "−") as ASCII, one character for one.
    Not the en or em dash: Claude writes ranges with them ("1947–1991"), which the phone
    finder would take for a number.

    A card number typed on a Japanese keyboard, in Arabic-Indic digits, or pasted with
    no-break spaces, is read by Claude as any other: the finders must see it too.
    """
    return text if text.isascii() else text.translate(_unicode_forms()[0])


# Hyphens other than ASCII's: "\u2010", the non-breaking "\u2011", the figure dash (for
# digits), the minus sign, the small hyphen-minus.
HYPHENS = (0x2010, 0x2011, 0x2012, 0x2212, 0xFE63)


@functools.cache
def _unicode_forms() -> tuple[dict[int, str], re.Pattern[str]]:
    # Built once, on the first text that is not ASCII, in one pass over Unicode (0.1 to
    # 0.2 s): ``ascii_form``'s table (the decimal digits, about 650 characters; the spaces,
    # category Zs, and ``HYPHENS``; the full-width block
    # U+FF01-FF5E and the ideographic full stops), and the format characters (category Cf:
    # zero-width space and joiners, the soft hyphen, bidirectional marks), which a text
    # shows as nothing.
    table: dict[int, str] = {}
    invisible = []
    for code in range(0x80, sys.maxunicode + 1):
        char = chr(code)
        if (digit := unicodedata.decimal(char, None)) is not None:
            table[code] = str(digit)
        elif (category := unicodedata.category(char)) == "Zs":
            table[code] = " "
        elif category == "Cf":
            invisible.append(char)
    table.update({code: chr(code - 0xFEE0) for code in range(0xFF01, 0xFF5F)})
    table.update(dict.fromkeys(HYPHENS, "-"))
    table.update({0x3002: ".", 0xFF61: "."})
    return table, re.compile(f"[{re.escape(''.join(invisible))}]")
