"""Street addresses (LOCATION) and US ZIP codes, which count only in an address or after "ZIP".

A LOCATION span is the street line: number, street name, street type, an optional direction
and unit ("1600 Pennsylvania Ave NW", "221B Baker Street, Apt 4"); French, German, Spanish and
Italian street lines ("12 rue de la Paix", "Hauptstraße 5", "Via Roma 12") too. Cities are not
personal data on their own and are left alone.
"""

import re
from collections.abc import Iterator

Found = Iterator[tuple[int, int, float]]

# Abbreviations may take a dot; a full word's dot ends the sentence, not the address.
_SUFFIX = (
    r"(?:(?:Street|Avenue|Road|Boulevard|Lane|Drive|Court|Place|Way|Terrace|Parkway|Highway"
    r"|Circle|Square|Trail|Close|Crescent|Row|Alley|Plaza|Loop|Mews|Gardens|Grove|Walk|Pike"
    r"|Expressway|Freeway"
    # More of USPS Publication 28's street suffixes, those rarely found after capitalised
    # words outside an address ("Pass", "Point", "Station", "Park" are left out).
    r"|Crest|Ridge|Heights|Hill|Falls|Springs|Creek|Hollow|Glen|Knoll|Meadows|Landing"
    r"|Junction|Estates|Harbor|Manor|Shores|Summit|Valley|Village|Ferry|Forge|Flats|Oval"
    r"|Ranch|Rapids|Trace|Turnpike|Bypass|Causeway|Cove|Crossing|Dale|Lodge|Orchard|Prairie"
    r"|Vista|Brook|Bend|Bluff|Canyon|Cliffs|Mill|Mills)\b"
    r"|(?:St|Ave|Av|Rd|Blvd|Ln|Dr|Ct|Pl|Ter|Pkwy|Hwy|Cir|Sq|Trl|Cres)\b\.?)"
)
_NAME_WORD = r"(?:[A-Z][A-Za-z'’\-]*\.?|\d{1,3}(?:st|nd|rd|th))"
_UNIT = (
    r"(?:,?[ \t]+(?:Apt|Apartment|Suite|Ste|Unit|Flat|Floor|Fl|Room|Rm)\.?[ \t]*#?[ \t]*\w{1,5}"
    r"|,?[ \t]+#\w{1,5})"
)
_DIRECTION = r"(?:[ \t]+(?:NW|NE|SW|SE|N|S|E|W|North|South|East|West)\b)"
STREET = re.compile(
    # The look-behind follows the first digit so that the scan can skip to digits.
    r"\d(?<![\w\-]\d)\d{0,5}[A-Za-z]?(?:-\d{1,4})?[ \t]+"
    r"(?:(?:"
    + _NAME_WORD
    + r"[ \t]+){1,4}"
    + _SUFFIX
    + r"|Broadway\b)"
    + _DIRECTION
    + r"?"
    + _UNIT
    + r"?"
)
_FR_TYPE = r"(?i:rue|avenue|av\.|boulevard|bd|place|allée|chemin|quai|impasse|route|cours)"
_LOWER_LINK = r"(?:(?:de|du|des|la|le|l'|l’|d'|d’|del|de la)[ \t]*)"
_CAPITAL_WORD = r"[A-ZÀ-Ý][\w'’\-]*"
FRENCH = re.compile(
    rf"\d(?<![\w\-]\d)\d{{0,3}}(?:[ \t]?(?:bis|ter))?,?[ \t]+{_FR_TYPE}[ \t]+{_LOWER_LINK}*"
    rf"{_CAPITAL_WORD}(?:[ \t]+{_LOWER_LINK}*{_CAPITAL_WORD}){{0,3}}"
)
# Each pattern opens with a character class and looks behind after it: the regex engine then
# skips straight to digits or capitals instead of trying every position, which costs less than
# the substring tests for street types that used to gate these patterns.
# German and Dutch: the type is the end of the word ("Hauptstraße 5", "Kerkstraat 12"), or a
# word of its own after hyphenated names ("Konrad-Adenauer-Allee 3"); "6-8" and "4/3" are one
# house number.
_DE_NL_TYPE = (
    r"(?:straße|strasse|str\.|weg|platz|allee|gasse|ring|damm"
    r"|straat|laan|singel|plein|gracht|kade|dijk|steeg|dreef)"
)
GERMAN = re.compile(
    r"[A-ZÄÖÜ](?<!\w.)[a-zäöüß]+(?:-[A-ZÄÖÜ][a-zäöüß]+)*"
    rf"(?:{_DE_NL_TYPE}|-(?i:{_DE_NL_TYPE}))"
    r"[ \t]+\d{1,4}[a-z]?(?:[-/]\d{1,4}[a-z]?)?\b"
)
# Its word boundary before the street type is checked on the match (see find_streets).
SOUTHERN = re.compile(
    r"(?:Calle|Avenida|Carrer|Rua|Via|Viale|Piazza|Corso|Paseo|Plaza|Camino|Ronda|Rambla"
    r"|Pasaje|Travesía|Carretera|Glorieta|Avinguda|Passeig|Strada|Vicolo|Largo|Piazzale"
    r"|Borgo|Contrada)[ \t]+(?:(?:de|del|la|dos|da)[ \t]+)*"
    r"[A-ZÀ-Ý][\w'’]*(?:[ \t]+[A-ZÀ-Ý][\w'’]*)?,?[ \t]+\d{1,4}\b"
    # the floor, flat or door after the number: "Piso 3", "Puerta 5", "Interno 2"
    r"(?:,?[ \t]+(?:Piso|Puerta|Piano|Interno|Scala|Appartamento|Apt\.?)[ \t]*\w{1,4}\b)?"
)


def find_streets(text: str) -> Found:
    """Yield street addresses: a house number next to a named street of a known type."""
    for match in STREET.finditer(text):
        yield match.start(), match.end(), 0.85
    for pattern in (FRENCH, GERMAN):
        for match in pattern.finditer(text):
            yield match.start(), match.end(), 0.8
    for match in SOUTHERN.finditer(text):
        start = match.start()
        if start == 0 or not (text[start - 1].isalnum() or text[start - 1] == "_"):
            yield start, match.end(), 0.8


_STATES = (
    "AL|AK|AZ|AR|CA|CO|CT|DE|DC|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|NE|NV|NH"
    "|NJ|NM|NY|NC|ND|OH|OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY|PR|GU|VI|AS|MP|FM|MH|PW"
    "|AA|AE|AP"
)
_STATE_NAMES = (
    "Alabama|Alaska|Arizona|Arkansas|California|Colorado|Connecticut|Delaware|Florida|Georgia"
    "|Hawaii|Idaho|Illinois|Indiana|Iowa|Kansas|Kentucky|Louisiana|Maine|Maryland|Massachusetts"
    "|Michigan|Minnesota|Mississippi|Missouri|Montana|Nebraska|Nevada|New Hampshire|New Jersey"
    "|New Mexico|New York|North Carolina|North Dakota|Ohio|Oklahoma|Oregon|Pennsylvania"
    "|Rhode Island|South Carolina|South Dakota|Tennessee|Texas|Utah|Vermont|Virginia|Washington"
    "|West Virginia|Wisconsin|Wyoming|Puerto Rico"
)
_ZIP = r"(\d{5}(?:-\d{4})?)(?![\w\-]|\.\d)"
ZIP_AFTER_KEYWORD = re.compile(
    r"(?i:\b(?:zip|zip\s*code|zipcode|postal\s+code|postcode)\b)[ \t]*(?:is|was|[:#=])?[ \t]*"
    + _ZIP
)
ZIP_AFTER_STATE = re.compile(
    r",[ \t]*(?:(?:" + _STATES + r")\.?|" + _STATE_NAMES + r"),?[ \t]+" + _ZIP
)


def find_zips(text: str) -> Found:
    """Yield ZIP codes after a state ("…, CA 94103") or a ZIP keyword, not bare numbers."""
    lower = text.lower()
    patterns = [ZIP_AFTER_STATE] if "," in text else []
    if "zip" in lower or "post" in lower:
        patterns.append(ZIP_AFTER_KEYWORD)
    for pattern in patterns:
        for match in pattern.finditer(text):
            if not match.group(1).startswith("00000"):
                yield match.start(1), match.end(1), 0.9
