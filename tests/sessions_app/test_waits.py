"""MAX_WAITS_PER_USER: one user cannot hold every web thread with waits and streams."""

import asyncio
import json
import threading

import pytest
import redis
from django.core.signals import request_finished
from django.db import close_old_connections

from sessions_app import events
from sessions_app.models import Turn

pytestmark = pytest.mark.django_db


def hang_up(response) -> None:
    """Close a stream as the server does when its client hangs up.

    The end of a request closes the database connection; the test client keeps the test's
    own open (its transaction holds the test's data) the way it does for its requests.
    """
    request_finished.disconnect(close_old_connections)
    try:
        response.close()
    finally:
        request_finished.connect(close_old_connections)


@pytest.fixture
def pending(api, user):
    """A turn that stays pending (not queued), so its stream and waits stay open."""
    from sessions_app import services

    sid = services.chat_session_create(owner=user).pk
    return services.message_accept(user=user, session_id=sid, content="hold on")


def test_one_stream_more_than_the_cap_is_429_and_closing_one_frees_a_slot(
    api, other_api, pending, settings
):
    settings.MAX_WAITS_PER_USER = 2
    path = f"/api/v1/turns/{pending.pk}/events/"
    held = [api.get(path), api.get(path)]
    assert [r.status_code for r in held] == [200, 200]
    refused = api.get(path)
    assert refused.status_code == 429 and refused.json()["code"] == "too_many_waits"
    assert int(refused["Retry-After"]) > 0
    hang_up(held.pop())
    again = api.get(path)
    assert again.status_code == 200
    hang_up(again)
    for response in held:
        hang_up(response)


def test_a_head_of_a_stream_answers_its_headers_at_once_and_holds_no_slot(
    api, other_api, pending, settings
):
    """A HEAD served as GET followed the turn to its end, holding a thread and a slot."""
    settings.MAX_WAITS_PER_USER = 1
    path = f"/api/v1/turns/{pending.pk}/events/"
    head = api.head(path)
    assert head.status_code == 200 and head["Content-Type"] == "text/event-stream"
    # Its body not yet read (a server reads all of a HEAD's), the one slot is free.
    held = api.get(path)
    assert held.status_code == 200
    hang_up(head)
    refused = api.head(path)  # ... and a HEAD answers as GET would now
    assert refused.status_code == 429 and int(refused["Retry-After"]) > 0
    hang_up(held)
    assert other_api.head(path).status_code == 404


@pytest.mark.parametrize("descriptor", [5, 1100], ids=["low", "past 1023"])
def test_a_client_is_gone_only_once_its_socket_reads_as_closed(descriptor):
    """gunicorn's gthread worker keeps up to 1,000 connections open: a client's socket may
    be past 1023, where ``select`` refuses it, and every wait read as hung up at once (a
    ``?wait`` answered 202, a stream ended before the turn's end)."""
    import fcntl
    import resource
    import socket
    from types import SimpleNamespace

    from sessions_app.apis.waiting import client_gone

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft <= descriptor:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    server, client = socket.socketpair()
    at = fcntl.fcntl(server.fileno(), fcntl.F_DUPFD, descriptor)
    server.close()
    server = socket.socket(fileno=at)
    try:
        assert server.fileno() >= descriptor
        gone = client_gone(SimpleNamespace(META={"gunicorn.socket": server}))
        assert not gone()
        client.sendall(b"GET /next HTTP/1.1\r\n")  # a pipelined request: still there
        assert not gone()
        client.close()
        server.recv(1024)
        assert gone()
    finally:
        server.close()
        client.close()


def test_the_cap_is_per_user(api, other_api, pending, settings):
    settings.MAX_WAITS_PER_USER = 1
    held = api.get(f"/api/v1/turns/{pending.pk}/events/")
    assert held.status_code == 200
    sid = other_api.post("/api/v1/sessions/", {}, format="json").json()["id"]
    theirs = other_api.post(
        f"/api/v1/sessions/{sid}/messages/?wait=5", {"content": "hi"}, format="json"
    )
    assert theirs.status_code == 200
    hang_up(held)


def test_a_wait_past_the_cap_is_429_and_stores_nothing(api, user, pending, settings):
    settings.MAX_WAITS_PER_USER = 1
    held = api.get(f"/api/v1/turns/{pending.pk}/events/")
    sid = api.post("/api/v1/sessions/", {}, format="json").json()["id"]
    refused = api.post(f"/api/v1/sessions/{sid}/messages/?wait=5", {"content": "hi"}, format="json")
    assert refused.status_code == 429 and "Retry-After" in refused
    assert not Turn.objects.filter(session_id=sid).exists()
    # Without ?wait nothing is held open: accepted as usual.
    assert (
        api.post(f"/api/v1/sessions/{sid}/messages/", {"content": "hi"}, format="json").status_code
        == 202
    )
    hang_up(held)


def test_a_finished_wait_gives_its_slot_back(api, settings):
    settings.MAX_WAITS_PER_USER = 1
    sid = api.post("/api/v1/sessions/", {}, format="json").json()["id"]
    for n in range(3):
        response = api.post(
            f"/api/v1/sessions/{sid}/messages/?wait=5", {"content": f"m{n}"}, format="json"
        )
        assert response.status_code == 200, response.content


def test_a_wait_answered_with_an_error_gives_its_slot_back(api, settings):
    settings.MAX_WAITS_PER_USER = 1
    unknown = "00000000-0000-4000-8000-000000000000"
    for _ in range(3):  # 404s: each took a slot, and must have given it back
        response = api.post(
            f"/api/v1/sessions/{unknown}/messages/?wait=1", {"content": "hi"}, format="json"
        )
        assert response.status_code == 404
    sid = api.post("/api/v1/sessions/", {}, format="json").json()["id"]
    response = api.post(
        f"/api/v1/sessions/{sid}/messages/?wait=5", {"content": "hi"}, format="json"
    )
    assert response.status_code == 200, response.content


# The user's slot counter itself, on Redis and on the in-process cache ---------------------


class WaitSlotContract:
    """What any cache must give ``wait_slot_acquire``: slots that keep to the cap, each given
    back once, never counted below zero, and fading when never given back."""

    CAP = 3

    @pytest.fixture(autouse=True)
    def _cap(self, settings):
        settings.MAX_WAITS_PER_USER = self.CAP

    def take(self, user_id: int = 1) -> list:
        return [events.wait_slot_acquire(user_id=user_id) for _ in range(self.CAP)]

    def assert_exactly_the_cap_is_free(self, user_id: int = 1) -> None:
        held = self.take(user_id)  # a count gone wrong below refuses one of these
        with pytest.raises(events.TooManyWaits):
            events.wait_slot_acquire(user_id=user_id)  # and one gone wrong above lets it in
        for release in held:
            release()

    def test_past_the_cap_each_acquire_is_refused_and_takes_nothing(self):
        held = self.take()
        for _ in range(5):
            with pytest.raises(events.TooManyWaits) as refused:
                events.wait_slot_acquire(user_id=1)
            assert refused.value.status_code == 429 and refused.value.wait > 0
        held.pop()()
        held.append(events.wait_slot_acquire(user_id=1))  # the refusals gave theirs back
        with pytest.raises(events.TooManyWaits):
            events.wait_slot_acquire(user_id=1)
        for release in held:
            release()
        self.assert_exactly_the_cap_is_free()

    def test_the_cap_is_per_user(self):
        held = self.take(user_id=1)
        self.assert_exactly_the_cap_is_free(user_id=2)
        for release in held:
            release()

    def test_releases_after_the_counter_faded_do_not_count_below_zero(self):
        from django.core.cache import cache

        before = events.wait_slot_acquire(user_id=1)
        cache.clear()  # the counter faded (its TTL) while that wait was held
        after = events.wait_slot_acquire(user_id=1)
        before()  # gives back the slot of ``after``: the count is 0 now
        after()  # and must stay 0, not -1 (which would let one wait too many in)
        before()  # another release at 0 leaves it at 0 too
        self.assert_exactly_the_cap_is_free()

    def test_a_slot_given_back_twice_gives_back_one(self):
        held = self.take()
        held[0]()
        held[0]()  # a second call gives back nothing more: not another's slot
        again = events.wait_slot_acquire(user_id=1)
        with pytest.raises(events.TooManyWaits):
            events.wait_slot_acquire(user_id=1)
        for release in [again, *held[1:]]:
            release()
        self.assert_exactly_the_cap_is_free()

    def test_slots_never_given_back_fade_even_while_their_user_keeps_asking(self, monkeypatch):
        """Slots held by a process killed mid-wait (a gunicorn timeout, a deploy) are never
        given back: they fade. A refused take must not renew them, or a user who leaked the
        cap and retries (a client honouring Retry-After) is refused for good."""
        import time

        from sessions_app.events import slots

        monkeypatch.setattr(slots, "WAIT_SLOT_TTL_SECONDS", 2)  # 15 min, scaled down
        self.take()  # the dead process's: never released
        deadline = time.monotonic() + 3 * slots.WAIT_SLOT_TTL_SECONDS
        refused = 0
        while time.monotonic() < deadline:
            try:
                release = events.wait_slot_acquire(user_id=1)
            except events.TooManyWaits:
                refused += 1
                time.sleep(0.25)  # the client retries after Retry-After (scaled as the TTL)
                continue
            release()
            assert refused > 0  # they were held until they faded
            self.assert_exactly_the_cap_is_free()
            return
        pytest.fail(f"still refused after 3 fade-outs ({refused} refusals, each renewed them)")


class TestWaitSlotsOnRedis(WaitSlotContract):
    def test_the_slots_fade_and_a_release_leaves_no_key_that_would_not(self, settings):
        from django_redis import get_redis_connection

        redis = get_redis_connection("default")
        held = events.wait_slot_acquire(user_id=1)
        (key,) = redis.keys("*")  # the test's Redis database holds the user's slots alone
        assert 0 < redis.ttl(key) <= events.WAIT_SLOT_TTL_SECONDS
        redis.expire(key, 1)
        events.wait_slot_acquire(user_id=1)  # a slot taken: the key lasts as long as it
        assert redis.ttl(key) > 1
        # Past the cap a refusal renews nothing (it once renewed a counter of the whole
        # user's: leaked slots then never faded while their user kept asking).
        events.wait_slot_acquire(user_id=1)
        redis.pexpire(key, 1000)
        with pytest.raises(events.TooManyWaits):
            events.wait_slot_acquire(user_id=1)
        assert 0 < redis.pttl(key) <= 1000
        redis.delete(key)  # faded
        held()
        assert redis.keys("*") == []  # nothing brought back without a fade-out

    def test_each_slot_fades_on_its_own_while_its_user_s_other_waits_come_and_go(self, monkeypatch):
        """A slot leaked while its user still waits now and then: their waits taken after it
        must not keep it, or each leak lowers their cap for as long as they use it."""
        import time

        from sessions_app.events import slots

        monkeypatch.setattr(slots, "WAIT_SLOT_TTL_SECONDS", 1)
        held = self.take()
        held.pop()()  # the others are held by a process that died: never given back
        leaked_at = time.monotonic()
        while time.monotonic() - leaked_at < 2 * slots.WAIT_SLOT_TTL_SECONDS:
            events.wait_slot_acquire(user_id=1)()  # the one slot left, taken and given back
            time.sleep(0.1)
        self.assert_exactly_the_cap_is_free()  # the leaked ones faded

    def test_a_take_whose_answer_was_lost_gives_its_slot_back(self, monkeypatch):
        """The script ran and its answer timed out: the request is answered 503, and its slot
        was held for WAIT_SLOT_TTL_SECONDS; a few such blips locked the user into 429."""
        import redis as redis_py

        from sessions_app.events import slots

        take = slots._TAKE

        def answer_lost(**kwargs):
            take(**kwargs)
            raise redis_py.exceptions.TimeoutError("Timeout reading from socket")

        monkeypatch.setattr(slots, "_TAKE", answer_lost)
        for _ in range(self.CAP):
            with pytest.raises(redis_py.exceptions.TimeoutError):
                events.wait_slot_acquire(user_id=1)
        monkeypatch.undo()
        self.assert_exactly_the_cap_is_free()

    def test_a_take_sent_again_holds_one_slot_and_is_not_refused_its_own(self, monkeypatch):
        """A client that sends the script again after losing its answer (redis-py's retry)
        must find its slot taken, not count it against itself at the cap."""
        from sessions_app.events import slots

        take = slots._TAKE
        held = self.take()
        held.pop()()  # one slot left
        monkeypatch.setattr(slots, "_TAKE", lambda **kwargs: take(**kwargs) and take(**kwargs))
        held.append(events.wait_slot_acquire(user_id=1))
        monkeypatch.undo()
        with pytest.raises(events.TooManyWaits):
            events.wait_slot_acquire(user_id=1)
        for release in held:
            release()
        self.assert_exactly_the_cap_is_free()


class TestWaitSlotsOnTheInProcessCache(WaitSlotContract):
    @pytest.fixture(autouse=True)
    def _in_process(self, settings):
        from django.core.cache import cache

        settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
        cache.clear()


# The process's wait budget: under WSGI a wait holds a thread --------------------------------


def test_the_budget_leaves_threads_of_the_server_free_for_short_requests(settings, monkeypatch):
    settings.WAITS_PER_PROCESS = None
    monkeypatch.delenv("WEB_THREADS", raising=False)
    assert events.wait_budget_size() is None  # runserver, ASGI: no thread held per wait
    monkeypatch.setenv("WEB_THREADS", "8")  # gunicorn.conf.py names the worker's threads
    assert events.wait_budget_size() == 7
    monkeypatch.setenv("WEB_THREADS", "32")
    assert events.wait_budget_size() == 28
    monkeypatch.setenv("WEB_THREADS", "1")
    assert events.wait_budget_size() == 0
    settings.WAITS_PER_PROCESS = 3
    assert events.wait_budget_size() == 3


def test_a_budget_slot_is_taken_without_blocking_and_given_back_once(settings):
    settings.WAITS_PER_PROCESS = 1
    release = events.wait_budget_take()
    assert release is not None
    assert events.wait_budget_take() is None  # none free: at once, not after a wait
    release()
    release()  # a second call gives back nothing more
    again = events.wait_budget_take()
    assert again is not None
    assert events.wait_budget_take() is None
    again()


def test_with_no_wait_slot_free_a_wait_is_answered_at_once_and_the_turn_ends_later(
    api, user, queued, settings, fake_claude
):
    from sessions_app import tasks

    from ..support import turn_task_args

    settings.WAITS_PER_PROCESS = 0
    settings.MAX_WAITS_PER_USER = 1
    sid = api.post("/api/v1/sessions/", {}, format="json").json()["id"]
    response = api.post(
        f"/api/v1/sessions/{sid}/messages/?wait=30", {"content": "CANARY-budget"}, format="json"
    )
    assert response.status_code == 202, response.content
    turn = response.json()
    assert turn["status"] == "pending"
    assert turn["user_message"]["content"] == "CANARY-budget"  # accepted and stored
    stored = api.get(f"/api/v1/sessions/{sid}/messages/").json()["results"]
    assert [m["content"] for m in stored] == ["CANARY-budget"]
    assert queued.llen("celery") == 1  # and queued: it is answered later
    tasks.run_turn.apply(args=turn_task_args(turn["id"]))
    later = api.get(f"/api/v1/turns/{turn['id']}/").json()
    assert later["status"] == "completed"
    assert "CANARY-budget" in later["reply"]["content"]
    # The user's own slot was not kept either.
    settings.WAITS_PER_PROCESS = None
    held = api.get(f"/api/v1/turns/{turn['id']}/events/")
    assert held.status_code == 200
    hang_up(held)


def test_with_no_wait_slot_free_a_stream_is_503_with_retry_after_and_keeps_no_slot(
    api, other_api, pending, settings
):
    settings.MAX_WAITS_PER_USER = 1
    settings.WAITS_PER_PROCESS = 0
    path = f"/api/v1/turns/{pending.pk}/events/"
    refused = api.get(path)
    assert refused.status_code == 503
    assert refused.json()["code"] == "unavailable"
    assert int(refused["Retry-After"]) > 0
    settings.WAITS_PER_PROCESS = 1
    held = api.get(path)  # the user's one slot was given back
    assert held.status_code == 200
    sid = other_api.post("/api/v1/sessions/", {}, format="json").json()["id"]
    theirs = other_api.post(f"/api/v1/sessions/{sid}/messages/", {"content": "x"}, format="json")
    # The process's one slot is taken: another user's stream is refused, not queued.
    assert other_api.get(f"/api/v1/turns/{theirs.json()['id']}/events/").status_code == 503
    hang_up(held)
    again = api.get(path)
    assert again.status_code == 200
    hang_up(again)


# What a wait reads: the whole turn only once it has ended -----------------------------------


def test_a_wait_checks_its_turn_with_one_small_query_until_it_ends(
    user, other_user, pending, django_assert_num_queries
):
    from sessions_app import selectors, services

    with django_assert_num_queries(1):
        assert not selectors.turn_ended_for_owner(user=user, turn=pending)
    services.turn_claim(turn_id=pending.pk)
    assert not selectors.turn_ended_for_owner(user=user, turn=pending)
    services.turn_complete(turn_id=pending.pk, reply="done")
    assert selectors.turn_ended_for_owner(user=user, turn=pending)


def test_for_another_user_a_turn_is_ended_so_the_full_read_answers_404(other_user, pending):
    from rest_framework.exceptions import NotFound

    from sessions_app import selectors

    # "Ended" sends the waiter to the gated full read, which is the one 404 for them.
    assert selectors.turn_ended_for_owner(user=other_user, turn=pending)
    with pytest.raises(NotFound):
        selectors.turn_refresh_for_owner(user=other_user, turn=pending)


@pytest.mark.django_db(transaction=True)
def test_a_wait_that_times_out_answers_the_turn_as_it_is_then(api, user, queued):
    """A wait that saw only "running" still answers it, not the turn as it was accepted."""
    import threading

    from sessions_app import services

    from ..support import wait_until

    sid = api.post("/api/v1/sessions/", {}, format="json").json()["id"]
    claimed = []

    def claim() -> None:
        from django.db import connection

        try:
            pending = Turn.objects.filter(session_id=sid, status="pending")
            if wait_until(pending.exists, timeout=10):
                claimed.append(services.turn_claim(turn_id=pending.get().pk))
        finally:
            connection.close()

    worker = threading.Thread(target=claim)
    worker.start()
    response = api.post(
        f"/api/v1/sessions/{sid}/messages/?wait=2", {"content": "slow"}, format="json"
    )
    worker.join(10)
    assert claimed and claimed[0] is not None
    assert response.status_code == 202, response.content
    assert response.json()["status"] == "running"


# What a notification tells a wait: the turn's new status, so "running" costs no read -----


def _fed(*statuses, seen: list):
    """Notifications as a subscription yields them; ``seen`` says how far the wait read."""
    try:
        for status in statuses:
            yield status
            seen.append(status)
    finally:
        seen.append("closed")


def test_a_wait_reads_nothing_at_running_and_the_whole_turn_once_at_its_end(
    user, pending, django_assert_num_queries
):
    from sessions_app import services
    from sessions_app.apis.waiting import turn_wait

    services.turn_claim(turn_id=pending.pk)
    services.turn_complete(turn_id=pending.pk, reply="done")
    seen: list = []
    # One full read, nothing at "running" or "pending".
    with django_assert_num_queries(_full_read_queries(user, pending)):
        # The row is completed already; only the notifications say when to look.
        turn = turn_wait(
            user=user, turn=pending, changes=_fed("running", "pending", "completed", seen=seen)
        )
    assert turn.status == "completed" and turn.exchange[-1].content == "done"
    assert seen == ["running", "pending", "closed"]  # it stopped there, subscription closed


def test_a_wait_told_of_an_end_that_has_not_happened_reads_on(user, pending):
    from sessions_app import services
    from sessions_app.apis.waiting import turn_wait

    services.turn_claim(turn_id=pending.pk)
    seen: list = []
    # A notification is a hint, never the answer: the re-read decides.
    turn = turn_wait(user=user, turn=pending, changes=_fed("completed", None, seen=seen))
    assert turn.status == "running"
    assert seen == ["completed", None, "closed"]


def test_an_idle_tick_or_a_poll_checks_the_status_before_reading_the_turn(
    user, pending, django_assert_num_queries
):
    from sessions_app import services
    from sessions_app.apis.waiting import turn_wait

    services.turn_claim(turn_id=pending.pk)
    seen: list = []
    # The last read, at the end of the wait, is the whole turn: here the one small status
    # query each, then that read.
    with django_assert_num_queries(2 + _full_read_queries(user, pending)):
        turn_wait(user=user, turn=pending, changes=_fed(None, events.UNKNOWN, seen=seen))


def _subscribers(turn_id: object) -> int:
    """How many waits of this process listen on the turn's channel now, confirmed by Redis.

    A turn accepted in this process is heard through the process's pattern, not a channel of
    its own: a listener counts if it holds a wait for the channel, Redis confirmed what
    carries it, and its connection is subscribed to that (Redis's pub/sub spans the server,
    and other tests' closed event loops leave listeners connected: a count of who hears a
    PUBLISH would count them too).
    """
    from sessions_app.events import listener as listening
    from sessions_app.events.notify import _channel

    channel, count = _channel(turn_id), 0
    for found in list(listening._listeners.values()):
        entry, pubsub = found.channels.get(channel), found._pubsub
        if entry is None or pubsub is None or not (entry.ready.done() and entry.ready.result()):
            continue
        name, held = (found._own[0], pubsub.patterns) if entry.own else (channel, pubsub.channels)
        if name in held or name.encode() in held:
            count += len(entry.subscriptions)
    return count


def _full_read_queries(user, turn) -> int:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from sessions_app import selectors

    with CaptureQueriesContext(connection) as full:
        selectors.turn_refresh_for_owner(user=user, turn=turn)
    return len(full)


def test_a_wait_subscribes_before_its_turn_is_queued(api, queued, monkeypatch, settings):
    """So that it needs no first read: no change of the turn can come before it listens."""
    from sessions_app import tasks

    at_queue = []
    queue = tasks._queue

    def counted(turn) -> None:
        at_queue.append(_subscribers(turn.pk))
        queue(turn)

    monkeypatch.setattr(tasks, "_queue", counted)
    sid = api.post("/api/v1/sessions/", {}, format="json").json()["id"]
    response = api.post(
        f"/api/v1/sessions/{sid}/messages/?wait=1", {"content": "hi"}, format="json"
    )
    assert response.status_code == 202  # no worker here: it stays pending
    assert at_queue == [1]


# Under ASGI: the wait subscribes on the event loop, between the accept and the queueing --


@pytest.fixture
def asgi(transactional_db, monkeypatch) -> None:
    """Serve through Django's ASGI handler, as uvicorn does: the request's database work
    runs on the pool's threads, so it commits and each thread closes its connection."""
    from django.db import connection

    monkeypatch.setitem(connection.settings_dict, "CONN_MAX_AGE", 0)


def _asgi_scope(path: str, token: str, body: bytes) -> dict:
    path, _, query = path.partition("?")
    headers = {"host": "localhost", "content-type": "application/json"}
    headers |= {"authorization": f"Token {token}", "content-length": str(len(body))}
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(name.encode(), value.encode()) for name, value in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("localhost", 80),
    }


async def _asgi_post(path: str, token: str, content: str, *, gone=None) -> tuple[int, dict]:
    """POST ``content`` to the ASGI application; the status and the JSON answered.

    With ``gone`` (awaited once the body is read), the client hangs up then.
    """
    from django.core.handlers.asgi import ASGIHandler

    body = json.dumps({"content": content}).encode()
    received, sent = [], []

    async def receive() -> dict:
        if not received:
            received.append(body)
            return {"type": "http.request", "body": body, "more_body": False}
        await (gone() if gone is not None else asyncio.Event().wait())
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    await ASGIHandler()(_asgi_scope(path, token, body), receive, send)
    if not sent:
        return 0, {}  # the client left before an answer
    answer = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(answer)


async def _asgi_staying(scope: dict) -> list[dict]:
    """Call the ASGI application with ``scope`` and no body, the client staying; what it
    was sent."""
    from django.core.handlers.asgi import ASGIHandler

    sent: list[dict] = []
    received: list[int] = []

    async def receive() -> dict:
        if not received:
            received.append(1)
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # the client stays

    async def send(message: dict) -> None:
        sent.append(message)

    await ASGIHandler()(scope, receive, send)
    return sent


async def _asgi_get_hung_up(path: str, token: str, hang_up: threading.Event) -> list[dict]:
    """GET ``path`` from the ASGI application, the client hanging up once ``hang_up`` is
    set; what it was sent. Returns a second after, once the server's threads have ended."""
    from django.core.handlers.asgi import ASGIHandler

    scope = {**_asgi_scope(path, token, b""), "method": "GET"}
    sent, received = [], []

    async def receive() -> dict:
        if not received:
            received.append(1)
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.to_thread(hang_up.wait, 5)
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    await ASGIHandler()(scope, receive, send)
    await asyncio.sleep(1)
    return sent


async def _until(predicate) -> None:
    while not predicate():
        await asyncio.sleep(0.02)


@pytest.fixture
def statements(monkeypatch) -> list[tuple[int, str]]:
    """Every SQL statement from now on, in any thread, with the thread's ident (under ASGI
    a request's statements run on the database pool's threads, each its own connection)."""
    from django.db.backends.utils import CursorWrapper

    seen: list[tuple[int, str]] = []
    execute = CursorWrapper._execute_with_wrappers

    def counted(self, sql, *args, **kwargs):
        seen.append((threading.get_ident(), sql))
        return execute(self, sql, *args, **kwargs)

    monkeypatch.setattr(CursorWrapper, "_execute_with_wrappers", counted)
    return seen


def _worker_step(session_id: object, threads: set[int]) -> None:
    """What a worker does with the session's pending turn: run it (in this thread)."""
    from django.db import connection

    from sessions_app import tasks

    from ..support import turn_task_args

    threads.add(threading.get_ident())
    try:
        turn = Turn.objects.get(session_id=session_id, status="pending")
        tasks.run_turn.apply(args=turn_task_args(turn.pk))
    finally:
        connection.close()


def test_under_asgi_a_wait_reads_nothing_before_it_is_told_of_the_end_then_the_turn_once(
    asgi, user, queued, statements
):
    from sessions_app import services

    from ..factories import token_for

    token = token_for(user)
    alone, waited = (services.chat_session_create(owner=user).pk for _ in range(2))
    worker: set[int] = set()

    async def scenario() -> tuple[int, int, dict]:
        statements.clear()
        status, _ = await _asgi_post(f"/api/v1/sessions/{alone}/messages/", token, "hi")
        assert status == 202
        accepting = len(statements)  # what the same post costs without a wait
        statements.clear()
        posting = asyncio.ensure_future(
            _asgi_post(f"/api/v1/sessions/{waited}/messages/?wait=30", token, "hi")
        )
        await _until(lambda: queued.llen("celery") == 2)  # queued, and waiting for its end
        await asyncio.to_thread(_worker_step, waited, worker)
        status, turn = await posting
        return accepting, status, turn

    accepting, status, turn = asyncio.run(scenario())
    assert status == 200 and turn["status"] == "completed", turn
    waiting = [sql for thread, sql in statements if thread not in worker]
    full_read = _full_read_queries(user, Turn.objects.get(pk=turn["id"]))
    # No first read, nothing at "running": the whole turn once, when told it ended.
    assert len(waiting) == accepting + full_read


def test_under_asgi_a_wait_subscribes_before_its_turn_is_queued_and_hears_what_follows(
    asgi, user, queued, monkeypatch, settings
):
    """So that it needs no first read: a change right after the queueing is not missed."""
    from sessions_app import services, tasks

    from ..factories import token_for

    at_queue = []
    queue = tasks._queue

    def first_changed_then_queued(turn) -> None:
        at_queue.append(_subscribers(turn.pk))
        # The turn ends in the window (a worker at once): only notifications tell the wait.
        services.turn_claim(turn_id=turn.pk)
        services.turn_complete(turn_id=turn.pk, reply="done")
        queue(turn)

    monkeypatch.setattr(tasks, "_queue", first_changed_then_queued)
    sid = services.chat_session_create(owner=user).pk
    status, turn = asyncio.run(
        _asgi_post(f"/api/v1/sessions/{sid}/messages/?wait=30", token_for(user), "hi")
    )
    assert at_queue == [1]
    assert status == 200 and turn["status"] == "completed" and turn["reply"]["content"] == "done"


def test_under_asgi_a_broker_down_at_the_queueing_is_503_and_leaves_nothing_held(
    asgi, user, settings, private_redis
):
    from sessions_app import services
    from sessions_app.models import Message

    from ..factories import token_for
    from ..support import broker_at

    settings.MAX_WAITS_PER_USER = 1
    settings.WAITS_PER_PROCESS = 1
    sid, token = services.chat_session_create(owner=user).pk, token_for(user)

    async def scenario() -> tuple[int, dict, dict]:
        path = f"/api/v1/sessions/{sid}/messages/?wait=30"
        status, body = await _asgi_post(path, token, "CANARY-no-broker")
        return status, body, dict(events.turn_listener().channels)

    with broker_at(settings, private_redis.url):
        private_redis.kill()
        status, body, channels = asyncio.run(scenario())
    assert status == 503 and body["code"] == "unavailable"
    assert not Turn.objects.filter(session_id=sid).exists()
    assert not Message.objects.filter(session_id=sid).exists()
    assert channels == {}  # the wait's subscription is closed
    release_budget = events.wait_budget_take()  # and both its slots are free again
    assert release_budget is not None
    events.wait_slot_acquire(user_id=user.pk)()
    release_budget()


def test_under_asgi_with_redis_down_at_the_subscribe_a_wait_polls_and_answers(
    asgi, user, queued, settings, private_redis
):
    from sessions_app import services

    from ..factories import token_for

    settings.REDIS_URL = private_redis.url  # the notifications only: cache, broker stay up
    private_redis.kill()
    sid, token = services.chat_session_create(owner=user).pk, token_for(user)

    async def scenario() -> tuple[int, dict]:
        posting = asyncio.ensure_future(
            _asgi_post(f"/api/v1/sessions/{sid}/messages/?wait=30", token, "hi")
        )
        await _until(lambda: queued.llen("celery") == 1)
        await asyncio.to_thread(_worker_step, sid, set())
        return await posting

    status, turn = asyncio.run(scenario())
    assert status == 200 and turn["status"] == "completed"


def test_under_asgi_a_client_gone_while_its_wait_subscribes_still_has_its_turn_queued(
    asgi, user, queued, settings, private_redis, monkeypatch
):
    """Django cancels the view of a client that hung up: the accepted turn must still run."""
    import uuid

    from sessions_app import services
    from sessions_app.events import listener as listening

    from ..factories import token_for

    settings.REDIS_URL = private_redis.url  # the notifications only: cache, broker stay up
    settings.MAX_WAITS_PER_USER = 1
    monkeypatch.setattr(listening, "SUBSCRIBE_TIMEOUT_SECONDS", 0.5)
    sid, token = services.chat_session_create(owner=user).pk, token_for(user)

    async def scenario() -> int:
        listener = events.turn_listener()
        held = await listener.subscribe(uuid.uuid4())  # connected, then Redis hangs
        private_redis.freeze()
        try:

            async def while_subscribing() -> None:
                await _until(lambda: len(listener.channels) == 2)

            path = f"/api/v1/sessions/{sid}/messages/?wait=30"
            status, _ = await _asgi_post(path, token, "hi", gone=while_subscribing)
            return status
        finally:
            private_redis.thaw()
            held.close()

    assert asyncio.run(scenario()) == 0  # no answer: the view was cancelled
    assert queued.llen("celery") == 1  # but its turn was queued,
    assert Turn.objects.get(session_id=sid).status == "pending"
    events.wait_slot_acquire(user_id=user.pk)()  # and the wait's slot given back


def test_under_asgi_the_answer_is_logged_with_the_user_the_accept_named(asgi, user, queued):
    import logging

    from sessions_app import services
    from sessions_app.isolation import IsolationLogFilter

    from ..factories import token_for

    sid, token = services.chat_session_create(owner=user).pk, token_for(user)
    logged = []

    class Naming(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            # Django logs the 409 after the view, as under the sync dispatch: the line
            # names the user the accept authenticated, from the request it carries.
            IsolationLogFilter().filter(record)
            logged.append((record.getMessage(), record.isolation_user))

    async def twice() -> list[int]:
        path = f"/api/v1/sessions/{sid}/messages/"
        return [(await _asgi_post(path, token, "hi"))[0] for _ in range(2)]

    handler, django_request = Naming(level=logging.WARNING), logging.getLogger("django.request")
    django_request.addHandler(handler)
    try:
        assert asyncio.run(twice()) == [202, 409]  # the first turn is still in flight
    finally:
        django_request.removeHandler(handler)
    assert logged == [(f"Conflict: /api/v1/sessions/{sid}/messages/", user.pk)]


def test_a_notification_names_the_new_status_and_nothing_else(
    user, pending, settings, django_capture_on_commit_callbacks
):
    import redis

    from sessions_app import services
    from sessions_app.events.notify import _channel

    with redis.Redis.from_url(settings.REDIS_URL) as client:
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(_channel(pending.pk))
        with django_capture_on_commit_callbacks(execute=True):
            services.turn_claim(turn_id=pending.pk)
        with django_capture_on_commit_callbacks(execute=True):
            services.turn_complete(turn_id=pending.pk, reply="Dana's parcel left on Monday")
        payloads = []
        for _ in range(20):  # a None may be the subscription's own confirmation: read on
            if (message := pubsub.get_message(timeout=0.1)) is not None:
                payloads.append(message["data"])
        pubsub.close()
    assert payloads == [b"running", b"completed"]


def _database_answering(error: Exception):
    from django.db import connection

    def answer(execute, sql, params, many, context):
        raise error

    return connection.execute_wrapper(answer)


@pytest.mark.django_db(transaction=True)
def test_with_the_database_down_a_wait_goes_on_and_answers_the_turn_as_last_read(user, pending):
    from django.db import OperationalError

    from sessions_app import selectors

    # The message is accepted already: an error now would make the client send it again.
    with _database_answering(OperationalError("server closed the connection unexpectedly")):
        assert selectors.turn_ended_for_owner(user=user, turn=pending) is False
        assert selectors.turn_refresh_for_owner(user=user, turn=pending) is pending


@pytest.mark.django_db(transaction=True)
def test_a_database_error_that_is_no_outage_or_inside_a_transaction_stands(user, pending):
    from django.db import OperationalError, ProgrammingError, transaction

    from sessions_app import selectors

    reads = (selectors.turn_ended_for_owner, selectors.turn_refresh_for_owner)
    for read in reads:
        with pytest.raises(ProgrammingError), _database_answering(ProgrammingError("no column")):
            read(user=user, turn=pending)
        lost = OperationalError("connection lost")
        with pytest.raises(OperationalError), transaction.atomic(), _database_answering(lost):
            read(user=user, turn=pending)


# A wait whose subscription fails after the accept -----------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_wait_whose_subscription_fails_leaves_no_message_and_no_turn(
    api, user, queued, monkeypatch
):
    """The message was stored, the turn not yet queued: the error answer takes both back."""
    from sessions_app.apis import messages
    from sessions_app.models import Message

    def broken(**_kwargs):
        raise RuntimeError("the listener broke")

    monkeypatch.setattr(messages, "wait_subscribe", broken)
    sid = api.post("/api/v1/sessions/", {}, format="json").json()["id"]
    with pytest.raises(RuntimeError, match="the listener broke"):
        api.post(f"/api/v1/sessions/{sid}/messages/?wait=5", {"content": "hi"}, format="json")
    assert not Turn.objects.filter(session_id=sid).exists()
    assert not Message.objects.filter(session_id=sid).exists()
    assert queued.llen("celery") == 0
    response = api.post(f"/api/v1/sessions/{sid}/messages/", {"content": "again"}, format="json")
    assert response.status_code == 202  # no turn left in flight to answer 409


def test_under_asgi_a_wait_whose_subscription_fails_leaves_no_message_and_no_turn(
    asgi, user, queued, monkeypatch
):
    from sessions_app import services
    from sessions_app.apis import messages
    from sessions_app.models import Message

    from ..factories import token_for

    async def broken(**_kwargs):
        raise RuntimeError("the listener broke")

    monkeypatch.setattr(messages, "wait_subscribe_async", broken)
    sid, token = services.chat_session_create(owner=user).pk, token_for(user)
    path = f"/api/v1/sessions/{sid}/messages/?wait=30"
    status, _ = asyncio.run(_asgi_post(path, token, "hi"))
    assert status == 500
    assert not Turn.objects.filter(session_id=sid).exists()
    assert not Message.objects.filter(session_id=sid).exists()
    assert queued.llen("celery") == 0


@pytest.mark.parametrize("budget", [1, None])
def test_under_asgi_a_stream_whose_client_hangs_up_while_it_opens_gives_its_slots_back(
    asgi, user, settings, monkeypatch, budget
):
    """Django cancels a view whose client hung up; the stream's open runs in a thread,
    which takes the caller's wait slot (and the process's) all the same: they must come
    back, or a few such hang-ups lock the user out of waits and streams for good."""
    import time

    from sessions_app import services
    from sessions_app.apis import turns as turns_api

    from ..factories import token_for

    settings.MAX_WAITS_PER_USER = 1
    settings.WAITS_PER_PROCESS = budget
    session = services.chat_session_create(owner=user)
    turn = services.message_accept(user=user, session_id=session.pk, content="hi")
    token = token_for(user)
    opened, taken = turns_api.TurnEventsApi._open, threading.Event()

    def slow_open(self, request, turn_id):
        slots = opened(self, request, turn_id)  # the slots are taken here
        taken.set()
        time.sleep(0.5)  # the client hangs up meanwhile
        return slots

    monkeypatch.setattr(turns_api.TurnEventsApi, "_open", slow_open)

    path = f"/api/v1/turns/{turn.pk}/events/"
    assert asyncio.run(_asgi_get_hung_up(path, token, taken)) == [] and taken.is_set()
    if budget is not None:
        release_budget = events.wait_budget_take()
        assert release_budget is not None, "the process's wait slot leaked"
        release_budget()
    events.wait_slot_acquire(user_id=user.pk)()  # TooManyWaits if the user's slot leaked


def test_a_head_of_a_stream_answers_503_as_its_get_does_with_notifications_down(
    api, pending, settings
):
    """A probe sending HEAD must learn what GET would answer: no stream can start."""
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # notifications down, the cache up
    path = f"/api/v1/turns/{pending.pk}/events/"
    assert api.get(path).status_code == 503
    assert api.head(path).status_code == 503
    settings.MAX_WAITS_PER_USER = 1
    settings.REDIS_URL = ""  # no notifications to ask for: the waits poll
    assert api.head(path).status_code == 200  # the 503s gave their slots back


def test_under_asgi_a_head_of_a_stream_ends_at_once_and_holds_no_slot(asgi, user, settings):

    from sessions_app import services

    from ..factories import token_for

    settings.MAX_WAITS_PER_USER = 1
    session = services.chat_session_create(owner=user)
    turn = services.message_accept(user=user, session_id=session.pk, content="hi")
    scope = {**_asgi_scope(f"/api/v1/turns/{turn.pk}/events/", token_for(user), b"")}
    scope["method"] = "HEAD"

    async def scenario() -> list[dict]:
        return await asyncio.wait_for(_asgi_staying(scope), timeout=10)

    sent = asyncio.run(scenario())  # TimeoutError: it followed the pending turn
    assert sent[0]["status"] == 200
    assert not b"".join(m.get("body", b"") for m in sent[1:])
    events.wait_slot_acquire(user_id=user.pk)()  # TooManyWaits if the HEAD held its slot


def test_under_asgi_a_head_subscribes_on_the_event_loop_and_answers_as_get_does(
    asgi, user, settings, monkeypatch
):
    """Served in a thread, a HEAD subscribed there: with Redis hanging it held the thread
    for the subscription's whole timeout. On the event loop, as GET's stream, it holds
    none, and answers what GET answers: 200 with the notifications up, 503 with them down."""
    from sessions_app import services

    from ..factories import token_for

    def in_a_thread(**kwargs):
        raise AssertionError("a HEAD subscribed in a thread")

    monkeypatch.setattr(events, "turn_changes", in_a_thread)
    session = services.chat_session_create(owner=user)
    turn = services.message_accept(user=user, session_id=session.pk, content="hi")
    scope = {**_asgi_scope(f"/api/v1/turns/{turn.pk}/events/", token_for(user), b"")}
    scope["method"] = "HEAD"

    def head() -> list[dict]:
        return asyncio.run(asyncio.wait_for(_asgi_staying(scope), timeout=20))

    assert head()[0]["status"] == 200
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # notifications down, the cache up
    assert head()[0]["status"] == 503
    settings.REDIS_URL = ""
    events.wait_slot_acquire(user_id=user.pk)()  # TooManyWaits if a HEAD held its slot


@pytest.mark.parametrize("budget", [1, None])
def test_under_asgi_a_stream_whose_client_hangs_up_before_its_first_byte_gives_its_slots_back(
    asgi, user, settings, monkeypatch, budget
):
    """The view has returned the stream and the middleware are still handling the response
    (each a hop to a thread under ASGI) when the client hangs up: Django cancels the
    request's task, sends ``request_finished`` and never closes the response. The user's
    slot, the process's and the listener's subscription must all come back all the same."""
    import time

    from django.middleware.clickjacking import XFrameOptionsMiddleware

    from sessions_app import services
    from sessions_app.events.listener import turn_listener

    from ..factories import token_for

    settings.MAX_WAITS_PER_USER = 1
    settings.WAITS_PER_PROCESS = budget
    session = services.chat_session_create(owner=user)
    turn = services.message_accept(user=user, session_id=session.pk, content="hi")
    token = token_for(user)
    responding = threading.Event()
    process_response = XFrameOptionsMiddleware.process_response

    def slow_process_response(self, request, response):
        responding.set()
        time.sleep(0.5)  # the client hangs up meanwhile
        return process_response(self, request, response)

    monkeypatch.setattr(XFrameOptionsMiddleware, "process_response", slow_process_response)

    async def scenario() -> tuple[list[dict], int]:
        sent = await _asgi_get_hung_up(f"/api/v1/turns/{turn.pk}/events/", token, responding)
        return sent, sum(len(c.subscriptions) for c in turn_listener().channels.values())

    sent, subscribed = asyncio.run(scenario())
    assert sent == [] and responding.is_set()
    held = ["the listener's subscription"] if subscribed else []
    if budget is not None:
        if (release_budget := events.wait_budget_take()) is None:
            held.append("the process's wait slot")
        else:
            release_budget()
    try:
        events.wait_slot_acquire(user_id=user.pk)()
    except events.TooManyWaits:
        held.append("the user's wait slot")
    assert not held, f"left held after the hang-up: {held}"


def test_a_stream_closed_before_its_first_chunk_closes_its_watch(api, pending, monkeypatch):
    """The stream's chunks close the watch once they started; closed before that (a
    response replaced, a client gone), the watch and its subscription waited for the
    collector."""
    import inspect

    from sessions_app.apis import turns as turns_api

    watches = []
    watch = turns_api.events.turn_watch

    def recorded(**kwargs):
        watches.append(watch(**kwargs))
        return watches[-1]

    monkeypatch.setattr(turns_api.events, "turn_watch", recorded)
    response = api.get(f"/api/v1/turns/{pending.pk}/events/")
    assert response.status_code == 200
    hang_up(response)  # before any chunk was read
    assert inspect.getgeneratorstate(watches[0]) == inspect.GEN_CLOSED


@pytest.mark.parametrize("server", ["wsgi", "asgi"])
def test_a_stream_replaced_by_an_error_after_its_view_gives_its_slots_back(
    asgi, user, settings, monkeypatch, server
):
    """A middleware that fails after the view turns its response into a 500: the server
    gets (and closes) that one (here a 503: the failure is an outage), never the stream,
    whose slots must come back all the same."""
    from django.middleware.clickjacking import XFrameOptionsMiddleware
    from rest_framework.test import APIClient

    from sessions_app import services

    from ..factories import token_for

    settings.MAX_WAITS_PER_USER = 1
    settings.WAITS_PER_PROCESS = 1
    session = services.chat_session_create(owner=user)
    turn = services.message_accept(user=user, session_id=session.pk, content="hi")
    token, path = token_for(user), f"/api/v1/turns/{turn.pk}/events/"

    def failing(self, request, response):
        raise redis.exceptions.ConnectionError("the session store went away")

    monkeypatch.setattr(XFrameOptionsMiddleware, "process_response", failing)

    async def over_asgi() -> int:
        sent = await _asgi_staying({**_asgi_scope(path, token, b""), "method": "GET"})
        await asyncio.sleep(0.5)  # the close, in a thread of its own, has run by then
        return sent[0]["status"]

    if server == "asgi":
        status = asyncio.run(over_asgi())
    else:
        client = APIClient(HTTP_AUTHORIZATION=f"Token {token}", raise_request_exception=False)
        status = client.get(path).status_code
    assert status == 503
    release_budget = events.wait_budget_take()
    assert release_budget is not None, "the process's wait slot leaked"
    release_budget()
    events.wait_slot_acquire(user_id=user.pk)()  # TooManyWaits if the user's slot leaked


@pytest.mark.parametrize("server", ["wsgi", "asgi"])
@pytest.mark.parametrize("wait", ["", "?wait=30"])
def test_a_queueing_whose_answer_was_lost_after_a_worker_took_the_turn_is_accepted(
    asgi, user, settings, monkeypatch, server, wait
):
    """The broker took the task and its answer was lost: the queueing raised, but a worker
    had already taken the turn, which will be answered. The request says so (202, the turn
    kept), not 503 ("nothing kept", which would have the client send it again), and the
    wait's slots are free."""
    from rest_framework.test import APIClient

    from sessions_app import services, tasks
    from sessions_app.models import Message

    from ..factories import token_for

    settings.MAX_WAITS_PER_USER = 1
    settings.WAITS_PER_PROCESS = 1

    def taken_then_answer_lost(turn) -> None:
        services.turn_claim(turn_id=turn.pk)
        services.turn_complete(turn_id=turn.pk, reply="answered")
        raise redis.exceptions.ConnectionError("the broker's answer was lost")

    monkeypatch.setattr(tasks, "_queue", taken_then_answer_lost)
    sid, token = services.chat_session_create(owner=user).pk, token_for(user)
    path = f"/api/v1/sessions/{sid}/messages/{wait}"
    if server == "asgi":
        status, body = asyncio.run(_asgi_post(path, token, "kept"))
    else:
        client = APIClient(HTTP_AUTHORIZATION=f"Token {token}")
        answer = client.post(path, {"content": "kept"}, format="json")
        status, body = answer.status_code, answer.json()
    assert status == 202, body
    turn = Turn.objects.get(pk=body["id"])
    assert turn.status == "completed"
    assert [m.content for m in Message.objects.filter(session_id=sid).order_by("seq")] == [
        "kept",
        "answered",
    ]
    release_budget = events.wait_budget_take()
    assert release_budget is not None
    events.wait_slot_acquire(user_id=user.pk)()
    release_budget()
