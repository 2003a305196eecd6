"""The bench's floor, sql and merged endpoints (bench/urls.py, bench/tasks.py,
bench/statements.py) keep working, and the sql and merged endpoints write what a turn writes.

No suite runs the benches, and both reach into ``sessions_app`` (the SDK call, the
notifications, the statements a turn runs) by name: a rename there must fail here, not in
the next measurement.
"""

import pytest

from audit_app.models import AuditEntry
from sessions_app import selectors, services
from sessions_app.models import ChatSession, Turn

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.urls("bench.urls")]


def _floor(session_id: object) -> str:
    return f"/bench/floor/{session_id}/"


def test_the_floor_calls_claude_once_and_answers_when_woken(api, user, fake_claude):
    session = services.chat_session_create(owner=user)
    response = api.post(_floor(session.pk), {"content": "Hello."}, format="json")
    assert (response.status_code, response.json()) == (200, {"status": "completed"})
    assert fake_claude.request_count() == 1


def test_a_failed_call_frees_the_waiter_at_once_and_says_so(api, user, fake_claude):
    fake_claude.fail(500, times=1)
    session = services.chat_session_create(owner=user)
    response = api.post(_floor(session.pk), {"content": "Hello."}, format="json")
    assert (response.status_code, response.json()) == (502, {"status": "failed"})


def test_the_floor_checks_ownership_as_a_turn_does(other_api, user, fake_claude):
    session = services.chat_session_create(owner=user)
    response = other_api.post(_floor(session.pk), {"content": "Hello."}, format="json")
    assert response.status_code == 404
    assert fake_claude.request_count() == 0


def _sql(session_id: object, phase: str = "sql") -> str:
    return f"/bench/{phase}/{session_id}/"


# The sql phase, and the merged one: the same writes, each transaction's in one statement.
PHASES = pytest.mark.parametrize("phase", ["sql", "merged"])


@PHASES
def test_the_sql_endpoint_leaves_the_rows_a_turn_leaves(api, user, fake_claude, phase):
    session = services.chat_session_create(owner=user)
    for n in (1, 2):
        response = api.post(_sql(session.pk, phase), {"content": f"Hello {n}."}, format="json")
        assert (response.status_code, response.json()) == (200, {"status": "completed"})
    assert fake_claude.request_count() == 2
    # The service's own owner-gated read finds each turn whole, as it would a real one.
    turns = Turn.objects.filter(session=session).order_by("created_at")
    assert [turn.status for turn in turns] == ["completed", "completed"]
    exchanges = [selectors.turn_get_for_owner(user=user, turn_id=t.pk).exchange for t in turns]
    assert [[(m.seq, m.role) for m in exchange] for exchange in exchanges] == [
        [(1, "user"), (2, "assistant")],
        [(3, "user"), (4, "assistant")],
    ]
    assert exchanges[1][0].content == "Hello 2."
    assert ChatSession.objects.get(pk=session.pk).next_seq == 5
    audited = AuditEntry.objects.filter(session_id=session.pk).order_by("id")
    assert [(e.kind, e.role, e.user_id) for e in audited] == [
        ("message", "user", user.pk),
        ("reply", "assistant", user.pk),
    ] * 2


@PHASES
def test_the_sql_endpoint_checks_ownership_and_writes_nothing(other_api, user, fake_claude, phase):
    session = services.chat_session_create(owner=user)
    response = other_api.post(_sql(session.pk, phase), {"content": "Hello."}, format="json")
    assert response.status_code == 404
    assert fake_claude.request_count() == 0
    assert not Turn.objects.filter(session=session).exists()
    assert ChatSession.objects.get(pk=session.pk).next_seq == 1


@PHASES
def test_the_sql_endpoint_frees_the_waiter_at_once_when_the_call_fails(
    api, user, fake_claude, phase
):
    fake_claude.fail(500, times=1)
    session = services.chat_session_create(owner=user)
    response = api.post(_sql(session.pk, phase), {"content": "Hello."}, format="json")
    assert (response.status_code, response.json()) == (502, {"status": "failed"})
    # The failed turn ended: the session's next post is a turn of its own.
    response = api.post(_sql(session.pk, phase), {"content": "Again."}, format="json")
    assert (response.status_code, response.json()) == (200, {"status": "completed"})


@PHASES
def test_the_sql_endpoint_answers_409_while_a_turn_is_in_flight(api, user, fake_claude, phase):
    session = services.chat_session_create(owner=user)
    services.message_accept(user=user, session_id=session.pk, content="Still running.")
    response = api.post(_sql(session.pk, phase), {"content": "Hello."}, format="json")
    assert response.status_code == 409
    assert fake_claude.request_count() == 0
