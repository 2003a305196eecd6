"""gunicorn.conf.py: what API.md's gunicorn command line gets from the repo's config file."""

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from .test_settings import ROOT, SUITE_ENV


def _gunicorn(workers: int, **env: str) -> subprocess.Popen:
    clean = {k: v for k, v in os.environ.items() if k not in SUITE_ENV}
    argv = [sys.executable, "-m", "gunicorn", "isolation_site.wsgi", "-b", "127.0.0.1:0"]
    argv += ["-w", str(workers), "-k", "gthread", "--no-control-socket"]
    env = {**clean, "DJANGO_SETTINGS_MODULE": "isolation_site.settings", "DEBUG": "1", **env}
    return subprocess.Popen(argv, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)


def _boots(server: subprocess.Popen) -> tuple[bool, str]:
    """Whether a worker booted before gunicorn exited (then it is stopped), and its log."""
    log, url, booted = [], None, False
    try:
        for line in server.stderr:
            log.append(line)
            if match := re.search(r"Listening at: (http://\S+)", line):
                url = match.group(1)
            if "Booting worker" in line:
                _serving(url)
                booted = True
                break
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        log.append(server.communicate(timeout=60)[1] or "")
    return booted, "".join(log)


def _serving(url: str | None) -> None:
    """Wait until the worker answers a request. A SIGTERM forwarded to a worker between
    its fork and its own signal handlers is lost (the master's, inherited, swallow it):
    gunicorn then waits out its 30 s graceful timeout before it exits."""
    deadline = time.monotonic() + 30
    while url and time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/healthz", timeout=5).close()  # noqa: S310
            return
        except urllib.error.HTTPError:
            return  # an answer all the same
        except OSError:
            time.sleep(0.1)


@pytest.mark.parametrize("redis_url", [None, "  "], ids=["unset", "blanks"])
def test_several_workers_without_redis_refuse_to_start(redis_url):
    """Without Redis the sign-in counts, the chat throttle and the wait slots live in each
    process's memory: with four workers every limit would let four times as much through.
    Blanks are no Redis either: the settings read them as unset."""
    server = _gunicorn(2, **({} if redis_url is None else {"REDIS_URL": redis_url}))
    booted, log = _boots(server)
    assert not booted and server.returncode != 0
    assert "2 worker processes need REDIS_URL" in log


def test_one_worker_without_redis_or_several_with_it_start():
    for server in (_gunicorn(1), _gunicorn(2, REDIS_URL="redis://127.0.0.1:6379/15")):
        booted, log = _boots(server)
        assert booted, log


def test_a_worker_whose_threads_leave_no_wait_budget_says_so():
    """One thread (gunicorn's default) leaves none for waits: every ?wait is answered 202
    at once and every stream 503 with a Retry-After of seconds, for as long as it runs."""
    booted, log = _boots(_gunicorn(1))
    assert booted, log
    assert "no waits may be held in this process (1 thread(s)" in log
    booted, log = _boots(_gunicorn(1, GUNICORN_CMD_ARGS="--threads 8"))
    assert booted and "no waits may be held" not in log, log


def test_only_a_thread_worker_names_its_threads_to_the_app(monkeypatch):
    """The wait budget is the worker's threads less an eighth: under gunicorn's uvicorn
    worker a wait holds no thread, and its one "thread" would make a budget of none."""
    import runpy
    from types import SimpleNamespace

    from gunicorn.workers.gthread import ThreadWorker
    from gunicorn.workers.sync import SyncWorker
    from uvicorn_worker import UvicornWorker

    post_fork = runpy.run_path(str(ROOT / "gunicorn.conf.py"))["post_fork"]
    server = SimpleNamespace(cfg=SimpleNamespace(threads=8))
    for worker_class, named in ((ThreadWorker, "8"), (SyncWorker, "8"), (UvicornWorker, None)):
        monkeypatch.setenv("WEB_THREADS", "1")  # inherited: not the worker's to use
        post_fork(server, object.__new__(worker_class))
        assert os.environ.get("WEB_THREADS") == named, worker_class
