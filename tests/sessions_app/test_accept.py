"""Accepting a message: the session's lock, counter and expiry taken in one statement, and
what a COMMIT that fails, or seems to, leaves."""

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from unittest import mock

import pytest
import redis
from celery.exceptions import Retry
from django.core.cache import cache
from django.db import OperationalError, connection, connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_redis import get_redis_connection
from rest_framework.exceptions import NotFound

from sessions_app import selectors, services, tasks
from sessions_app.errors import CommitUnconfirmed, ForeignAccess
from sessions_app.models import ChatSession, Message, Turn
from sessions_app.stores import history_store

from ..conftest import client_for

pytestmark = pytest.mark.django_db


def test_taking_a_seq_advances_the_counter_and_keeps_the_session_alive(user, vendor):
    session = services.chat_session_create(owner=user)
    now = timezone.now() + timedelta(seconds=5)
    taken = selectors.chat_session_take_seq_for_owner(
        user=user, session_id=session.pk, now=now, expires_at=now + timedelta(hours=3)
    )
    assert (taken.pk, taken.owner_id, taken.next_seq) == (session.pk, user.pk, 1)
    again = selectors.chat_session_take_seq_for_owner(
        user=user, session_id=str(session.pk), now=now, expires_at=now + timedelta(hours=3)
    )
    assert again.next_seq == 2
    row = ChatSession.objects.get(pk=session.pk)
    assert row.next_seq == 3
    assert (row.last_activity_at, row.expires_at) == (now, now + timedelta(hours=3))


def test_another_users_session_is_the_audited_not_found_and_stays_untouched(
    user, other_user, vendor
):
    theirs = services.chat_session_create(owner=other_user)
    before = ChatSession.objects.get(pk=theirs.pk)
    now = timezone.now()
    with pytest.raises(ForeignAccess):
        selectors.chat_session_take_seq_for_owner(
            user=user, session_id=theirs.pk, now=now, expires_at=now + timedelta(days=9)
        )
    after = ChatSession.objects.get(pk=theirs.pk)
    assert (after.next_seq, after.expires_at) == (before.next_seq, before.expires_at)


@pytest.mark.parametrize("session_id", ["not-a-uuid", "00000000-0000-0000-0000-000000000000"])
def test_an_unknown_id_is_not_found(user, session_id):
    now = timezone.now()
    with pytest.raises(NotFound):
        selectors.chat_session_take_seq_for_owner(
            user=user, session_id=session_id, now=now, expires_at=now
        )


def test_an_expired_session_takes_no_message(user):
    session = services.chat_session_create(owner=user)
    ChatSession.objects.filter(pk=session.pk).update(expires_at=timezone.now())
    with pytest.raises(NotFound):
        services.message_accept(user=user, session_id=session.pk, content="too late")
    assert ChatSession.objects.get(pk=session.pk).next_seq == 1


def test_the_accept_touches_the_session_row_once(user):
    session = services.chat_session_create(owner=user)
    with CaptureQueriesContext(connection) as accept:
        turn = services.message_accept(user=user, session_id=session.pk, content="hello")
    touching = [q["sql"] for q in accept if "sessions_app_chatsession" in q["sql"].split("(")[0]]
    assert len(touching) == 1 and touching[0].lstrip().startswith("UPDATE")
    assert turn.exchange[0].seq == 1
    assert ChatSession.objects.get(pk=session.pk).next_seq == 2


def test_the_accept_reads_the_vault_with_the_session_and_extends_it(user, settings, vendor):
    from sessions_app import privacy

    settings.PII_MODE = "pseudonymize"
    session = services.chat_session_create(owner=user)
    first = services.message_accept(
        user=user, session_id=session.pk, content="I am Dana Whitfield, dana@example.com"
    )
    services.turn_complete(turn_id=first.pk, reply="Noted.")
    with CaptureQueriesContext(connection) as accept:
        turn = services.message_accept(
            user=user, session_id=session.pk, content="Dana Whitfield again, on +44 20 7946 0958"
        )
    selects = [q["sql"] for q in accept if q["sql"].lstrip().upper().startswith("SELECT")]
    assert selects == []  # the vault came back with the session's UPDATE
    assert turn.exchange[0].content == "Dana Whitfield again, on +44 20 7946 0958"
    vault = privacy.vault_read(session_id=session.pk)
    # The name's placeholder was reused; the phone number's was added under the same key.
    assert sorted(vault.values()) == sorted(
        {"Dana Whitfield", "dana@example.com", "+44 20 7946 0958"}
    )


def test_a_connection_prepares_the_accept_once_and_reuses_it(user):
    """Server-side binding: Postgres plans the accept's statements once per connection."""
    sessions = [services.chat_session_create(owner=user) for _ in range(7)]

    def prepared() -> dict[str, int]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT statement FROM pg_prepared_statements")
            found = [row[0] for row in cursor.fetchall()]
        return {
            "take seq": sum("UPDATE sessions_app_chatsession" in s for s in found),
            "turn": sum('INSERT INTO "sessions_app_turn"' in s for s in found),
        }

    assert prepared() == {"take seq": 0, "turn": 0}
    for session in sessions:
        services.message_accept(user=user, session_id=session.pk, content="hello")
    # Each statement prepared once, after its fifth run, and not once per run after it.
    assert prepared() == {"take seq": 1, "turn": 1}


def test_a_database_without_returning_takes_the_seq_in_two_steps(
    user, other_user, settings, monkeypatch
):
    """Django runs on SQLite from 3.31; UPDATE ... RETURNING needs 3.35. There the accept
    locks, updates and reads the vault when it needs it, with the same answers."""
    from sessions_app import privacy

    monkeypatch.setattr(type(connections["default"]), "vendor", "other")
    monkeypatch.setattr(selectors, "_update_returns_rows", lambda: False)
    settings.PII_MODE = "pseudonymize"
    session = services.chat_session_create(owner=user)
    with CaptureQueriesContext(connection) as ran:
        first = services.message_accept(user=user, session_id=session.pk, content="a@example.org")
    updates = [q["sql"] for q in ran if q["sql"].lstrip().upper().startswith("UPDATE")]
    assert updates and not [sql for sql in updates if "RETURNING" in sql.upper()]
    services.turn_complete(turn_id=first.pk, reply="Noted.")
    services.message_accept(user=user, session_id=session.pk, content="b@example.org")
    assert privacy.vault_read(session_id=session.pk) == {
        "<EMAIL_ADDRESS_1>": "a@example.org",
        "<EMAIL_ADDRESS_2>": "b@example.org",
    }
    session.refresh_from_db()
    assert session.next_seq == 4  # two messages and a reply
    with pytest.raises(NotFound):
        services.message_accept(user=other_user, session_id=session.pk, content="mine?")
    assert ChatSession.objects.get(pk=session.pk).next_seq == 4


# A COMMIT whose answer is lost ------------------------------------------------------------


@contextmanager
def commit_answer_lost(
    session: ChatSession,
    *,
    committed: bool = True,
    reconnect: bool = True,
    commits_after: float | None = None,
) -> Iterator[None]:
    """The accept's COMMIT reaches Postgres, which commits it (or, ``committed`` off, does
    not), then the connection drops before the answer comes back; with ``reconnect`` off
    the database refuses new connections from then on; with ``commits_after``, the server
    is still committing when the answer is lost, and commits that many seconds later."""
    wrapper = connections["default"]
    commit, rollback = wrapper._commit, wrapper._rollback
    lost = []
    late: list[threading.Thread] = []

    def answer_lost() -> None:
        if lost or not Turn.objects.filter(session=session).exists():
            return commit()  # not the accept's (the embedded beat jobs, the eager worker)
        lost.append(True)
        if commits_after is not None:
            server, wrapper.connection = wrapper.connection, None  # gone from the client

            def committing() -> None:
                time.sleep(commits_after)
                try:
                    server.commit()
                finally:
                    server.close()

            late.append(threading.Thread(target=committing))
            late[0].start()
            raise OperationalError("server closed the connection unexpectedly")
        (commit if committed else rollback)()
        wrapper.connection.close()  # the socket is gone: the ROLLBACK after it fails too
        raise OperationalError("server closed the connection unexpectedly")

    def refused(*args: object, **kwargs: object) -> None:
        raise OperationalError("connection refused")

    try:
        with mock.patch.object(wrapper, "_commit", answer_lost):
            if reconnect:
                yield
            else:
                with mock.patch.object(wrapper, "get_new_connection", refused):
                    yield
    finally:
        for thread in late:
            thread.join(30)
            assert not thread.is_alive(), "the late COMMIT never ended"
    assert lost, "the accept never committed"


def redis_holds(session: ChatSession, text: str) -> bool:
    held = get_redis_connection("default").hvals(f"session:{{{session.pk}}}:messages")
    return any(text.encode() in value for value in held)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("store", ["redis", "db", "cached_db"])
def test_a_commit_that_took_but_lost_its_answer_is_accepted_and_answered(user, settings, store):
    """The turn is in the database: its message stays with it (not undone from Redis), the
    client is told 202 (an error would make it send the message twice), the turn is queued
    and its reply answers the message."""
    settings.HISTORY_STORE = store
    session = services.chat_session_create(owner=user)
    with commit_answer_lost(session):
        response = client_for(user).post(
            f"/api/v1/sessions/{session.pk}/messages/", {"content": "Zorblax 7"}, format="json"
        )
    assert response.status_code == 202, response.json()
    assert response.json()["user_message"]["content"] == "Zorblax 7"
    turn = Turn.objects.select_related("session").get(pk=response.json()["id"])
    stored = history_store().turn_messages(session=turn.session, turn_id=turn.pk)
    assert [(m.role, m.content) for m in stored] == [
        ("user", "Zorblax 7"),
        ("assistant", "(offline assistant) You said: Zorblax 7"),  # tasks run eagerly here
    ]
    assert turn.status == Turn.Status.COMPLETED


@pytest.mark.django_db(transaction=True)
def test_a_commit_still_under_way_when_its_answer_was_lost_is_waited_for(user, settings):
    """The server is still committing (a synchronous standby it waits for, say) when the
    check reads the turn: the check waits for it, and does not take "not there yet" for
    "not committed" (undone and answered 503, then committed all the same)."""
    settings.HISTORY_STORE = "redis"
    session = services.chat_session_create(owner=user)
    with commit_answer_lost(session, commits_after=1.0):
        response = client_for(user).post(
            f"/api/v1/sessions/{session.pk}/messages/", {"content": "Zorblax 10"}, format="json"
        )
    assert response.status_code == 202, response.json()
    assert redis_holds(session, "Zorblax 10")
    assert Turn.objects.get(pk=response.json()["id"]).status == Turn.Status.COMPLETED


@pytest.mark.django_db(transaction=True)
def test_a_commit_still_under_way_past_the_checks_wait_is_unknown_and_undone(
    user, settings, monkeypatch, caplog
):
    """Waited for once, up to the lock timeout: not retried as if the database were down."""
    settings.HISTORY_STORE = "redis"
    monkeypatch.setattr(services.accept, "COMMIT_CHECK_LOCK_MS", 300)
    session = services.chat_session_create(owner=user)
    with commit_answer_lost(session, commits_after=3.0), pytest.raises(CommitUnconfirmed):
        services.message_accept(user=user, session_id=session.pk, content="Zorblax 11")
    assert not redis_holds(session, "Zorblax 11")
    said = [record.getMessage() for record in caplog.records]
    assert any("could not tell whether turn" in line for line in said), said
    assert not any("retrying" in line for line in said), said


@pytest.mark.django_db(transaction=True)
def test_a_commit_that_failed_is_undone_from_redis(user, settings):
    settings.HISTORY_STORE = "redis"
    session = services.chat_session_create(owner=user)
    with commit_answer_lost(session, committed=False), pytest.raises(OperationalError):
        services.message_accept(user=user, session_id=session.pk, content="Zorblax 8")
    assert not Turn.objects.filter(session=session).exists()
    assert ChatSession.objects.get(pk=session.pk).next_seq == 1
    assert not redis_holds(session, "Zorblax 8")


def leaves_nothing(session: ChatSession, text: str) -> None:
    """Nothing of a message answered with an error: no turn, no message in any store, the
    session's counter back where it was, and the session free for the next message."""
    assert not Turn.objects.filter(session=session).exists()
    assert not Message.objects.filter(session=session).exists()
    assert not redis_holds(session, text)
    assert text not in repr(cache.get(f"session:{{{session.pk}}}:messages"))  # cached_db's
    assert ChatSession.objects.get(pk=session.pk).next_seq == 1
    again = client_for(session.owner).post(
        f"/api/v1/sessions/{session.pk}/messages/", {"content": text}, format="json"
    )
    assert again.status_code == 202, again.json()
    assert again.json()["user_message"]["seq"] == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("store", ["redis", "db", "cached_db"])
def test_a_commit_nothing_can_confirm_is_answered_503_and_settled_once_the_database_is_back(
    user, settings, store, queued
):
    """The database is gone after a COMMIT that took: whether it took cannot be told. The
    answer is 503, which tells the client nothing was kept, so a task queued with it
    removes the turn and its message once the database answers, from every store."""
    settings.HISTORY_STORE = store
    session = services.chat_session_create(owner=user)
    with commit_answer_lost(session, reconnect=False):
        response = client_for(user).post(
            f"/api/v1/sessions/{session.pk}/messages/", {"content": "Zorblax 9"}, format="json"
        )
    assert response.status_code == 503, response.json()
    assert not redis_holds(session, "Zorblax 9")  # undone from Redis at once
    [turn] = Turn.objects.filter(session=session)  # it took, as nothing could tell
    [message] = [json.loads(raw) for raw in queued.lrange("celery", 0, -1)]
    assert message["headers"]["task"] == "sessions_app.tasks.discard_unconfirmed_turn"
    assert message["headers"]["eta"] is not None  # not before the database may be back
    args = json.loads(base64.b64decode(message["body"]))[0]
    assert args == [str(turn.pk), str(session.pk)]  # ids only: no content on the broker
    tasks.discard_unconfirmed_turn.apply(args=args).get()
    queued.delete("celery")
    leaves_nothing(session, "Zorblax 9")


@pytest.mark.django_db(transaction=True)
def test_settling_a_turn_whose_commit_did_not_take_changes_nothing(user, settings, queued):
    session = services.chat_session_create(owner=user)
    with (
        commit_answer_lost(session, committed=False, reconnect=False),
        pytest.raises(CommitUnconfirmed) as unconfirmed,
    ):
        services.message_accept(user=user, session_id=session.pk, content="Zorblax 12")
    tasks.discard_unconfirmed_turn.apply(
        args=[str(unconfirmed.value.turn_id), str(session.pk)]
    ).get()
    leaves_nothing(session, "Zorblax 12")


@pytest.mark.django_db(transaction=True)
def test_settling_leaves_a_turn_a_worker_has(user, settings, queued):
    """Past the stale-turn bound the sweep queues the turn, and a worker that claimed it
    answers it: the settling task, later still, takes nothing from it."""
    session = services.chat_session_create(owner=user)
    with (
        commit_answer_lost(session, reconnect=False),
        pytest.raises(CommitUnconfirmed) as unconfirmed,
    ):
        services.message_accept(user=user, session_id=session.pk, content="Zorblax 13")
    assert services.turn_claim(turn_id=unconfirmed.value.turn_id) is not None
    tasks.discard_unconfirmed_turn.apply(
        args=[str(unconfirmed.value.turn_id), str(session.pk)]
    ).get()
    assert Turn.objects.get(session=session).status == Turn.Status.RUNNING
    assert Message.objects.filter(session=session).count() == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("store", ["redis", "db"])
def test_without_a_broker_of_its_own_the_unconfirmed_accept_is_settled_in_the_request(
    user, settings, monkeypatch, store
):
    """The embedded setup runs tasks eagerly: the request tries the removal itself, here
    once the late COMMIT has ended (the removal waits for the session's row)."""
    settings.HISTORY_STORE = store
    monkeypatch.setattr(services.accept, "COMMIT_CHECK_LOCK_MS", 300)
    session = services.chat_session_create(owner=user)
    with commit_answer_lost(session, commits_after=1.0):
        response = client_for(user).post(
            f"/api/v1/sessions/{session.pk}/messages/", {"content": "Zorblax 14"}, format="json"
        )
    assert response.status_code == 503, response.json()
    leaves_nothing(session, "Zorblax 14")


@contextmanager
def unconfirmed(session: ChatSession, content: str, **lost: object) -> Iterator[list[str]]:
    """Accept ``content`` through ``commit_answer_lost(**lost)``, nothing able to tell
    whether it took; yield the settling task's arguments while the loss lasts."""
    with commit_answer_lost(session, **lost):
        with pytest.raises(CommitUnconfirmed) as raised:
            services.message_accept(user=session.owner, session_id=session.pk, content=content)
        yield [str(raised.value.turn_id), str(session.pk)]


def settle_in_a_worker(args: list[str], *, retries: int) -> None:
    """Run the settling task as a worker runs its ``retries``-th retry, and see it ask for
    another (queued on the broker, as a worker's ``retry`` does)."""
    task = tasks.discard_unconfirmed_turn
    task.push_request(id="settle", retries=retries, args=args, kwargs={}, called_directly=False)
    try:
        with pytest.raises(Retry):
            task.run(*args)
    finally:
        task.pop_request()


@pytest.mark.django_db(transaction=True)
def test_settling_while_the_database_is_still_down_tries_again_later(user, settings, queued):
    session = services.chat_session_create(owner=user)
    with unconfirmed(session, "Zorblax 15", reconnect=False) as args:
        settle_in_a_worker(args, retries=3)
    [message] = [json.loads(raw) for raw in queued.lrange("celery", 0, -1)]
    assert message["headers"]["task"] == "sessions_app.tasks.discard_unconfirmed_turn"
    assert message["headers"]["retries"] == 4
    due_in = datetime.fromisoformat(message["headers"]["eta"]) - timezone.now()
    assert timedelta(seconds=6) < due_in <= timedelta(seconds=8)  # 2**3 s: backing off
    assert Turn.objects.filter(session=session).exists()  # until the retry runs
    queued.delete("celery")
    tasks.discard_unconfirmed_turn.apply(args=args).get()
    leaves_nothing(session, "Zorblax 15")


def unconfirmed_accept(session: ChatSession, content: str) -> uuid.UUID:
    """Accept ``content`` through a COMMIT that took and whose answer was lost, with
    nothing able to confirm it; return the turn's id."""
    with unconfirmed(session, content, reconnect=False) as (turn_id, _):
        pass
    assert Turn.objects.filter(pk=turn_id).exists()
    return uuid.UUID(turn_id)


def age(turn_id: uuid.UUID, seconds: int) -> None:
    past = timezone.now() - timedelta(seconds=seconds)
    Turn.objects.filter(pk=turn_id).update(updated_at=past)


@pytest.mark.django_db(transaction=True)
def test_the_sweep_removes_a_turn_answered_503_instead_of_answering_it(user, fake_claude):
    """The database stayed down past the stale-turn bound, or the task was lost: the sweep
    finds the turn marked and removes it, Claude not called."""
    session = services.chat_session_create(owner=user)
    turn_id = unconfirmed_accept(session, "Zorblax 16")
    age(turn_id, 500)
    assert tasks.turns_sweep(older_than_seconds=60) == {"requeued": 0, "failed": 0, "discarded": 1}
    assert fake_claude.request_count() == 0
    leaves_nothing(session, "Zorblax 16")


@pytest.mark.django_db(transaction=True)
def test_the_next_accept_removes_a_stale_turn_answered_503_instead_of_failing_it(user):
    session = services.chat_session_create(owner=user)
    turn_id = unconfirmed_accept(session, "Zorblax 17")
    age(turn_id, 500)
    turn = services.message_accept(user=user, session_id=session.pk, content="Zorblax 18")
    assert list(Turn.objects.filter(session=session).values_list("pk", flat=True)) == [turn.pk]
    stored = Message.objects.filter(session=session).values_list("seq", "content")
    assert list(stored) == [(1, "Zorblax 18")]  # the first message of the session, again


@pytest.mark.django_db(transaction=True)
def test_sending_again_at_once_after_the_503_is_accepted(user, settings, queued):
    """The client told 503 sends again as soon as the database is back, before the
    settling task ran: the earlier turn is removed, not a 409 until it runs."""
    session = services.chat_session_create(owner=user)
    with commit_answer_lost(session, reconnect=False):
        first = client_for(user).post(
            f"/api/v1/sessions/{session.pk}/messages/", {"content": "Zorblax 22"}, format="json"
        )
    assert first.status_code == 503, first.json()
    again = client_for(user).post(
        f"/api/v1/sessions/{session.pk}/messages/", {"content": "Zorblax 22"}, format="json"
    )
    assert again.status_code == 202, again.json()
    assert again.json()["user_message"]["seq"] == 1
    assert list(Turn.objects.filter(session=session).values_list("pk", flat=True)) == [
        uuid.UUID(again.json()["id"])
    ]
    stored = Message.objects.filter(session=session).values_list("seq", "content")
    assert list(stored) == [(1, "Zorblax 22")]


def cache_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(*args: object, **kwargs: object) -> None:
        raise redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379.")

    monkeypatch.setattr(services.turns.cache, "get", refused)


@pytest.mark.django_db(transaction=True)
def test_a_cache_that_cannot_say_keeps_a_marked_turn_for_the_next_sweep(user, monkeypatch):
    """Taken for "not marked", a moment's outage would have the turn answered for good:
    the sweep re-queues it and bumps it out of every later sweep's reach."""
    session = services.chat_session_create(owner=user)
    turn_id = unconfirmed_accept(session, "Zorblax 23")
    age(turn_id, 500)
    with monkeypatch.context() as patched:
        cache_unreachable(patched)
        assert tasks.turns_sweep(older_than_seconds=60) == {
            "requeued": 0,
            "failed": 0,
            "discarded": 0,
        }
    assert Turn.objects.get(pk=turn_id).status == Turn.Status.PENDING
    assert tasks.turns_sweep(older_than_seconds=60) == {"requeued": 0, "failed": 0, "discarded": 1}
    leaves_nothing(session, "Zorblax 23")


@pytest.mark.django_db(transaction=True)
def test_a_cache_that_cannot_say_keeps_a_marked_turn_from_being_failed(user, monkeypatch):
    session = services.chat_session_create(owner=user)
    turn_id = unconfirmed_accept(session, "Zorblax 24")
    age(turn_id, 500)
    with monkeypatch.context() as patched:
        cache_unreachable(patched)
        with pytest.raises(redis.exceptions.ConnectionError):  # the request's 503
            services.message_accept(user=user, session_id=session.pk, content="Zorblax 25")
    assert Turn.objects.get(pk=turn_id).status == Turn.Status.PENDING
    turn = services.message_accept(user=user, session_id=session.pk, content="Zorblax 25")
    assert list(Turn.objects.filter(session=session).values_list("pk", flat=True)) == [turn.pk]


@pytest.mark.django_db(transaction=True)
def test_an_unmarked_stale_turn_is_still_requeued_by_the_sweep(user, queued):
    """The mark, not the turn's age or its missing task, decides: a lost task's turn is
    answered as before."""
    session = services.chat_session_create(owner=user)
    turn_id = unconfirmed_accept(session, "Zorblax 19")
    cache.delete(f"turn:{turn_id}:unconfirmed")
    age(turn_id, 500)
    assert tasks.turns_sweep(older_than_seconds=60) == {"requeued": 1, "failed": 0, "discarded": 0}


@pytest.mark.django_db(transaction=True)
def test_the_settling_task_waits_for_a_commit_still_under_way(user, settings, monkeypatch, queued):
    """The task runs while the lost connection's COMMIT is still under way: it waits for
    the session's row, then sees the turn and removes it."""
    monkeypatch.setattr(services.accept, "COMMIT_CHECK_LOCK_MS", 300)
    session = services.chat_session_create(owner=user)
    with unconfirmed(session, "Zorblax 20", commits_after=1.5) as args:
        tasks.discard_unconfirmed_turn.apply(args=args).get()
    leaves_nothing(session, "Zorblax 20")


@pytest.mark.django_db(transaction=True)
def test_the_settling_task_tries_again_past_its_lock_wait(user, settings, monkeypatch, queued):
    """A COMMIT under way longer than the task waits: the task is tried again later, not
    left holding a worker."""
    monkeypatch.setattr(services.accept, "COMMIT_CHECK_LOCK_MS", 200)
    monkeypatch.setattr(services.turns, "DISCARD_LOCK_MS", 200)
    session = services.chat_session_create(owner=user)
    with unconfirmed(session, "Zorblax 21", commits_after=2.0) as args:
        settle_in_a_worker(args, retries=0)
    [message] = [json.loads(raw) for raw in queued.lrange("celery", 0, -1)]
    assert message["headers"]["retries"] == 1
    queued.delete("celery")
    tasks.discard_unconfirmed_turn.apply(args=args).get()
    leaves_nothing(session, "Zorblax 21")
