"""What sharing one interpreter between threads costs a request that waits on sockets.

    .venv/bin/python bench/thread_waits.py [--ops 3000] [--trips 16] [--work-us 150]
        [--threads 1,8] [--redis-db 12]

No Django, no service code: each operation is ``--trips`` Redis round trips (``PING`` on
a shared ``redis.Redis``, as the web's commands share its pool) with ``--work-us``
microseconds of pure Python between them, about the shape of a chat turn's web side (a
dozen and a half round trips, a few milliseconds of Python). The same operations run on
1 thread, then on 8 (a gunicorn gthread worker's ``--threads 8``), in one process, and
the process's CPU and context switches per operation are read from ``getrusage``. Any
growth of CPU per operation with threads is the thread-per-request model's own: a thread
whose socket answered must take the interpreter lock back from a thread that is running,
and sleeps and wakes once more to do so; the more threads are in flight, the more often.
Alternated ``--rounds`` times, medians.
"""

import argparse
import resource
import statistics
import sys
import threading
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def spin(microseconds: float) -> None:
    """Python work for about ``microseconds`` of CPU (holding the interpreter lock)."""
    end = time.thread_time() + microseconds / 1e6
    while time.thread_time() < end:
        pass


def run(
    client: redis.Redis, threads: int, ops: int, trips: int, work_us: float, wait_ms: float = 0
) -> dict:
    """``ops`` operations on ``threads`` threads; CPU ms and switches per operation."""
    left = [ops]
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            for trip in range(trips):
                if trip == trips // 2 and wait_ms:
                    time.sleep(wait_ms / 1e3)  # as a ?wait waits for the worker
                spin(work_us)
                client.ping()

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    after, elapsed = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - started
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    switches = (after.ru_nvcsw + after.ru_nivcsw) - (before.ru_nvcsw + before.ru_nivcsw)
    return {
        "cpu_ms": cpu / ops * 1e3,
        "switches": switches / ops,
        "ops_s": ops / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=3000)
    parser.add_argument("--trips", type=int, default=16, help="Redis round trips per operation")
    parser.add_argument("--work-us", type=float, default=150, help="Python CPU between trips")
    parser.add_argument(
        "--wait-ms", type=float, default=0, help="a sleep mid-operation, as a ?wait's"
    )
    parser.add_argument("--threads", default="1,8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis-db", type=int, default=12)
    parser.add_argument(
        "--switch-interval",
        type=float,
        default=sys.getswitchinterval(),
        help="seconds a thread may hold the interpreter lock while another waits for it",
    )
    args = parser.parse_args()
    sys.setswitchinterval(args.switch_interval)
    counts = [int(n) for n in args.threads.split(",")]
    client = redis.Redis(host="127.0.0.1", port=6379, db=args.redis_db, max_connections=64)
    run(client, max(counts), max(counts) * 10, args.trips, args.work_us)  # connections made
    results: dict[int, list[dict]] = {n: [] for n in counts}
    for _ in range(args.rounds):
        for n in counts:
            results[n].append(run(client, n, args.ops, args.trips, args.work_us, args.wait_ms))
    print(
        f"{args.ops} operations of {args.trips} Redis round trips and {args.work_us:.0f} µs of"
        f" Python each, a sleep of {args.wait_ms:g} ms; {args.rounds} rounds alternated;"
        f" switch interval {sys.getswitchinterval() * 1e3:g} ms; medians (and each round)"
    )
    print("| threads | ops/s | CPU ms per op | context switches per op |")
    print("| --- | --- | --- | --- |")
    for n in counts:
        cells = []
        for key, fmt in (("ops_s", ".0f"), ("cpu_ms", ".3f"), ("switches", ".1f")):
            values = [r[key] for r in results[n]]
            each = ", ".join(format(v, fmt) for v in values)
            cells.append(f"{format(statistics.median(values), fmt)} ({each})")
        print(f"| {n} | " + " | ".join(cells) + " |")

    def median(n: int, key: str) -> float:
        return statistics.median(r[key] for r in results[n])

    first, last = counts[0], counts[-1]
    one, many = median(first, "cpu_ms"), median(last, "cpu_ms")
    extra = median(last, "switches") - median(first, "switches")
    if extra > 0:
        print(
            f"CPU per op grew by {(many - one) * 1e3:.0f} µs from {first} to {last}"
            f" threads, with {extra:.1f} more switches: {(many - one) * 1e3 / extra:.1f} µs each"
        )


if __name__ == "__main__":
    main()
