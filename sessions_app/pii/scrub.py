"""Replace detected personal data: irreversibly (redact) or by per-session placeholders.

A vault maps placeholders to originals for one session ("<EMAIL_ADDRESS_1>" -> "a@b.com"). The
functions here only read the vault they are given and return new entries; storing and
encrypting the vault is the caller's job.
"""

import re
from collections.abc import Callable, Mapping, Sequence

from .detectors import DEFAULT_REGIONS, ENTITY_TYPES, Span, detect

MODES = ("off", "redact", "pseudonymize")
PLACEHOLDER = re.compile(r"<(" + "|".join(ENTITY_TYPES) + r")_([1-9]\d{0,8})>")


def placeholder_for(kind: str, number: int) -> str:
    """Return the placeholder of the ``number``-th value of type ``kind`` in a session."""
    return f"<{kind}_{number}>"


def _outside_placeholders(text: str, spans: list[Span]) -> list[Span]:
    # A placeholder already in the text is never detected again ("<PERSON_1>" stays as it is).
    taken = [m.span() for m in PLACEHOLDER.finditer(text)] if "<" in text else []
    return [s for s in spans if all(s.end <= a or s.start >= b for a, b in taken)]


def spans_to_scrub(text: str, *, regions: Sequence[str] = DEFAULT_REGIONS) -> list[Span]:
    """Return the personal data in ``text`` that scrubbing replaces (placeholders excluded)."""
    return _outside_placeholders(text, detect(text, regions=regions))


def _replace(text: str, spans: Sequence[Span], replacement: Callable[[Span], str]) -> str:
    parts, position = [], 0
    for span in spans:
        parts += [text[position : span.start], replacement(span)]
        position = span.end
    parts.append(text[position:])
    return "".join(parts)


def redact_spans(text: str, spans: Sequence[Span]) -> str:
    """Return ``text`` with each of ``spans`` replaced by its type, "[EMAIL_ADDRESS]"."""
    return _replace(text, spans, lambda span: f"[{span.type}]")


def redact(text: str, *, regions: Sequence[str] = DEFAULT_REGIONS) -> str:
    """Return ``text`` with every detected value replaced by "[TYPE]", irreversibly."""
    return redact_spans(text, _outside_placeholders(text, detect(text, regions=regions)))


# An original shorter than this is not looked for again without a cue: too many words.
KNOWN_MIN_CHARS = 3


def with_known_values(text: str, spans: Sequence[Span], vault: Mapping[str, str]) -> list[Span]:
    """Return ``spans`` with every other occurrence in ``text`` of an original ``vault``
    holds, as a whole word or more, where no span or placeholder is already.

    A value found once (a name after "my name is", say) is this session's personal data
    wherever it comes again, cue or not: the detector alone would send it on in the clear.
    The match is exact, case included.
    """
    originals: dict[str, str] = {}
    for key, original in vault.items():
        if (match := PLACEHOLDER.fullmatch(key)) and len(original) >= KNOWN_MIN_CHARS:
            originals.setdefault(original, match.group(1))
    if not originals:
        return list(spans)
    longest_first = sorted(originals, key=len, reverse=True)
    pattern = r"(?<!\w)(?:" + "|".join(map(re.escape, longest_first)) + r")(?!\w)"
    taken = [(s.start, s.end) for s in spans] + [m.span() for m in PLACEHOLDER.finditer(text)]
    again = [
        Span(originals[m.group()], m.start(), m.end(), 1.0)
        for m in re.finditer(pattern, text)
        if all(m.end() <= start or m.start() >= end for start, end in taken)
    ]
    return sorted([*spans, *again], key=lambda span: span.start)


# Numbers past this are not reserved: the numbering goes on past a reserved one, and one
# near the pattern's nine digits would make every new value of its type collide, or
# overflow into a key no pattern reads. No session numbers that many values of a type.
RESERVED_MAX = 100_000


def holds_placeholder(text: str) -> bool:
    """Tell whether ``text`` holds a placeholder (cheaply: most texts have no "<")."""
    return "<" in text and PLACEHOLDER.search(text) is not None


def unknown_placeholders(text: str, vault: Mapping[str, str]) -> dict[str, str]:
    """Return the placeholders in ``text`` that ``vault`` does not hold, as reserved entries
    (an empty original): made up by the model, or typed by the user; numbers past
    ``RESERVED_MAX`` are left out.

    Kept in the vault, their numbers are never given to a real value later, which every
    restore of this text would then show in their place; ``restore`` leaves them as they are.
    """
    if not holds_placeholder(text):
        return {}
    return {
        m.group(): ""
        for m in PLACEHOLDER.finditer(text)
        if m.group() not in vault and int(m.group(2)) <= RESERVED_MAX
    }


def pseudonymize_spans(
    text: str, spans: Sequence[Span], *, vault: Mapping[str, str]
) -> tuple[str, dict[str, str]]:
    """Replace ``spans``, and the vault's originals wherever else they are, by placeholders
    of ``vault``; return the text and the new entries.

    A value already in the vault with the same type keeps its placeholder; a new one gets the
    next number of its type after the highest of a value the vault holds, skipping reserved
    ones. A placeholder the text held already and the vault does not is reserved
    (``unknown_placeholders``).
    """
    reserved = unknown_placeholders(text, vault)
    vault = {**vault, **reserved}
    spans = with_known_values(text, spans, vault)
    known = {
        (m.group(1), original): key
        for key, original in vault.items()
        if (m := PLACEHOLDER.fullmatch(key))
    }
    # Counted from the values only: a reserved number counted would send the next value past
    # RESERVED_MAX, onto a typed placeholder no reservation holds, which restores would fill.
    highest: dict[str, int] = {}
    for key, original in vault.items():
        if original and (match := PLACEHOLDER.fullmatch(key)):
            highest[match.group(1)] = max(highest.get(match.group(1), 0), int(match.group(2)))
    new: dict[str, str] = {}

    def replacement(span: Span) -> str:
        original = text[span.start : span.end]
        if (span.type, original) not in known:
            number = highest.get(span.type, 0) + 1
            while placeholder_for(span.type, number) in vault:  # reserved: typed or made up
                number += 1
            highest[span.type] = number
            key = placeholder_for(span.type, number)
            known[span.type, original] = key
            new[key] = original
        return known[span.type, original]

    return _replace(text, spans, replacement), {**reserved, **new}


def pseudonymize(
    text: str, *, vault: Mapping[str, str], regions: Sequence[str] = DEFAULT_REGIONS
) -> tuple[str, dict[str, str]]:
    """Return ``text`` with placeholders for its personal data, and the vault's new entries."""
    return pseudonymize_spans(text, spans_to_scrub(text, regions=regions), vault=vault)


def restore(text: str, *, vault: Mapping[str, str]) -> str:
    """Put the originals back for the placeholders of ``vault``; leave any other as it is.

    A placeholder the model invented, or one of another session, does not resolve here.
    """
    if "<" not in text or not vault:
        return text
    # A reserved placeholder (an empty original) stays as it is too.
    return PLACEHOLDER.sub(lambda m: vault.get(m.group()) or m.group(), text)


def scrub_reply(
    text: str, *, vault: Mapping[str, str], mode: str, regions: Sequence[str] = DEFAULT_REGIONS
) -> str:
    """Scrub a model's reply before it is stored.

    Placeholders stay. In "pseudonymize" mode a detected value that is an original of this
    vault becomes its placeholder and any other is redacted ("[TYPE]"); in "redact" mode all
    are redacted; "off" returns ``text`` unchanged.
    """
    if mode not in MODES:
        raise ValueError(f"unknown PII mode {mode!r}, expected one of {MODES}")
    if mode == "off":
        return text
    return scrub_reply_spans(text, spans_to_scrub(text, regions=regions), vault=vault, mode=mode)


def scrub_reply_spans(
    text: str, spans: Sequence[Span], *, vault: Mapping[str, str], mode: str
) -> str:
    """``scrub_reply`` with the spans ``spans_to_scrub`` already found in ``text``."""
    if mode == "redact":
        return redact_spans(text, spans)
    spans = with_known_values(text, spans, vault)
    by_value: dict[str, str] = {}
    same_type: dict[tuple[str, str], str] = {}
    for key, original in vault.items():
        if match := PLACEHOLDER.fullmatch(key):
            by_value.setdefault(original, key)
            same_type[match.group(1), original] = key

    def replacement(span: Span) -> str:
        value = text[span.start : span.end]
        return same_type.get((span.type, value)) or by_value.get(value) or f"[{span.type}]"

    return _replace(text, spans, replacement)
