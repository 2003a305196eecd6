"""The words around and inside person names that ``persons`` weighs: titles and cue phrases
before a name, a letter's closings above one, particles between its parts, place prefixes
that make a name a place's, and words that are never names.

Hand-picked lists, but ``NEVER_NAMES``, which is read off ``gazetteer``'s lists at import.
Nothing here changes after import.
"""

from .gazetteer import ENGLISH_WORDS, FIRST_NAMES, LAST_NAMES

# A title, then a surname: "Dr. Okafor" (``persons.TITLE``).
TITLES = tuple(
    [
        "mr",
        "mrs",
        "ms",
        "mx",
        "miss",
        "dr",
        "prof",
        "professor",
        "mme",
        "herr",
        "frau",
        "señor",
        "señora",
        "sr",
        "sra",
        "monsieur",
        "madame",
    ]
)
# After these nearly any capitalised word is a name (``persons.STRONG``).
STRONG_CUES = (
    "my name is",
    "my name's",
    "call me",
    "signed",
    "dear",
    "hi",
    "hello",
    "hey",
    "thanks",
    "thank you",
    "cheers",
    "bye",
)
# After these only a name the lists know, or a rare word (``persons.INTRO``).
INTRO_CUES = (
    "i'm",
    "i’m",
    "i am",
    "im",
    "this is",
    "it's",
    "it’s",
    "addressed to",
    "made out to",
    "signed by",
    "attn",
    "attention",
    "c/o",
    "recipient",
    "on behalf of",
)
# A letter's closing on the line above a name: "Thanks,\nPriya".
SIGN_OFFS = (
    "thanks",
    "thank you",
    "many thanks",
    "best",
    "best regards",
    "kind regards",
    "regards",
    "cheers",
    "sincerely",
    "yours",
    "yours truly",
    "warmly",
    "warm regards",
    "love",
    "talk soon",
)
PARTICLES = frozenset(
    [
        "van",
        "von",
        "de",
        "da",
        "del",
        "della",
        "di",
        "du",
        "le",
        "la",
        "bin",
        "binti",
        "ibn",
        "al",
        "el",
        "dos",
        "das",
        "der",
        "den",
        "ten",
        "ter",
    ]
)
# "San Francisco", "St. Louis", "Fort Worth": a first name after these is a place.
PLACE_PREFIXES = frozenset(
    [
        "san",
        "santa",
        "santo",
        "são",
        "sao",
        "st",
        "saint",
        "ste",
        "sainte",
        "los",
        "las",
        "fort",
        "mount",
        "mt",
        "port",
        "lake",
        "new",
        "el",
        "la",
    ]
)
# Assistants and products that the Census lists hold as names; in a chat they rarely are.
NOT_NAMES = frozenset(["claude", "siri", "alexa", "cortana", "gemini"])
# English words the name lists do not hold ("Please", "The") are no name after any cue. One
# letter stays (a middle initial), and so do place prefixes ("St. Louis" is no person).
NEVER_NAMES = frozenset(
    w for w in ENGLISH_WORDS - FIRST_NAMES - LAST_NAMES if len(w) > 1 and w not in PLACE_PREFIXES
)
