"""Outages of Redis (cache, broker) and of the database, as API.md's reliability promises say.

Every outage here is real and private to the test: a ``redis-server`` subprocess of our own
that is SIGKILLed (or SIGSTOPped) and restarted empty, or our own test database made to
refuse connections with its backends terminated. The shared Postgres and Redis are never
touched. Requests go through the production WSGI entry point (``isolation_site.wsgi``) with
werkzeug's client, so the real request lifecycle runs: Django's test client skips
``close_old_connections``, which is what heals persistent database connections.
"""

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
import redis
from django.contrib.sessions.backends.cache import SessionStore as CacheSessionStore
from django.core.handlers.wsgi import WSGIHandler
from django.db import connection, transaction
from django.db.models.signals import post_save
from django.test import Client as DjangoClient
from psycopg import sql
from werkzeug.test import Client, TestResponse

from core.errors import is_outage
from isolation_site.wsgi import application
from sessions_app import services
from sessions_app.models import ChatSession, Message, Turn
from sessions_app.tasks import run_turn

from .factories import UserFactory, token_for
from .support import PrivateRedis, broker_at, free_port, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

HEALTH_DEADLINE = 2.5  # API.md promises 2 s; the margin absorbs a loaded test machine
FAIL_FAST_SECONDS = 5.0  # a request needing a dead broker or cache must not hang
HUNG_BROKER_SECONDS = 4.5  # CELERY_BROKER_TRANSPORT_OPTIONS["socket_timeout"] is 2 s
PASSWORD = "pw-for-tests"


# The WSGI client --------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    body: Any
    content_type: str
    elapsed: float


class Http:
    """A client of the production WSGI application, as a WSGI server would call it."""

    def __init__(self, token: str | None = None, app: Any = application) -> None:
        self.client = Client(app)
        self.headers = {"Authorization": f"Token {token}"} if token else {}

    def __call__(self, method: str, path: str, payload: dict | None = None) -> Answer:
        started = time.monotonic()
        response: TestResponse = self.client.open(
            path, method=method, json=payload, headers=self.headers
        )
        elapsed = time.monotonic() - started
        body = response.get_json(silent=True) if response.is_json else response.get_data(True)
        return Answer(response.status_code, body, response.content_type, elapsed)


def assert_unavailable(answer: Answer, what: str) -> None:
    assert answer.status == 503, (what, answer)
    assert answer.content_type == "application/json", (what, answer)
    assert isinstance(answer.body, dict) and answer.body["code"] == "unavailable", (what, answer)
    assert answer.body["detail"], (what, answer)


def health() -> Answer:
    return Http()("GET", "/healthz")


def assert_health(expected: dict[str, str]) -> Answer:
    answer = health()
    healthy = all(state == "ok" for state in expected.values())
    assert answer.status == (200 if healthy else 503), answer
    assert answer.body == {"status": "ok" if healthy else "unavailable", **expected}, answer
    assert answer.elapsed < HEALTH_DEADLINE, answer
    return answer


ALL_OK = {"database": "ok", "cache": "ok", "broker": "ok"}


# Private Redis servers and the settings that point at them ---------------------------------


def cache_at(settings, url: str) -> None:
    """Point the cache (throttles), turn notifications and ``REDIS_URL`` at ``url``."""
    default = settings.CACHES["default"]
    settings.CACHES = {"default": {**default, "OPTIONS": dict(default["OPTIONS"]), "LOCATION": url}}
    settings.REDIS_URL = url  # setting CACHES made Django drop its cache connections


@pytest.fixture
def queued_on_shared_redis(settings) -> Iterator[None]:
    """Eager off, the broker on this test's database of the shared Redis."""
    with broker_at(settings, settings.REDIS_URL):
        yield


@pytest.fixture
def redis_everything(settings, private_redis) -> Iterator[PrivateRedis]:
    """Cache, notifications and broker all on the private Redis."""
    cache_at(settings, private_redis.url)
    with broker_at(settings, private_redis.url):
        yield private_redis


@pytest.fixture
def broker_only(settings, private_redis) -> Iterator[PrivateRedis]:
    """Only the broker on the private Redis; the cache stays on the shared one."""
    with broker_at(settings, private_redis.url):
        yield private_redis


# A database that refuses connections -------------------------------------------------------


class DatabaseSwitch:
    """Make this test's own database refuse connections, and let it answer again."""

    def __init__(self, name: str) -> None:
        self.name = name

    def _admin(self) -> psycopg.Connection:
        params = connection.settings_dict
        return psycopg.connect(
            dbname="postgres",
            user=params["USER"],
            host=params["HOST"],
            port=params["PORT"] or 5432,
            autocommit=True,
            connect_timeout=5,
        )

    def _allow_connections(self, allowed: bool) -> sql.Composed:
        return sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
            sql.Identifier(self.name), sql.SQL("true" if allowed else "false")
        )

    def refuse(self) -> None:
        """Refuse new connections and kill the open ones (a database that is down)."""
        with self._admin() as admin:
            admin.execute(self._allow_connections(False))
        self.terminate()

    def terminate(self) -> int:
        """Kill every open connection to the database (a restart or failover); return how many."""
        with self._admin() as admin:
            rows = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                [self.name],
            ).fetchall()
        return len(rows)

    def allow(self) -> None:
        with self._admin() as admin:
            admin.execute(self._allow_connections(True))


@pytest.fixture
def database_switch(transactional_db) -> Iterator[DatabaseSwitch]:
    name = connection.settings_dict["NAME"]
    assert name.startswith("test_"), name  # only ever our own test database
    switch = DatabaseSwitch(name)
    try:
        yield switch
    finally:
        switch.allow()
        connection.close()  # the test's own connection was terminated; open a fresh one


# Data the outages are tried against --------------------------------------------------------


@dataclass
class Scene:
    user: Any
    http: Http
    session_id: str
    turn_id: str
    spare_session_id: str  # deleted when the outage should not matter

    def calls(self) -> list[tuple[str, str, dict | None]]:
        """One request to every endpoint of the API, in an order that keeps later ones valid."""
        sid, tid = self.session_id, self.turn_id
        return [
            ("POST", "/api/v1/auth/token/", {"username": self.user.username, "password": PASSWORD}),
            ("GET", "/api/v1/sessions/", None),
            ("POST", "/api/v1/sessions/", {"title": "during the outage"}),
            ("GET", f"/api/v1/sessions/{sid}/", None),
            ("GET", f"/api/v1/sessions/{sid}/messages/", None),
            ("POST", f"/api/v1/sessions/{sid}/messages/", {"content": "lost in the outage?"}),
            ("GET", f"/api/v1/turns/{tid}/", None),
            ("GET", f"/api/v1/turns/{tid}/events/", None),
            ("DELETE", f"/api/v1/sessions/{self.spare_session_id}/", None),
        ]

    def snapshot(self) -> dict[str, Any]:
        """What the database holds for this user, read directly."""
        return {
            "sessions": sorted(
                ChatSession.objects.filter(owner=self.user).values_list("pk", flat=True)
            ),
            "messages": list(
                Message.objects.filter(session__owner=self.user)
                .order_by("session_id", "seq")
                .values_list("session_id", "seq", "role", "content")
            ),
            "turns": sorted(
                Turn.objects.filter(session__owner=self.user).values_list("pk", flat=True)
            ),
        }


def _finished_turn(user) -> tuple[str, str]:
    session = services.chat_session_create(owner=user, title="before the outage")
    turn = services.message_accept(user=user, session_id=session.pk, content="My name is Ada.")
    assert services.turn_complete(turn_id=turn.pk, reply="Hello, Ada.")
    return str(session.pk), str(turn.pk)


@pytest.fixture
def scene(transactional_db) -> Scene:
    user = UserFactory()
    session_id, turn_id = _finished_turn(user)
    spare = services.chat_session_create(owner=user, title="spare")
    return Scene(user, Http(token_for(user)), session_id, turn_id, str(spare.pk))


def message_count(scene: Scene) -> int:
    answer = scene.http("GET", f"/api/v1/sessions/{scene.session_id}/")
    assert answer.status == 200, answer
    return answer.body["message_count"]


# /healthz ------------------------------------------------------------------------------------


def test_healthz_all_up_with_a_real_broker(queued_on_shared_redis, transactional_db):
    answer = assert_health(ALL_OK)
    assert answer.content_type == "application/json"


def test_healthz_needs_no_authentication_and_answers_json_to_any_probe(transactional_db):
    probe = Http(token="not-a-token")
    probe.headers["Accept"] = "text/plain"
    answer = probe("GET", "/healthz")
    assert answer.status == 200 and answer.body == {"status": "ok", **ALL_OK}
    assert answer.content_type == "application/json"


def test_healthz_redis_killed_and_restarted(redis_everything, transactional_db):
    assert_health(ALL_OK)
    redis_everything.kill()
    assert_health({"database": "ok", "cache": "down", "broker": "down"})
    redis_everything.start()
    assert_health(ALL_OK)


def test_healthz_redis_hung_answers_within_the_deadline(redis_everything, transactional_db):
    assert_health(ALL_OK)
    redis_everything.freeze()
    try:
        assert_health({"database": "ok", "cache": "down", "broker": "down"})
    finally:
        redis_everything.thaw()
    assert wait_until(lambda: health().status == 200, timeout=10)
    assert_health(ALL_OK)


def test_healthz_broker_killed_and_restarted(broker_only, transactional_db):
    assert_health(ALL_OK)
    broker_only.kill()
    assert_health({"database": "ok", "cache": "ok", "broker": "down"})
    broker_only.start()
    assert_health(ALL_OK)


def test_healthz_database_refusing_and_back(database_switch):
    assert_health(ALL_OK)
    database_switch.refuse()
    assert_health({"database": "down", "cache": "ok", "broker": "ok"})
    database_switch.allow()
    assert_health(ALL_OK)


# The API while a part is down ----------------------------------------------------------------


def test_database_refusing_every_endpoint_503_nothing_left_then_heals(scene, database_switch):
    before = scene.snapshot()
    assert message_count(scene) == 2
    database_switch.refuse()

    for method, path, payload in scene.calls():
        assert_unavailable(scene.http(method, path, payload), f"{method} {path}")

    database_switch.allow()
    # The very first request after the database answers again succeeds: the web process's
    # persistent connection, killed under it, is replaced without a restart.
    listing = scene.http("GET", "/api/v1/sessions/")
    assert listing.status == 200, listing
    assert scene.snapshot() == before
    assert message_count(scene) == 2
    posted = scene.http(
        "POST",
        f"/api/v1/sessions/{scene.session_id}/messages/?wait=10",
        {"content": "still there?"},
    )
    assert posted.status == 200 and posted.body["status"] == "completed", posted
    assert message_count(scene) == 4


def test_database_refusing_browser_requests_are_503_json(scene, database_switch):
    """The browser's session cookie is read from the database: its pages and API calls too."""
    django_client = DjangoClient()
    django_client.force_login(scene.user)
    browser = Http()
    browser.client.set_cookie("sessionid", django_client.cookies["sessionid"].value)
    pages = ["/", "/api/v1/sessions/", f"/api/v1/sessions/{scene.session_id}/messages/", "/admin/"]
    assert [browser("GET", page).status for page in pages] == [200, 200, 200, 302]
    database_switch.refuse()
    for page in pages:
        assert_unavailable(browser("GET", page), f"browser GET {page}")
    database_switch.allow()
    assert [browser("GET", page).status for page in pages] == [200, 200, 200, 302]


def test_database_connections_killed_between_requests_heal_on_the_next(scene, database_switch):
    assert scene.http("GET", "/api/v1/sessions/").status == 200  # a persistent connection
    assert database_switch.terminate() > 0
    expected = [200, 200, 201, 200, 200]
    for (method, path, payload), status in zip(scene.calls(), expected, strict=False):
        answer = scene.http(method, path, payload)
        assert answer.status == status, (method, path, answer)


def test_redis_killed_posting_a_message_is_503_the_rest_works_then_heals(scene, redis_everything):
    before = scene.snapshot()
    redis_everything.kill()

    post = ("POST", f"/api/v1/sessions/{scene.session_id}/messages/", {"content": "lost?"})
    answer = scene.http(*post)
    assert_unavailable(answer, "POST message, Redis down")
    assert answer.elapsed < FAIL_FAST_SECONDS, answer
    assert scene.snapshot() == before  # nothing left behind by the 503

    # What does not need Redis keeps working: API.md's 503 is for "a part the request needs".
    # Sign-in counts failures in Redis (the limit on password guessing): 503 meanwhile.
    sign_in = {"username": scene.user.username, "password": PASSWORD}
    assert_unavailable(scene.http("POST", "/api/v1/auth/token/", sign_in), "sign-in, Redis down")
    needs_no_redis = {
        ("GET", "/api/v1/sessions/"): 200,
        ("POST", "/api/v1/sessions/"): 201,
        ("GET", f"/api/v1/sessions/{scene.session_id}/"): 200,
        ("GET", f"/api/v1/sessions/{scene.session_id}/messages/"): 200,
        ("GET", f"/api/v1/turns/{scene.turn_id}/"): 200,
    }
    for method, path, payload in scene.calls():
        if (method, path) in needs_no_redis:
            answer = scene.http(method, path, payload)
            assert answer.status == needs_no_redis[method, path], (method, path, answer)
    # A DELETE erases the session's fingerprint postings, kept in Redis: even a session with
    # no message stored may have some (an accept undone), so it waits for Redis, whole.
    spare = ("DELETE", f"/api/v1/sessions/{scene.spare_session_id}/")
    assert_unavailable(scene.http(*spare), "DELETE, Redis down")
    assert ChatSession.objects.filter(pk=scene.spare_session_id).exists()

    redis_everything.restart()
    assert scene.http(*spare).status == 204
    assert message_count(scene) == 2
    answer = scene.http(*post)
    assert answer.status == 202 and answer.body["status"] == "pending", answer
    assert redis_everything.client().llen("celery") == 1  # queued on the restarted broker
    assert message_count(scene) == 3


def test_broker_down_posting_is_503_fast_and_undone_then_heals(scene, broker_only):
    before = scene.snapshot()
    broker_only.kill()

    post = ("POST", f"/api/v1/sessions/{scene.session_id}/messages/", {"content": "queued?"})
    answer = scene.http(*post)
    assert_unavailable(answer, "POST message, broker down")
    assert answer.elapsed < FAIL_FAST_SECONDS, answer
    # turn_enqueue undid the accepted turn: no message, no turn, the same count.
    assert scene.snapshot() == before
    assert message_count(scene) == 2
    listing = scene.http("GET", f"/api/v1/sessions/{scene.session_id}/messages/")
    assert [m["seq"] for m in listing.body["results"]] == [1, 2]

    broker_only.start()
    answer = scene.http(*post)
    assert answer.status == 202, answer
    assert answer.body["user_message"]["seq"] == 3  # the undone message left no gap
    assert broker_only.client().llen("celery") == 1
    assert message_count(scene) == 3


@pytest.mark.django_db(transaction=True)
def test_redis_gone_between_the_accept_and_the_queueing_undoes_the_post(
    user, settings, monkeypatch
):
    """The redis store with the broker on the same Redis, which goes away just after the
    accept commits. The queueing fails, and so did the undo: it removed the turn's reply
    from Redis first, which a turn no run has claimed cannot have. The answer said nothing
    was kept while the turn stayed pending; the resend was 409 and the sweep answered it."""
    from sessions_app import tasks

    from .conftest import client_for

    settings.HISTORY_STORE = "redis"
    url = settings.REDIS_URL

    def redis_gone(turn):
        cache_at(settings, f"redis://127.0.0.1:{free_port()}/0")
        raise redis.exceptions.ConnectionError("broker down")

    monkeypatch.setattr(tasks, "_queue", redis_gone)
    session = services.chat_session_create(owner=user)
    path = f"/api/v1/sessions/{session.pk}/messages/"
    try:
        answer = client_for(user).post(path, {"content": "hello"}, format="json")
    finally:
        cache_at(settings, url)
    assert answer.status_code == 503, answer.content
    assert not Turn.objects.filter(session_id=session.pk).exists()
    monkeypatch.undo()
    settings.HISTORY_STORE = "redis"
    again = client_for(user).post(path, {"content": "hello"}, format="json")
    assert again.status_code == 202, again.content
    assert again.json()["user_message"]["seq"] == 1  # the undone message left no gap


def test_a_post_whose_connection_dies_before_its_undo_is_undone_on_a_fresh_one(
    user, database_switch, monkeypatch
):
    """The broker refused the task and the database connection died with it (a failover):
    the undo ran once, failed, and left the turn pending behind a 503 that said nothing
    was kept."""
    from sessions_app import tasks

    from .conftest import client_for

    def broker_down_and_connection_killed(turn):
        database_switch.terminate()
        raise redis.exceptions.ConnectionError("broker down")

    monkeypatch.setattr(tasks, "_queue", broker_down_and_connection_killed)
    session = services.chat_session_create(owner=user)
    path = f"/api/v1/sessions/{session.pk}/messages/"
    answer = client_for(user).post(path, {"content": "hello"}, format="json")
    assert answer.status_code == 503, answer.content
    connection.close()
    assert not Turn.objects.filter(session_id=session.pk).exists()
    assert not Message.objects.filter(session_id=session.pk).exists()


@pytest.mark.django_db(transaction=True)
def test_a_post_whose_undo_fails_too_is_marked_so_its_resend_removes_it(user, monkeypatch):
    """The broker and then the database failed: the 503 says nothing was kept while the turn
    stays pending. Marked, the session's next message removes it (no 409 for the resend),
    as the sweep would, instead of the sweep answering it."""
    from django.db import OperationalError

    from sessions_app import tasks

    from .conftest import client_for

    def database_gone(**kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    def broker_down(turn):
        raise redis.exceptions.ConnectionError("broker down")

    session = services.chat_session_create(owner=user)
    path = f"/api/v1/sessions/{session.pk}/messages/"
    with monkeypatch.context() as patched:
        patched.setattr(tasks, "_queue", broker_down)
        patched.setattr(services, "turn_discard", database_gone)
        answer = client_for(user).post(path, {"content": "hello"}, format="json")
    assert answer.status_code == 503, answer.content
    [left] = Turn.objects.filter(session_id=session.pk)
    assert services.turns.turn_unconfirmed(turn_id=left.pk)
    again = client_for(user).post(path, {"content": "hello again"}, format="json")
    assert again.status_code == 202, again.content
    assert again.json()["user_message"]["seq"] == 1
    assert Turn.objects.filter(session_id=session.pk).count() == 1  # the resend's alone


def test_publishing_to_a_dead_broker_fails_fast(broker_only, transactional_db):
    broker_only.kill()
    started = time.monotonic()
    with pytest.raises(Exception) as raised:  # whichever outage error; checked below
        nil = "00000000-0000-0000-0000-000000000000"
        run_turn.delay(nil, 1, nil)
    elapsed = time.monotonic() - started
    assert is_outage(raised.value), repr(raised.value)
    assert elapsed < FAIL_FAST_SECONDS, elapsed


def test_redis_hung_posting_a_message_is_503_within_the_socket_timeout(scene, redis_everything):
    before = scene.snapshot()
    redis_everything.freeze()
    try:
        answer = scene.http(
            "POST", f"/api/v1/sessions/{scene.session_id}/messages/", {"content": "hung?"}
        )
    finally:
        redis_everything.thaw()
    assert_unavailable(answer, "POST message, Redis hung")
    assert answer.elapsed < FAIL_FAST_SECONDS, answer  # the cache's SOCKET_TIMEOUT is 2 s
    assert scene.snapshot() == before


@pytest.mark.parametrize("refusal", ["read-only", "cut off", "full", "cannot persist"])
def test_redis_refusing_writes_posting_is_503_then_heals(scene, redis_everything, refusal):
    """Up but refusing writes: a failover's old primary (or a replica) answers READONLY, a
    replica cut off from its primary MASTERDOWN (to reads too, if it serves no stale data),
    a Redis at its memory limit OOM, a Redis whose last snapshot failed (a full disk)
    MISCONF. A post needs writes: an outage all the same, 503 and nothing stored, never
    500; and it heals when Redis takes writes again."""
    before = scene.snapshot()
    admin = redis_everything.client()
    if refusal in ("read-only", "cut off"):
        admin.replicaof("127.0.0.1", free_port())  # a primary that is not there
        admin.config_set("replica-serve-stale-data", "no" if refusal == "cut off" else "yes")
    elif refusal == "full":
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", 1)
    else:
        # Writes stop once a snapshot fails while snapshots are configured; this one
        # cannot be renamed into place, a directory holding its name.
        os.mkdir(os.path.join(redis_everything.dir, admin.config_get("dbfilename")["dbfilename"]))
        admin.config_set("save", "3600 1")
        admin.bgsave()
        assert wait_until(
            lambda: admin.info("persistence")["rdb_last_bgsave_status"] == "err", timeout=10
        )
    post = ("POST", f"/api/v1/sessions/{scene.session_id}/messages/", {"content": "refused?"})
    try:
        answer = scene.http(*post)
        probe = health()  # its cache check writes: a Redis refusing writes is down
    finally:
        if refusal in ("read-only", "cut off"):
            admin.replicaof("NO", "ONE")
        elif refusal == "full":
            admin.config_set("maxmemory", 0)
        else:
            admin.config_set("save", "")  # no snapshots configured: writes are taken again
    assert_unavailable(answer, f"POST message, Redis {refusal}")
    assert scene.snapshot() == before
    assert probe.status == 503 and probe.body["cache"] == "down", probe
    answer = scene.http(*post)
    assert answer.status == 202, answer
    assert message_count(scene) == 3


def test_only_redis_refusals_among_its_error_replies_are_outages():
    """A reply that says the request or the code is wrong stays a 500, found and fixed."""
    refusals = [
        "MISCONF Redis is configured to save RDB snapshots, but it's currently unable",
        "Command # 2 (SET a 1) of pipeline caused error: MISCONF Redis is configured to save",
        "ERR Error running script (call to f_0123): @user_script:12: MISCONF Redis is",
    ]
    mistakes = [
        "ERR syntax error",
        "WRONGTYPE Operation against a key holding the wrong kind",
        "ERR unknown command 'MISCONFIGURE'",
        "Command # 1 (GET k) of pipeline caused error: ERR value named MISCONF is not a",
    ]
    for reply in refusals + mistakes:
        assert is_outage(redis.exceptions.ResponseError(reply)) is (reply in refusals), reply


def test_broker_hung_posting_is_503_within_the_socket_timeout_and_undone(scene, broker_only):
    before = scene.snapshot()
    broker_only.freeze()
    try:
        answer = scene.http(
            "POST", f"/api/v1/sessions/{scene.session_id}/messages/", {"content": "hung?"}
        )
    finally:
        broker_only.thaw()
    assert_unavailable(answer, "POST message, broker hung")
    # The broker transport's socket_timeout is 2 s: a hung broker costs that, not more.
    assert answer.elapsed < HUNG_BROKER_SECONDS, answer
    assert scene.snapshot() == before


def test_event_stream_with_redis_down_is_503(scene, redis_everything):
    redis_everything.kill()
    answer = scene.http("GET", f"/api/v1/turns/{scene.turn_id}/events/")
    assert_unavailable(answer, "GET turn events, Redis down")


@pytest.mark.filterwarnings("ignore::django.views.debug.ExceptionCycleWarning")
@pytest.mark.parametrize("debug", [False, True])
def test_an_outage_inside_a_middleware_is_503_json_too(settings, redis_everything, debug):
    """Cache-backed sessions saved on every request: the session middleware meets dead Redis.

    Django turns that error into a 500 (an HTML page under DEBUG) before any view runs.
    """
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.cache"
    settings.SESSION_SAVE_EVERY_REQUEST = True
    settings.DEBUG = debug
    store = CacheSessionStore()
    store["visited"] = True
    store.create()
    http = Http(app=WSGIHandler())  # a handler built now, on the session engine set above
    http.client.set_cookie("sessionid", store.session_key)
    assert http("GET", "/api/schema/?format=json").status == 200
    redis_everything.kill()
    assert_unavailable(http("GET", "/api/schema/?format=json"), "session saved to dead Redis")
    redis_everything.start()
    assert http("GET", "/api/schema/?format=json").status == 200


def test_a_message_accepted_just_before_the_database_goes_is_answered_202(
    scene, database_switch, queued_on_shared_redis
):
    """Once stored, a message is never answered with an error (the client would resend it)."""

    def refuse_after_commit(sender, instance, created, **kwargs):
        if created and instance.role == "user":
            transaction.on_commit(database_switch.refuse)

    post_save.connect(refuse_after_commit, sender=Message, dispatch_uid="refuse-after-commit")
    try:
        posted = scene.http(
            "POST", f"/api/v1/sessions/{scene.session_id}/messages/?wait=2", {"content": "kept"}
        )
    finally:
        post_save.disconnect(sender=Message, dispatch_uid="refuse-after-commit")
        database_switch.allow()
    assert posted.status == 202, posted
    assert posted.body["status"] == "pending"
    assert posted.body["user_message"]["content"] == "kept"
    stored = Turn.objects.get(pk=posted.body["id"])
    assert stored.messages.get(role="user").content == "kept"
