"""Identifiers with a checkable structure: e-mail, cards, SSNs, IBANs, IP addresses.

Each finder matches a cheap regex, then validates the match (real top-level domain, Luhn and
issuer prefix, SSA rules, IBAN length and mod 97, ``ipaddress``) before yielding it.
"""

import ipaddress
import re
from collections.abc import Iterator

from stdnum import iban, luhn
from stdnum.us import ssn

from .gazetteer import TLDS

Found = Iterator[tuple[int, int, float]]

EMAIL = re.compile(
    r"(?<![\w.+\-])[A-Za-z0-9](?:[A-Za-z0-9._%+\-]{0,62}[A-Za-z0-9_%+\-])?"
    r"@((?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z][A-Za-z0-9\-]{1,62})"
    r"(?![\w\-@]|\.[A-Za-z0-9])"
)


def find_emails(text: str) -> Found:
    """Yield e-mail addresses whose domain ends in a delegated top-level domain."""
    for match in EMAIL.finditer(text):
        local = match.group()[: match.start(1) - match.start() - 1]
        tld = match.group(1).rsplit(".", 1)[1].lower()
        if ".." not in local and tld in TLDS:
            yield match.start(), match.end(), 1.0


CARD = re.compile(
    r"\d(?<![\w\-.]\d)(?:\d{3}([ \-])\d{4}\1\d{4}\1\d{4}(?:\1\d{3})?|\d{3}([ \-])\d{6}\2\d{4,5}"
    r"|\d{12,18})(?![\w\-]|\.\d)"
)
# (first digits, allowed lengths) of the networks that issue cards, after ISO/IEC 7812 tables.
ISSUERS: tuple[tuple[tuple[int, int], frozenset[int]], ...] = (
    ((4, 4), frozenset({13, 16, 19})),  # Visa
    ((51, 55), frozenset({16})),  # Mastercard
    ((2221, 2720), frozenset({16})),  # Mastercard 2-series
    ((34, 34), frozenset({15})),  # American Express
    ((37, 37), frozenset({15})),
    ((6011, 6011), frozenset({16, 17, 18, 19})),  # Discover
    ((644, 649), frozenset({16, 17, 18, 19})),
    ((65, 65), frozenset({16, 17, 18, 19})),
    ((3528, 3589), frozenset({16, 17, 18, 19})),  # JCB
    ((2131, 2131), frozenset({15})),  # JCB's older 15-digit ranges
    ((1800, 1800), frozenset({15})),
    ((300, 305), frozenset({14, 15, 16, 17, 18, 19})),  # Diners Club
    ((36, 36), frozenset({14, 15, 16, 17, 18, 19})),
    ((38, 39), frozenset({16, 17, 18, 19})),
    ((62, 62), frozenset({16, 17, 18, 19})),  # UnionPay
    ((50, 50), frozenset(range(12, 20))),  # Maestro
    ((56, 58), frozenset(range(12, 20))),
    ((67, 67), frozenset(range(12, 20))),
)


_ISSUER_WIDTHS = tuple((low, high, len(str(low)), lengths) for (low, high), lengths in ISSUERS)
_NOT_DIGITS = str.maketrans("", "", " -")


def _issued(digits: str) -> bool:
    count = len(digits)
    return any(
        count in lengths and low <= int(digits[:width]) <= high
        for low, high, width, lengths in _ISSUER_WIDTHS
    )


def find_cards(text: str) -> Found:
    """Yield card numbers that pass Luhn and start with a card network's prefix."""
    for match in CARD.finditer(text):
        digits = match.group().translate(_NOT_DIGITS)
        if _issued(digits) and luhn.is_valid(digits):
            yield match.start(), match.end(), 1.0


SSN = re.compile(r"(\d(?<![\w\-.]\d)\d{2})([\- ]?)(\d{2})\2(\d{4})(?![\w\-]|\.\d)")
SSN_CONTEXT = re.compile(r"(?i)\b(?:ssn|ss#|social\s+security(?:\s+number)?|ssa)\b\D{0,20}$")


def find_ssns(text: str) -> Found:
    """Yield US social security numbers valid under the SSA's rules.

    Separators must agree ("123-45-6789" or "123 45 6789"); nine bare digits count only after
    "SSN" or "social security", since order numbers look the same.
    """
    for match in SSN.finditer(text):
        if not ssn.is_valid(match.group(1) + match.group(3) + match.group(4)):
            continue
        context = SSN_CONTEXT.search(text, max(0, match.start() - 40), match.start())
        if match.group(2) == "-" or context:
            yield match.start(), match.end(), 0.95 if context else 0.9
        elif match.group(2) == " ":
            yield match.start(), match.end(), 0.7


# The look-behind follows the first letter so that the scan can skip to capitals.
IBAN = re.compile(r"[A-Z](?<![A-Za-z0-9].)[A-Z]\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")


def _mod97(candidate: str) -> bool:
    # A cheap first check before stdnum's, which also knows each country's length and format.
    compact = candidate.replace(" ", "")
    digits = "".join(str(int(c, 36)) for c in compact[4:] + compact[:4])
    return int(digits) % 97 == 1


def find_ibans(text: str) -> Found:
    """Yield IBANs whose length fits their country and whose mod-97 check holds."""
    for match in IBAN.finditer(text):
        candidate = match.group()
        # The pattern may run into a following word ("... 00 CASH"): drop groups until valid.
        while len(candidate) >= 15:
            if _mod97(candidate) and iban.is_valid(candidate):
                yield match.start(), match.start() + len(candidate), 1.0
                break
            cut = candidate.rfind(" ")
            if cut < 0:
                break
            candidate = candidate[:cut]


IPV4 = re.compile(r"\d(?<![\w.]\d)(?:\d{0,2}\.)(?:\d{1,3}\.){2}\d{1,3}(?![\w]|\.\d)")
IPV6 = re.compile(
    r"(?<![\w:.])(?=[0-9A-Fa-f:]*:[0-9A-Fa-f]*:)[0-9A-Fa-f:]{2,39}(?:(?<=:)\d{1,3}(?:\.\d{1,3}){3})?"
    r"(?:%[\w]+)?(?![\w:])"
)
# Dotted numbers after these are versions or section numbers, not addresses.
VERSION_CONTEXT = re.compile(
    r"(?i)(?:\bv|\bversion|\bver\.?|\brelease|\bbuild|\bsection|\bchapter|\bclause|§"
    r"|\bstep|\bfigure|\bfig\.|\btable|\bpara(?:graph)?)\s*$"
)


def find_ips(text: str) -> Found:
    """Yield IPv4 and IPv6 addresses that ``ipaddress`` accepts (not version numbers)."""
    for match in IPV4.finditer(text):
        if VERSION_CONTEXT.search(text, max(0, match.start() - 14), match.start()):
            continue
        try:
            ipaddress.IPv4Address(match.group())
        except ValueError:
            continue
        yield match.start(), match.end(), 0.95
    if ":" not in text:
        return
    for match in IPV6.finditer(text):
        address = match.group().split("%", 1)[0]
        # "a::b" or "dead::beef" validate but are rarely addresses: ask for a digit, or 3 groups.
        if not any(c.isdigit() for c in address) and address.count(":") < 3:
            continue
        try:
            ipaddress.IPv6Address(address)
        except ValueError:
            continue
        yield match.start(), match.end(), 0.95
