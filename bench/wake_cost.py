"""What the same Python costs right after its thread waited, against the same Python run
back to back: on the machine idle, and beside busy processes at nice 19.

    .venv/bin/python bench/wake_cost.py [--reps 300] [--rounds 2] [--spinners 2]

A fixed piece of work (``small``: dict and string operations on a few KB of objects;
``large``: the same on objects scattered over a few MB, as a Django process's are;
``psycopg``: psycopg dumping the 19 parameters of a turn's audit entry INSERT, as the web
does for each statement, with no connection) runs after each kind of wait: none (back to
back), a sleep of 0.1, 1 or 10 ms, and a read of a pipe that another process writes 1 ms
later (a wake-up from another process, as a reply from Postgres or Redis is). It prints
the medians of the work's CPU time (this thread's, ``time.thread_time_ns``) and its wall
time, and each as a multiple of back to back. Quiet and busy alternate ``--rounds``
times, as the machine's speed drifts. No service, no database: only the interpreter, the
library and the machine.
"""

import argparse
import contextlib
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.turn_throughput import SPIN, Spinners  # noqa: E402

WAITS = ["back to back", "sleep 0.1 ms", "sleep 1 ms", "sleep 10 ms", "pipe, 1 ms"]
# The writer: one byte on stdout each time a byte arrives on stdin, 1 ms after it.
WRITER = "import os, time\nwhile os.read(0, 1):\n    time.sleep(0.001)\n    os.write(1, b'x')\n"


def objects(count: int, spread: int) -> list[dict]:
    """``count`` small dicts picked from ``spread`` made, so that they lie apart in memory."""
    made = [{"id": n, "name": f"user-{n}", "tags": [n, str(n)]} for n in range(spread)]
    return random.Random(7).sample(made, count)


class Work:
    def __init__(self, spread: int) -> None:
        self.items = objects(300, spread)

    def __call__(self) -> int:
        total = 0
        for item in self.items:
            total += len(item["name"]) + item["tags"][0] + len(item.get("missing", ""))
        return total


def psycopg_dump() -> Callable[[], object]:
    """psycopg's dumping of an audit entry INSERT's parameters (their types and sizes)."""
    import datetime
    import uuid

    from psycopg.adapt import PyFormat, Transformer
    from psycopg.types.json import Jsonb

    now, key = datetime.datetime.now(datetime.UTC), uuid.uuid4()
    params = [now, "reply", 5, key, key, "assistant", "f" * 64, 1, 2, True, "", Jsonb({})]
    params += ["open", None, None, None, "", "", None]
    formats, transformer = [PyFormat.AUTO] * len(params), Transformer()
    return lambda: transformer.dump_sequence(params, formats)


class Pipe:
    """A writer process that answers each byte with one, 1 ms later."""

    def __enter__(self) -> "Pipe":
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WRITER], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self.out, self.back = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        return self

    def wait(self) -> None:
        os.write(self.out, b"x")
        os.read(self.back, 1)

    def __exit__(self, *exc) -> None:
        self.proc.stdin.close()
        self.proc.wait(10)


def measure(work: Callable[[], object], pipe: Pipe, reps: int) -> dict[str, tuple[float, float]]:
    """Per wait: the median CPU and wall microseconds of ``work`` run right after it."""
    waits = {
        "back to back": None,
        "sleep 0.1 ms": lambda: time.sleep(0.0001),
        "sleep 1 ms": lambda: time.sleep(0.001),
        "sleep 10 ms": lambda: time.sleep(0.01),
        "pipe, 1 ms": pipe.wait,
    }
    for _ in range(50):  # past the first runs' warming up
        work()
    out = {}
    for name in WAITS:
        wait, cpu, wall = waits[name], [], []
        for _ in range(reps):
            if wait is not None:
                wait()
            started, used = time.perf_counter_ns(), time.thread_time_ns()
            work()
            cpu.append(time.thread_time_ns() - used)
            wall.append(time.perf_counter_ns() - started)
        out[name] = (statistics.median(cpu) / 1e3, statistics.median(wall) / 1e3)
    return out


def cell(values: list[float], base: list[float]) -> str:
    shown = ", ".join(f"{v:.1f}" for v in values)
    ratios = ", ".join(f"{v / b:.2f}" for v, b in zip(values, base, strict=True))
    return f"{shown} (x {ratios})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=300, help="runs of the work per wait")
    parser.add_argument("--rounds", type=int, default=2, help="quiet, then busy, this often")
    parser.add_argument("--spinners", type=int, default=2)
    parser.add_argument("--spin", choices=sorted(SPIN), default="loop")
    args = parser.parse_args()
    works = {"small": Work(300), "large": Work(200_000), "psycopg": psycopg_dump()}
    seen: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    with Pipe() as pipe:
        for _ in range(args.rounds):
            for busy in (False, True):
                beside = Spinners(args.spinners, args.spin) if busy else contextlib.nullcontext()
                with beside:
                    for kind, work in works.items():
                        for name, figures in measure(work, pipe, args.reps).items():
                            key = (kind, "busy" if busy else "quiet", name)
                            seen.setdefault(key, []).append(figures)
    print(
        f"\nMedian microseconds of the work right after each wait ({args.reps} runs each; one "
        f"figure per round; x: over back to back in the same round); busy: beside "
        f"{args.spinners} {args.spin} spinners at nice 19"
    )
    for what, index in (("CPU", 0), ("wall", 1)):
        print(f"\n| work | wait | {what} quiet | {what} busy |")
        print("| --- | --- | --- | --- |")
        for kind in works:
            for name in WAITS:
                cells = []
                for state in ("quiet", "busy"):
                    values = [f[index] for f in seen[(kind, state, name)]]
                    base = [f[index] for f in seen[(kind, state, "back to back")]]
                    cells.append(cell(values, base))
                print(f"| {kind} | {name} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
