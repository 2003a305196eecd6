"""Word lists the detectors look words up in, read once at import into frozensets.

Person names come from the US Census 1990 lists shipped by the ``names`` package plus a small
curated file of names from other cultures; common English words come from ``wordfreq``; top-level
domains from IANA's list in ``data/``. Nothing here changes after import.
"""

import math
import unicodedata
from importlib.resources import files
from pathlib import Path

from wordfreq import get_frequency_list

DATA = Path(__file__).resolve().parent / "data"

# A name's expected Zipf frequency in English text is about this plus log10 of its share of
# the population in percent (John: 3.27 % -> 5.0, and wordfreq says 5.4). A word used much more
# often than its name share explains ("will", "may", "white") is mostly an English word.
NAME_ZIPF_OFFSET = 4.5
COMMON_EXCESS = 1.0
# A lone name opening a sentence must be a name well beyond its use as a word ("Mark this").
AMBIGUOUS_EXCESS = 0.5
COMMON_MIN_ZIPF = 3.5
# Below this Zipf frequency a capitalised word after "my name is" is taken as a name.
KNOWN_WORD_ZIPF = 3.0
# Surnames this frequent (share in percent) are names even when they are English words too
# ("John White", "Grace Park"), but only right after another part of a name.
LAST_TOP_SHARE = 0.002


def fold(word: str) -> str:
    """Return ``word`` lower-cased, without accents or apostrophes (the lists' spelling)."""
    decomposed = unicodedata.normalize("NFKD", word.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c) and c not in "'’")


def _census(name: str) -> dict[str, float]:
    shares: dict[str, float] = {}
    text = (files("names") / name).read_text(encoding="ascii")
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            shares[parts[0].lower()] = float(parts[1])
    return shares


def _extra() -> tuple[set[str], set[str]]:
    sections: dict[str, set[str]] = {"first:": set(), "last:": set()}
    current = sections["first:"]
    for line in (DATA / "names_extra.txt").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line in sections:
            current = sections[line]
            continue
        current.update(fold(word) for word in line.split())
    return sections["first:"], sections["last:"]


def _english_zipf(max_zipf_bucket: float) -> dict[str, float]:
    # wordfreq's list is bucketed by centibels: bucket i holds words of Zipf 9 - i / 100.
    buckets = get_frequency_list("en")
    limit = int((9 - max_zipf_bucket) * 100) + 1
    return {word: 9 - i / 100 for i, bucket in enumerate(buckets[:limit]) for word in bucket}


def _build() -> tuple[frozenset[str], ...]:
    first_shares = _census("dist.male.first")
    for name, share in _census("dist.female.first").items():
        first_shares[name] = max(share, first_shares.get(name, 0.0))
    last_shares = _census("dist.all.last")
    extra_first, extra_last = _extra()
    zipf = _english_zipf(KNOWN_WORD_ZIPF)

    def is_common(name: str, share: float, excess: float = COMMON_EXCESS) -> bool:
        frequency = zipf.get(name, 0.0)
        expected = NAME_ZIPF_OFFSET + math.log10(max(share, 1e-4))
        return frequency >= COMMON_MIN_ZIPF and frequency - expected > excess

    curated_share = 0.1  # a curated name is taken as fairly common among people
    common = {n for n, s in first_shares.items() if is_common(n, max(s, last_shares.get(n, 0)))}
    common |= {n for n, s in last_shares.items() if is_common(n, max(s, first_shares.get(n, 0)))}
    common |= {n for n in extra_first | extra_last if is_common(n, curated_share)}
    common -= {n for n in extra_first | extra_last if not is_common(n, curated_share)}
    ambiguous = {n for n, s in first_shares.items() if is_common(n, s, AMBIGUOUS_EXCESS)} | {
        n for n in extra_first if is_common(n, curated_share, AMBIGUOUS_EXCESS)
    }
    return (
        frozenset(first_shares) | frozenset(extra_first),
        frozenset(last_shares) | frozenset(extra_last),
        frozenset(n for n, s in last_shares.items() if s >= LAST_TOP_SHARE) | frozenset(extra_last),
        frozenset(common),
        frozenset(ambiguous | common),
        frozenset(zipf),
    )


def _tlds() -> frozenset[str]:
    lines = (DATA / "tlds-alpha-by-domain.txt").read_text(encoding="ascii").splitlines()
    return frozenset(line.strip().lower() for line in lines if line and not line.startswith("#"))


(
    FIRST_NAMES,
    LAST_NAMES,
    FREQUENT_LAST_NAMES,
    COMMON_WORD_NAMES,
    AMBIGUOUS_NAMES,
    ENGLISH_WORDS,
) = _build()
TLDS = _tlds()
