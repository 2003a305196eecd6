"""PII detection quality and speed on the labelled corpus, beside two peers in the same run.

Prints precision, recall and F1 per entity type, and messages per second on one core, for:
- ours: ``sessions_app.pii.detect``;
- naive: the six regexes of the original incident write-up;
- presidio: Presidio's predefined pattern recognizers over a blank spaCy pipeline (no model
  download, so it has no NER: PERSON and LOCATION stay empty; it has no US_ZIP_CODE recognizer).

A prediction counts only if its type, start and end equal a labelled entity's (``--overlap``
also accepts a same-type prediction that overlaps one). Usage, from the repo root:

    .venv/bin/python bench/pii.py [--seconds 2] [--overlap] [--no-presidio]

Presidio is a bench-only dependency: ``.venv/bin/pip install -r bench/requirements.txt``.
"""

import argparse
import json
import logging
import re
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


def throughput(texts: list[str], find: Callable[[str], Found], seconds: float) -> float:
    """Return messages per second: the best of several timed passes over ``texts``."""
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == float("inf"):
        start = time.perf_counter()
        for text in texts:
            find(text)
        best = min(best, time.perf_counter() - start)
    return len(texts) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="timing budget per system")
    parser.add_argument("--overlap", action="store_true", help="count overlapping spans as hits")
    parser.add_argument("--no-presidio", action="store_true")
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
    gold = Counter(e["type"] for row in rows for e in row["entities"])
    print(f"corpus: {len(rows)} messages, {sum(gold.values())} entities, {len(plain)} without any")
    print("match: " + ("same type and overlapping" if args.overlap else "exact type and offsets"))
    tables = {name: score(rows, find, args.overlap) for name, find in systems.items()}
    header = f"{'type':14} {'n':>4} " + " ".join(f"{name + ' P/R/F1':>20}" for name in systems)
    print(header)
    for kind in ENTITY_TYPES:
        cells = " ".join("{:>6.2f}{:>7.2f}{:>7.2f}".format(*tables[n][kind]) for n in systems)
        print(f"{kind:14} {gold[kind]:>4} {cells}")
    for label, sample in (("msgs/s, corpus", texts), ("msgs/s, no-PII lines", plain)):
        speeds = " ".join(
            f"{throughput(sample, f, args.seconds):>20,.0f}" for f in systems.values()
        )
        print(f"{label:19} {speeds}")


if __name__ == "__main__":
    main()
