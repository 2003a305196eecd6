"""Person names: a gazetteer of first and last names, weighed by context and by English usage.

Two capitalised words are not a name ("New York", "Thank You"): a name starts at a known first
name that is not mostly an English word, or at a plausible word right after a cue such as
"my name is", "Dear", "Dr." or a letter's closing ("Thanks,\\nPriya"), and runs on over the
surnames that follow.

The cue phrases and the other word lists are in ``person_words``, the name lists in
``gazetteer``.
"""

import re
from collections.abc import Iterator
from typing import NamedTuple

from .gazetteer import (
    AMBIGUOUS_NAMES,
    COMMON_WORD_NAMES,
    ENGLISH_WORDS,
    FIRST_NAMES,
    FREQUENT_LAST_NAMES,
    LAST_NAMES,
    fold,
)
from .person_words import (
    INTRO_CUES,
    NEVER_NAMES,
    NOT_NAMES,
    PARTICLES,
    PLACE_PREFIXES,
    SIGN_OFFS,
    STRONG_CUES,
    TITLES,
)

# A capitalised word (or "al-Sayed"); [^\W\d_a-z] is any letter but a-z, checked with isupper().
CAP_WORD = re.compile(r"(?<![\w'’\-])(?:[ae]l-)?[^\W\d_a-z][^\W\d_]*(?:['’\-][^\W\d_]+)*")
# The same without the "al-" prefix, its look-behind after the first letter: a pattern that
# opens with a character class lets the regex engine skip to capitals, about twice as fast.
CAP_WORD_FAST = re.compile(r"[^\W\d_a-z](?<![\w'’\-].)[^\W\d_]*(?:['’\-][^\W\d_]+)*")
# "my name is jennifer lopez": people type their own name in lower case too.
LOWER_NAME = re.compile(
    r"(?i:\bmy\s+name\s+is|\bcall\s+me)\s+([a-z][^\W\d_]*)(?:\s+([a-z][^\W\d_]*))?"
)
# Cue strengths: after "my name is" or "Dear" nearly any capitalised word is a name; after a
# title a surname is; after "I'm" or "this is" only a name the lists know, or a rare word.
NONE, INTRO, TITLE, STRONG = 0, 1, 2, 3
MAX_PARTS = 4


class Word(NamedTuple):
    start: int
    end: int
    key: str


def _key(word: str) -> str:
    if word.isascii():
        return word.lower().replace("'", "")
    return fold(word)


def _capitalised(text: str) -> list[Word]:
    """Return the capitalised words that may start or continue a name, in order.

    A word that can never be a name ("Please", "The") is left out, as ``find_persons`` would
    skip it anyway and ``_joins`` never links across it: most capitalised words in a chat are
    such words, and dropping them here spares the per-word work.
    """
    words = []
    pattern = CAP_WORD if "l-" in text else CAP_WORD_FAST
    for match in pattern.finditer(text):
        word = match.group()
        if word[-2:] in ("'s", "’s"):
            word = word[:-2]
        head = word[3:4] if word[2:3] == "-" and word[:2] in ("al", "el") else word[0]
        if head.isupper() and not (len(word) > 1 and word.isupper()):
            key = _key(word)
            if key not in NEVER_NAMES or "-" in key:
                start = match.start()
                words.append(Word(start, start + len(word), key))
    return words


def _never_a_name(key: str) -> bool:
    return key in ENGLISH_WORDS and key not in FIRST_NAMES and key not in LAST_NAMES


def _ends_with(phrase_end: str, phrases: tuple[str, ...]) -> bool:
    if not phrase_end.endswith(phrases):
        return False
    for phrase in phrases:  # a whole-word match: "hi" must not match "this"
        cut = len(phrase_end) - len(phrase)
        if phrase_end.endswith(phrase) and (cut == 0 or not phrase_end[cut - 1].isalnum()):
            return True
    return False


def _cue(text: str, start: int) -> int:
    """Return how strongly the words just before ``start`` announce a name."""
    before = text[max(0, start - 40) : start].rstrip(" \t")
    if before.endswith("\n"):  # a letter's closing on the line above: "Thanks,\nPriya"
        above = before[:-1].rstrip(" \t,.!").lower()
        return STRONG if _ends_with(above, SIGN_OFFS) else NONE
    line = before.rsplit("\n", 1)[-1].lower()
    if line.strip() in ("--", "-", "—", "–") or line.endswith("name:"):
        return STRONG
    line = line.rstrip(",.:")
    if _ends_with(line, TITLES):
        return TITLE
    if _ends_with(line, STRONG_CUES):
        return STRONG
    return INTRO if _ends_with(line, INTRO_CUES) else NONE


def _in_gazetteer(key: str) -> bool:
    if key in FIRST_NAMES or key in LAST_NAMES:
        return True
    parts = [p for p in key.split("-") if p not in ("al", "el")]
    return len(parts) > 1 and all(p in FIRST_NAMES or p in LAST_NAMES for p in parts)


def _starts_name(key: str, cue: int) -> bool:
    if key in NOT_NAMES or len(key) < 2:
        return False
    if cue == NONE:
        if key in FIRST_NAMES:
            return key not in COMMON_WORD_NAMES
        given = key.split("-", 1)[0]  # "Jean-Luc", "Anne-Marie"
        return "-" in key and given in FIRST_NAMES and given not in COMMON_WORD_NAMES
    known, english = _in_gazetteer(key), key in ENGLISH_WORDS
    if cue == STRONG:
        return key in FIRST_NAMES or (known and key not in COMMON_WORD_NAMES) or not english
    if cue == TITLE:
        return known or not english
    return (known and key not in COMMON_WORD_NAMES) or not english


def _continues_name(key: str) -> bool:
    if key in NOT_NAMES:
        return False
    if key in COMMON_WORD_NAMES:
        return key in FREQUENT_LAST_NAMES
    return _in_gazetteer(key) or key not in ENGLISH_WORDS


def _after_place_prefix(text: str, words: list[Word], i: int) -> bool:
    if i == 0 or words[i - 1].key not in PLACE_PREFIXES:
        return False
    return text[words[i - 1].end : words[i].start] in (" ", ". ")


def _sentence_start(text: str, start: int) -> bool:
    before = text[:start].rstrip(" \t\"'“(")
    return not before or before[-1] in ".!?:\n"


def _joins(text: str, left: Word, right: Word) -> bool:
    """Tell whether ``right`` may be the next part of a name ending in ``left``."""
    gap = text[left.end : right.start]
    if gap == " ":
        return True
    if gap == ". ":  # after a middle initial: "John F. Kennedy"
        return left.end - left.start == 1
    # "Ludwig van Beethoven", "Ahmed bin Rashid", "Loes van der Berg", "María de la Cruz"
    if gap[:1] != " " or gap[-1:] != " " or len(gap) > 12:
        return False
    particles = gap[1:-1].split(" ")
    return len(particles) <= 2 and all(p in PARTICLES for p in particles)


def _extend(text: str, words: list[Word], i: int) -> int:
    """Return the index of the last word of the name that starts at ``words[i]``."""
    last, j = i, i + 1
    while j < len(words) and j - i < MAX_PARTS and _joins(text, words[j - 1], words[j]):
        word = words[j]
        if len(word.key) == 1 and text[word.end : word.end + 1] == ".":
            j += 1  # a middle initial is kept only if a surname follows
            continue
        if not _continues_name(word.key):
            break
        last, j = j, j + 1
    return last


def _lower_case_names(text: str) -> Iterator[tuple[int, int, float]]:
    for match in LOWER_NAME.finditer(text):
        first, last = match.group(1), match.group(2)
        if not _in_gazetteer(_key(first)) or _key(first) in COMMON_WORD_NAMES:
            continue
        end = match.end(1)
        if last and _in_gazetteer(_key(last)) and _key(last) not in COMMON_WORD_NAMES:
            end = match.end(2)
        yield match.start(1), end, 0.8


def find_persons(text: str) -> Iterator[tuple[int, int, float]]:
    """Yield ``(start, end, score)`` of each person name in ``text``."""
    words = _capitalised(text)
    i = 0
    while i < len(words):
        word = words[i]
        if _never_a_name(word.key) and "-" not in word.key:
            i += 1
            continue
        cue = _cue(text, word.start)
        if not _starts_name(word.key, cue) or (cue == NONE and _after_place_prefix(text, words, i)):
            i += 1
            continue
        last = _extend(text, words, i)
        lone_opener = cue == NONE and last == i and _sentence_start(text, word.start)
        if lone_opener and word.key in AMBIGUOUS_NAMES:
            i += 1  # "Mark this as done", "Grace period ends"
            continue
        yield word.start, words[last].end, 0.85 if cue or last > i else 0.65
        i = last + 1
    if "name is" in text or "call me" in text:
        yield from _lower_case_names(text)
