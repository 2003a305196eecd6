"""``bench/step_probe.py``: the README's per-step figures of the running server rest on
each call being timed as the step's own CPU, written once the worker exits, and counted in
the phase it ran in."""

import importlib
import time

import pytest

from bench import step_probe


class Step:
    def work(self, spin_ns: int) -> str:
        until = time.thread_time_ns() + spin_ns
        while time.thread_time_ns() < until:
            pass
        return "done"


@pytest.fixture
def probed(monkeypatch, tmp_path):
    exits = []
    monkeypatch.setattr(step_probe, "STEPS", {"a step": f"{__name__}.Step.work"})
    monkeypatch.setattr(step_probe, "_seen", [])
    monkeypatch.setattr(step_probe.atexit, "register", lambda fn, *args: exits.append((fn, args)))
    monkeypatch.setattr(Step, "work", Step.work)  # undone after the test
    step_probe.install(str(tmp_path))
    yield tmp_path, exits


def test_each_call_is_timed_and_written_at_exit(probed):
    directory, exits = probed
    started = time.monotonic()
    assert Step().work(2_000_000) == "done"  # the step still does its work
    Step().work(0)
    ended = time.monotonic()
    assert not list(directory.glob("*.steps"))  # nothing written while the worker runs
    [(write, args)] = exits
    write(*args)
    calls = step_probe.read(str(directory))
    assert [name for name, _, _ in calls] == ["a step", "a step"]
    assert calls[0][2] >= 2_000_000 and calls[1][2] < 2_000_000
    assert all(started <= at <= ended for _, at, _ in calls)


def test_a_phase_counts_only_the_calls_within_its_span(monkeypatch):
    monkeypatch.setattr(step_probe, "STEPS", {"a": "x", "b": "y", "c": "z"})
    calls = [("a", 1.0, 1000), ("a", 2.0, 3000), ("a", 5.0, 99000), ("b", 1.5, 2000)]
    assert step_probe.table(calls, (0.5, 2.5), ops=2) == [
        "| a | 1.00 | 2.0 | 2.0 |",
        "| b | 0.50 | 2.0 | 1.0 |",
    ]


@pytest.mark.parametrize("dotted", list(step_probe.STEPS.values()))
def test_every_step_it_wraps_exists(dotted):
    module, owner, attribute = dotted.rsplit(".", 2)
    assert callable(getattr(getattr(importlib.import_module(module), owner), attribute))
