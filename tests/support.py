"""Test infrastructure shared by the suites: polling, free ports, a private Redis, pools, and
what a page's Content Security Policy would refuse."""

import base64
import hashlib
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from html.parser import HTMLParser

import pytest
import redis
from kombu import pools
from redis import Redis

from isolation_site.celery import app as celery_app
from isolation_site.settings import broker_transport


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.2) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def broker_at(settings, url: str, **conf: object) -> Iterator[None]:
    """Publish tasks to ``url`` instead of running them eagerly (nobody consumes them).

    ``conf`` sets more of Celery's settings for the while (an AMQP broker's transport
    options, say); all of them are put back after.
    """
    changes = {
        "broker_url": url,
        "broker_transport": broker_transport(url),
        "task_always_eager": False,
        **conf,
    }
    saved = {key: celery_app.conf[key] for key in changes}
    celery_app.conf.update(changes)
    settings.CELERY_BROKER_URL = url
    settings.CELERY_TASK_ALWAYS_EAGER = False
    reset_broker_pools()
    try:
        yield
    finally:
        celery_app.conf.update(saved)
        reset_broker_pools()


def reset_broker_pools() -> None:
    """Drop Celery's producer pools, keyed by the broker URL when first used.

    The next publish then connects to the broker configured now.
    """
    celery_app._pool = None
    celery_app.amqp._producer_pool = None
    pools.reset()


class PrivateRedis:
    """A ``redis-server`` of this test alone, without persistence: a restart comes back empty."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        # Its own directory: a snapshot a test asks for (BGSAVE) lands there, nowhere else.
        self.dir = tempfile.mkdtemp(prefix="private-redis-")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> Redis:
        return Redis(port=self.port, socket_timeout=2, socket_connect_timeout=2)

    def start(self) -> "PrivateRedis":
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
            + ["--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", self.dir],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        if not wait_until(self._answers, timeout=10, interval=0.05):
            raise AssertionError(f"redis-server did not start on port {self.port}")
        return self

    def _answers(self) -> bool:
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.exceptions.ConnectionError:
            return False

    def run_id(self) -> str:
        with self.client() as client:
            return client.info("server")["run_id"]

    def kill(self) -> None:
        """SIGKILL the server: every connection drops, everything it held is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a frozen server dies only once resumed
            self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> None:
        """Come back empty on the same port, as Redis without persistence does."""
        self.kill()
        self.start()
        assert self.client().dbsize() == 0

    def freeze(self) -> None:
        """Hang without closing anything: connections open, nothing answered."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    try:
        yield server.start()
    finally:
        server.kill()
        shutil.rmtree(server.dir, ignore_errors=True)


def turn_task_args(turn_id: object) -> list:
    """The arguments ``run_turn`` is queued with: the turn, its owner and its session."""
    from sessions_app.models import Turn

    turn = Turn.objects.select_related("session").get(pk=turn_id)
    return [str(turn.pk), turn.session.owner_id, str(turn.session_id)]


def post_and_wait(api, content: str, sid: str | None = None) -> tuple[str, dict]:
    """Post ``content`` (to a new session unless ``sid``), wait for the turn; return both."""
    sid = sid or api.post("/api/v1/sessions/", {}, format="json").json()["id"]
    response = api.post(
        f"/api/v1/sessions/{sid}/messages/?wait=10", {"content": content}, format="json"
    )
    assert response.status_code == 200, response.content
    return sid, response.json()


def lock_waiter(
    call: Callable[[], object], *, on_this_connection: bool = False
) -> tuple[threading.Thread, list[object]]:
    """Start ``call`` on a database connection of its own; return once it waits for a row
    lock (with ``on_this_connection``, for one that the caller's connection holds).

    The thread's result, or the exception it raised, ends up in the returned list.
    """
    from django.db import connection

    pids: list[int] = []
    results: list[object] = []

    def run() -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                pids.append(cursor.fetchone()[0])
            results.append(call())
        except BaseException as exc:  # noqa: BLE001 - surfaced by the caller's assertions
            results.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    blocked_by = (
        "SELECT pg_backend_pid() = ANY(pg_blocking_pids(%s))"
        if on_this_connection
        else "SELECT cardinality(pg_blocking_pids(%s)) > 0"
    )

    def waiting() -> bool:
        with connection.cursor() as cursor:
            cursor.execute(blocked_by, [pids[0]])
            return cursor.fetchone()[0]

    assert wait_until(lambda: pids, 10) and wait_until(waiting, 10)
    return thread, results


@contextmanager
def postings_locked_elsewhere(session_id: object, *, wait_ms: int = 200) -> Iterator[None]:
    """Hold the session's fingerprint postings locked on another connection, as a writer in
    a long transaction would, and let this test's connection wait ``wait_ms`` at most for a
    lock: what touches those rows meanwhile fails as Postgres fails it (``lock_timeout``).

    The other connection sees committed rows only: use it in a ``transaction=True`` test.
    """
    import psycopg
    from django.db import connection
    from psycopg import sql

    from audit_app.models import FingerprintPosting

    params = connection.settings_dict
    lock = sql.SQL("SELECT 1 FROM {} WHERE session_id = %s FOR UPDATE").format(
        sql.Identifier(FingerprintPosting._meta.db_table)
    )
    with psycopg.connect(
        dbname=params["NAME"],
        user=params["USER"],
        password=params["PASSWORD"] or None,
        host=params["HOST"] or None,
        port=params["PORT"] or 5432,
        connect_timeout=5,
    ) as other:
        assert other.execute(lock, [session_id]).fetchall(), "no posting to lock"
        with connection.cursor() as cursor:
            cursor.execute(f"SET lock_timeout = {int(wait_ms)}")
        try:
            yield
        finally:
            with connection.cursor() as cursor:
                cursor.execute("RESET lock_timeout")


class _InlineParts(HTMLParser):
    """The inline script and style of a page: ``<script>`` and ``<style>`` bodies, ``style``
    and ``on...`` attributes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.parts: list[tuple[str, str]] = []
        self._open: tuple[str, list[str]] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name == "style" or name.startswith("on"):
                self.parts.append((f"{name}=", value or ""))
        sourced = tag == "script" and any(name == "src" for name, _ in attrs)
        if tag in ("script", "style") and not sourced:
            self._open = (tag, [])

    def handle_data(self, data: str) -> None:
        if self._open:
            self._open[1].append(data)

    def handle_endtag(self, tag: str) -> None:
        if self._open and self._open[0] == tag:
            self.parts.append((tag, "".join(self._open[1])))
            self._open = None


def csp_refusals(response) -> list[tuple[str, str]]:
    """Return each inline part of the HTML ``response`` that its Content Security Policy
    refuses (all of them when it has none): an inline script or style is allowed only by its
    hash, never by ``'unsafe-inline'``; ``style`` and ``on...`` attributes never."""
    policy = response.get("Content-Security-Policy", "")
    sources = {words[0]: words[1:] for words in map(str.split, policy.split(";")) if words}
    assert "'unsafe-inline'" not in policy, policy
    parser = _InlineParts()
    parser.feed(response.content.decode())
    refused = []
    for kind, text in parser.parts:
        digest = base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
        allowed = sources.get(f"{kind}-src", []) if kind in ("script", "style") else []
        if f"'sha256-{digest}'" not in allowed:
            refused.append((kind, text))
    return refused
