"""The REST contract of API.md on the embedded task runner (eager) and the offline responder."""

import pytest
from rest_framework.test import APIClient

from sessions_app.models import Message, Turn
from sessions_app.stores import SeqTaken

from ..conftest import client_for, random_id
from ..factories import UserFactory

pytestmark = pytest.mark.django_db


def new_session(api, title: str = "") -> str:
    response = api.post("/api/v1/sessions/", {"title": title}, format="json")
    assert response.status_code == 201, response.content
    return response.json()["id"]


def test_token_endpoint_returns_a_working_token(db):
    user = UserFactory()
    response = client_for(user).post(
        "/api/v1/auth/token/",
        {"username": user.username, "password": "pw-for-tests"},
        format="json",
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"token", "expires_at"}
    client = APIClient(HTTP_AUTHORIZATION=f"Token {body['token']}")
    assert client.get("/api/v1/sessions/").status_code == 200


def test_token_endpoint_refuses_a_wrong_password(user):
    response = APIClient().post(
        "/api/v1/auth/token/", {"username": user.username, "password": "nope"}, format="json"
    )
    assert response.status_code == 400
    assert set(response.json()) >= {"detail", "code"}


def test_session_create_list_detail_delete(api):
    sid = new_session(api, "groceries")
    listing = api.get("/api/v1/sessions/").json()
    assert listing["count"] == 1 and listing["next"] is None and listing["previous"] is None
    session = listing["results"][0]
    assert set(session) == {"id", "title", "created_at", "expires_at", "message_count"}
    assert session["id"] == sid and session["title"] == "groceries"
    assert api.get(f"/api/v1/sessions/{sid}/").json() == session
    assert api.delete(f"/api/v1/sessions/{sid}/").status_code == 204
    assert api.get(f"/api/v1/sessions/{sid}/").status_code == 404
    assert api.get("/api/v1/sessions/").json()["count"] == 0


def test_a_turn_completes_with_the_offline_responder(api):
    sid = new_session(api)
    response = api.post(
        f"/api/v1/sessions/{sid}/messages/?wait=5", {"content": "hi"}, format="json"
    )
    assert response.status_code == 200
    turn = response.json()
    assert set(turn) == {
        "id",
        "session",
        "status",
        "user_message",
        "reply",
        "error",
        "created_at",
        "finished_at",
    }
    assert turn["status"] == "completed" and turn["error"] is None
    assert turn["user_message"]["content"] == "hi" and turn["user_message"]["seq"] == 1
    assert turn["reply"]["role"] == "assistant" and turn["reply"]["seq"] == 2
    assert set(turn["reply"]) == {"id", "seq", "role", "content", "created_at", "status"}
    assert api.get(f"/api/v1/turns/{turn['id']}/").json() == turn
    messages = api.get(f"/api/v1/sessions/{sid}/messages/").json()
    assert [m["seq"] for m in messages["results"]] == [1, 2]
    assert api.get(f"/api/v1/sessions/{sid}/").json()["message_count"] == 2


def test_without_wait_the_answer_is_202(api):
    sid = new_session(api)
    response = api.post(f"/api/v1/sessions/{sid}/messages/", {"content": "hi"}, format="json")
    assert response.status_code == 202
    assert response.json()["user_message"]["content"] == "hi"
    # As accepted (API.md: 202 turn, pending), though eager tasks have answered it by now.
    assert (response.json()["status"], response.json()["reply"]) == ("pending", None)
    assert api.get(f"/api/v1/turns/{response.json()['id']}/").json()["status"] == "completed"


def test_offline_responder_remembers_only_this_sessions_name(api, other_api):
    mine = new_session(api)
    theirs = new_session(other_api)
    api.post(
        f"/api/v1/sessions/{mine}/messages/?wait=5", {"content": "My name is Alice"}, format="json"
    )
    reply = other_api.post(
        f"/api/v1/sessions/{theirs}/messages/?wait=5",
        {"content": "What is my name?"},
        format="json",
    ).json()
    assert "Alice" not in reply["reply"]["content"]
    again = api.post(
        f"/api/v1/sessions/{mine}/messages/?wait=5", {"content": "What is my name?"}, format="json"
    ).json()
    assert again["reply"]["content"] == "Your name is Alice."


def test_messages_are_paginated_by_100_in_seq_order(api, user):
    sid = new_session(api)
    for i in range(55):
        assert (
            api.post(
                f"/api/v1/sessions/{sid}/messages/?wait=5", {"content": f"m{i}"}, format="json"
            ).status_code
            == 200
        )
    first = api.get(f"/api/v1/sessions/{sid}/messages/").json()
    assert first["count"] == 110 and len(first["results"]) == 100 and first["next"]
    second = api.get(f"/api/v1/sessions/{sid}/messages/?page=2").json()
    seqs = [m["seq"] for m in first["results"] + second["results"]]
    assert seqs == list(range(1, 111))


def test_a_second_message_while_a_turn_is_in_flight_is_409(api, user):
    sid = new_session(api)
    from sessions_app import services

    services.message_accept(user=user, session_id=sid, content="first")  # not enqueued
    response = api.post(f"/api/v1/sessions/{sid}/messages/", {"content": "second"}, format="json")
    assert response.status_code == 409
    assert response.json()["code"] == "turn_in_flight"
    assert list(Message.objects.filter(session_id=sid).values_list("content", flat=True)) == [
        "first"
    ]


def test_a_message_that_breaks_another_constraint_is_a_fault_not_a_409(api, user, vendor):
    """Only "one turn in flight per session" means 409: any other violation (here the
    session's counter set back behind its rows, so the message's seq is taken) is the
    server's, and a client told 409 would retry for ever. It leaves nothing behind."""
    from sessions_app import services
    from sessions_app.models import ChatSession

    sid = new_session(api)
    first = services.message_accept(user=user, session_id=sid, content="first")
    assert services.turn_complete(turn_id=first.pk, reply="reply")
    ChatSession.objects.filter(pk=sid).update(next_seq=2)  # the reply's seq
    with pytest.raises(SeqTaken):  # a 500, not a 409
        api.post(f"/api/v1/sessions/{sid}/messages/", {"content": "second"}, format="json")
    assert list(Turn.objects.filter(session_id=sid).values_list("pk", flat=True)) == [first.pk]
    assert list(Message.objects.filter(session_id=sid).values_list("content", flat=True)) == [
        "first",
        "reply",
    ]
    assert ChatSession.objects.get(pk=sid).next_seq == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"content": ""}, "content"),
        ({"content": "   \n\t "}, "content"),
        ({"content": 42}, "content"),
        ({"content": None}, "content"),
        ({"content": ["a"]}, "content"),
        ({"content": True}, "content"),
        ({"content": "a\x00b"}, "content"),
        ({"content": "x" * 16001}, "content"),
        ({}, "content"),
    ],
)
def test_bad_content_is_400_and_nothing_is_stored(api, body, field):
    sid = new_session(api)
    api.post(f"/api/v1/sessions/{sid}/messages/?wait=5", {"content": "kept"}, format="json")
    response = api.post(f"/api/v1/sessions/{sid}/messages/", body, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["code"] and response.json()["detail"]
    contents = [
        m["content"] for m in api.get(f"/api/v1/sessions/{sid}/messages/").json()["results"]
    ]
    assert contents[0] == "kept" and len(contents) == 2
    assert Turn.objects.filter(session_id=sid).count() == 1


def test_exactly_max_chars_is_accepted(api):
    sid = new_session(api)
    response = api.post(
        f"/api/v1/sessions/{sid}/messages/", {"content": "x" * 16000}, format="json"
    )
    assert response.status_code == 202


@pytest.mark.parametrize("wait", ["-1", "61", "abc", "1.5", "", "100000000000000000000"])
def test_bad_wait_is_400(api, wait):
    sid = new_session(api)
    response = api.post(
        f"/api/v1/sessions/{sid}/messages/?wait={wait}", {"content": "hi"}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid"
    assert api.get(f"/api/v1/sessions/{sid}/messages/").json()["count"] == 0


def test_malformed_json_is_400(api):
    sid = new_session(api)
    response = api.generic(
        "POST", f"/api/v1/sessions/{sid}/messages/", "{not json", content_type="application/json"
    )
    assert response.status_code == 400
    assert response.json()["code"] == "parse_error"


@pytest.mark.parametrize(
    "path", ["/api/v1/auth/token/", "/api/v1/sessions/", "/api/v1/stateless/chat/", "messages"]
)
def test_json_nested_past_the_recursion_limit_is_400(api, path):
    """200 KB, well under the body limit: ``json`` raises RecursionError on it, which
    DRF's own parser let through as a 500, before any authentication on the sign-in."""
    if path == "messages":
        path = f"/api/v1/sessions/{new_session(api)}/messages/"
    deep = b"[" * 100_000 + b"]" * 100_000
    response = api.generic("POST", path, deep, content_type="application/json")
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "parse_error"


def test_body_over_the_limit_is_413(api, settings):
    sid = new_session(api)
    body = '{"content": "' + "x" * settings.MAX_REQUEST_BYTES + '"}'
    response = api.generic(
        "POST", f"/api/v1/sessions/{sid}/messages/", body, content_type="application/json"
    )
    assert response.status_code == 413
    assert response.json()["code"] == "request_too_large"
    assert api.get(f"/api/v1/sessions/{sid}/messages/").json()["count"] == 0


def test_throttled_posts_get_429_with_retry_after(api, settings):
    settings.CHAT_THROTTLE_RATE = "2/min"
    sid = new_session(api)
    codes = [
        api.post(
            f"/api/v1/sessions/{sid}/messages/?wait=5", {"content": "hi"}, format="json"
        ).status_code
        for _ in range(3)
    ]
    assert codes == [200, 200, 429]
    # Throttling comes before any other check, even a missing session.
    response = api.post(
        f"/api/v1/sessions/{random_id()}/messages/", {"content": "hi"}, format="json"
    )
    assert response.status_code == 429 and int(response["Retry-After"]) > 0
    assert response.json()["code"] == "throttled"


def test_expired_session_is_404(api, user, settings):
    sid = new_session(api)
    from django.utils import timezone

    from sessions_app.models import ChatSession

    ChatSession.objects.filter(pk=sid).update(expires_at=timezone.now())
    assert api.get(f"/api/v1/sessions/{sid}/").status_code == 404
    assert api.get("/api/v1/sessions/").json()["count"] == 0


def test_unknown_api_path_is_json_404(api):
    response = api.get("/api/v1/nothing-here/")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def test_a_bad_host_header_is_a_json_400(api):
    response = api.get("/api/v1/sessions/", HTTP_HOST="evil.example.com")
    assert response.status_code == 400
    assert response.json()["code"] == "bad_request"


@pytest.mark.parametrize("debug", [False, True])
@pytest.mark.parametrize(
    ("path", "meant"),
    [
        ("/api/v1/nothing-here/", None),
        ("/api/v1/sessions/x/y/z/", None),
        ("/api/v1", None),
        ("/api/v1/sessions", "/api/v1/sessions/"),  # the address meant is named
    ],
)
def test_an_unknown_api_address_is_the_json_404_debug_or_not(api, settings, debug, path, meant):
    settings.DEBUG = debug  # with DEBUG on Django would answer its HTML page
    response = api.get(path)
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["code"] == "not_found"
    assert response.json()["detail"].endswith(meant or "Nothing is at this address.")


def test_a_client_holding_a_revoked_token_can_still_log_in(user):
    client = client_for(user)
    assert client.delete("/api/v1/auth/token/").status_code == 204
    response = client.post(
        "/api/v1/auth/token/",
        {"username": user.username, "password": "pw-for-tests"},
        format="json",
    )
    assert response.status_code == 200
    client.credentials(HTTP_AUTHORIZATION=f"Token {response.json()['token']}")
    assert client.get("/api/v1/sessions/").status_code == 200


def test_the_event_stream_ends_when_its_session_is_deleted(
    api, user, django_capture_on_commit_callbacks, monkeypatch
):
    import time

    from sessions_app import services
    from sessions_app.apis import turns

    # Bounds the test if the stream is not woken: it would then end only at this limit.
    monkeypatch.setattr(turns, "STREAM_MAX_SECONDS", 10)

    session = services.chat_session_create(owner=user)
    turn = services.message_accept(user=user, session_id=session.pk, content="hi")  # pending
    response = api.get(f"/api/v1/turns/{turn.pk}/events/")
    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
    stream = iter(response.streaming_content)
    assert b'"status": "pending"' in next(stream)
    with django_capture_on_commit_callbacks(execute=True):  # the test's transaction
        assert api.delete(f"/api/v1/sessions/{session.pk}/").status_code == 204
    started = time.monotonic()
    assert list(stream) == []  # nothing more is said
    assert time.monotonic() - started < 5  # woken by the deletion, not ended by the limit
