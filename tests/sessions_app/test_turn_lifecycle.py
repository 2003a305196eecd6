"""Claiming and ending a turn: what a run may rely on, and what a concurrent run or DELETE
cannot break. Every test runs on both ways the services take: Postgres's one statement
each, and the ORM's steps that other databases (SQLite) take."""

import threading
from collections.abc import Iterator

import pytest
from django.core.cache import cache
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from audit_app.models import AuditEntry
from sessions_app import services
from sessions_app.isolation import IsolationViolation
from sessions_app.models import ChatSession, Message, Turn
from sessions_app.stores import history_store
from sessions_app.tasks import run_turn

from ..fakes.claude import FakeClaude
from ..support import lock_waiter, turn_task_args

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("vendor")]


@pytest.fixture
def turn(user) -> Turn:
    session = services.chat_session_create(owner=user)
    return services.message_accept(user=user, session_id=session.pk, content="hello")


def _reload(turn: Turn) -> tuple[Turn, ChatSession]:
    turn = Turn.objects.select_related("session").get(pk=turn.pk)
    return turn, turn.session


# Claim -------------------------------------------------------------------------------------


def test_a_claim_counts_the_attempt_and_hands_over_the_turn_with_its_session(turn, user):
    claimed = services.turn_claim(turn_id=str(turn.pk))
    assert (claimed.pk, claimed.status, claimed.attempts) == (turn.pk, "running", 1)
    assert claimed.started_at is not None and claimed.deadline_at == turn.deadline_at
    session = claimed.session
    assert (session.pk, session.owner_id, session.next_seq) == (turn.session_id, user.pk, 2)
    assert services.turn_claim(turn_id=turn.pk).attempts == 2  # a redelivery counts too
    assert _reload(turn)[0].attempts == 2


def test_the_claim_is_one_statement_on_postgres(turn, vendor):
    with CaptureQueriesContext(connection) as queries:
        services.turn_claim(turn_id=turn.pk)
    # Elsewhere: the UPDATE, the read of the turn with its session, the leak hold's count.
    assert len(queries) == (1 if vendor == "postgresql" else 3)


def test_a_finished_or_unknown_turn_is_not_claimed(turn):
    assert services.turn_complete(turn_id=turn.pk, reply="done")
    assert services.turn_claim(turn_id=turn.pk) is None
    assert _reload(turn)[0].attempts == 0
    assert services.turn_claim(turn_id="not-a-turn-id") is None
    assert services.turn_claim(turn_id="00000000-0000-0000-0000-000000000000") is None


def test_a_turn_past_its_attempt_budget_fails_instead_of_running(turn, settings):
    Turn.objects.filter(pk=turn.pk).update(attempts=settings.TURN_MAX_ATTEMPTS)
    assert services.turn_claim(turn_id=turn.pk) is None
    turn, _ = _reload(turn)
    assert (turn.status, turn.error_code) == ("failed", "retries_exhausted")
    assert turn.attempts == settings.TURN_MAX_ATTEMPTS + 1


def test_the_last_attempt_within_the_budget_runs(turn, settings):
    Turn.objects.filter(pk=turn.pk).update(attempts=settings.TURN_MAX_ATTEMPTS - 1)
    assert services.turn_claim(turn_id=turn.pk).attempts == settings.TURN_MAX_ATTEMPTS


# End ---------------------------------------------------------------------------------------


def test_the_reply_takes_the_next_seq_and_ends_the_turn_with_its_audit_entry(turn, user):
    assert services.turn_complete(turn_id=turn.pk, reply="hi there")
    turn, session = _reload(turn)
    assert (turn.status, turn.withheld, turn.error_code) == ("completed", None, "")
    assert turn.finished_at is not None and session.next_seq == 3
    reply = Message.objects.get(turn=turn, role="assistant")
    assert (reply.seq, reply.content, reply.status) == (2, "hi there", "ok")
    entry = AuditEntry.objects.get(turn_id=turn.pk, kind="reply")
    assert (entry.user_id, entry.session_id, entry.role) == (user.pk, session.pk, "assistant")


def test_an_ended_turn_takes_no_seq_and_no_second_reply(turn):
    assert services.turn_fail(turn_id=turn.pk, code="x", detail="y")
    assert not services.turn_complete(turn_id=turn.pk, reply="late")
    turn, session = _reload(turn)
    assert turn.status == "failed" and session.next_seq == 2
    assert not Message.objects.filter(turn=turn, role="assistant").exists()
    assert not AuditEntry.objects.filter(turn_id=turn.pk, kind="reply").exists()


def test_a_reply_the_database_refuses_leaves_the_turn_and_seq_as_they_were(turn):
    assert services.turn_complete(turn_id=turn.pk, reply="first")
    Turn.objects.filter(pk=turn.pk).update(status="running")  # a run that read it running
    assert not services.turn_complete(turn_id=turn.pk, reply="second")
    turn, session = _reload(turn)
    assert turn.status == "running" and session.next_seq == 3
    replies = Message.objects.filter(turn=turn, role="assistant")
    assert list(replies.values_list("content", flat=True)) == ["first"]


# Concurrent runs and DELETE ----------------------------------------------------------------


@pytest.fixture
def committed_turn(transactional_db, user) -> Iterator[Turn]:
    session = services.chat_session_create(owner=user)
    yield services.message_accept(user=user, session_id=session.pk, content="hello")


@pytest.mark.django_db(transaction=True)
def test_a_second_run_waits_for_the_first_and_stores_no_second_reply(committed_turn, vendor):
    turn = committed_turn
    with transaction.atomic():  # the first run, its locks held until this commits
        assert services.turn_complete(turn_id=turn.pk, reply="from the first run")
        second, results = lock_waiter(
            lambda: services.turn_complete(turn_id=turn.pk, reply="from the second run")
        )
    second.join(30)
    assert results == [None]
    turn, session = _reload(turn)
    assert turn.status == "completed" and session.next_seq == 3  # no seq taken, no gap
    messages = Message.objects.filter(session=session).order_by("seq")
    assert list(messages.values_list("seq", "content")) == [
        (1, "hello"),
        (2, "from the first run"),
    ]
    assert AuditEntry.objects.filter(turn_id=turn.pk, kind="reply").count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_run_ending_its_turn_waits_for_a_delete_and_then_stores_nothing(
    committed_turn, user, vendor
):
    turn = committed_turn
    with transaction.atomic():  # the DELETE, its session lock held until this commits
        services.chat_session_delete(user=user, session_id=turn.session_id)
        run, results = lock_waiter(
            lambda: services.turn_complete(turn_id=turn.pk, reply="too late")
        )
    run.join(30)
    assert results == [None]
    assert not Message.objects.filter(session_id=turn.session_id).exists()
    assert not AuditEntry.objects.filter(turn_id=turn.pk, kind="reply").exists()


# The check before the first call to Claude -------------------------------------------------


@pytest.mark.parametrize("store", ["db", "redis", "cached_db"])
@pytest.mark.parametrize("vendor", ["postgresql"], indirect=True)  # the task's check either way
@pytest.mark.django_db(transaction=True)
def test_a_session_deleted_right_after_the_claim_sends_nothing_to_claude(
    store: str, settings, user, fake_claude: FakeClaude, vendor
):
    """The DELETE lands between the claim and the history read: nothing reaches Claude,
    even when a racing reader refilled the history cache with what it read before."""
    settings.HISTORY_STORE = store
    session = services.chat_session_create(owner=user)
    turn = services.message_accept(user=user, session_id=session.pk, content="CANARY-gone")
    session.refresh_from_db()
    history_store().history(session=session, turn_id=turn.pk)  # cached_db caches it
    stale = cache.get(f"session:{{{session.pk}}}:messages")
    queued = turn_task_args(turn.pk)

    def delete_after_the_claim(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if sql.lstrip().startswith("UPDATE") and '"started_at"' in sql:  # the claim
            deleting = threading.Thread(target=_delete, args=(user, session.pk))
            deleting.start()
            deleting.join(30)
            if stale is not None:
                cache.set(f"session:{{{session.pk}}}:messages", stale)
        return result

    with connection.execute_wrapper(delete_after_the_claim):
        outcome = run_turn.apply(args=queued).result
    assert outcome == "abandoned"
    assert fake_claude.request_count() == 0
    assert not Turn.objects.filter(pk=turn.pk).exists()


def _delete(user, session_id) -> None:
    try:
        services.chat_session_delete(user=user, session_id=session_id)
    finally:
        connection.close()


@pytest.mark.parametrize("vendor", ["postgresql"], indirect=True)  # the ORM's steps take more
@pytest.mark.django_db(transaction=True)
def test_a_turn_takes_five_statements_and_one_transaction_on_postgres(
    user, fake_claude: FakeClaude, vendor
):
    """Claim, history, end the turn, store the reply, audit it: the worker's whole turn.
    The history read, right before the call, stands in for a check that the session is
    still there; retries ask again (``test_deleting_a_session_stops_its_turn_retrying``)."""
    session = services.chat_session_create(owner=user)
    turn = services.message_accept(user=user, session_id=session.pk, content="hello")
    queued = turn_task_args(turn.pk)
    with CaptureQueriesContext(connection) as queries:
        assert run_turn.apply(args=queued).result == "completed"
    statements = [q["sql"].split()[0] for q in queries]
    assert statements == ["UPDATE", "SELECT", "BEGIN", "WITH", "INSERT", "INSERT", "COMMIT"]
    assert fake_claude.request_count() == 1


@pytest.mark.parametrize("vendor", ["postgresql"], indirect=True)
@pytest.mark.django_db(transaction=True)
def test_a_turn_whose_message_the_store_lost_fails_without_calling_claude(
    settings, user, fake_claude: FakeClaude, vendor
):
    """The ``redis`` store, outside the database, can lose what a committed turn holds (its
    undo after a COMMIT whose outcome was unknown, an eviction): Claude is never sent a
    conversation without the message it is to answer, and the user is told to send again."""
    settings.HISTORY_STORE = "redis"
    session = services.chat_session_create(owner=user)
    services.message_accept(user=user, session_id=session.pk, content="first")
    first = Turn.objects.get(session=session)
    run_turn.apply(args=turn_task_args(first.pk))
    turn = services.message_accept(user=user, session_id=session.pk, content="lost one")
    session.refresh_from_db()
    history_store().discard_turn(session=session, turn_id=turn.pk)
    calls = fake_claude.request_count()

    outcome = run_turn.apply(args=turn_task_args(turn.pk)).result

    assert outcome == "failed"
    assert fake_claude.request_count() == calls
    turn.refresh_from_db()
    assert (turn.status, turn.error_code) == ("failed", "message_lost")
    assert "send it again" in turn.error_detail


@pytest.mark.parametrize("vendor", ["postgresql"], indirect=True)
@pytest.mark.django_db(transaction=True)
def test_a_call_the_isolation_guard_refuses_fails_its_turn_as_such(
    turn, fake_claude: FakeClaude, vendor, monkeypatch
):
    def refused(*args: object, **kwargs: object) -> str:
        raise IsolationViolation("a message of another session in the call")

    monkeypatch.setattr("sessions_app.tasks.llm.send", refused)
    assert run_turn.apply(args=turn_task_args(turn.pk)).result == "failed"
    turn.refresh_from_db()
    assert (turn.status, turn.error_code) == ("failed", "isolation_violation")
    assert fake_claude.request_count() == 0
