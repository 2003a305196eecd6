"""The CPU of a request's framework steps, read in the running server, one call at a time.

A sampling profile gives each step's share; this gives its CPU per call, as the server
runs it once per request, for comparison with the same step timed in a loop (where it runs
warm, and on this machine several times cheaper). With ``BENCH_STEP_PROBE`` set to a
directory, ``bench/urls.py`` wraps each step of ``STEPS`` in the gunicorn workers; a worker
keeps ``(step, monotonic ns at its end, CPU ns)`` in memory and writes them to
``<directory>/<pid>.steps`` as it exits. ``bench/turn_throughput.py --probe`` sets it and
prints, per phase, each step's calls per operation and CPU per call.
"""

import atexit
import functools
import importlib
import os
import statistics
import threading
import time
from pathlib import Path

# What every API request passes through, outside the service's own code: the view's work
# is the stage profile's (bench/turn_profile.py).
STEPS = {
    "gunicorn: the whole request": "gunicorn.workers.gthread.ThreadWorker.handle_request",
    "Django: the whole request": "django.core.handlers.base.BaseHandler.get_response",
    "Django: URL resolving": "django.core.handlers.base.BaseHandler.resolve_request",
    "DRF: the request object": "rest_framework.views.APIView.initialize_request",
    "DRF: authentication": "rest_framework.views.APIView.perform_authentication",
    "DRF: content negotiation": "rest_framework.views.APIView.perform_content_negotiation",
    "DRF: the response's finishing": "rest_framework.views.APIView.finalize_response",
    "DRF: JSON rendering": "rest_framework.renderers.JSONRenderer.render",
    "middleware: CSP header": "core.csp.CSPMiddleware.process_response",
    "middleware: CSP header, django-csp's": "csp.middleware.CSPMiddleware.process_response",
    "middleware: messages (request)": (
        "django.contrib.messages.middleware.MessageMiddleware.process_request"
    ),
    "middleware: sessions (request)": (
        "django.contrib.sessions.middleware.SessionMiddleware.process_request"
    ),
    "middleware: sessions (response)": (
        "django.contrib.sessions.middleware.SessionMiddleware.process_response"
    ),
    "middleware: common (request)": "django.middleware.common.CommonMiddleware.process_request",
}

_seen: list[tuple[str, int, int]] = []
_lock = threading.Lock()


def install(directory: str) -> None:
    """Wrap every step of ``STEPS``; write what they took to ``directory`` at exit."""
    for name, dotted in STEPS.items():
        module, owner, attribute = dotted.rsplit(".", 2)
        cls = getattr(importlib.import_module(module), owner)
        setattr(cls, attribute, _timed(name, getattr(cls, attribute)))
    atexit.register(_write, Path(directory) / f"{os.getpid()}.steps")


def _timed(name: str, fn):
    @functools.wraps(fn)
    def timed(*args, **kwargs):
        cpu = time.thread_time_ns()
        try:
            return fn(*args, **kwargs)
        finally:
            used = time.thread_time_ns() - cpu
            with _lock:
                _seen.append((name, time.monotonic_ns(), used))

    return timed


def _write(path: Path) -> None:
    with _lock:
        lines = [f"{ended} {used} {name}\n" for name, ended, used in _seen]
    path.write_text("".join(lines))


def read(directory: str) -> list[tuple[str, float, int]]:
    """Every call the workers wrote: (step, monotonic seconds at its end, CPU ns)."""
    calls = []
    for path in Path(directory).glob("*.steps"):
        for line in path.read_text().splitlines():
            ended, used, name = line.split(" ", 2)
            calls.append((name, int(ended) / 1e9, int(used)))
    return calls


def table(calls: list[tuple[str, float, int]], span: tuple[float, float], ops: int) -> list[str]:
    """Markdown rows of the calls within ``span``: each step's calls per operation, the
    median CPU of a call and the CPU per operation, in microseconds."""
    started, ended = span
    by_step: dict[str, list[int]] = {}
    for name, at, used in calls:
        if started <= at <= ended:
            by_step.setdefault(name, []).append(used)
    rows = []
    for name in STEPS:
        used = by_step.get(name)
        if used:
            per_op = sum(used) / 1e3 / max(ops, 1)
            median = statistics.median(used) / 1e3
            rows.append(f"| {name} | {len(used) / max(ops, 1):.2f} | {median:.1f} | {per_op:.1f} |")
    return rows
