"""Find personal data in text: one ``detect`` over all entity types, pure Python, no Django.

Each type's finder is skipped unless the text has the character it needs ("@", a digit, ":"),
so a plain chat message costs a few regex scans and set look-ups.
"""

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


_DROP_DIGITS = str.maketrans("", "", "0123456789")


def _candidates(text: str, regions: Sequence[str]) -> list[Span]:
    found: list[Span] = []

    def add(kind: str, hits: Iterable[tuple[int, int, float]]) -> None:
        found.extend(Span(kind, start, end, score) for start, end, score in hits)

    if "@" in text:
        add("EMAIL_ADDRESS", find_emails(text))
    # Each type needs so many digits: counting them once spares most finders most messages.
    digits = len(text) - len(text.translate(_DROP_DIGITS))
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
    if digits:
        add("LOCATION", find_streets(text))
    if digits >= 5:
        add("US_ZIP_CODE", find_zips(text))
    add("PERSON", find_persons(text))
    return found


def _resolve(spans: list[Span]) -> list[Span]:
    # Best first: higher score, then longer; a span overlapping one already kept is dropped.
    kept: list[Span] = []
    for span in sorted(spans, key=lambda s: (-s.score, s.start - s.end, s.start)):
        if all(span.end <= k.start or span.start >= k.end for k in kept):
            kept.append(span)
    return sorted(kept, key=lambda s: s.start)


def detect(text: str, *, regions: Sequence[str] = DEFAULT_REGIONS) -> list[Span]:
    """Return the personal data in ``text`` as sorted, non-overlapping spans.

    ``regions`` are the countries (ISO 3166 codes) whose national phone formats are accepted;
    international "+" numbers of any country are found whatever it holds.
    """
    if not text:
        return []
    return _resolve(_candidates(text, regions))
