"""Fingerprints of text: distinctive tokens and bigrams, keyed hashes, scoring. Pure: no Django.

A *feature* is a normalised token or pair of adjacent tokens that could point to one
person's data: a word outside everyday vocabulary, a long number, a code like ``A7X9``,
a capitalised name pair. Everyday words, short numbers and pseudonymisation placeholders
are never features: a model produces them on its own, so they prove nothing.
"""

import hashlib
import hmac
import re
import threading
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import NamedTuple

from wordfreq import get_frequency_list, zipf_frequency
from wordfreq.numbers import smash_numbers

from sessions_app.pii import detectors as pii_detectors
from sessions_app.pii import gazetteer

# `<EMAIL_ADDRESS_1>` (pseudonymize) and `[EMAIL_ADDRESS]` (redact).
PLACEHOLDER = re.compile(r"<[A-Z][A-Z_]*_\d+>|\[[A-Z][A-Z_]*\]")
# Digit groups joined by hyphens are one number (phones, order numbers); dates are not,
# nor ranges (``_range``: "1947-1991", "pages 210-245"; nor any with the en dash, which is
# no hyphen). Groups joined by spaces are one number only in the shapes of one
# (``_one_number``): a card "4539 1488 0343 6467", an SSN "123 45 6789", a phone "020 7946
# 0958" or "+44 20 7946 0958", North America's "415 555 2671" after a word saying it is a
# phone ("call", "number"); not a count "10 20 30 40", an amount "125 000 000", a date
# and time. Groups joined by dots never are (addresses, versions, dates), and a decimal's
# fraction is no number ("3.14159265"). The hyphens and spaces are those the PII detector
# reads as ASCII's, the full-width hyphen-minus included: what it protects in a message,
# the scan must see in a reply.
DASHES = "-\uff0d" + pii_detectors.HYPHENS
SPACES = " " + pii_detectors.SPACES
TOKEN = re.compile(rf"\d+(?:[{DASHES}]\d+)+|\+?\d+(?:[{SPACES}]\d+){{2,}}|\d+(?:\.\d+)+|[^\W_]+")
GROUP = re.compile(r"\d+")
YEAR = re.compile(r"1[89]\d\d|20\d\d")
DATE = re.compile(r"\d{4}-\d{1,2}-\d{1,2}|\d{1,2}-\d{1,2}-\d{2,4}")
_AS_HYPHEN = str.maketrans(dict.fromkeys(DASHES, "-"))
# The group lengths of a card (Visa and the like, Amex) and an SSN written with spaces
# (national phones: ``_one_number``).
NUMBER_SHAPES = frozenset({(4, 4, 4, 4), (4, 6, 5), (3, 2, 4)})
# An international phone ("+" and its groups) holds at least this many digits.
PHONE_DIGITS = 9
# What says that the number after it is a phone's ("call 415 555 2671", "my number is",
# "Tel.:"), read in the characters just before the number.
PHONE_CUE = re.compile(
    r"\b(?:call|dial|phone|telephone|tel|mobile|cell|fax|text|number|reach\s+me)"
    r"(?:\s+(?:is|at|on|me\s+at|me\s+on))?[\s.:#]*\Z",
    re.IGNORECASE,
)
PHONE_CUE_REACH = 24

LEAK_THRESHOLD = 1.0
# Words at least this frequent (Zipf scale: 3 is about once per million words) are
# everyday vocabulary for the model, whoever else used them.
COMMON_ZIPF = 3.5
RARE_ZIPF = 2.5
# A capitalised pair counts as a name only if one half is not a very common word:
# "John Smith" and "New York" are what a model writes as examples by itself.
NAME_PART_ZIPF = 4.5


@dataclass(frozen=True)
class Feature:
    """A normalised token or bigram of a text, where it is, and how much it proves."""

    text: str
    start: int
    end: int
    weight: float


@dataclass(frozen=True)
class Posting:
    """One user's session that introduced a feature (None: several of the user's)."""

    user_id: int
    session_id: str | None


@dataclass(frozen=True)
class Evidence:
    """A feature of the scanned text that only other users introduced."""

    start: int
    end: int
    weight: float
    introduced_by: tuple[Posting, ...]


@dataclass(frozen=True)
class ScanResult:
    leaked: bool
    score: float
    evidence: list[Evidence] = field(default_factory=list)
    # The text scanned and its keyed digests, so that registering that same text reuses
    # them; never in a repr (a log line must not carry the text).
    text: str = field(default="", repr=False)
    digests: tuple[bytes, ...] = field(default=(), repr=False)


class _Token(NamedTuple):
    # A tuple, not a dataclass: a reply has dozens of tokens and each scan builds them all.
    text: str
    start: int
    end: int
    capitalised: bool


# NamedTuple's own constructor is Python code; tuple's is not (same object, same fields).
_new_token = tuple.__new__


# The languages whose everyday words are no evidence, when none are configured.
DEFAULT_LANGUAGES = ("en",)
# Languages that capitalise every noun: there two capitalised words in a row ("Ihren
# Ausweis", "Die Straße") are no sign of a name.
CAPITALISED_NOUNS = frozenset({"de"})


class Vocabulary:
    """Everyday words of some languages, each with its Zipf frequency (the highest of the
    languages that have it): what a model writes in those languages by itself."""

    def __init__(self, languages: tuple[str, ...]) -> None:
        self.languages = languages
        # wordfreq's lists as word -> Zipf (bucket i holds the words of Zipf 9 - i/100), each
        # word keyed as the tokenizer normalises it: a fixed table, the same for every process
        # and user. One dict lookup replaces zipf_frequency's tokenizer and its cache, which
        # would keep every word ever asked about.
        table: dict[str, float] = {}
        capitalising: dict[str, float] = {}  # the languages that capitalise their nouns
        for language in languages:
            into = capitalising if language in CAPITALISED_NOUNS else table
            for index, bucket in enumerate(get_frequency_list(language)):
                zipf = round(9 - index / 100, 2)
                for word in bucket:
                    key = _key(word)
                    if into.get(key, -1.0) < zipf:
                        into[key] = zipf
        # Their everyday words ("Ihren", "Ausweis", "Problem", but "Anna" and "Schmidt" too).
        self.capitalised = frozenset(k for k, zipf in capitalising.items() if zipf >= RARE_ZIPF)
        for key, zipf in capitalising.items():
            if table.get(key, -1.0) < zipf:
                table[key] = zipf
        self.table = table
        # wordfreq keeps every list it read (its own cache): the table holds what we need.
        get_frequency_list.cache_clear()

    def zipf(self, word: str) -> float:
        """Return ``word``'s Zipf frequency in the most frequent of the languages."""
        zipf = self.table.get(word)
        if zipf is not None:
            return zipf
        # An ASCII token outside the lists is one wordfreq token it does not know (Zipf 0),
        # also with its digit runs read as zeros, as wordfreq reads them: codes and ids end here.
        if word.isascii() and (word.isalpha() or smash_numbers(word) not in self.table):
            return 0.0
        # Other scripts: wordfreq's own tokenizer decides, in the first language alone (each
        # one asked would load that language's whole dictionary once more, 50 to 250 MB).
        return zipf_frequency(word, self.languages[0])


def _key(word: str) -> str:
    # A list's word as the scan reads a token: ASCII as it is; else read past the characters
    # it shows as nothing (Persian's zero-width non-joiner), then ``_normalised``.
    if word.isascii():
        return word
    readings = pii_detectors.invisible_readings(word)
    return _normalised(readings[-1].text if readings else word)


# One build at a time: threads making their first scans at once would each build their own.
_BUILDING = threading.Lock()


def vocabulary(languages: tuple[str, ...] = DEFAULT_LANGUAGES) -> Vocabulary:
    """Return the everyday vocabulary of ``languages``: wordfreq's codes, e.g. ``("en", "de")``,
    of languages it can look words up in without a tokenizer of its extras (not ja, ko, zh)."""
    with _BUILDING:
        return _vocabulary(languages)


@cache
def _vocabulary(languages: tuple[str, ...]) -> Vocabulary:
    return Vocabulary(languages)


def _normalised(raw: str) -> str:
    # As the scan reads a token that is not ASCII: digits of other scripts as ASCII's, as the
    # PII detector reads them, then NFKC and casefold ("Straße" is "strasse"); Turkish's i's
    # as one: casefold's dotted "i̇" of the capital "İ" and the dotless "ı", which casefold
    # leaves where the capital "I" is "i" ("İstanbul", "IŞIK", "Işık" and "ışık" meet).
    folded = unicodedata.normalize("NFKC", pii_detectors.ascii_form(raw)).casefold()
    if "\u0307" in folded:
        folded = folded.replace("i\u0307", "i")
    return folded.replace("ı", "i") if "ı" in folded else folded


def _readings(text: str) -> list[tuple[list[_Token], list[int] | None]]:
    """The tokens of each reading of ``text``, in that reading's offsets, with the index in
    ``text`` of each of its characters (None: ``text``'s own): one reading, or where it holds
    characters it shows as nothing, the three the PII detector makes of a message
    (``detectors.invisible_readings``)."""
    text = _placeholders_blanked(text)
    readings = pii_detectors.invisible_readings(text)
    if readings is None:
        return [(_read(text), None)]
    return [(_read(reading.text), reading.at) for reading in readings]


def _placeholders_blanked(text: str) -> str:
    # Each placeholder a run of spaces, one for each of its characters: it proves nothing,
    # nor does one written with an invisible character inside ("<EMAIL\u200b_ADDRESS_1>").
    if "<" not in text and "[" not in text:
        return text
    text = PLACEHOLDER.sub(lambda m: " " * len(m.group()), text)
    readings = pii_detectors.invisible_readings(text)
    if readings is None:
        return text
    bare = readings[-1]  # every invisible character read past
    chars = list(text)
    for match in PLACEHOLDER.finditer(bare.text):
        start, end = bare.at[match.start()], bare.at[match.end() - 1] + 1
        chars[start:end] = " " * (end - start)
    return "".join(chars)


def _tokens(text: str) -> list[_Token]:
    return [token for tokens, _ in _readings(text) for token in tokens]


def _read(text: str) -> list[_Token]:
    tokens = []
    for match in TOKEN.finditer(text):
        raw = match.group()
        if raw.isalnum():
            raw_norm = raw
        elif (joint := " " if raw[0] == "+" else raw[GROUP.match(raw).end()]) in DASHES:
            groups = _ascii_groups(raw)
            if DATE.fullmatch(raw.translate(_AS_HYPHEN)):
                continue
            if _range(groups):
                _each_group(tokens, match)
                continue
            raw_norm = "".join(groups)
        elif joint == ".":
            # Several numbers, each a token; of a decimal, its whole part alone.
            _each_group(tokens, match, fraction=_decimal(_ascii_groups(raw)))
            continue
        elif _one_number(raw, groups := _ascii_groups(raw), text, match.start()):
            raw_norm = "".join(groups)
        else:  # several numbers: each group a token of its own
            _each_group(tokens, match)
            continue
        # NFKC leaves ASCII as it is, and casefold is lower there: skip both for most words.
        norm = raw_norm.lower() if raw_norm.isascii() else _normalised(raw_norm)
        start, end = match.span()
        tokens.append(_new_token(_Token, (norm, start, end, raw[:1].isupper())))
    return tokens


def _each_group(tokens: list[_Token], match: re.Match[str], *, fraction: bool = False) -> None:
    # Each digit group of ``match`` a token of its own, in ASCII digits; with ``fraction``,
    # but the last.
    at = match.start()
    groups = list(GROUP.finditer(match.group()))
    for group in groups[:-1] if fraction else groups:
        start, end = at + group.start(), at + group.end()
        digits = pii_detectors.ascii_form(group.group())  # every \d is a decimal digit it maps
        tokens.append(_new_token(_Token, (digits, start, end, False)))


def _ascii_groups(raw: str) -> list[str]:
    # The digit groups of ``raw`` in ASCII digits, as the PII detector reads every script's.
    groups = GROUP.findall(raw)
    return groups if raw.isascii() else [pii_detectors.ascii_form(group) for group in groups]


def _decimal(groups: list[str]) -> bool:
    # A whole part and a fraction, which proves nothing: a constant "3.14159265", a result
    # "1096.63316", an amount "2500.00000000", a vector "[0.7071, -0.7071]", a landmark's
    # coordinates; the whole part stays a number ("12345678.90"). Not a zero-led code
    # "030.12345678" (a phone), whose groups are numbers of their own.
    whole = groups[0]
    return len(groups) == 2 and not (len(whole) > 1 and whole[0] == "0")


def _range(groups: list[str]) -> bool:
    # Two years, or two numbers of three digits or fewer, the second the greater: a range
    # ("1947-1991", "200-400 mg", "pages 210-245"), which Claude writes for anyone.
    if len(groups) != 2 or int(groups[0]) >= int(groups[1]):
        return False
    short = len(groups[0]) <= 3 and len(groups[1]) <= 3
    return short or all(YEAR.fullmatch(group) for group in groups)


def _one_number(raw: str, groups: list[str], text: str, at: int) -> bool:
    # ``raw``, found in ``text`` at ``at``, is one number.
    if raw[0] == "+":
        return sum(len(group) for group in groups) >= PHONE_DIGITS
    shape = tuple(len(group) for group in groups)
    if shape == (3, 4, 4):  # as a phone of the United Kingdom: a trunk 0
        return groups[0][0] == "0"  # not "720 1080 1440"
    if shape == (3, 3, 4):
        # North America's, only after a word that says it is a phone number: "480 720 1080"
        # and "256 512 1024" have its shape; its area code and exchange start with 2 to 9.
        plan = groups[0][0] in "23456789" and groups[1][0] in "23456789"
        # Searched in place: a word cut by a slice would read as a cue ("Sub|text").
        return plan and PHONE_CUE.search(text, max(at - PHONE_CUE_REACH, 0), at) is not None
    return shape in NUMBER_SHAPES


def token_weight(word: str, words: Vocabulary | None = None) -> float:
    """Return how much a single normalised token proves (0: nothing), judged against the
    everyday ``words`` (English's when None)."""
    if word.isdigit():
        return 1.0 if len(word) >= 7 else 0.5 if len(word) >= 5 else 0.0
    if len(word) < 4:
        return 0.0
    zipf = (words or vocabulary()).zipf(word)
    if not word.isalpha() and any(ch.isdigit() for ch in word):
        return 1.0 if zipf < RARE_ZIPF else 0.0
    if zipf == 0.0:
        return 1.0
    return 0.6 if zipf < RARE_ZIPF else 0.3 if zipf < COMMON_ZIPF else 0.0


def _house_number(a: _Token, b: _Token) -> bool:
    # "4821 Johnson": a number before a capitalised word, as in an address; not a year.
    if not (a.text.isdigit() and 2 <= len(a.text) <= 6 and b.capitalised and b.text.isalpha()):
        return False
    return len(b.text) >= 3 and not YEAR.fullmatch(a.text)


def _pair_weight(a: _Token, b: _Token, wa: float, wb: float, words: Vocabulary) -> float:
    # A pair proves more than its halves: the other user wrote both, in this order.
    if wa and wb:
        return 1.0
    if not (wa or wb or b.capitalised):  # most pairs: two everyday words, nothing to prove
        return 0.0
    if _house_number(a, b):
        return 1.0
    if (wa or wb) and min(len(a.text), len(b.text)) >= 3:
        return 1.0 if max(wa, wb) >= 0.5 else 0.6
    if _name_like(a, b, words):  # a name: weak unless one half is unusual
        return 0.6 if min(words.zipf(a.text), words.zipf(b.text)) < NAME_PART_ZIPF else 0.5
    return 0.0


def _name_like(a: _Token, b: _Token, words: Vocabulary) -> bool:
    both = (a, b)
    if not all(t.capitalised and t.text.isalpha() and len(t.text) >= 3 for t in both):
        return False
    # Not two everyday words of a language that capitalises its nouns ("Ihren Ausweis", "Das
    # Problem"), which a model writes in every other sentence there, unless the first is a
    # first name ("Anna Schmidt", "Sarah Johnson"). "Herr Müller" goes with them.
    if a.text in words.capitalised and b.text in words.capitalised:
        return a.text in gazetteer.FIRST_NAMES
    return True


def features(text: str, words: Vocabulary | None = None) -> list[Feature]:
    """Return the distinctive tokens and adjacent pairs of ``text``, with offsets, judged
    against the everyday ``words`` (English's when None)."""
    words = words or vocabulary()
    (tokens, _), *others = _readings(text)
    found = _features(tokens, words)
    if others:  # each feature once, at the most any reading gave it
        best = {(f.text, f.start, f.end): f for f in found}
        for tokens, at in others:
            for feature in _features(tokens, words):
                start, end = at[feature.start], at[feature.end - 1] + 1
                key = (feature.text, start, end)
                if key not in best or best[key].weight < feature.weight:
                    best[key] = Feature(feature.text, start, end, feature.weight)
        found = list(best.values())
    return found


def _features(tokens: list[_Token], words: Vocabulary) -> list[Feature]:
    # In the offsets of the reading the tokens come from: adjacency is the reading's.
    weights = [token_weight(t.text, words) for t in tokens]
    found = [Feature(t.text, t.start, t.end, w) for t, w in zip(tokens, weights, strict=True) if w]
    for i in range(len(tokens) - 1):
        a, b = tokens[i], tokens[i + 1]
        if b.start - a.end > 3:  # not adjacent: a sentence or clause apart
            continue
        weight = _pair_weight(a, b, weights[i], weights[i + 1], words)
        if weight:
            found.append(Feature(f"{a.text} {b.text}", a.start, b.end, weight))
    return found


def derive_key(secret: str, purpose: str) -> bytes:
    """Return a key for ``purpose`` derived from the server's ``secret``."""
    return hashlib.sha256(f"{purpose}:{secret}".encode()).digest()


def keyed_digest(key: bytes, feature_text: str) -> bytes:
    """Return the 8-byte keyed hash that stands for a feature in the index."""
    mac = _keyed(key).copy()  # HMAC-SHA256, its key schedule done once per key
    mac.update(feature_text.encode())
    return mac.digest()[:8]


@lru_cache(maxsize=4)
def _keyed(key: bytes) -> hmac.HMAC:
    return hmac.new(key, digestmod=hashlib.sha256)


def score(
    found: Iterable[Feature],
    postings: Mapping[str, list[Posting] | None],
    *,
    user_id: int,
    session_id: str,
    max_users: int,
) -> ScanResult:
    """Judge ``found`` against each feature's ``postings`` (None: too many users share it).

    Evidence is a feature that other users introduced and this user and this session never
    did. The text is leaked once the evidence's weights reach ``LEAK_THRESHOLD``.
    """
    evidence = []
    for feature in found:
        introduced = postings.get(feature.text)
        if not introduced:
            continue
        users = {p.user_id for p in introduced}
        if user_id in users or any(p.session_id == session_id for p in introduced):
            continue
        if len(users) > max_users:
            continue
        evidence.append(Evidence(feature.start, feature.end, feature.weight, tuple(introduced)))
    total = _total(evidence)
    return ScanResult(leaked=total >= LEAK_THRESHOLD, score=total, evidence=evidence)


def _total(evidence: list[Evidence]) -> float:
    # A bigram and its own tokens are one piece of evidence: count the strongest of
    # overlapping spans, so "Quince" inside "Bartholomew Quince" is not counted twice.
    total, covered = 0.0, []
    for item in sorted(evidence, key=lambda e: -e.weight):
        if any(item.start < end and start < item.end for start, end in covered):
            continue
        covered.append((item.start, item.end))
        total += item.weight
    return round(total, 3)
