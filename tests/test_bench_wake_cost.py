"""``bench/wake_cost.py``: the README's figures of what Python costs right after a wait rest
on the waits being what they say (a real sleep, a real wake-up by another process) and on
each figure being the work's alone."""

import subprocess
import sys
import time
from pathlib import Path

from bench.wake_cost import WAITS, Pipe, Work, measure, psycopg_dump

ROOT = Path(__file__).resolve().parent.parent


def test_a_pipe_wait_is_woken_by_the_other_process_a_millisecond_later():
    with Pipe() as pipe:
        started = time.perf_counter()
        for _ in range(20):
            pipe.wait()
        elapsed = time.perf_counter() - started
        writer = pipe.proc
    assert elapsed >= 20 * 0.001
    assert writer.poll() == 0  # ended with the block


def test_each_wait_comes_before_each_run_of_the_work_and_is_not_timed_in_it():
    runs: list[float] = []

    def work() -> None:
        runs.append(time.perf_counter())

    with Pipe() as pipe:
        started = time.perf_counter()
        figures = measure(work, pipe, reps=5)
        elapsed = time.perf_counter() - started
    assert list(figures) == WAITS
    assert len(runs) == 50 + 5 * len(WAITS)  # the warm-up, then reps after each wait
    # The sleeps and the pipe's wake-ups took place: 5 x (0.1 + 1 + 10 + 1) ms at least.
    assert elapsed >= 5 * 0.0121
    for cpu, wall in figures.values():
        assert 0 < cpu < 1000 and 0 < wall < 1000  # the work's microseconds, not the wait's


def test_the_works_do_what_they_stand_for():
    assert Work(300)() == Work(300)() > 0
    dumped = psycopg_dump()()
    assert len(dumped) == 19 and dumped.count(None) == 4  # the audit entry's parameters


def test_it_prints_every_work_and_wait_quiet_and_busy_back_to_back_at_one():
    out = subprocess.run(
        [sys.executable, "bench/wake_cost.py", "--reps", "3", "--rounds", "1", "--spinners", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    body = [row for row in rows if not row.startswith("| work")]
    assert len(body) == 2 * 3 * len(WAITS)  # CPU and wall, three works, each wait
    for row in body:
        if "| back to back |" in row:
            assert row.count("(x 1.00)") == 2
    assert "# spinners on" in out and "# spinners off" in out
