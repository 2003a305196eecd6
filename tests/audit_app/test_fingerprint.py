"""Feature extraction: the scan's own word table gives wordfreq's answers."""

import random
import re
import string
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wordfreq import get_frequency_list, zipf_frequency

from audit_app import fingerprint
from sessions_app.pii import detectors as pii_detectors

# Vocabulary words of every band, codes, words wordfreq does not know, other scripts.
SAMPLES = [
    "order",
    "quince",
    "wisteria",
    "bartholomew",
    "vexmoria",
    "bluefalcon",
    "ka12345",
    "mp3",
    "24th",
    "covid19",
    "x1y2z3",
    "müller",
    "straße",
    "josé",
    "zoë",
    "東京都",
    "σίσυφος",
    "½½½½",
    "²²²²",
    "١٢٣٤٥",
]


def _reference_weight(word: str) -> float:
    # The rule as written against wordfreq's own lookup, before the scan had its table.
    if word.isdigit():
        return 1.0 if len(word) >= 7 else 0.5 if len(word) >= 5 else 0.0
    if len(word) < 4:
        return 0.0
    zipf = zipf_frequency(word, "en")
    if any(ch.isdigit() for ch in word):
        return 1.0 if zipf < fingerprint.RARE_ZIPF else 0.0
    if zipf == 0.0:
        return 1.0
    if zipf < fingerprint.RARE_ZIPF:
        return 0.6
    return 0.3 if zipf < fingerprint.COMMON_ZIPF else 0.0


def _words(rng: random.Random) -> list[str]:
    bands = get_frequency_list("en")
    vocabulary = [rng.choice(band) for band in rng.sample(bands, 200) if band]
    letters = string.ascii_lowercase + string.digits
    invented = ["".join(rng.choices(letters, k=rng.randint(4, 9))) for _ in range(300)]
    return SAMPLES + [w for w in vocabulary if w.isalnum()] + invented


def test_token_weights_follow_wordfreq():
    for word in _words(random.Random(3)):
        assert fingerprint.token_weight(word) == _reference_weight(word), word


def test_names_are_judged_by_wordfreq_too():
    # "John Smith" is what a model writes by itself (both halves very common); a rarer
    # surname makes the pair stronger evidence.
    weights = {f.text: f.weight for f in fingerprint.features("Ask John Smith or Emily Quince.")}
    assert weights["john smith"] == 0.5
    assert weights["emily quince"] == 0.6


def test_offsets_survive_normalisation():
    text = "Ｆｕｌｌ ＡＢＣ１２３４ for Müller, call 555-0100-22 on 2024-03-15 <EMAIL_ADDRESS_1>."
    found = {f.text: text[f.start : f.end] for f in fingerprint.features(text)}
    assert found["abc1234"] == "ＡＢＣ１２３４"
    assert found["555010022"] == "555-0100-22"
    assert not any("2024" in key or "email" in key for key in found)


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("My card is 4539 1488 0343 6467", "4539148803436467"),
        ("Call me on +44 20 7946 0958", "442079460958"),
        ("My SSN is 123 45 6789", "123456789"),
        ("Appelez le +33 1 23 45 67 89", "33123456789"),
        ("card 4539\u00a01488\u00a00343\u00a06467", "4539148803436467"),
        ("call 415\u2011555\u20112671", "4155552671"),
        ("amex 3782 822463 10005", "378282246310005"),
        # Every space and hyphen the PII detector reads as ASCII's: thin and figure spaces,
        # the small and the full-width hyphen-minus.
        ("card 4539\u20091488\u20090343\u20096467", "4539148803436467"),
        ("card 4539\u20071488\u20070343\u20076467", "4539148803436467"),
        ("call 415\ufe63555\ufe632671", "4155552671"),
        ("call 415\uff0d555\uff0d2671", "4155552671"),
    ],
)
def test_a_number_written_in_groups_is_one_feature(text, number):
    """Each group alone proves nothing (four digits or fewer): the number whole does, in
    whichever groups it is written, so another user's card in a reply is evidence."""
    assert number in {f.text for f in fingerprint.features(text) if f.weight == 1.0}


def test_the_scan_joins_digit_groups_on_what_the_pii_detector_reads_as_hyphens_and_spaces():
    """A separator the detector reads as ASCII's joins a value it protects in a message; a
    reply writing another user's value with it must be joined too, or it is no evidence."""
    for char in pii_detectors.SPACES:
        assert pii_detectors.ascii_form(char) == " "
        number = fingerprint.features(f"card 4539{char}1488{char}0343{char}6467")
        assert "4539148803436467" in {f.text for f in number}, hex(ord(char))
    for char in pii_detectors.HYPHENS + "\uff0d":
        assert pii_detectors.ascii_form(char) == "-"
        number = fingerprint.features(f"order 415{char}555{char}2671")
        assert "4155552671" in {f.text for f in number}, hex(ord(char))


@pytest.mark.parametrize(
    "text",
    [
        "on 12.03.2024",
        "costs 1 000 000",
        "version 1.2.3",
        "count 1 2 3 4 5 6 7 8 9",
        "Count by tens: 10 20 30 40 50",
        "Budget of 125 000 000 euros",
        "subnet mask 255.255.255.0",
        "Use 192.168.1.100",
        "Termin am 03.12.2026 14:30 Uhr",
        "Timetable 9.00 10.30 12.00",
        "The Cold War era 1947\u20131991",
        "Between 1947-1991 the two blocs competed.",
        "in 2019-2020",
        "The 1990-1991 season",
        "take between 200-400 mg",
        "pages 210-245",
        "Room 101-105",
        "Use 3.14159265 for pi.",
        "e is 2.718281828",
        "seq 100 100 1000",
        "sizes 480 720 1080",  # no North American 3-3-4: it reads as a phone
        "sizes 256 512 1024",
        "sizes 720 1080 1440",  # no British phone: a trunk 0
        "The result is 1234.56789",
        "e^7 = 1096.63316",
        "Balance: 2500.00000000 BTC",
        "era \u0661\u0669\u0664\u0667-\u0661\u0669\u0669\u0661",  # years in other digits
    ],
)
def test_groups_that_are_several_numbers_are_not_joined(text):
    """A date, an amount, a version, a count, an address, a range, a decimal: Claude writes
    them for anyone. Joined, one of seven digits or more, or a pair with its neighbour, is
    a leak on its own wherever another user wrote it: every other user's reply holding it
    was withheld for the index's lifetime, and three of them held the user."""
    joined = re.compile(r"\d{5,}")
    features = fingerprint.features(text)
    assert not [(f.text, f.weight) for f in features if f.weight >= 1.0 and joined.search(f.text)]


@pytest.mark.parametrize(
    "text",
    [
        "Use 3.14159265 for pi.",
        "pi is 3.14159 and e is 2.71828",
        "tensor([0.1234, 0.5678])",
        "R = [[0.7071, -0.7071], [0.7071, 0.7071]]",
        "lr 0.0001 0.0003",
        "The Eiffel Tower stands at 48.8584, 2.2945",
    ],
)
def test_a_decimal_s_fraction_proves_nothing(text):
    """A constant, a result, a vector, a landmark's coordinates Claude writes for anyone
    must be no leak, alone, paired with a neighbour, nor beside another: one other user's
    reply holding them withheld every later one until three users shared them."""
    assert [(f.text, f.weight) for f in fingerprint.features(text) if f.weight >= 1.0] == []


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("call 555-0100", "5550100"),
        ("order 1234-5678", "12345678"),
        ("ref 2021-2345", "20212345"),  # a year, then no year: not a range
        ("order 5678-1234", "56781234"),  # descending: not a range
        ("call 020 7946 0958", "02079460958"),
        ("order \u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668", "12345678"),
        ("card 4539148803436467.", "4539148803436467"),
        ("tel 030.12345678", "12345678"),  # a zero-led code: no decimal
        ("account 12345678.90", "12345678"),  # a decimal's whole part stays a number
        ("tel \u0660\u0663\u0660.\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668", "12345678"),
        (
            "acct \u0661\u0662\u0663\u0664\u0665 \u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668",
            "12345678",
        ),
    ],
)
def test_numbers_that_look_like_neither_a_range_nor_a_decimal_stay_one(text, number):
    """What the PII detector protects in a message is evidence in a reply, in whichever
    script's digits it is written."""
    assert number in {f.text for f in fingerprint.features(text) if f.weight == 1.0}


GERMAN = "Ihr Termin ist morgen um zehn Uhr, bitte bringen Sie Ihren Ausweis mit."


def test_everyday_words_of_the_configured_languages_prove_nothing():
    """Read against English alone, a German sentence is rare words in a row, each pair of
    them full evidence; with German's vocabulary too, its everyday words are nothing."""
    english = fingerprint.features(GERMAN)
    assert {"termin", "bitte bringen"} <= {f.text for f in english if f.weight}
    german = fingerprint.features(GERMAN, fingerprint.vocabulary(("en", "de")))
    assert [(f.text, f.weight) for f in german if f.weight >= 0.6] == []
    # Each word at its most frequent language's Zipf: English's words stay everyday.
    words = fingerprint.vocabulary(("en", "de"))
    assert words.zipf("termin") == round(zipf_frequency("termin", "de"), 2)
    assert words.zipf("the") == fingerprint.vocabulary().zipf("the")


def test_capitalised_german_nouns_are_no_name_but_an_unusual_name_still_is():
    """German capitalises its nouns: "Ihren Ausweis" is no name, weak evidence that two
    such pairs would have made a leak; a surname outside the vocabulary proves as before."""
    words = fingerprint.vocabulary(("en", "de"))
    found = {f.text: f.weight for f in fingerprint.features("Zeigen Sie Ihren Ausweis.", words)}
    assert found == {}
    found = {f.text: f.weight for f in fingerprint.features("Herr Quengler wartet.", words)}
    assert found["herr quengler"] == 1.0
    # English alone: a capitalised pair of everyday words stays a weak name.
    found = {f.text: f.weight for f in fingerprint.features("We met John Smith.")}
    assert found == {"john smith": 0.5}
    # With German listed, a pair whose first word is a first name stays a name; an article
    # and a noun English shares ("Das Problem") is none.
    found = {f.text: f.weight for f in fingerprint.features("Sarah Johnson called.", words)}
    assert found["sarah johnson"] == 0.6
    found = {f.text: f.weight for f in fingerprint.features("Anna Schmidt kommt.", words)}
    assert found["anna schmidt"] == 0.5
    for text in ("Das Problem ist gelöst.", "Die Software ist neu.", "Das Team hilft."):
        assert fingerprint.features(text, words) == [], text


@pytest.mark.parametrize(
    ("languages", "text"),
    [
        # Persian writes a zero-width non-joiner inside everyday words; the scan reads past it.
        (("en", "fa"), "بین\u200cالمللی"),
        # Turkish capitals: casefold makes "İ" a dotted "i̇" and "I" an "i" where the list
        # has "i" and the dotless "ı".
        (("en", "tr"), "İstanbul IŞIK Işık İlk"),
    ],
)
def test_everyday_words_are_found_however_their_language_writes_them(languages, text):
    words = fingerprint.vocabulary(languages)
    for word in text.split():
        assert [(f.text, f.weight) for f in fingerprint.features(word, words)] == [], word


def test_words_of_other_scripts_are_looked_up_as_the_scan_reads_them():
    """The scan casefolds a word that is not ASCII ("Straße" is "strasse"): the table holds
    each word so, or German's everyday words with an ß would read as unknown, full weight."""
    words = fingerprint.vocabulary(("en", "de"))
    assert words.zipf("strasse") > fingerprint.COMMON_ZIPF
    assert [f for f in fingerprint.features("Die Straße ist gesperrt.", words) if f.weight] == []


@pytest.mark.parametrize(
    ("text", "plain"),
    [
        ("card 4539\u200b1488\u200b0343\u200b6467", "card 4539148803436467"),
        ("Vex\u200bmoria Quinta\u00adplex", "Vexmoria Quintaplex"),
        ("order\u2060 48291-\u200dXK7", "order 48291-XK7"),
        # At a seam between a word and a number, a space: the word and the number apart.
        ("card\u200c4539148803436467", "card 4539148803436467"),
        ("4539148803436467\u200bthanks", "4539148803436467 thanks"),
    ],
)
def test_invisible_characters_are_read_past_as_a_reader_reads_them(text, plain):
    found = fingerprint.features(text)
    assert {(f.text, f.weight) for f in fingerprint.features(plain)} <= {
        (f.text, f.weight) for f in found
    }
    # Each feature spans the text as given, invisible characters inside it included.
    for feature in found:
        shown = text[feature.start : feature.end]
        assert shown[0].isalnum() and shown[-1].isalnum(), repr(shown)
        assert feature.text in {f.text for f in fingerprint.features(shown)}, repr(shown)


@pytest.mark.parametrize(
    "text",
    [
        "Call 415 555 2671.",
        "My number is 415 555 2671",
        "Tel.: 415 555 2671",
        "reach me at 415 555 2671",
    ],
)
def test_a_north_american_phone_with_spaces_is_one_number_after_a_phone_word(text):
    assert ("4155552671", 1.0) in [(f.text, f.weight) for f in fingerprint.features(text)]


@pytest.mark.parametrize(
    "text",
    [
        "Resolutions of 480 720 1080 pixels.",  # no phone word: a list of numbers
        "Powers of two: 256 512 1024.",
        "Call 115 555 2671.",  # no area code starts with 1
        "Call 415 155 2671.",  # nor an exchange
        "Call me. The sizes are 480 720 1080.",  # the phone word too far before
    ],
)
def test_groups_of_a_north_american_phones_shape_are_not_joined_otherwise(text):
    assert all(len(f.text) < 10 for f in fingerprint.features(text) if f.text.isdigit()), text


@pytest.mark.parametrize(
    ("text", "plain"),
    [
        ("Vexmoria\u200bQuintaplex", "Vexmoria Quintaplex"),
        ("Vexmoria\u00adQuintaplex", "Vexmoria Quintaplex"),
        ("Herr\u200bQuengler", "Herr Quengler"),
        ("4539148803436467\u200b4716", "4539148803436467 4716"),
        # At a seam inside a code, and runs between words: read with every one past.
        ("A\u200b7X9 code", "A7X9 code"),
        ("ID\u200b12345678", "ID12345678"),
        ("Bartholomew\u200b\u200b\u200b Quince", "Bartholomew Quince"),
        ("4821\u200b\u200b\u200b Johnson", "4821 Johnson"),
    ],
)
def test_invisible_characters_between_words_still_separate_them(text, plain):
    """Read past alone, "Vexmoria\u200bQuintaplex" was one new word nobody wrote: as the
    PII detector does, the scan also reads each invisible character as a space."""
    found = {(f.text, f.weight) for f in fingerprint.features(text)}
    assert {(f.text, f.weight) for f in fingerprint.features(plain)} <= found


def test_threads_making_their_first_scans_at_once_build_one_vocabulary():
    """Built unlocked, eight threads' first scans built eight tables (seconds and hundreds
    of MB with a language or two more)."""
    languages = ("en", "it")
    with ThreadPoolExecutor(4) as pool:
        built = list(pool.map(lambda _: fingerprint.vocabulary(languages), range(4)))
    assert all(vocabulary is built[0] for vocabulary in built)


def test_a_placeholder_split_by_an_invisible_character_is_still_no_evidence():
    assert fingerprint.features("<EMAIL\u200b_ADDRESS_1> and <PERSON\u2060_2>") == []


def test_a_phone_word_is_a_whole_word_before_the_number():
    """ "Subtext" ends in "text", a cue only as a word of its own."""
    text = "Subtext" + " " * 20 + "415 555 2671"
    assert all(len(f.text) < 10 for f in fingerprint.features(text) if f.text.isdigit())


_WORDS = ["Vexmoria", "Quintaplex", "Bartholomew", "Quince", "order", "the", "card", "A7X9"]
_WORDS += ["4539 1488 0343 6467", "48291-XK7", "+44 20 7946 0958", "4821", "Johnson", "call"]
_INVISIBLE = "\u200b\u200c\u200d\u2060\u00ad\ufeff\u034f"


@given(
    words=st.lists(st.sampled_from(_WORDS), min_size=1, max_size=8),
    marks=st.lists(st.tuples(st.integers(0, 200), st.sampled_from(_INVISIBLE)), max_size=6),
)
@settings(max_examples=300, deadline=None)
def test_invisible_characters_anywhere_take_no_feature_away(words, marks):
    """Whatever invisible characters are put wherever in a text, each feature of the text
    without them is found, as strong, over the same characters."""
    plain = " ".join(words)
    text = plain
    for at, mark in sorted(marks, reverse=True):
        at = min(at, len(text))
        text = text[:at] + mark + text[at:]
    shown = [i for i, char in enumerate(text) if char not in _INVISIBLE]  # plain's chars
    found = {}
    for f in fingerprint.features(text):
        found[(f.text, f.start, f.end)] = max(f.weight, found.get((f.text, f.start, f.end), 0))
    for f in fingerprint.features(plain):
        key = (f.text, shown[f.start], shown[f.end - 1] + 1)
        assert found.get(key, 0) >= f.weight, (text, f)
