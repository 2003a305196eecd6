"""Adversarial isolation: foreign ids everywhere, tampered credentials, the payload guard."""

import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.db.models import Sum
from rest_framework.test import APIClient

from audit_app.models import AuditEntry
from sessions_app import llm
from sessions_app.isolation import HistoryMessage, IsolationViolation, bound

from ..conftest import random_id
from ..factories import UserFactory, token_for

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def victim(other_api):
    """Another user's session with one finished turn."""
    sid = other_api.post("/api/v1/sessions/", {}, format="json").json()["id"]
    turn = other_api.post(
        f"/api/v1/sessions/{sid}/messages/?wait=5",
        {"content": "My name is Victoria, CANARY-victim"},
        format="json",
    ).json()
    return {"session": sid, "turn": turn["id"]}


def endpoints(session_id: str, turn_id: str) -> list[tuple[str, str, dict | None]]:
    return [
        ("get", f"/api/v1/sessions/{session_id}/", None),
        ("delete", f"/api/v1/sessions/{session_id}/", None),
        ("get", f"/api/v1/sessions/{session_id}/messages/", None),
        ("post", f"/api/v1/sessions/{session_id}/messages/", {"content": "What is my name?"}),
        ("post", f"/api/v1/sessions/{session_id}/messages/?wait=1", {"content": "hi"}),
        ("get", f"/api/v1/turns/{turn_id}/", None),
        ("get", f"/api/v1/turns/{turn_id}/events/", None),
    ]


def call(client: APIClient, method: str, path: str, body: dict | None):
    return (
        getattr(client, method)(path, body, format="json")
        if body
        else getattr(client, method)(path)
    )


def test_foreign_ids_are_404_exactly_like_unknown_ids(api, user, victim, other_api):
    foreign = endpoints(victim["session"], victim["turn"])
    unknown = endpoints(random_id(), random_id())
    for (method, path, body), (_, unknown_path, _) in zip(foreign, unknown, strict=True):
        response = call(api, method, path, body)
        baseline = call(api, method, unknown_path, body)
        assert response.status_code == 404, (method, path, response.content)
        assert response.content == baseline.content, (method, path)
        assert response.json()["code"] == "not_found"
        assert "CANARY-victim" not in response.content.decode()
    # The victim's data is untouched and still theirs.
    history = other_api.get(f"/api/v1/sessions/{victim['session']}/messages/").json()
    assert history["count"] == 2
    # Each attempt on an existing foreign id was audited against the attacker: repeats of
    # one kind of attempt are counted on one entry, so a flood cannot bury other events.
    attempts = AuditEntry.objects.filter(kind="security", user=user)
    assert attempts.aggregate(total=Sum("count"))["total"] == len(foreign)
    assert {str(a.session_id) for a in attempts} == {victim["session"]}
    turn_attempts = attempts.filter(reason="access to another user's turn")
    assert [str(a.turn_id) for a in turn_attempts] == [victim["turn"]]


def test_each_foreign_session_probed_is_named_in_the_audit_log(api, user):
    """Probes of two users' sessions in one window: neither victim is merged away."""
    victims = []
    for _ in range(2):
        owner = APIClient()
        owner.credentials(HTTP_AUTHORIZATION=f"Token {token_for(UserFactory())}")
        victims.append(owner.post("/api/v1/sessions/", {}, format="json").json()["id"])
    for sid in victims + victims:
        assert api.get(f"/api/v1/sessions/{sid}/").status_code == 404
    attempts = AuditEntry.objects.filter(kind="security", user=user)
    assert sorted((str(a.session_id), a.count) for a in attempts) == sorted(
        (sid, 2) for sid in victims
    )


def test_non_uuid_ids_are_the_same_404(api):
    baseline = api.get(f"/api/v1/sessions/{random_id()}/").content
    for bad in ["1", "not-a-uuid", "%00", "..", "' OR 1=1 --"]:
        response = api.get(f"/api/v1/sessions/{bad}/")
        assert response.status_code == 404
        assert response.content == baseline


def test_foreign_sessions_never_show_in_listings(api, victim):
    assert api.get("/api/v1/sessions/").json()["count"] == 0


@pytest.mark.parametrize(
    "header", [None, "Token ", "Token not-a-real-token", "Bearer abc", "Token a b"]
)
def test_missing_or_tampered_tokens_are_401(victim, header):
    client = APIClient()
    if header is not None:
        client.credentials(HTTP_AUTHORIZATION=header)
    for method, path, body in endpoints(victim["session"], victim["turn"]) + [
        ("get", "/api/v1/sessions/", None),
        ("post", "/api/v1/sessions/", {"title": "x"}),
    ]:
        response = call(client, method, path, body)
        assert response.status_code == 401, (header, method, path)
        assert response["WWW-Authenticate"].startswith("Token")
        assert set(response.json()) >= {"detail", "code"}


def test_a_token_with_one_character_changed_is_401(user, victim):
    key = token_for(user)
    assert APIClient(HTTP_AUTHORIZATION=f"Token {key}").get("/api/v1/sessions/").status_code == 200
    tampered = key[:-1] + ("0" if key[-1] != "0" else "1")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {tampered}")
    assert client.get("/api/v1/sessions/").status_code == 401


def test_guard_refuses_a_payload_with_another_sessions_message(user, other_user):
    mine = HistoryMessage(
        user_id=user.pk, session_id=__import__("uuid").uuid4(), role="user", content="hi"
    )
    theirs = HistoryMessage(
        user_id=other_user.pk, session_id=mine.session_id, role="user", content="CANARY-x"
    )
    with bound(user_id=user.pk, session_id=mine.session_id):
        assert llm.send([mine]).startswith("(offline")
        with pytest.raises(IsolationViolation):
            llm.send([mine, theirs])
    assert AuditEntry.objects.filter(kind="security", user=user).count() == 1
    assert "CANARY-x" not in AuditEntry.objects.get(kind="security").reason


def test_guard_refuses_when_no_context_is_bound(user):
    import uuid

    with pytest.raises(IsolationViolation):
        llm.send(
            [HistoryMessage(user_id=user.pk, session_id=uuid.uuid4(), role="user", content="hi")]
        )


def test_history_carries_the_ids_of_the_rows_it_read(user, other_user):
    """The guard checks what was really read: each message is stamped from its own row."""
    from sessions_app import services
    from sessions_app.queries import turn_history
    from sessions_app.stores import history_store

    mine = services.chat_session_create(owner=user)
    services.message_accept(user=user, session_id=mine.pk, content="CANARY-mine")
    services.turn_fail(turn_id=mine.turns.get().pk, code="x", detail="y")
    turn = services.message_accept(user=user, session_id=mine.pk, content="again")
    history = turn_history(turn=turn)
    assert [(m.user_id, m.session_id, m.content) for m in history] == [
        (user.pk, mine.pk, "CANARY-mine"),
        (user.pk, mine.pk, "again"),
    ]
    # Another user's scope around this history: the real send path refuses it, and audits.
    with bound(user_id=other_user.pk, session_id=mine.pk), pytest.raises(IsolationViolation):
        llm.send(history)
    assert AuditEntry.objects.filter(kind="security", user=other_user).count() == 1
    # And asking the store for it as someone else yields nothing of it.
    as_other = SimpleNamespace(pk=mine.pk, owner_id=other_user.pk, next_seq=99)
    assert history_store().history(session=as_other, turn_id=turn.pk) == []


def test_web_log_lines_name_the_user_served_and_no_one_after(api, user, victim, caplog):
    """Layer 5: logs carry the ids. A reused thread must not name the previous user."""
    import logging

    from sessions_app.isolation import IsolationLogFilter

    caplog.handler.addFilter(IsolationLogFilter())
    with caplog.at_level(logging.WARNING, logger="audit_app.services"):
        assert api.get(f"/api/v1/sessions/{victim['session']}/").status_code == 404
    [record] = [r for r in caplog.records if r.name == "audit_app.services"]
    assert record.isolation_user == user.pk and record.isolation_session == "-"
    logging.getLogger("audit_app.services").warning("after the request")
    assert caplog.records[-1].isolation_user == "-"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("endpoint", ["stateless", "messages"])
def test_asgi_log_lines_name_the_user_served_and_no_one_after(user, monkeypatch, endpoint):
    """Layer 5 under ASGI, where a POST is served on the event loop: its lines name the user
    it serves, as under the sync dispatch, and a next request served in the same context (a
    test client's handler or a server that awaits its app in place) does not inherit it."""
    import asyncio
    import logging

    from asgiref.sync import sync_to_async
    from django.db import connection, connections
    from django.test import AsyncClient

    from sessions_app import services, stateless
    from sessions_app.isolation import IsolationLogFilter

    monkeypatch.setitem(connection.settings_dict, "CONN_MAX_AGE", 0)  # pool threads close
    owner = UserFactory()
    if endpoint == "stateless":
        url = "/api/v1/stateless/chat/"
        foreign = stateless.token_issue(stateless.Conversation(owner.pk, uuid.uuid4()))
        body = {"token": foreign, "content": "hi"}
    else:
        url = f"/api/v1/sessions/{services.chat_session_create(owner=owner).pk}/messages/"
        body = {"content": "hi"}
    signed_in, lines = {"Authorization": f"Token {token_for(user)}"}, []

    class Naming(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            IsolationLogFilter().filter(record)
            lines.append((record.name, record.isolation_user))

    async def two_posts() -> list[int]:
        client = AsyncClient()
        try:
            posts = [
                client.post(url, body, content_type="application/json", headers=signed_in),
                client.post(url, body, content_type="application/json"),  # anonymous
            ]
            return [(await post).status_code for post in posts]
        finally:
            await sync_to_async(connections.close_all)()

    handler = Naming(level=logging.WARNING)
    loggers = [logging.getLogger(name) for name in ("audit_app.services", "django.request")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        statuses = asyncio.run(two_posts())
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    refused = 403 if endpoint == "stateless" else 404
    assert statuses == [refused, 401]
    assert lines == [
        ("audit_app.services", user.pk),  # the foreign token or session, while it is served
        ("django.request", user.pk),
        ("django.request", "-"),  # the anonymous request after it names no one
    ]


def test_djangos_request_log_line_names_the_user_the_api_authenticated(api, user, caplog):
    """Django logs a 4xx after the view returned: the line still names the token's user."""
    import logging

    from sessions_app.isolation import IsolationLogFilter

    caplog.handler.addFilter(IsolationLogFilter())
    with caplog.at_level(logging.WARNING, logger="django.request"):
        assert api.get(f"/api/v1/sessions/{random_id()}/").status_code == 404
        assert APIClient().get("/api/v1/sessions/").status_code == 401
    found, unauthenticated = [r for r in caplog.records if r.name == "django.request"]
    assert (found.status_code, found.isolation_user) == (404, user.pk)
    assert (unauthenticated.status_code, unauthenticated.isolation_user) == (401, "-")


def test_a_request_log_line_never_reads_a_user_no_one_read(
    client, user, caplog, django_assert_num_queries
):
    """A signed-in browser's 404 outside any view: naming its user would cost queries."""
    import logging

    from django.utils.functional import empty

    from sessions_app.isolation import IsolationLogFilter

    client.force_login(user)
    with caplog.at_level(logging.WARNING, logger="django.request"):
        assert client.get("/no-such-page").status_code == 404
    [record] = [r for r in caplog.records if r.name == "django.request"]
    with django_assert_num_queries(0):
        IsolationLogFilter().filter(record)
    assert record.isolation_user == "-" and record.request.user._wrapped is empty


def test_a_task_pointed_at_another_users_turn_is_refused_by_the_guard(
    user, other_user, fake_claude
):
    """The scope comes from the task (fixed at acceptance), the history from the store: a
    task carrying one user's ids but another user's turn id never reaches Claude."""
    from sessions_app import services
    from sessions_app.tasks import run_turn

    mine = services.chat_session_create(owner=user)
    theirs = services.chat_session_create(owner=other_user)
    their_turn = services.message_accept(
        user=other_user, session_id=theirs.pk, content="CANARY-theirs"
    )
    outcome = run_turn.apply(args=[str(their_turn.pk), user.pk, str(mine.pk)]).result
    assert outcome == "failed"
    assert fake_claude.request_count() == 0
    refused = AuditEntry.objects.filter(kind="security", user=user, session_id=mine.pk)
    assert refused.exists() and "CANARY" not in refused.first().reason
