"""History stores side by side: appends and history loads at 1, 10 and 100 messages of
history, and Redis memory per stored message, on the real Postgres and Redis.

    .venv/bin/python bench/stores.py [--ops 300]

It creates and drops its own database, ``isolation_bench_stores``, and uses Redis db 13.
Each operation is one store call as the service makes it (inside a transaction for the
append, as ``message_accept`` does); times are wall-clock per call, in this one process.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DB = "isolation_bench_stores"
REDIS_DB = 13
ENV = {
    "DJANGO_SETTINGS_MODULE": "bench.settings",
    "DEBUG": "1",
    "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DB}",
    "REDIS_URL": f"redis://127.0.0.1:6379/{REDIS_DB}",
    "CELERY_TASK_ALWAYS_EAGER": "1",
    "LLM_PROVIDER": "offline",
}
SIZES = (1, 10, 100)
STORES = ("db", "cached_db", "redis")
# A typical chat line: what a message costs in memory is mostly its text.
TEXT = "Could you check where my order is? It was due on Monday and has not arrived yet."


def prepare() -> None:
    subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--if-exists", DB], check=True)
    subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", DB], check=True)
    subprocess.run(["redis-cli", "-n", str(REDIS_DB), "flushdb"], check=True, capture_output=True)
    env = {**os.environ, **ENV}
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True
    )
    os.environ.update(ENV)
    import django

    django.setup()


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def session_with_history(owner, size: int):
    """A session holding ``size`` messages (user and assistant turns), and its last turn."""
    from sessions_app import services

    session = services.chat_session_create(owner=owner)
    turn = None
    for n in range(size):
        if n % 2 == 0:
            turn = services.message_accept(user=owner, session_id=session.pk, content=TEXT)
        else:
            services.turn_complete(turn_id=turn.pk, reply=TEXT)
    session.refresh_from_db()
    return session, turn


def measure(store: str, size: int, ops: int, owner) -> dict[str, float]:
    from django.conf import settings
    from django.db import transaction

    from sessions_app.models import Turn
    from sessions_app.stores import history_store

    settings.HISTORY_STORE = store
    appends, loads = [], []
    for _ in range(ops // 10):  # ten sessions' worth per shape keeps the setup short
        session, turn = session_with_history(owner, size)
        for _ in range(10):
            started = time.perf_counter()
            history_store().history(session=session, turn_id=turn.pk)
            loads.append(time.perf_counter() - started)
        for _ in range(10):
            fresh = Turn.objects.create(session=session, status="completed")
            started = time.perf_counter()
            with transaction.atomic():
                history_store().append_user_message(
                    session=session, turn_id=fresh.pk, seq=session.next_seq, content=TEXT
                )
            appends.append(time.perf_counter() - started)
            session.next_seq += 1
    return {
        "append/s": len(appends) / sum(appends),
        "append p50": percentile(appends, 0.5) * 1e3,
        "append p99": percentile(appends, 0.99) * 1e3,
        "load/s": len(loads) / sum(loads),
        "load p50": percentile(loads, 0.5) * 1e3,
        "load p99": percentile(loads, 0.99) * 1e3,
    }


def redis_bytes_per_message(owner) -> float:
    from django.conf import settings
    from django_redis import get_redis_connection

    settings.HISTORY_STORE = "redis"
    client = get_redis_connection("default")
    sessions = [session_with_history(owner, 100)[0] for _ in range(20)]
    total = 0
    for session in sessions:
        for suffix in ("messages", "turns", "owner"):
            total += client.memory_usage(f"session:{{{session.pk}}}:{suffix}") or 0
    return total / (100 * len(sessions))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=300, help="operations per cell")
    args = parser.parse_args()
    prepare()
    from django.contrib.auth.models import User

    owner = User.objects.create_user("bench-stores")
    print(f"{args.ops} operations per cell; times in ms; message text {len(TEXT)} chars")
    print(
        "| store | history | appends/s | append p50 | append p99 | loads/s | load p50 | load p99 |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for size in SIZES:
        for store in STORES:
            row = measure(store, size, args.ops, owner)
            print(
                f"| {store} | {size} | {row['append/s']:.0f} | {row['append p50']:.2f} "
                f"| {row['append p99']:.2f} | {row['load/s']:.0f} | {row['load p50']:.2f} "
                f"| {row['load p99']:.2f} |"
            )
    per = redis_bytes_per_message(owner)
    print(
        f"\nredis store: {per:.0f} bytes of Redis memory per stored message "
        f"(MEMORY USAGE of a session's keys / its messages, 100-message sessions)"
    )


if __name__ == "__main__":
    main()
