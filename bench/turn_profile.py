"""One chat turn, stage by stage: wall and CPU time of each step a turn takes, in-process.

    .venv/bin/python bench/turn_profile.py [--turns 300] [--store db]

The same calls the view and the worker make, in order, timed one by one on the real
Postgres and Redis with the fake Claude answering at once through the real SDK; PII
(pseudonymize) and the leak scan on. It makes its own database (``--db-name``, default
``isolation_bench_profile``) and uses Redis db 12 (``--redis-db``). CPU is this process's
(``time.process_time``), so it leaves out Postgres's and Redis's own; wall time includes
their round trips. ``--sql`` lists the statements of one turn, stage by stage. A second
table times the web's own steps one by one, each alone: those inside the accept (PII, the
audit hash, fingerprints) and around the view (the throttle, reading the message,
serializing the answer).
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DB = "isolation_bench_profile"
ENV = {
    "DJANGO_SETTINGS_MODULE": "bench.settings",
    "DEBUG": "0",  # DEBUG would record every query: a cost production does not pay
    "SECRET_KEY": "bench-only-secret-key-bench-only-secret-key-bench-only",
    "ENCRYPTION_KEYS": "rP0RmBBqN7Yx7PrwnWbJ1dGPLmVZ8kxAqV8VwK9xG2c=",
    "SECURE_HTTPS": "off",
    "CELERY_TASK_ALWAYS_EAGER": "1",
    "LLM_PROVIDER": "anthropic",
    "ANTHROPIC_API_KEY": "bench",
}
TEXT = "Hi, I am Dana Whitfield; my order 48291-XK7 to 221B Baker Street is late. Any news?"


def prepare(base_url: str, store: str, redis_db: int, db: str = DB) -> None:
    subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--if-exists", db], check=True)
    subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", db], check=True)
    ENV["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{db}"
    subprocess.run(["redis-cli", "-n", str(redis_db), "flushdb"], check=True, capture_output=True)
    ENV["REDIS_URL"] = f"redis://127.0.0.1:6379/{redis_db}"
    env = {**os.environ, **ENV}
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True
    )
    os.environ.update(ENV, ANTHROPIC_BASE_URL=base_url, HISTORY_STORE=store)
    import django

    django.setup()


class Stopwatch:
    def __init__(self) -> None:
        self.wall: dict[str, list[float]] = defaultdict(list)
        self.cpu: dict[str, list[float]] = defaultdict(list)
        self.queries: dict[str, list[list[str]]] = defaultdict(list)
        self.turns = 0

    def time(self, stage: str, fn, /, **kwargs):
        from django.db import connection

        seen: list[str] = []

        def count(execute, sql, params, many, context):
            seen.append(sql)
            return execute(sql, params, many, context)

        wall, cpu = time.perf_counter(), time.process_time()
        with connection.execute_wrapper(count):
            result = fn(**kwargs)
        self.wall[stage].append(time.perf_counter() - wall)
        self.cpu[stage].append(time.process_time() - cpu)
        self.queries[stage].append(seen)
        return result


def one_turn(watch: Stopwatch, user, session_id):
    """Time one turn's stages; return the turn as its wait re-read it, ended."""
    from sessions_app import events, llm, privacy, queries, selectors, services, tasks
    from sessions_app.events import notify

    release = watch.time("wait slot (take)", events.wait_slot_acquire, user_id=user.pk)
    turn = watch.time(
        "accept (lock + seq, turn, PII, store, audit, fingerprints)",
        services.message_accept,
        user=user,
        session_id=session_id,
        content=f"{TEXT} {uuid.uuid4().hex[:8]}",
    )
    changes = watch.time("subscribe (the process's listener)", _subscribed, turn_id=turn.pk)
    claimed = watch.time("claim", services.turn_claim, turn_id=turn.pk)
    from sessions_app.isolation import bound

    with bound(user_id=user.pk, session_id=claimed.session_id):
        history = watch.time("history (store)", queries.turn_history, turn=claimed)
        reply = watch.time(
            "still wanted? + Claude call (SDK, fake answers at once)",
            llm.send,
            history=history,
            still_wanted=tasks._still_wanted(claimed, history=history),
        )
    scrubbed = watch.time(
        "reply scrub (PII)", privacy.reply_scrub_read, session_id=claimed.session_id, reply=reply
    )
    watch.time(
        "scan + store reply + end turn",
        services.turn_deliver,
        turn=claimed,
        reply=scrubbed.text,
        known_placeholders=scrubbed.vault_placeholders,
    )
    watch.time("notify (pub/sub)", notify._publish, turn_id=turn.pk, status="completed")
    watch.time("woken (the notification reaches the wait)", _woken, changes=changes)
    ended = watch.time(
        "wake re-read (turn + vault, messages)",
        selectors.turn_refresh_for_owner,
        user=user,
        turn=turn,
    )
    watch.time("unsubscribe + wait slot (give back)", _done, changes=changes, release=release)
    return ended


# The web's own steps, each timed alone: the promises' work inside the accept (which the
# stage table times as one) and around the view (which it leaves out), for the README's
# account of a turn's web CPU beyond the frameworks and the statements.
def web_steps(steps: Stopwatch, user, session_id, ended) -> None:
    from django.conf import settings
    from rest_framework.parsers import JSONParser
    from rest_framework.request import Request
    from rest_framework.test import APIRequestFactory

    from audit_app.services import content_hash, fingerprints_register
    from sessions_app.pii import spans_to_scrub
    from sessions_app.serializers import turn_data

    text = f"{TEXT} {uuid.uuid4().hex[:8]}"
    posted = APIRequestFactory().post("/", {"content": text}, format="json")
    request = Request(posted, parsers=[JSONParser()])
    request.user = user
    steps.time("throttle (a Redis script)", _throttled, request=request)
    steps.time("read and validate the message (JSON, serializer)", _validated, request=request)
    steps.time(
        "PII: find what to protect in the message",
        spans_to_scrub,
        text=text,
        regions=settings.PII_PHONE_REGIONS,
    )
    steps.time("audit entry: the message's keyed hash", content_hash, text=text)
    steps.time(
        "fingerprints: digests and their registration (a Redis script)",
        fingerprints_register,
        user_id=user.pk,
        session_id=session_id,
        text=text,
    )
    steps.time("serialize the answer (the ended turn)", turn_data, turn=ended)
    steps.time("connection health check (Django's SELECT 1, each request)", _checked)


def _checked() -> None:
    """A request's first query: Django checks the persistent connection (``SELECT 1``)."""
    from django.db import connection

    connection.close_if_unusable_or_obsolete()  # what Django does between two requests
    if connection.connection is None:  # past CONN_MAX_AGE: a request would connect anew
        connection.connect()
    connection.close_if_health_check_failed()


def _throttled(*, request) -> None:
    from sessions_app.apis.common import ChatRateThrottle

    if not ChatRateThrottle().allow_request(request, None):
        raise SystemExit("the bench's users reached CHAT_THROTTLE_RATE: fewer --turns")


def _validated(*, request) -> None:
    from sessions_app.serializers import MessageCreateSerializer

    MessageCreateSerializer(data=request.data).is_valid(raise_exception=True)


def _subscribed(*, turn_id):
    from sessions_app.events import notify

    changes = notify.turn_changes(turn_id=turn_id, timeout=30, tick=60)
    next(changes)
    return changes


def _woken(*, changes) -> str | None:
    return next(changes)


def _done(*, changes, release) -> None:
    changes.close()
    release()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=300)
    parser.add_argument("--store", default="db", choices=["db", "redis", "cached_db"])
    parser.add_argument("--sql", action="store_true", help="list one turn's SQL by stage")
    parser.add_argument("--redis-db", type=int, default=12)
    parser.add_argument("--db-name", default=DB)
    args = parser.parse_args()
    from tests.fakes.claude import FakeClaude

    with FakeClaude(keep_alive=True) as fake:
        prepare(fake.url, args.store, args.redis_db, args.db_name)
        from django.contrib.auth.models import User

        from sessions_app import services

        watch, steps = Stopwatch(), Stopwatch()
        users = [User.objects.create_user(f"profile{n}") for n in range(20)]
        sessions = [services.chat_session_create(owner=u).pk for u in users]
        for n in range(args.turns):
            ended = one_turn(watch, users[n % 20], sessions[n % 20])
            web_steps(steps, users[n % 20], sessions[n % 20], ended)
            watch.turns += 1
            steps.turns += 1
    print(f"{args.turns} turns, store {args.store}; medians in ms (CPU: this process only)")
    _table(watch, "stage")
    print("\nThe web's own steps, each timed alone (inside the accept or around the view):")
    _table(steps, "step")
    if args.sql:
        for stage in watch.wall:
            print(f"\n{stage}:")
            for sql in watch.queries[stage][-1]:  # the last turn's: past the first's setup
                print("   ", " ".join(sql.split())[:160])


def _table(watch: Stopwatch, what: str) -> None:
    rows = [(stage, watch.wall[stage], watch.cpu[stage]) for stage in watch.wall]
    total_wall = sum(statistics.median(w) for _, w, _ in rows)
    total_cpu = sum(statistics.median(c) for _, _, c in rows)
    print(f"| {what} | wall p50 | CPU p50 | share of wall | SQL statements |")
    print("| --- | --- | --- | --- | --- |")
    total_queries = 0.0
    for stage, wall, cpu in rows:
        w, c = statistics.median(wall) * 1e3, statistics.median(cpu) * 1e3
        q = sum(map(len, watch.queries[stage])) / watch.turns
        total_queries += q
        print(f"| {stage} | {w:.2f} | {c:.2f} | {w / (total_wall * 1e3):.0%} | {q:.1f} |")
    print(f"| total | {total_wall * 1e3:.2f} | {total_cpu * 1e3:.2f} | | {total_queries:.1f} |")


if __name__ == "__main__":
    main()
