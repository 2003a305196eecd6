"""PII detection quality and speed, beside two peers in the same run, and its cost per chat turn.

Prints precision, recall and F1 per entity type, and messages per second, for:
- ours: ``sessions_app.pii.detect``;
- naive: the six regexes of the original incident write-up;
- presidio: Presidio's predefined pattern recognizers over a blank spaCy pipeline (no model
  download, so it has no NER: PERSON and LOCATION stay empty; it has no US_ZIP_CODE recognizer).

Two corpora: the hand-labelled one in the repo (written alongside the detectors, so it flatters
them), and a held-out one generated here by Faker with a fixed seed in seven locales, values
embedded in chat-line templates at known offsets (made by a different method, never tuned on).
A prediction counts only if its type, start and end equal a labelled entity's (``--overlap``
also accepts a same-type prediction that overlaps one).

Throughput is messages per second of this process's CPU time (``time.process_time``, the
median pass), so it means "on one core" on a busy machine; wall-clock rates are printed beside.
``--turns N`` then measures what PII costs a chat turn: the CPU of privacy.py's real calls
(scrub of the user's message with the vault read, write and encryption, the reply's scrub,
the owner's restore of both) with PII_MODE=pseudonymize minus the same with "off", on a
scratch Postgres database ``iso_helper_b_bench`` made and dropped by the run. Usage:

    .venv/bin/python bench/pii.py [--seconds 2] [--overlap] [--no-presidio] [--turns 300]

Presidio and Faker are bench-only: ``.venv/bin/pip install -r bench/requirements.txt``.
"""

import argparse
import json
import logging
import os
import random
import re
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sessions_app.pii import ENTITY_TYPES, detect  # noqa: E402

CORPUS = ROOT / "tests" / "data" / "pii_corpus.jsonl"
Found = list[tuple[str, int, int]]

NAIVE = {
    "PERSON": re.compile(r"\b[A-Z][a-z]+ [A-Z][a-z]+\b"),
    "EMAIL_ADDRESS": re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+"),
    "PHONE_NUMBER": re.compile(r"\b\d{3}-\d{3}-\d{4}\b"),
    "CREDIT_CARD": re.compile(r"\b\d{16}\b"),
    "US_SSN": re.compile(r"\b\d{3}-\d{2}-\d{4}\b"),
    "US_ZIP_CODE": re.compile(r"\b\d{5}\b"),
}


def ours(text: str) -> Found:
    return [(s.type, s.start, s.end) for s in detect(text)]


def naive(text: str) -> Found:
    return [(kind, m.start(), m.end()) for kind, rx in NAIVE.items() for m in rx.finditer(text)]


def presidio() -> Callable[[str], Found] | None:
    try:
        import spacy
        import tldextract
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.nlp_engine import SpacyNlpEngine
    except ImportError:
        return None
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    # Presidio's e-mail check calls tldextract, which would fetch the suffix list online.
    tldextract.extract = tldextract.TLDExtract(suffix_list_urls=())

    class BlankEngine(SpacyNlpEngine):
        def load(self) -> None:
            self.nlp = {"en": spacy.blank("en")}

    engine = BlankEngine(models=[{"lang_code": "en", "model_name": "blank"}])
    engine.load()
    registry = RecognizerRegistry()
    registry.load_predefined_recognizers(nlp_engine=engine)
    analyzer = AnalyzerEngine(registry=registry, nlp_engine=engine, supported_languages=["en"])
    wanted = [t for t in ENTITY_TYPES if t in analyzer.get_supported_entities()]

    def run(text: str) -> Found:
        results = analyzer.analyze(text, language="en", entities=wanted)
        return [(r.entity_type, r.start, r.end) for r in results]

    return run


def score(rows: list[dict], find: Callable[[str], Found], overlap: bool) -> dict[str, tuple]:
    hit, predicted, gold = Counter(), Counter(), Counter()
    for row in rows:
        truth = {(e["type"], e["start"], e["end"]) for e in row["entities"]}
        guess = set(find(row["text"]))
        gold.update(t for t, *_ in truth)
        predicted.update(t for t, *_ in guess)
        if overlap:
            matched = {
                g for g in guess for t in truth if g[0] == t[0] and g[1] < t[2] and t[1] < g[2]
            }
            hit.update(t for t, *_ in matched)
        else:
            hit.update(t for t, *_ in truth & guess)
    table = {}
    for kind in ENTITY_TYPES:
        p = hit[kind] / predicted[kind] if predicted[kind] else 0.0
        r = hit[kind] / gold[kind] if gold[kind] else 0.0
        table[kind] = (p, r, 2 * p * r / (p + r) if p + r else 0.0)
    return table


def throughput(
    texts: list[str], find: Callable[[str], Found], seconds: float
) -> tuple[float, float]:
    """Return messages per second of CPU time and of wall time, each of the median pass."""
    cpu: list[float] = []
    wall: list[float] = []
    deadline = time.process_time() + seconds
    while time.process_time() < deadline or len(cpu) < 3:
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        for text in texts:
            find(text)
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start_wall)
    return len(texts) / statistics.median(cpu), len(texts) / statistics.median(wall)


LOCALES = ("en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "nl_NL", "it_IT")
# Chat-line templates per type; "{}" is where the value goes. US_SSN and US_ZIP_CODE come from
# en_US only (other locales' "ssn" and postcodes are other identifiers).
TEMPLATES = {
    "PERSON": (
        "Hi, my name is {}.",
        "I spoke with {} yesterday about the refund.",
        "Please forward this to {}, she handles billing.",
        "Thanks,\n{}",
    ),
    "EMAIL_ADDRESS": (
        "You can reach me at {}.",
        "my email is {} if you need it",
        "Send the invoice to {} please",
    ),
    "PHONE_NUMBER": ("Call me on {} after 5pm.", "my phone number is {}", "Text me at {}."),
    "CREDIT_CARD": ("My card number is {}, expiry 04/27.", "please charge {} for the order"),
    "US_SSN": ("My SSN is {}.", "social security number {} for the form"),
    "IBAN_CODE": ("Please transfer the refund to {}.", "my IBAN is {}"),
    "IP_ADDRESS": ("The server at {} is not responding.", "a login from {} was blocked"),
    "LOCATION": ("I moved to {} last month.", "Please ship it to {}, thanks."),
    "US_ZIP_CODE": ("I live in {}.", "my zip code is {}"),
}
PLAIN = ("Can you explain our {} strategy?", "What does {} mean for the team?")


def _grouped(value: str, rng: random.Random) -> str:
    # People write long numbers both ways: half of them in groups of four.
    return (
        " ".join(value[i : i + 4] for i in range(0, len(value), 4)) if rng.random() < 0.5 else value
    )


def _card(number: str, rng: random.Random) -> str:
    # Printed cards group 16 digits in fours; shorter ones (Amex, Diners) are typed unspaced here.
    return _grouped(number, rng) if len(number) == 16 else number


def _value(fake, kind: str, rng: random.Random) -> tuple[str, str, str]:
    """Return ``(before, value, after)``: the entity with any unlabelled text around it."""
    if kind == "PERSON":
        return "", f"{fake.first_name()} {fake.last_name()}", ""
    if kind == "US_ZIP_CODE":
        return f"{fake.city()}, {fake.state_abbr()} ", fake.zipcode(), ""
    make = {
        "EMAIL_ADDRESS": fake.email,
        "PHONE_NUMBER": fake.phone_number,
        "CREDIT_CARD": lambda: _card(fake.credit_card_number(), rng),
        "US_SSN": fake.ssn,
        "IBAN_CODE": lambda: _grouped(fake.iban(), rng),
        "IP_ADDRESS": fake.ipv4 if rng.random() < 0.6 else fake.ipv6,
        "LOCATION": lambda: fake.street_address().replace("\n", ", ").strip(),
    }[kind]
    return "", make(), ""


def heldout(seed: int = 2026, per_type: int = 10) -> list[dict]:
    """Return chat lines made by Faker, with the exact offsets of the values put in them."""
    from faker import Faker

    rng, rows = random.Random(seed), []
    for locale in LOCALES:
        fake = Faker(locale)
        fake.seed_instance(seed)
        for kind, templates in TEMPLATES.items():
            if kind in ("US_SSN", "US_ZIP_CODE") and locale != "en_US":
                continue
            count = per_type * 7 if kind in ("US_SSN", "US_ZIP_CODE") else per_type
            for _ in range(count):
                template = rng.choice(templates)
                if kind == "US_ZIP_CODE" and template.startswith("my zip"):
                    before, value, after = "", fake.zipcode(), ""
                else:
                    before, value, after = _value(fake, kind, rng)
                head = template[: template.index("{}")] + before
                text = head + value + after + template[template.index("{}") + 2 :]
                entity = {"type": kind, "start": len(head), "end": len(head) + len(value)}
                rows.append({"text": text, "entities": [entity]})
        for template in PLAIN:
            rows.append({"text": template.format(fake.catch_phrase()), "entities": []})
    return rows


def turn_cost(turns: int) -> None:
    """Print the CPU that PII costs a chat turn, through privacy.py on a scratch database."""
    db = "iso_helper_b_bench"
    os.environ.update(
        DJANGO_SETTINGS_MODULE="bench.settings",
        DEBUG="0",
        SECURE_HTTPS="off",
        SECRET_KEY="bench-only-secret-key-bench-only-secret-key-bench-only",
        ENCRYPTION_KEYS="rP0RmBBqN7Yx7PrwnWbJ1dGPLmVZ8kxAqV8VwK9xG2c=",
        REDIS_URL="",
        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{db}",
        LLM_PROVIDER="offline",
    )
    pg = ["-h", "127.0.0.1", "-U", "postgres"]
    subprocess.run(["dropdb", *pg, "--if-exists", db], check=True)
    subprocess.run(["createdb", *pg, db], check=True)
    try:
        _turn_cost(turns)
    finally:
        from django.db import connections

        connections.close_all()
        subprocess.run(["dropdb", *pg, "--if-exists", db], check=True)


def _turn_cost(turns: int) -> None:
    import django
    from django.conf import settings
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    from django.contrib.auth import get_user_model
    from django.db import transaction
    from django.utils import timezone

    from sessions_app import privacy
    from sessions_app.models import ChatSession
    from sessions_app.selectors import chat_session_take_seq_for_owner
    from sessions_app.stores import StoredMessage

    rows = [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines()]
    rng = random.Random(7)
    # A realistic mix: most chat messages hold no PII (here one in four does).
    with_pii = [r["text"] for r in rows if r["entities"]]
    without = [r["text"] for r in rows if not r["entities"]]
    reply_tail = (
        " I have checked your account and the order is on its way; it should arrive within"
        " three to five working days. If anything else comes up, reply here and I will look"
        " into it. Is there anything else I can help you with today?"
    )
    owner = get_user_model().objects.create_user(username="bench-pii", password="x")  # noqa: S106
    expires = timezone.now() + timezone.timedelta(hours=1)

    def one_turn(session_id, text: str) -> None:
        with transaction.atomic():
            # As the accept reads it, in either mode: the session's row locked, with its vault
            # in the same statement, which the scrub is handed.
            now = timezone.now()
            session = chat_session_take_seq_for_owner(
                user=owner, session_id=session_id, now=now, expires_at=expires
            )
            stored = privacy.content_scrub(
                session_id=session_id, content=text, vault_row=session.vault_row
            )
        reply = privacy.reply_scrub(session_id=session_id, reply=f"Thanks: {stored}." + reply_tail)
        now = timezone.now()
        pair = [
            StoredMessage(i, i, role, body, "ok", now, session_id, session_id, owner.pk)
            for i, (role, body) in enumerate((("user", stored), ("assistant", reply)))
        ]
        privacy.messages_restore(session_id=session_id, messages=pair)

    cpu: dict[str, list[float]] = {"off": [], "pseudonymize": []}
    wall: dict[str, list[float]] = {"off": [], "pseudonymize": []}
    texts = [rng.choice(with_pii if rng.random() < 0.25 else without) for _ in range(turns)]
    for _round in range(3):  # alternate the modes: a busy spell on the machine hits both alike
        for mode in ("off", "pseudonymize"):
            settings.PII_MODE = mode
            session = None
            for i, text in enumerate(texts):
                if i % 5 == 0:  # five turns a session: the vault grows, as in a conversation
                    session = ChatSession.objects.create(owner=owner, expires_at=expires)
                start_cpu, start_wall = time.process_time(), time.perf_counter()
                one_turn(session.pk, text)
                cpu[mode].append(time.process_time() - start_cpu)
                wall[mode].append(time.perf_counter() - start_wall)
    ms = {m: (statistics.mean(v) * 1e3, statistics.mean(wall[m]) * 1e3) for m, v in cpu.items()}
    print(f"\nper-turn PII cost, {turns} turns x 3 rounds per mode, PII_MODE=off vs pseudonymize")
    print(f"{'mode':14} {'CPU ms/turn':>12} {'wall ms/turn':>13}")
    for mode, (c, w) in ms.items():
        print(f"{mode:14} {c:>12.3f} {w:>13.3f}")
    from sessions_app.pii import spans_to_scrub

    start = time.process_time()
    for text in texts:  # the pure part alone: detection in the message and in its reply
        spans_to_scrub(text)
        spans_to_scrub(f"Thanks: {text}." + reply_tail)
    detection = (time.process_time() - start) / len(texts) * 1e3
    extra = ms["pseudonymize"][0] - ms["off"][0]
    verdict = "within" if extra <= 1.0 else "OVER"
    print(
        f"{'PII adds':14} {extra:>12.3f} {ms['pseudonymize'][1] - ms['off'][1]:>13.3f}"
        f"   ({verdict} the 1 ms CPU budget; Postgres's own CPU not included)"
    )
    print(f"{'of which detect':14} {detection:>12.3f}   (the rest: vault reads, writes, crypto)")


def table(title: str, rows: list[dict], systems: dict, overlap: bool) -> None:
    gold = Counter(e["type"] for row in rows for e in row["entities"])
    plain = sum(1 for row in rows if not row["entities"])
    print(f"\n{title}: {len(rows)} messages, {sum(gold.values())} entities, {plain} without any")
    print("match: " + ("same type and overlapping" if overlap else "exact type and offsets"))
    tables = {name: score(rows, find, overlap) for name, find in systems.items()}
    print(f"{'type':14} {'n':>4} " + " ".join(f"{name + ' P/R/F1':>20}" for name in systems))
    for kind in ENTITY_TYPES:
        cells = " ".join("{:>6.2f}{:>7.2f}{:>7.2f}".format(*tables[n][kind]) for n in systems)
        print(f"{kind:14} {gold[kind]:>4} {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="CPU budget per timing")
    parser.add_argument("--overlap", action="store_true", help="count overlapping spans as hits")
    parser.add_argument("--no-presidio", action="store_true")
    parser.add_argument("--turns", type=int, default=0, help="per-turn cost over N turns")
    args = parser.parse_args()
    rows = [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines()]
    texts = [row["text"] for row in rows]
    plain = [row["text"] for row in rows if not row["entities"]]
    systems = {"ours": ours, "naive": naive}
    peer = None if args.no_presidio else presidio()
    if peer is not None:
        systems["presidio"] = peer
    elif not args.no_presidio:
        print("presidio-analyzer not installed: pip install -r bench/requirements.txt")
    table("hand corpus", rows, systems, args.overlap)
    try:
        table("held-out (Faker, seed 2026)", heldout(), systems, args.overlap)
    except ImportError:
        print("\nFaker not installed: pip install -r bench/requirements.txt")
    print()
    for label, sample in (("corpus", texts), ("no-PII lines", plain)):
        rates = [throughput(sample, f, args.seconds) for f in systems.values()]
        print(f"{'msgs/s CPU, ' + label:25} " + " ".join(f"{c:>20,.0f}" for c, _ in rates))
        print(f"{'msgs/s wall, ' + label:25} " + " ".join(f"{w:>20,.0f}" for _, w in rates))
    if args.turns:
        turn_cost(args.turns)


if __name__ == "__main__":
    main()
