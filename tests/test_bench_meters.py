"""What the turn bench (``bench/turn_throughput.py``) reads of threads, and its spinners.

The README's account of what many clients cost the web rests on them: the switches and
moves between cores it counts must be the threads' own, and a spinner at the default
priority would take CPU from the services it sits beside and slow them for another reason
than the one measured; one left running would skew every later phase.
"""

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench.turn_throughput import SPIN, Spinners, measure, thread_counts

ROOT = Path(__file__).resolve().parent.parent


def _runtime_ns(pid: int) -> int:
    """The nanoseconds ``pid`` has run (the scheduler's own count, not sampled ticks)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # exited, not yet reaped
    except FileNotFoundError:
        return True


def _until(condition, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize("kind", sorted(SPIN))
def test_spinners_run_at_the_lowest_priority_and_busy_and_end_with_the_block(kind):
    with Spinners(2, kind) as spinners:
        pids = [proc.pid for proc in spinners.procs]
        assert len(set(pids)) == 2
        assert [os.getpriority(os.PRIO_PROCESS, pid) for pid in pids] == [19, 19]
        before = [_runtime_ns(pid) for pid in pids]
        # At nice 19 on a machine the suite keeps busy they may wait their turn: a while.
        assert _until(lambda: all(_runtime_ns(p) > n for p, n in zip(pids, before, strict=True)))
    assert all(proc.poll() is not None for proc in spinners.procs)


def test_idle_spinners_run_under_sched_idle():
    with Spinners(1, "loop", idle=True) as spinners:
        pid = spinners.procs[0].pid
        assert os.sched_getscheduler(pid) == os.SCHED_IDLE
        assert os.getpriority(os.PRIO_PROCESS, pid) == 19
    with Spinners(1, "loop") as spinners:  # not unless asked
        assert os.sched_getscheduler(spinners.procs[0].pid) == os.SCHED_OTHER


def test_spinners_end_when_the_bench_dies_without_ending_them(tmp_path):
    """Killed, the bench runs no ``__exit__``: its spinners must not spin on for good."""
    script = (
        "import os\n"
        "from bench.turn_throughput import Spinners\n"
        "spinners = Spinners(2, 'loop').__enter__()\n"
        "print(' '.join(str(p.pid) for p in spinners.procs), flush=True)\n"
        "os._exit(0)\n"
    )
    out = tmp_path / "pids"
    with out.open("w") as stdout:  # a file, not a pipe: a spinner left running holds no EOF
        subprocess.run([sys.executable, "-c", script], cwd=ROOT, stdout=stdout, check=True)
    lines = out.read_text().splitlines()
    pids = [int(pid) for line in lines if not line.startswith("#") for pid in line.split()]
    assert len(pids) == 2
    assert _until(lambda: all(_gone(pid) for pid in pids))


def test_thread_counts_read_a_threads_own_switches_and_moves_between_cores():
    me = (os.getpid(), threading.get_native_id())
    cores = sorted(os.sched_getaffinity(0))
    assert len(cores) >= 2, "moving a thread between cores needs two"
    try:
        os.sched_setaffinity(0, {cores[0]})
        switches, moves = thread_counts({os.getpid()})[me]
        for _ in range(5):
            time.sleep(0.001)  # each sleep switches out and back in, on the same core
        os.sched_setaffinity(0, {cores[1]})  # the scheduler must move this thread, once
        switched, moved = thread_counts({os.getpid()})[me]
    finally:
        os.sched_setaffinity(0, cores)
    assert switched >= switches + 5
    assert moved == moves + 1


def test_each_phase_says_when_and_beside_what_it_ran_as_busy_profile_reads_it(capsys):
    """bench/busy_profile.sh cuts perf's samples into phases, and labels them quiet or busy,
    by these lines, read with its own awk."""

    class Clients:
        early = polls = 0
        latencies: list[float] = []

        def run(self, path_for, **kwargs):
            time.sleep(0.05)
            return 3, 0, 0.05

    stack = SimpleNamespace(pg=None, web=os.getpid(), worker=os.getpid())
    args = SimpleNamespace(max_seconds=1, seconds=1, turns=0)
    before = time.clock_gettime(time.CLOCK_MONOTONIC)
    measure(stack, Clients(), "bare", str, args)
    with Spinners(1, "loop"):
        measure(stack, Clients(), "turn", str, args)
    after = time.clock_gettime(time.CLOCK_MONOTONIC)
    script = (ROOT / "bench" / "busy_profile.sh").read_text()
    program = re.search(r"awk '(/\^# spinners on/.*?)' \"\$dir/bench.log\"", script, re.S)
    read = subprocess.run(
        ["awk", program.group(1)],
        input=capsys.readouterr().out,
        capture_output=True,
        text=True,
        check=True,
    )
    rows = [line.split() for line in read.stdout.splitlines()]
    assert [(name, done, busy) for name, _, _, done, busy in rows] == [
        ("bare", "3", "0"),
        ("turn", "3", "1"),
    ]
    for _, start, end, _, _ in rows:
        # Printed to the millisecond: each bound within one of the truth.
        assert before - 0.001 <= float(start) and float(end) <= after + 0.001
        assert float(end) - float(start) >= 0.05 - 0.002  # the phase's own 50 ms


@pytest.mark.parametrize("busy_first", [False, True])
def test_the_phases_beside_the_spinners_run_in_the_order_asked(monkeypatch, busy_first):
    """--busy-first swaps the order, so that a fuller database or a warmer process can be
    told from the spinners; each phase runs once each way, and the busy ones beside them."""
    import bench.turn_throughput as bench

    spinning, calls = [False], []

    class Spinners:
        def __init__(self, count, kind, idle):
            assert (count, kind, idle) == (2, "loop", True)

        def __enter__(self):
            spinning[0] = True

        def __exit__(self, *exc):
            spinning[0] = False

    def measure(stack, clients, name, path_for, args, **kwargs):
        calls.append((name, spinning[0]))
        return SimpleNamespace(name=name)

    monkeypatch.setattr(bench, "Spinners", Spinners)
    monkeypatch.setattr(bench, "measure", measure)
    monkeypatch.setattr(bench, "rss_of", lambda web, worker: {})
    monkeypatch.setattr(bench, "report", lambda result, args: None)
    args = SimpleNamespace(
        spinners=2,
        spin="loop",
        spin_idle=True,
        busy_first=busy_first,
        floor=False,
        sql=True,
        merged=True,
        read=True,
        session_turns=0,
    )
    stack = SimpleNamespace(web=0, worker=0)
    result = bench.measure_clients(stack, "http://127.0.0.1:1", "redis", 1, args, ["t"])
    quiet = [("bare", False), ("sql", False), ("merged", False), ("turn", False), ("read", False)]
    busy = [(name, True) for name, _ in quiet]
    assert calls == (busy + quiet if busy_first else quiet + busy)
    assert sorted(result["busy"]) == ["bare", "merged", "read", "sql", "turn"]
