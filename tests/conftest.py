import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.cache import cache
from django.db import connection
from rest_framework.test import APIClient

from isolation_site.celery import app as celery_app

from .factories import UserFactory
from .fakes.claude import FakeClaude

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _clean_cache() -> Iterator[None]:
    cache.clear()
    yield


def client_for(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {user.auth_token.key}")
    return client


@pytest.fixture
def user(db):
    return UserFactory()


@pytest.fixture
def other_user(db):
    return UserFactory()


@pytest.fixture
def api(user) -> APIClient:
    return client_for(user)


@pytest.fixture
def other_api(other_user) -> APIClient:
    return client_for(other_user)


@pytest.fixture
def fake_claude(settings) -> Iterator[FakeClaude]:
    """A fake Messages API on 127.0.0.1, used through the real SDK."""
    with FakeClaude() as fake:
        settings.LLM_PROVIDER = "anthropic"
        settings.ANTHROPIC_API_KEY = "test-key"
        settings.ANTHROPIC_BASE_URL = fake.url
        settings.CLAUDE_TIMEOUT_SECONDS = 5
        settings.CLAUDE_MAX_RETRIES = 3
        yield fake


def random_id() -> str:
    return str(uuid.uuid4())


# A real Celery worker ---------------------------------------------------------------------


class Worker:
    """A real ``celery worker`` subprocess on the test database and Redis."""

    def __init__(self, env: dict[str, str], name: str) -> None:
        self.env = env
        self.name = name
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Worker":
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "isolation_site",
                "worker",
                "-P",
                "solo",
                "-l",
                "warning",
                "-n",
                f"{self.name}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def worker_env(settings, transactional_db) -> dict[str, str]:
    """Environment for worker subprocesses: same database, Redis and Claude as the test."""
    db = connection.settings_dict
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "isolation_site.settings",
        "SECRET_KEY": settings.SECRET_KEY,
        "ENCRYPTION_KEYS": ",".join(settings.ENCRYPTION_KEYS),
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "REDIS_URL": settings.REDIS_URL,
        "CELERY_BROKER_URL": settings.REDIS_URL,
        "CELERY_TASK_ALWAYS_EAGER": "0",
        "CELERY_VISIBILITY_TIMEOUT": "8",
        "TURN_RETRY_DELAY_SECONDS": "0.1",
        "LLM_PROVIDER": settings.LLM_PROVIDER,
        "ANTHROPIC_API_KEY": settings.ANTHROPIC_API_KEY or "",
        "ANTHROPIC_BASE_URL": settings.ANTHROPIC_BASE_URL or "",
        "CLAUDE_TIMEOUT_SECONDS": str(settings.CLAUDE_TIMEOUT_SECONDS),
        "CLAUDE_MAX_RETRIES": str(settings.CLAUDE_MAX_RETRIES),
        "CACHE_KEY_PREFIX": "isolation",
    }
    return env


@pytest.fixture
def queued_tasks(settings) -> Iterator[None]:
    """Publish tasks to the Redis broker instead of running them in the test process."""
    from redis import Redis

    Redis.from_url(settings.REDIS_URL).flushdb()
    celery_app.conf.task_always_eager = False
    settings.CELERY_TASK_ALWAYS_EAGER = False
    yield
    celery_app.conf.task_always_eager = True


@pytest.fixture
def workers(worker_env, queued_tasks) -> Iterator[list[Worker]]:
    started: list[Worker] = []

    def spawn(name: str | None = None) -> Worker:
        worker = Worker(worker_env, name or f"w{len(started)}").start()
        started.append(worker)
        return worker

    started_fn = spawn
    yield started_fn  # type: ignore[misc]
    for worker in started:
        worker.stop()


def wait_until(predicate, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
