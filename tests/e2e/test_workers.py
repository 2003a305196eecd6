"""End to end on real Celery workers: many users at once, a killed worker, a redelivery race.

Nothing of ours is mocked: the API runs in the test process, turns go through a real broker
(Redis, and RabbitMQ in a virtual host of the test's own) to real ``celery worker``
subprocesses on the same Postgres test database, and only Claude is faked, at its HTTP
protocol, by ``FakeClaude``.
"""

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection

from sessions_app.models import Message, Turn

from ..conftest import client_for
from ..factories import UserFactory
from ..fakes.claude import FakeClaude, canaries_in
from ..support import wait_until

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]
# Redis redelivers a dead worker's task after its visibility timeout, RabbitMQ as soon as
# the worker's connection closes: the redelivery tests run with each.
each_broker = pytest.mark.parametrize("broker", ["redis", "amqp"], indirect=True)

USERS = 20
MESSAGES_PER_USER = 3
NAMES = [
    "Alice", "Bruno", "Chiara", "Dmitri", "Elif", "Farah", "Goran", "Hana", "Ivo", "Jonas",
    "Kemal", "Lena", "Mateo", "Nadia", "Oskar", "Priya", "Quentin", "Rosa", "Sven", "Tomoko",
]  # fmt: skip


def _request_text(body: dict) -> str:
    """All the conversation text of one request the fake received."""
    parts = [str(body.get("system", ""))]
    for message in body.get("messages") or []:
        content = message.get("content", "")
        if isinstance(content, list):
            content = " ".join(str(block.get("text", "")) for block in content)
        parts.append(str(content))
    return "\n".join(parts)


def _one_user_chats(user, name: str, canary: str, barrier: threading.Barrier) -> dict:
    """One user's whole conversation through the API, run on its own thread."""
    api = client_for(user)
    try:
        barrier.wait(timeout=30)
        response = api.post("/api/v1/sessions/", {"title": name}, format="json")
        assert response.status_code == 201, response.content
        sid = response.json()["id"]
        turns = []
        for n in range(1, MESSAGES_PER_USER + 1):
            content = f"My name is {name}. Message {n}. {canary}"
            response = api.post(
                f"/api/v1/sessions/{sid}/messages/?wait=30", {"content": content}, format="json"
            )
            assert response.status_code == 200, (name, n, response.status_code, response.content)
            turn = response.json()
            assert turn["status"] == "completed", (name, n, turn)
            assert turn["session"] == sid
            assert turn["user_message"]["content"] == content
            assert turn["reply"]["content"] == f"Echo: {content}", (name, n, turn)
            assert canaries_in(response.content.decode()) == {canary}, (name, n, turn)
            turns.append(turn["id"])
        messages = api.get(f"/api/v1/sessions/{sid}/messages/")
        assert messages.status_code == 200
        listing = messages.json()
        assert listing["count"] == 2 * MESSAGES_PER_USER, listing
        assert [m["role"] for m in listing["results"]] == ["user", "assistant"] * MESSAGES_PER_USER
        assert canaries_in(messages.content.decode()) == {canary}, listing
        sessions = api.get("/api/v1/sessions/")
        assert sessions.status_code == 200
        assert [s["id"] for s in sessions.json()["results"]] == [sid], sessions.json()
        for turn_id in turns:
            detail = api.get(f"/api/v1/turns/{turn_id}/")
            assert detail.status_code == 200
            assert canaries_in(detail.content.decode()) == {canary}
        return {"session": sid, "turns": turns}
    finally:
        connection.close()


# Each store on Redis; the broker is independent of the store, so RabbitMQ with one.
@pytest.mark.parametrize(
    ("store", "broker"),
    [("db", "redis"), ("redis", "redis"), ("cached_db", "redis"), ("db", "amqp")],
    indirect=["broker"],
)
def test_twenty_users_at_once_never_see_each_other(
    store: str, settings, workers, fake_claude: FakeClaude
):
    settings.HISTORY_STORE = store
    users = [UserFactory() for _ in range(USERS)]
    canaries = [f"CANARY-{uuid.uuid4().hex}" for _ in users]
    pair = [workers(pool="threads", concurrency=4, env={"HISTORY_STORE": store}) for _ in range(2)]
    for worker in pair:
        worker.wait_ready()

    barrier = threading.Barrier(USERS)
    with ThreadPoolExecutor(max_workers=USERS) as pool:
        futures = [
            pool.submit(_one_user_chats, user, NAMES[i], canaries[i], barrier)
            for i, user in enumerate(users)
        ]
        results = [future.result(timeout=80) for future in futures]

    turn_count = USERS * MESSAGES_PER_USER
    assert sum(len(r["turns"]) for r in results) == turn_count
    assert len({r["session"] for r in results}) == USERS
    assert Turn.objects.count() == turn_count
    assert set(Turn.objects.values_list("status", flat=True)) == {Turn.Status.COMPLETED}
    assert set(Turn.objects.values_list("attempts", flat=True)) == {1}
    # The redis store keeps content only in Redis; the others in rows.
    stored_replies = Message.objects.filter(role=Message.Role.ASSISTANT).count()
    assert stored_replies == (0 if store == "redis" else turn_count)
    # The turns really ran in the worker subprocesses, not in this process.
    assert wait_until(lambda: sum(w.succeeded() for w in pair) == turn_count, 5)

    # Every request Claude received held exactly one user's canary, and the history a user's
    # n-th turn sent was that user's 2n-1 messages: nothing mixed, nothing missing.
    assert fake_claude.request_count() == turn_count, "one Claude call per turn"
    history_sizes: dict[str, list[int]] = {canary: [] for canary in canaries}
    for body in fake_claude.requests:
        found = canaries_in(_request_text(body))
        assert len(found) == 1, f"a request mixed users: {sorted(found)}"
        (canary,) = found
        history_sizes[canary].append(len(body["messages"]))
    expected_sizes = [2 * n - 1 for n in range(1, MESSAGES_PER_USER + 1)]
    assert {c: sorted(sizes) for c, sizes in history_sizes.items()} == {
        c: expected_sizes for c in canaries
    }


def _post(api, sid: str, content: str) -> dict:
    response = api.post(f"/api/v1/sessions/{sid}/messages/", {"content": content}, format="json")
    assert response.status_code == 202, response.content
    return response.json()


def _turn_state(turn_id: str) -> Turn:
    return Turn.objects.get(pk=turn_id)


def _replies(turn_id: str) -> list[str]:
    return list(
        Message.objects.filter(turn_id=turn_id, role=Message.Role.ASSISTANT).values_list(
            "content", flat=True
        )
    )


@each_broker
def test_worker_killed_mid_turn_still_ends(workers, fake_claude: FakeClaude, user):
    fast_redelivery = {"CELERY_VISIBILITY_TIMEOUT": "8"}  # Redis; RabbitMQ needs none
    first = workers("doomed", env=fast_redelivery).wait_ready()
    api = client_for(user)
    sid = api.post("/api/v1/sessions/", {}, format="json").json()["id"]
    canary = f"CANARY-{uuid.uuid4().hex}"
    fake_claude.hang()  # the first request is never answered: the worker stays inside it

    turn_id = _post(api, sid, f"My order is {canary}")["id"]
    assert wait_until(lambda: fake_claude.request_count() == 1, 20), first.log()
    assert _turn_state(turn_id).status == Turn.Status.RUNNING
    first.kill()
    assert first.proc.returncode == -9

    # From here on the fake answers normally (the one hang was used up).
    workers("successor", env=fast_redelivery).wait_ready()
    assert wait_until(lambda: _turn_state(turn_id).status not in Turn.IN_FLIGHT, 120)

    turn = _turn_state(turn_id)
    assert turn.status == Turn.Status.COMPLETED, (turn.status, turn.error_code)
    assert turn.attempts >= 2
    assert _replies(turn_id) == [f"Echo: My order is {canary}"]
    assert fake_claude.request_count() == 2
    shown = api.get(f"/api/v1/turns/{turn_id}/").json()
    assert shown["status"] == "completed" and canary in shown["reply"]["content"]


@each_broker
def test_redelivery_while_first_run_alive_gives_one_reply(
    request, broker, workers, fake_claude: FakeClaude, user
):
    # Long past the redelivery: Redis's visibility timeout plus one restore interval (5 s),
    # or RabbitMQ's requeue once the connection is closed, on a loaded machine.
    slow_first_answer = 20
    fast_redelivery = {"CELERY_VISIBILITY_TIMEOUT": "3"}
    pair = [workers(f"racer{i}", env=fast_redelivery) for i in range(2)]
    for worker in pair:
        worker.wait_ready()
    api = client_for(user)
    sid = api.post("/api/v1/sessions/", {}, format="json").json()["id"]
    fake_claude.delay(slow_first_answer)

    turn_id = _post(api, sid, "Hello, slow Claude")["id"]
    assert wait_until(lambda: fake_claude.request_count() >= 1, 20)
    if broker.startswith("amqp"):
        # RabbitMQ redelivers only once the channel holding the task is gone. The busy
        # worker (solo pool) cannot reconnect until its run ends; the idle one takes it.
        request.getfixturevalue("rabbit_vhost").close_connections()
    # The task comes back to the idle worker while the first run still waits for Claude.
    # (Had the first run ended first, the second would skip: no second Claude call.)
    assert wait_until(lambda: fake_claude.request_count() >= 2, slow_first_answer - 2)
    # Both runs finish: the redelivered one first, then the slow one.
    assert wait_until(lambda: all(w.succeeded() for w in pair), slow_first_answer + 30)

    turn = _turn_state(turn_id)
    assert turn.status == Turn.Status.COMPLETED, (turn.status, turn.error_code)
    assert turn.attempts >= 2
    assert _replies(turn_id) == ["Echo: Hello, slow Claude"]
    assert fake_claude.request_count() == turn.attempts, "one Claude call per run"
    listing = api.get(f"/api/v1/sessions/{sid}/messages/").json()
    assert [m["role"] for m in listing["results"]] == ["user", "assistant"]
