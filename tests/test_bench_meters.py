"""What the turn bench (``bench/turn_throughput.py``) reads of threads, and its spinners.

The README's account of what many clients cost the web rests on them: the switches and
moves between cores it counts must be the threads' own, and a spinner at the default
priority would take CPU from the services it sits beside and slow them for another reason
than the one measured; one left running would skew every later phase.
"""

import os
import threading
import time

from bench.turn_throughput import Spinners, thread_counts


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_spinners_run_at_the_lowest_priority_and_busy_and_end_with_the_block():
    with Spinners(2) as spinners:
        pids = [proc.pid for proc in spinners.procs]
        assert len(set(pids)) == 2
        assert [os.getpriority(os.PRIO_PROCESS, pid) for pid in pids] == [19, 19]
        before = [_cpu_ticks(pid) for pid in pids]
        time.sleep(0.5)
        assert all(_cpu_ticks(pid) > ticks for pid, ticks in zip(pids, before, strict=True))
    assert all(proc.poll() is not None for proc in spinners.procs)


def test_thread_counts_read_a_threads_own_switches_and_moves_between_cores():
    me = (os.getpid(), threading.get_native_id())
    cores = sorted(os.sched_getaffinity(0))
    assert len(cores) >= 2, "moving a thread between cores needs two"
    try:
        os.sched_setaffinity(0, {cores[0]})
        switches, moves = thread_counts({os.getpid()})[me]
        for _ in range(5):
            time.sleep(0.001)  # each sleep switches out and back in
        os.sched_setaffinity(0, {cores[1]})  # the scheduler must move this thread
        switched, moved = thread_counts({os.getpid()})[me]
    finally:
        os.sched_setaffinity(0, cores)
    assert switched >= switches + 5
    assert moved >= moves + 1
