"""Accepting a message: the session's lock, counter and expiry taken in one statement, and
what a COMMIT that fails, or seems to, leaves."""

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from unittest import mock

import pytest
from django.db import OperationalError, connection, connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_redis import get_redis_connection
from rest_framework.exceptions import NotFound

from sessions_app import selectors, services
from sessions_app.errors import ForeignAccess
from sessions_app.models import ChatSession, Turn
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
    with commit_answer_lost(session, commits_after=3.0), pytest.raises(OperationalError):
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


@pytest.mark.django_db(transaction=True)
def test_a_commit_nothing_can_confirm_is_undone_from_redis(user, settings):
    """The database is gone after the COMMIT: whether it took cannot be told, and the
    error answer leaves nothing in Redis, as for any failed accept."""
    settings.HISTORY_STORE = "redis"
    session = services.chat_session_create(owner=user)
    with (
        commit_answer_lost(session, reconnect=False),
        pytest.raises(OperationalError),
    ):
        services.message_accept(user=user, session_id=session.pk, content="Zorblax 9")
    assert not redis_holds(session, "Zorblax 9")
