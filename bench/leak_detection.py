"""Leak detection on a synthetic multi-tenant corpus: recall, false positives, latency, memory.

Every user has a name, an address, order numbers, a phone and a project codename, and
talks about them among everyday chatter. The index holds all users' messages; replies
are then scanned, a known fraction carrying another user's data. The seed's rule (any
word of five letters or more that another user ever used is a leak) is judged on the
same replies. Each scan is the worker's own call (``reply_scan``), timed in wall time and in
this thread's CPU time: on a shared machine the first also counts waiting for a core. Long
replies (hundreds of words, as a model writes) are timed apart. Usage (from the repo root,
Redis on 127.0.0.1:6379):

    .venv/bin/python bench/leak_detection.py [--users 10000] [--replies 4000] [--leak-rate 0.1]

It uses Redis db 14 (``LEAK_BENCH_REDIS_URL`` for another), flushed once at the start.
"""

import argparse
import gc
import os
import random
import re
import statistics
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
REDIS_URL = os.environ.get("LEAK_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
os.environ.update(DEBUG="1", REDIS_URL=REDIS_URL, DJANGO_SETTINGS_MODULE="bench.settings")

import django  # noqa: E402

django.setup()

import names  # noqa: E402
from redis import Redis  # noqa: E402
from wordfreq import top_n_list  # noqa: E402

from audit_app.services import ScanResult, fingerprints_register, reply_scan  # noqa: E402

CITIES = [
    "Springfield",
    "Portland",
    "Austin",
    "Denver",
    "Boston",
    "Chicago",
    "Seattle",
    "Phoenix",
    "Dallas",
    "Miami",
]
STREETS = ["Street", "Lane", "Avenue", "Road", "Drive", "Court", "Way", "Boulevard"]
TREES = [
    "Oak",
    "Maple",
    "Elm",
    "Cedar",
    "Pine",
    "Birch",
    "Willow",
    "Wisteria",
    "Aspen",
    "Magnolia",
    "Juniper",
    "Hawthorn",
]
# Codenames join two everyday words ("Harborlantern"): distinctive together, common apart.
WORDS = [w for w in top_n_list("en", 4000) if w.isalpha() and len(w) >= 4]
CHATTER = [
    "Can you help me plan a trip to {city} next {month}?",
    "What is a good recipe for dinner with chicken, rice and vegetables?",
    "Please explain how compound interest works with an example.",
    "I need a polite email to my landlord about the broken heater.",
    "What is the status of my order? It was supposed to arrive on Tuesday.",
    "Write a short poem about the ocean and the morning light.",
    "How do I reset my password if I forgot the security question?",
    "Give me three ideas for a birthday party for a seven year old.",
    "Summarize the main points of the meeting notes I pasted above.",
    "Translate 'where is the train station' into Spanish and French.",
    "My flight to {city} was cancelled, what are my options for a refund?",
    "How many calories are in a banana and a cup of yogurt?",
]
REPLIES = [
    "Sure! Here is a plan for {city}: day one, visit the museum and the old town; day two, "
    "a walk along the river. Budget about ${price} per day.",
    "Of course. Compound interest means you earn interest on interest: {n} dollars at 5% "
    "for {years} years grows to about {total} dollars.",
    "Here is a draft: 'Dear landlord, the heater has been broken since {month} {day}. "
    "Could you arrange a repair this week? Thank you.'",
    "Your package was shipped on {month} {day} and should arrive within {days} business days. "
    "You can track it from the orders page.",
    "A simple dinner: cook the rice for {minutes} minutes, sear the chicken, add the "
    "vegetables and a splash of soy sauce. Serves {n}.",
    "To reset your password, open the sign-in page, choose 'Forgot password' and follow the "
    "link we email you. The link expires after {minutes} minutes.",
    "Three ideas: a treasure hunt in the garden, a pizza-making table, and a movie night with "
    "popcorn. Plan for {n} guests and about {hours} hours.",
    "The meeting agreed on three points: ship the beta by {month} {day}, hire {n} engineers, "
    "and review the budget of ${price} next quarter.",
    "In Spanish: '¿Dónde está la estación de tren?' In French: 'Où est la gare ?'",
    "A banana has about 105 calories and a cup of plain yogurt about {n}0; together roughly "
    "{total} calories.",
]
# What a model writes by itself: example names, fruit, flowers, codes, round figures.
NOISE = [
    "For example, John Smith could use it.",
    "A quince or a persimmon also works.",
    "Wisteria and magnolia bloom in spring.",
    "Your confirmation code is {code}.",
    "Call us at 1-800-555-0100.",
    "Reference {code} in your notes.",
    "Use a strong password like Falcon-River-42.",
]
# A long reply joins this many short ones (about 30 words each).
LONG_REPLY_PARTS = 15
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
]


def _dist(path: Path) -> tuple[list[str], list[float]]:
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return [r[0].title() for r in rows], [float(r[1]) + 1e-4 for r in rows]


NAMES_DIR = Path(names.__file__).parent
FIRST = [_dist(NAMES_DIR / "dist.male.first"), _dist(NAMES_DIR / "dist.female.first")]
LAST = _dist(NAMES_DIR / "dist.all.last")


@dataclass
class User:
    id: int
    name: str
    address: str
    orders: list[str]
    phone: str
    codename: str
    sessions: list[uuid.UUID] = field(default_factory=lambda: [uuid.uuid4(), uuid.uuid4()])

    def items(self) -> dict[str, str]:
        return {
            "name": self.name,
            "address": self.address,
            "order": self.orders[0],
            "codename": f"Project {self.codename}",
            "phone": self.phone,
        }


def _pick(rng: random.Random, dist: tuple[list[str], list[float]]) -> str:
    return rng.choices(dist[0], weights=dist[1])[0]


def make_user(rng: random.Random, user_id: int) -> User:
    first, last = _pick(rng, rng.choice(FIRST)), _pick(rng, LAST)
    street = rng.choice([_pick(rng, LAST), rng.choice(TREES)])
    address = f"{rng.randint(1, 9999)} {street} {rng.choice(STREETS)}, {rng.choice(CITIES)}"
    orders = [
        f"ORD-{rng.randint(100000, 999999)}",
        f"{rng.choice('KXQZ')}{rng.choice('ABCM')}{rng.randint(10000, 99999)}",
    ]
    phone = f"{rng.randint(200, 989)}-{rng.randint(200, 999)}-{rng.randint(1000, 9999)}"
    codename = (rng.choice(WORDS) + rng.choice(WORDS)).title()
    return User(user_id, f"{first} {last}", address, orders, phone, codename)


def _fill(rng: random.Random, template: str) -> str:
    return template.format(
        city=rng.choice(CITIES),
        month=rng.choice(MONTHS),
        day=rng.randint(1, 28),
        price=rng.choice([49, 99, 120, 250, 1299]),
        n=rng.randint(2, 12),
        years=rng.randint(2, 30),
        total=rng.randint(150, 9000),
        days=rng.randint(2, 7),
        minutes=rng.choice([15, 20, 30]),
        hours=rng.randint(2, 4),
        code=rng.randint(100000, 999999),
    )


def user_messages(rng: random.Random, user: User) -> list[str]:
    own = [
        f"Hi, my name is {user.name}.",
        f"Where is my order {user.orders[0]}? Please ship it to {user.address}.",
        f"Also order {user.orders[1]}; you can call me at {user.phone}.",
        f"Can you summarize the Project {user.codename} kickoff notes?",
    ]
    return own + [_fill(rng, rng.choice(CHATTER)) for _ in range(3)]


def clean_reply(rng: random.Random, user: User) -> str:
    parts = [_fill(rng, rng.choice(REPLIES))]
    own = list(user.items().values())
    parts += [f"(About {item}.)" for item in rng.sample(own, rng.randint(0, 2))]
    if rng.random() < 0.5:
        parts.append(_fill(rng, rng.choice(NOISE)))
    return " ".join(parts)


def leaked_reply(rng: random.Random, user: User, victim: User, kinds: list[str]) -> str:
    stolen = victim.items()
    leak = " ".join(f"Regarding {stolen[kind]}." for kind in kinds)
    return f"{clean_reply(rng, user)} {leak}"


class SeedRule:
    """The seed's rule: any word of five letters or more that another user ever used."""

    WORD = re.compile(r"[A-Za-z]{5,}")

    def __init__(self) -> None:
        self.users: dict[str, set[int]] = defaultdict(set)

    def add(self, user_id: int, text: str) -> None:
        for word in self.WORD.findall(text):
            self.users[word.lower()].add(user_id)

    def leaked(self, user_id: int, text: str) -> bool:
        return any(self.users[w.lower()] - {user_id} for w in self.WORD.findall(text))


def build_index(rng: random.Random, count: int, seed_rule: SeedRule) -> list[User]:
    users = [make_user(rng, i + 1) for i in range(count)]
    started = time.perf_counter()
    for user in users:
        for i, text in enumerate(user_messages(rng, user)):
            session = user.sessions[i % 2]
            fingerprints_register(user_id=user.id, session_id=session, text=text)
            seed_rule.add(user.id, text)
    print(f"indexed {count} users in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    return users


@dataclass
class Tally:
    tp: int = 0
    fn: int = 0
    fp: int = 0
    tn: int = 0

    def add(self, truth: bool, verdict: bool) -> None:
        if truth:
            self.tp, self.fn = self.tp + verdict, self.fn + (not verdict)
        else:
            self.fp, self.tn = self.fp + verdict, self.tn + (not verdict)

    @property
    def recall(self) -> float:
        return self.tp / max(1, self.tp + self.fn)

    @property
    def fp_rate(self) -> float:
        return self.fp / max(1, self.fp + self.tn)


def _timed_scan(user: User, text: str) -> tuple[ScanResult, tuple[float, float]]:
    # The worker's own call, whole: features, keyed hashes, the Redis round trip, scoring.
    # Wall time includes waiting for Redis and for a core (the machine is shared); CPU
    # time (this thread's) is the scan's own work, steadier under other people's load.
    wall, cpu = time.perf_counter(), time.thread_time()
    result = reply_scan(user_id=user.id, session_id=user.sessions[0], text=text)
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    return result, (wall * 1000, cpu * 1000)


def evaluate(rng: random.Random, users: list[User], args, seed_rule: SeedRule) -> dict:
    ours, seed, latencies = Tally(), Tally(), []
    single: dict[str, Tally] = defaultdict(Tally)
    sample = users[: args.active]
    for _ in range(args.replies):
        user, victim = rng.choice(sample), rng.choice(users)
        leak = rng.random() < args.leak_rate and victim is not user
        kinds = ["name", rng.choice(["address", "order", "codename", "phone"])] if leak else []
        text = leaked_reply(rng, user, victim, kinds) if leak else clean_reply(rng, user)
        result, timing = _timed_scan(user, text)
        latencies.append(timing)
        ours.add(leak, result.leaked)
        seed.add(leak, seed_rule.leaked(user.id, text))
        if leak:  # the same victim's single items, one at a time
            for kind in ("name", "address", "order", "codename", "phone"):
                alone = leaked_reply(rng, user, victim, [kind])
                single[kind].add(
                    True,
                    reply_scan(user_id=user.id, session_id=user.sessions[0], text=alone).leaked,
                )
    return {"ours": ours, "seed": seed, "latencies": latencies, "single": single}


def long_reply_timings(users: list[User], args) -> list[tuple[float, float]]:
    # A model's real answers run to hundreds of words and the scan's work grows with them:
    # time some of that length too (own random stream: the corpus above stays the same).
    rng, timings = random.Random(args.seed + 1), []
    for _ in range(args.long_replies):
        user = rng.choice(users[: args.active])
        text = " ".join(clean_reply(rng, user) for _ in range(LONG_REPLY_PARTS))
        timings.append(_timed_scan(user, text)[1])
    return timings


def memory_per_posting() -> tuple[float, int, int, int]:
    """Return the index's bytes per posting (its sessions' lists included), how many
    postings, keys, and of those the lists' keys."""
    client = Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter("fp:*", count=5000))
    # fp:{generation}:{bucket} hashes; fp:{generation}:s:{session} lists; fp:listed-since
    lists = [key for key in keys if key.count(b":") == 3]
    postings_keys = [key for key in keys if key.count(b":") == 2]
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    for key in postings_keys:
        pipe.hvals(key)
    answers = pipe.execute()
    memory = sum(answers[: len(keys)])
    postings = sum(max(1, len(v) // 20) for values in answers[len(keys) :] for v in values)
    return memory / max(1, postings), postings, len(keys), len(lists)


def _percentiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def report(results: dict, memory: tuple[float, int, int, int], args) -> None:
    ours, seed = results["ours"], results["seed"]
    p50, p99 = _percentiles([wall for wall, _cpu in results["latencies"]])
    cpu50, cpu99 = _percentiles([cpu for _wall, cpu in results["latencies"]])
    per_posting, postings, keys, lists = memory
    print(
        f"users in index: {args.users}; replies: {args.replies} "
        f"({ours.tp + ours.fn} leaked, {ours.fp + ours.tn} clean); replies from "
        f"{args.active} users"
    )
    print(f"{'rule':<34}{'recall':>8}{'FP rate':>10}{'p50 ms':>9}{'p99 ms':>9}{'B/posting':>11}")
    print(
        f"{'fingerprint index (this)':<34}{ours.recall:>8.3f}{ours.fp_rate:>9.2%} "
        f"{p50:>8.3f} {p99:>8.3f}{per_posting:>11.1f}"
    )
    print(
        f"{'seed rule (>=5 letters, any user)':<34}{seed.recall:>8.3f}{seed.fp_rate:>9.2%} "
        f"{'-':>8} {'-':>8}{'-':>11}"
    )
    print(f"scan CPU time (this thread): p50 {cpu50:.3f} ms, p99 {cpu99:.3f} ms")
    if results["long"]:
        wall, cpu = (_percentiles(list(column)) for column in zip(*results["long"], strict=True))
        print(
            f"{len(results['long'])} long replies (~{LONG_REPLY_PARTS * 30} words): wall p50 "
            f"{wall[0]:.3f} p99 {wall[1]:.3f} ms; CPU p50 {cpu[0]:.3f} p99 {cpu[1]:.3f} ms"
        )
    print(
        f"index: {postings} postings in {keys} Redis keys, {lists} of them sessions' lists "
        "(MEMORY USAGE, samples 0)"
    )
    single = results["single"]
    print(
        "recall on a single leaked item: "
        + ", ".join(f"{kind} {tally.recall:.3f}" for kind, tally in single.items())
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10000)
    parser.add_argument("--active", type=int, default=500, help="users whose replies are scanned")
    parser.add_argument("--replies", type=int, default=4000)
    parser.add_argument("--leak-rate", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--long-replies", type=int, default=500)
    args = parser.parse_args()
    Redis.from_url(REDIS_URL).flushdb()
    rng, seed_rule = random.Random(args.seed), SeedRule()
    users = build_index(rng, args.users, seed_rule)
    # The bench's own corpus (and the seed rule's word table) is a large heap a worker does
    # not have: keep the collector's full passes over it out of the scan timings.
    gc.collect()
    gc.freeze()
    results = evaluate(rng, users, args, seed_rule)
    results["long"] = long_reply_timings(users, args)
    report(results, memory_per_posting(), args)


if __name__ == "__main__":
    main()
