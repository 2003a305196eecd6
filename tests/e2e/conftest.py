"""Real ``celery worker`` subprocesses on the test's Postgres database, Redis and fake Claude.

The test process publishes tasks to the broker (``queued_tasks``) instead of running them
eagerly; ``workers`` starts worker subprocesses that consume them and stops every one at
teardown. The broker is the test's Redis database, or with ``broker`` parametrized indirectly
to ``"amqp"``, a RabbitMQ virtual host of the test's own (``RabbitVhost``), so parallel test
processes never take each other's tasks.

For outages: ``services`` starts other long-running subprocesses (``celery beat``, a gunicorn
web server), ``redis_everywhere`` moves the test process (cache, notifications, broker) to a
``redis-server`` of the test's own that it may SIGKILL and restart empty, and
``database_killer`` terminates every connection to the test's own Postgres database.
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from django.db import connection
from redis import Redis

from ..fakes.claude import FakeClaude
from ..support import PrivateRedis, broker_at, free_port, wait_until

__all__ = ["DatabaseKiller", "PrivateRedis", "RabbitVhost", "Service", "Worker", "wait_until"]

ROOT = Path(__file__).resolve().parents[2]
# A bound, not a wait: a server that is up is seen at once. Two gunicorn workers importing
# Django on a machine loaded by other test processes have taken over 30 s.
READY_TIMEOUT_SECONDS = 90
# RabbitMQ without the virtual host: each test that uses it adds a vhost of its own.
AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672")


class Service:
    """A long-running subprocess (``celery beat``, gunicorn) in its own process group."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.url = ""  # where it answers, for a server

    def start(self) -> "Service":
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
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

    def wait_ready(self, ready: Callable[[], bool], timeout: float = READY_TIMEOUT_SECONDS):
        """Block until ``ready()``; fail with the log if it never is or the process exits."""
        if not wait_until(lambda: not self.alive or ready(), timeout):
            raise AssertionError(f"{self.name} not ready in {timeout}s:\n{self.log()}")
        if not self.alive:
            raise AssertionError(f"{self.name} exited:\n{self.log()}")
        return self

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM the process group; SIGKILL it if it has not exited within ``timeout``."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        # Children (gunicorn's workers) may outlive a parent that exited on its own.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


class Worker(Service):
    """A real ``celery worker`` subprocess; its output goes to ``log_path``."""

    def __init__(
        self, env: dict[str, str], name: str, log_path: Path, *, pool: str, concurrency: int
    ) -> None:
        argv = [sys.executable, "-m", "celery", "-A", "isolation_site", "worker"]
        argv += ["-P", pool, "-c", str(concurrency), "-l", "info", "-n", f"{name}@%h"]
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        super().__init__(name, argv, env, log_path)
        self.terminating = False

    def wait_ready(self, timeout: float = READY_TIMEOUT_SECONDS) -> "Worker":
        """Block until the worker consumes from the broker; fail with its log if it does not."""
        return super().wait_ready(lambda: " ready." in self.log(), timeout)

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


# The broker: the test's Redis database, or a RabbitMQ virtual host of the test's own ---------


class RabbitVhost:
    """A RabbitMQ virtual host of one test alone, made and deleted with ``rabbitmqctl``.

    Its queues (Celery's ``celery`` queue among them) are invisible from other vhosts, so
    parallel test processes cannot consume each other's tasks; deleting it deletes them.
    """

    def __init__(self) -> None:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "gw")
        self.name = f"iso-test-{worker}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.url = f"{AMQP_URL}/{quote(self.name, safe='')}"

    def create(self) -> "RabbitVhost":
        user = AMQP_URL.split("://", 1)[1].split(":", 1)[0]
        try:
            self._ctl("add_vhost", self.name)
            self._ctl("set_permissions", "-p", self.name, user, ".*", ".*", ".*")
        except (OSError, subprocess.SubprocessError) as exc:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                self.delete()
            pytest.fail(
                f"RabbitMQ is needed (rabbitmqctl: {exc}); start it with "
                "`rabbitmq-server -detached` (.ci/run does)"
            )
        return self

    def close_connections(self) -> None:
        """Close every client connection to the vhost, as a network failure would.

        RabbitMQ then requeues the tasks those connections held unacknowledged.
        """
        self._ctl("close_all_connections", "--vhost", self.name, "closed by the test")

    def delete(self) -> None:
        self._ctl("delete_vhost", self.name)

    @staticmethod
    def _ctl(*args: str) -> None:
        subprocess.run(
            ["rabbitmqctl", "--quiet", *args],
            check=True,
            capture_output=True,
            timeout=60,
        )


@pytest.fixture
def rabbit_vhost() -> Iterator[RabbitVhost]:
    vhost = RabbitVhost().create()
    try:
        yield vhost
    finally:
        vhost.delete()


@pytest.fixture
def broker(request, settings) -> str:
    """The broker URL of this test's tasks: its Redis database unless parametrized.

    ``@pytest.mark.parametrize("broker", ["redis", "amqp"], indirect=True)`` runs a test
    with each; ``"amqp"`` is a RabbitMQ vhost of the test's own (``rabbit_vhost``).
    """
    kind = getattr(request, "param", "redis")
    if kind == "redis":
        return settings.REDIS_URL
    if kind == "amqp":
        return request.getfixturevalue("rabbit_vhost").url
    raise ValueError(f"unknown broker {kind!r}")


@pytest.fixture
def worker_env(settings, transactional_db, fake_claude: FakeClaude, broker) -> dict[str, str]:
    """Environment for worker subprocesses: same database, Redis, broker and fake Claude."""
    assert connection.vendor == "postgresql", "worker tests need the Postgres test database"
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "isolation_site.settings",
        "DEBUG": "0",
        "SECURE_HTTPS": "off",  # plain HTTP to the test's own servers
        "SECRET_KEY": settings.SECRET_KEY,
        "ENCRYPTION_KEYS": ",".join(settings.ENCRYPTION_KEYS),
        "DATABASE_URL": _database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "CELERY_BROKER_URL": broker,
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
def queued_tasks(settings, broker) -> Iterator[Redis]:
    """Publish tasks to this test's broker instead of running them in the test process.

    Yields a client of the test's Redis database (emptied before and after).
    """
    redis = Redis.from_url(settings.REDIS_URL)
    redis.flushdb()
    # What isolation_site.settings chooses for an amqp:// CELERY_BROKER_URL.
    amqp = {
        "broker_transport_options": settings.AMQP_BROKER_TRANSPORT_OPTIONS,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
    }
    with broker_at(
        settings, broker, broker_write_url=broker, **({} if broker == settings.REDIS_URL else amqp)
    ):
        try:
            yield redis
        finally:
            redis.flushdb()
            redis.close()


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


# Other long-running subprocesses: celery beat, a gunicorn web server ----------------------


@pytest.fixture
def services(worker_env, tmp_path) -> Iterator[Callable[..., Service]]:
    """Start subprocesses with ``services(name, argv, env={...})``; all stopped at teardown."""
    started: list[Service] = []

    def spawn(name: str, argv: list[str], *, env: dict[str, str] | None = None) -> Service:
        service = Service(name, argv, {**worker_env, **(env or {})}, tmp_path / f"{name}.log")
        started.append(service)
        return service.start()

    try:
        yield spawn
    finally:
        for service in reversed(started):
            service.stop()
            code = service.proc.returncode if service.proc else None
            print(f"----- {service.name} (exit {code}) -----\n{service.log()[-20000:]}")


@pytest.fixture
def beat(services, tmp_path) -> Callable[..., Service]:
    """Start ``celery beat`` with ``beat(env={...})`` (a schedule file of the test's own)."""

    def spawn(*, env: dict[str, str] | None = None) -> Service:
        argv = [sys.executable, "-m", "celery", "-A", "isolation_site", "beat", "-l", "info"]
        argv += ["-s", str(tmp_path / "beat-schedule")]
        service = services("beat", argv, env=env)
        return service.wait_ready(lambda: "beat: Starting..." in service.log())

    return spawn


@pytest.fixture
def web_server(services, queued_tasks) -> Callable[..., Service]:
    """Serve the app with gunicorn, as in production; ``web_server().url`` is where.

    Same environment as the workers: the test database, Redis and broker, the fake Claude.
    Its log holds gunicorn's access log.
    """

    def spawn(*, workers: int = 2, threads: int = 8, env: dict[str, str] | None = None) -> Service:
        port = free_port()
        argv = [sys.executable, "-m", "gunicorn", "isolation_site.wsgi"]
        argv += ["-b", f"127.0.0.1:{port}", "-w", str(workers), "-k", "gthread"]
        argv += ["--threads", str(threads), "--timeout", "90", "--graceful-timeout", "3"]
        # No control socket: its default path is shared by every gunicorn on the machine.
        argv += ["--no-control-socket", "--access-logfile", "-", "--error-logfile", "-"]
        service = services("gunicorn", argv, env=env)
        service.url = f"http://127.0.0.1:{port}"
        return service.wait_ready(lambda: _answers_health(port))

    return spawn


@pytest.fixture
def asgi_server(services, queued_tasks) -> Callable[..., Service]:
    """Serve the app with uvicorn (API.md's ASGI process); ``asgi_server().url`` is where."""

    def spawn(*, env: dict[str, str] | None = None) -> Service:
        port = free_port()
        argv = [sys.executable, "-m", "uvicorn", "isolation_site.asgi:application"]
        argv += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        service = services("uvicorn", argv, env=env)
        service.url = f"http://127.0.0.1:{port}"
        return service.wait_ready(lambda: _answers_health(port))

    return spawn


def _answers_health(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


# A Redis server of the test's own ----------------------------------------------------------


@pytest.fixture
def redis_everywhere(settings, private_redis, queued_tasks) -> Iterator[dict[str, str]]:
    """Cache, notifications and broker of the test process on ``private_redis``.

    Yields the environment that puts subprocesses (workers, beat, web) on it too.
    """
    url = private_redis.url
    default = settings.CACHES["default"]
    # Assigning CACHES makes Django drop its cache connections (setting_changed).
    settings.CACHES = {"default": {**default, "LOCATION": url}}
    settings.REDIS_URL = url
    with broker_at(settings, url, broker_write_url=url):
        yield {"REDIS_URL": url, "CELERY_BROKER_URL": url}


# Killing the test database's connections ----------------------------------------------------


class DatabaseKiller:
    """Terminate every connection to one database, as a restart or a failover does."""

    def __init__(self, name: str) -> None:
        self.name = name

    def terminate_all(self) -> int:
        """Kill every connection to the database but the killer's own; return how many."""
        with self._admin() as admin:
            rows = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                [self.name],
            ).fetchall()
        return sum(1 for (terminated,) in rows if terminated)

    def connections(self) -> int:
        """How many connections the database has now, the killer's own left out."""
        with self._admin() as admin:
            (count,) = admin.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                [self.name],
            ).fetchone()
        return count

    def _admin(self) -> psycopg.Connection:
        params = connection.settings_dict
        return psycopg.connect(
            dbname="postgres",
            user=params.get("USER") or None,
            password=params.get("PASSWORD") or None,
            host=params.get("HOST") or "127.0.0.1",
            port=params.get("PORT") or 5432,
            autocommit=True,
            connect_timeout=5,
        )


@pytest.fixture
def database_killer(transactional_db) -> Iterator[DatabaseKiller]:
    name = connection.settings_dict["NAME"]
    assert name.startswith("test_"), name  # only ever the test's own database
    try:
        yield DatabaseKiller(name)
    finally:
        # The test's own connection may have been killed: give teardown's flush a fresh one.
        connection.close()
