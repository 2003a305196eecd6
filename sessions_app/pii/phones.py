"""Phone numbers: international ``+`` numbers of any country, national ones of chosen regions.

Candidates come from one cheap regex; only those that pass shape checks reach ``phonenumbers``
(about 60 µs a call), and a national candidate is tried only in regions whose numbering plan
allows its length.
"""

import re
from collections.abc import Iterator, Sequence
from functools import cache
from typing import NamedTuple

from phonenumbers import (
    COUNTRY_CODE_TO_REGION_CODE,
    PhoneMetadata,
    PhoneNumber,
    is_valid_number_for_region,
    re_util,
)

# phonenumbers recompiles its metadata's patterns on every call unless told to keep them.
re_util.enable_pattern_cache()

# Six digits at least (seven with a "(0)"): the shorter runs of every message (years, counts,
# prices) are never handed to Python. Each repetition takes exactly one digit.
# An extension ("x123", "ext. 45") is part of the span but not of the number validated.
PHONE_CANDIDATE = re.compile(
    r"(?<![\w+.\-/:])\+?\(?\d(?:[ \t.\-]?(?:\(0\)[ \t]?)?\(?\d\)?){5,}"
    r"(?P<ext>[ \t]?(?:x|ext\.?)[ \t]?\d{1,6})?(?![\w\-]|\.\d|/\d|:\d)"
)
_NOT_DIGITS = str.maketrans("", "", " \t.-()+")
# Shapes that are digits but not phone numbers: dates, SSN-shaped runs, dotted version strings.
NOT_PHONE = re.compile(
    r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}|\d{3}[- ]\d{2}[- ]\d{4}"
    r"|\d{1,3}(?:\.\d{1,3}){2,3}"
)
PHONE_CONTEXT = re.compile(
    r"(?i)(?:\b(?:call|phone|tel|telephone|mobile|cell|cellphone|landline|fax|whatsapp|text|sms"
    r"|reach|ring|dial|number|contact|no|nr|num)\b|ph|#)[^\w]{0,4}(?:\w+[^\w]{1,3}){0,4}$"
)
NOT_PHONE_CONTEXT = re.compile(
    r"(?i)\b(?:order|invoice|tracking|ticket|case|ref|reference|account|acct|customer|sku|item"
    r"|id|po|confirmation|booking|serial|policy|member|transaction|receipt|pin|code|otp|part"
    r"|model|product|isbn|population|total|build|version)\b"
    r"[^\w]{0,4}(?:(?:no|nr|number|num|id|is|was)\b[^\w]{0,4})*$"
)
GROUP_SPLIT = re.compile(r"[ \t.\-]+|(?<=\))")
THOUSANDS = re.compile(r"\d{1,3}(?:[ ,.]\d{3})+")
MIN_DIGITS, MAX_DIGITS = 7, 15


class _Plan(NamedTuple):
    country_code: int
    national_prefix: str
    lengths: frozenset[int]
    pattern: re.Pattern[str]


@cache
def _plan(region: str) -> _Plan:
    # Immutable numbering-plan metadata, keyed by region code: no conversation data is cached.
    metadata = PhoneMetadata.metadata_for_region(region)
    if metadata is None:
        raise ValueError(f"unknown phone region {region!r}")
    general = metadata.general_desc
    return _Plan(
        metadata.country_code,
        metadata.national_prefix or "",
        frozenset(general.possible_length),
        re.compile(general.national_number_pattern),
    )


def _number(country_code: int, national: str) -> PhoneNumber:
    # Built directly: phonenumbers.parse costs ~50 µs, mostly re-reading the formatting.
    zeros = len(national) - len(national.lstrip("0"))
    return PhoneNumber(
        country_code=country_code,
        national_number=int(national),
        italian_leading_zero=zeros > 0 or None,
        number_of_leading_zeros=zeros if zeros > 1 else None,
    )


def _valid_national(digits: str, region: str) -> bool:
    """Tell whether ``digits``, as dialled inside ``region``, is a valid number there."""
    plan = _plan(region)
    prefix = plan.national_prefix
    trunk_dropped = digits[len(prefix) :] if prefix and digits.startswith(prefix) else ""
    return any(_valid_for(national, region) for national in (digits, trunk_dropped) if national)


def _valid_international(digits: str) -> bool:
    """Tell whether ``digits`` (after the "+") are a valid number of some country."""
    for width in (1, 2, 3):
        regions = COUNTRY_CODE_TO_REGION_CODE.get(int(digits[:width]))
        if regions:
            national = digits[width:]
            return any(r != "001" and _valid_for(national, r) for r in regions)
    return False


def _valid_for(national: str, region: str) -> bool:
    plan = _plan(region)
    if len(national) not in plan.lengths or not plan.pattern.fullmatch(national):
        return False
    return is_valid_number_for_region(_number(plan.country_code, national), region)


def _national_ok(text: str, start: int, candidate: str, digits: str) -> bool:
    before = text[max(0, start - 40) : start]
    if NOT_PHONE_CONTEXT.search(before):
        return False
    groups = GROUP_SPLIT.split(candidate.strip("()"))
    # "0033 1 23 45 67 89": dialled from abroad, the groups are the "+" number's, whose
    # area code may be one digit.
    abroad = digits[:2] == "00" and digits[2:3] != "0"
    if not abroad and any(len(g.strip("()")) < 2 for g in groups[1:]):
        return False  # "20240101.3", "555-12 34": a phone's later groups have 2+ digits
    # Digits alone, or grouped by thousands ("8 336 817"), are ids or amounts as often as
    # phones: ask for a phone word before them.
    if len(digits) == len(candidate) or THOUSANDS.fullmatch(candidate):
        return bool(PHONE_CONTEXT.search(before))
    return True


def find_phones(text: str, regions: Sequence[str]) -> Iterator[tuple[int, int, float]]:
    """Yield ``(start, end, score)`` of each valid phone number in ``text``."""
    for match in PHONE_CANDIDATE.finditer(text):
        start = match.start()
        extension = match.start("ext")
        candidate = text[start : extension if extension >= 0 else match.end()]
        digits = candidate.translate(_NOT_DIGITS)
        if not MIN_DIGITS <= len(digits) <= MAX_DIGITS or NOT_PHONE.fullmatch(candidate):
            continue
        end = match.end()
        if candidate.startswith("+"):
            # "+44 (0)20 ...": the bracketed trunk zero is not dialled from abroad
            dialled = candidate.replace("(0)", "", 1).translate(_NOT_DIGITS)
            if _valid_international(dialled):
                yield start, end, 0.95
            continue
        if not _national_ok(text, start, candidate, digits):
            continue
        if any(_valid_national(digits, r) for r in regions):
            yield start, end, 0.8
        elif digits[:2] == "00" and digits[2:3] != "0" and _valid_international(digits[2:]):
            yield start, end, 0.8  # "0044 20 7946 0958": 00 is the "+" dialled from Europe
