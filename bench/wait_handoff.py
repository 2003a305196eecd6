"""A ``?wait``'s trip through the process's listener, alone: subscribe, publish, wake, close.

    .venv/bin/python bench/wait_handoff.py [--waits 3000] [--redis-db 12]

What a waiting gunicorn thread and the listener's event loop do for one turn, without the
turn: the thread subscribes to a channel through the listener, a notification is published
on it, the thread is woken with its status and closes the subscription. ``--turns own``
(the default) uses ids as this process gives the turns it accepts, which the listener's one
pattern subscription carries; ``--turns other`` ids of turns accepted elsewhere, which it
subscribes to one by one. It prints the CPU
(this process, every thread) and wall time per wait. The machine's speed drifts too much to
compare two versions by seconds; instructions do not drift, so the README compares them by
the instructions ``valgrind --tool=callgrind`` counts for ``--waits N`` less ``--waits 0``
(the imports and Django's start-up), divided by N.
"""

import argparse
import os
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WARM_UP = 50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waits", type=int, default=3000)
    parser.add_argument("--redis-db", type=int, default=12)
    parser.add_argument(
        "--turns",
        choices=["own", "other"],
        default="own",
        help="own: ids as this process accepts turns (its pattern carries them); other: "
        "ids of turns accepted elsewhere (a SUBSCRIBE and an UNSUBSCRIBE each)",
    )
    args = parser.parse_args()

    from bench.turn_profile import ENV

    os.environ.update(
        ENV,
        REDIS_URL=f"redis://127.0.0.1:6379/{args.redis_db}",
        # Django wants one; nothing here opens it.
        DATABASE_URL="postgres://postgres@127.0.0.1:5432/isolation_bench_unused",
        ANTHROPIC_BASE_URL="http://127.0.0.1:9",
    )
    import django

    django.setup()
    from sessions_app.events import loop_thread, notify

    new_id = notify.new_turn_id if args.turns == "own" else uuid.uuid4
    for _ in range(WARM_UP):
        loop_thread.subscribe_from_thread(new_id()).close()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(args.waits):
        turn_id = new_id()
        waiter = loop_thread.subscribe_from_thread(turn_id)
        notify._publish(turn_id, "completed")
        if waiter.wait(5) != "completed":
            raise SystemExit("a wait was not woken")
        waiter.close()
    if args.waits:
        cpu = (time.process_time() - cpu) / args.waits * 1000
        wall = (time.perf_counter() - wall) / args.waits * 1000
        print(
            f"{args.waits} waits on {args.turns} turns: "
            f"{cpu:.3f} ms of CPU, {wall:.3f} ms of wall time each"
        )


if __name__ == "__main__":
    main()
