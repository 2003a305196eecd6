"""isolation_site/asgi.py under API.md's uvicorn command line: several workers need Redis."""

import os
import subprocess
import sys
import threading

from .support import free_port
from .test_settings import ROOT, SUITE_ENV

STARTED = "Application startup complete"


def _uvicorn(workers: int, **env: str) -> tuple[subprocess.CompletedProcess | None, str]:
    """Run uvicorn as API.md does until a worker has started (then stop it) or it exits by
    itself within 60 s; return how it exited (None: stopped) and its log."""
    clean = {k: v for k, v in os.environ.items() if k not in SUITE_ENV}
    argv = [sys.executable, "-m", "uvicorn", "isolation_site.asgi:application"]
    argv += ["--host", "127.0.0.1", "--port", str(free_port()), "--workers", str(workers)]
    env = {**clean, "DJANGO_SETTINGS_MODULE": "isolation_site.settings", "DEBUG": "1", **env}
    server = subprocess.Popen(
        argv, cwd=ROOT, env=env, stderr=subprocess.STDOUT, stdout=subprocess.PIPE, text=True
    )
    log = []
    deadline = threading.Timer(60, server.kill)  # a worker respawned forever: not a hang
    deadline.start()
    try:
        for line in server.stdout:  # ends when uvicorn exits
            log.append(line)
            if STARTED in line:
                server.terminate()
                server.wait(timeout=30)
                return None, "".join(log)
        return server.wait(timeout=30), "".join(log)
    finally:
        deadline.cancel()
        if server.poll() is None:
            server.kill()
            server.wait()


def test_several_workers_without_redis_refuse_to_start():
    """Without Redis the sign-in counts, the chat throttle and the wait slots live in each
    process's memory: with two workers every limit would let twice as much through."""
    exited, log = _uvicorn(2)
    assert exited is not None, log  # uvicorn stopped by itself, no worker serving
    assert STARTED not in log
    assert "2 worker processes need REDIS_URL" in log
    assert "failed to start, stopping the parent process" in log  # not respawned in a loop


def test_one_worker_without_redis_or_several_with_it_start():
    for workers, env in ((1, {}), (2, {"REDIS_URL": "redis://127.0.0.1:6379/15"})):
        exited, log = _uvicorn(workers, **env)
        assert exited is None and STARTED in log, log


def test_several_workers_with_a_setting_that_refuses_stop_instead_of_respawning():
    """A worker whose settings refuse to start (here no SECRET_KEY with DEBUG off) stops
    uvicorn, saying why, rather than being spawned again and again."""
    exited, log = _uvicorn(2, DEBUG="0", REDIS_URL="redis://127.0.0.1:6379/15")
    assert exited is not None, log
    assert "SECRET_KEY must be set when DEBUG is off" in log
    assert "failed to start, stopping the parent process" in log
    assert log.count("SECRET_KEY must be set") <= 2, log  # once per worker, not in a loop
