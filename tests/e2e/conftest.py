"""Real ``celery worker`` subprocesses on the test's Postgres database, Redis and fake Claude.

The test process publishes tasks to Redis (``queued_tasks``) instead of running them eagerly;
``workers`` starts worker subprocesses that consume them and stops every one at teardown.
``wait_until`` stays in ``tests/conftest.py`` (other suites use it) and is re-exported here.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from django.db import connection
from redis import Redis

from isolation_site.celery import app as celery_app

from ..conftest import wait_until
from ..fakes.claude import FakeClaude

__all__ = ["Worker", "wait_until"]

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_SECONDS = 30


class Worker:
    """A real ``celery worker`` subprocess; its output goes to ``log_path``."""

    def __init__(
        self, env: dict[str, str], name: str, log_path: Path, *, pool: str, concurrency: int
    ) -> None:
        self.env = env
        self.name = name
        self.log_path = log_path
        self.pool = pool
        self.concurrency = concurrency
        self.proc: subprocess.Popen | None = None
        self.terminating = False

    def start(self) -> "Worker":
        # Output goes to a file, not a pipe: an unread pipe fills up and blocks the worker.
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "isolation_site",
                    "worker",
                    "-P",
                    self.pool,
                    "-c",
                    str(self.concurrency),
                    "-l",
                    "info",
                    "-n",
                    f"{self.name}@%h",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                ],
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own process group: teardown can kill it and anything it spawned.
                start_new_session=True,
            )
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout: float = READY_TIMEOUT_SECONDS) -> "Worker":
        """Block until the worker consumes from the broker; fail with its log if it does not."""
        if not wait_until(lambda: " ready." in self.log() or not self.alive, timeout):
            raise AssertionError(f"worker {self.name} not ready in {timeout}s:\n{self.log()}")
        if not self.alive:
            raise AssertionError(f"worker {self.name} exited:\n{self.log()}")
        return self

    def succeeded(self, task_name: str = "sessions_app.tasks.run_turn") -> int:
        """How many runs of ``task_name`` this worker finished (from its log)."""
        return sum(
            1 for line in self.log().splitlines() if task_name in line and " succeeded in " in line
        )

    def kill(self) -> None:
        """SIGKILL the worker's whole process group, as a machine loss would."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> None:
        """Ask for a warm shutdown: the running task finishes, unacked ones are requeued."""
        # Only once: a second SIGTERM during the warm shutdown kills the worker outright.
        if self.alive and not self.terminating:
            self.terminating = True
            self.proc.terminate()

    def stop(self, timeout: float = 10) -> None:
        """Warm shutdown; SIGKILL if it has not exited within ``timeout`` seconds."""
        self.terminate()
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()


def _database_url() -> str:
    """The URL of the database this test really uses (pytest-django's test database)."""
    db = connection.settings_dict
    password = f":{quote(db['PASSWORD'], safe='')}" if db.get("PASSWORD") else ""
    user = quote(db.get("USER") or "", safe="")
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{db['NAME']}"


@pytest.fixture
def worker_env(settings, transactional_db, fake_claude: FakeClaude) -> dict[str, str]:
    """Environment for worker subprocesses: same database, Redis and fake Claude as the test."""
    assert connection.vendor == "postgresql", "worker tests need the Postgres test database"
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "isolation_site.settings",
        "DEBUG": "0",
        "SECRET_KEY": settings.SECRET_KEY,
        "ENCRYPTION_KEYS": ",".join(settings.ENCRYPTION_KEYS),
        "DATABASE_URL": _database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "CELERY_BROKER_URL": settings.REDIS_URL,
        "CELERY_TASK_ALWAYS_EAGER": "0",
        "CACHE_KEY_PREFIX": settings.CACHES["default"].get("KEY_PREFIX", "isolation"),
        "TURN_RETRY_DELAY_SECONDS": "0.1",
        "LLM_PROVIDER": "anthropic",
        "ANTHROPIC_API_KEY": settings.ANTHROPIC_API_KEY,
        "ANTHROPIC_BASE_URL": fake_claude.url,
        # Longer than any delay a test scripts, so the SDK does not time out and retry.
        "CLAUDE_TIMEOUT_SECONDS": "30",
        "CLAUDE_MAX_RETRIES": str(settings.CLAUDE_MAX_RETRIES),
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture
def queued_tasks(settings) -> Iterator[Redis]:
    """Publish tasks to this test's Redis broker instead of running them in the test process."""
    broker = Redis.from_url(settings.REDIS_URL)
    broker.flushdb()
    eager = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = False
    try:
        yield broker
    finally:
        celery_app.conf.task_always_eager = eager
        broker.flushdb()
        broker.close()


@pytest.fixture
def workers(worker_env, queued_tasks, tmp_path) -> Iterator[Callable[..., Worker]]:
    """Start worker subprocesses with ``workers(pool=..., concurrency=..., env={...})``.

    Every worker is stopped (SIGKILL if need be) at teardown, whatever the test did; the
    logs are printed then, so a failing test shows them.
    """
    started: list[Worker] = []
    tag = f"{os.environ.get('PYTEST_XDIST_WORKER', 'gw')}-{os.getpid()}"

    def spawn(
        name: str | None = None,
        *,
        pool: str = "solo",
        concurrency: int = 1,
        env: dict[str, str] | None = None,
    ) -> Worker:
        name = name or f"w{len(started)}"
        worker = Worker(
            {**worker_env, **(env or {})},
            f"{name}-{tag}",
            tmp_path / f"worker-{name}.log",
            pool=pool,
            concurrency=concurrency,
        )
        started.append(worker)
        return worker.start()

    try:
        yield spawn
    finally:
        for worker in started:
            worker.terminate()
        deadline = time.monotonic() + 10
        for worker in started:
            worker.stop(timeout=max(deadline - time.monotonic(), 0.1))
            code = worker.proc.returncode if worker.proc else None
            print(f"----- worker {worker.name} (exit {code}) -----\n{worker.log()[-20000:]}")
