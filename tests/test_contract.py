"""The suite's schema check (``contract``) refuses what the document does not say.

Every API call of the suite passes through it (``conftest``); each case here is a broken
sample it must catch, beside a sound one it must let through.
"""

import json

import pytest
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from openapi_core.exceptions import OpenAPIError

from . import contract

SESSION = {
    "id": "6f1c1c8e-4b0e-4c55-9a3f-1d2b7c9e0a11",
    "title": "",
    "created_at": "2026-01-01T00:00:00Z",
    "expires_at": "2026-01-01T02:00:00Z",
    "message_count": 0,
}
TURN = {
    "id": "0b5c3c62-5d0d-4a0b-8f51-7e1e8d7f2f10",
    "session": SESSION["id"],
    "status": "pending",
    "user_message": {
        "id": 1,
        "seq": 1,
        "role": "user",
        "content": "hi",
        "created_at": "2026-01-01T00:00:00Z",
        "status": "ok",
    },
    "reply": None,
    "error": None,
    "created_at": "2026-01-01T00:00:00Z",
    "finished_at": None,
}


def environ(method: str, path: str, *, query: str = "", body: bytes = b"") -> dict:
    sent = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "HTTP_AUTHORIZATION": "Token 0123abcd",
    }
    if body:
        sent["CONTENT_TYPE"] = "application/json"
    return sent


def exchange(method: str, path: str, response, *, body: object = None, query: str = "") -> None:
    raw = json.dumps(body).encode() if body is not None else b""
    contract.exchange(environ(method, path, query=query, body=raw), raw, response)


def test_a_sound_exchange_passes():
    exchange("POST", "/api/v1/sessions/", JsonResponse(SESSION, status=201), body={})
    exchange("GET", f"/api/v1/turns/{TURN['id']}/", JsonResponse(TURN))
    exchange("GET", "/api/v1/nowhere/", JsonResponse({"detail": "No.", "code": "x"}, status=404))


@pytest.mark.parametrize(
    "turn",
    [
        {**TURN, "extra": 1},  # a property the document does not declare
        {**TURN, "reply": {"id": 2}},  # an incomplete message
        {**TURN, "status": "lost"},  # outside the enum
        {k: v for k, v in TURN.items() if k != "error"},  # a required property missing
    ],
)
def test_a_response_off_the_schema_is_refused(turn):
    with pytest.raises(OpenAPIError):
        exchange("GET", f"/api/v1/turns/{TURN['id']}/", JsonResponse(turn))


def test_a_status_the_operation_does_not_declare_is_refused():
    body = {"detail": "Teapot.", "code": "teapot"}
    with pytest.raises(OpenAPIError):
        exchange("GET", f"/api/v1/turns/{TURN['id']}/", JsonResponse(body, status=418))


def test_an_accepted_request_off_the_schema_is_refused():
    with pytest.raises(OpenAPIError):  # title: a number
        exchange("POST", "/api/v1/sessions/", JsonResponse(SESSION, status=201), body={"title": 5})
    with pytest.raises(OpenAPIError):  # wait: past 60
        exchange(
            "POST",
            f"/api/v1/sessions/{SESSION['id']}/messages/",
            JsonResponse(TURN, status=202),
            body={"content": "hi"},
            query="wait=61",
        )


def test_a_refused_request_needs_only_a_sound_error_answer():
    error = {"detail": "title: Must be a string.", "code": "not_a_string"}
    exchange("POST", "/api/v1/sessions/", JsonResponse(error, status=400), body={"title": 5})


def test_an_unknown_address_must_be_the_json_404():
    with pytest.raises(AssertionError):
        exchange("GET", "/api/v1/nowhere/", HttpResponse("<h1>Not Found</h1>", status=404))


def test_a_stream_must_have_a_declared_type():
    path = f"/api/v1/turns/{TURN['id']}/events/"
    exchange("GET", path, StreamingHttpResponse(iter(()), content_type="text/event-stream"))
    with pytest.raises(AssertionError):
        exchange("GET", path, StreamingHttpResponse(iter(()), content_type="text/plain"))


def test_each_event_of_a_stream_must_be_a_turn():
    event = f"event: turn\ndata: {json.dumps(TURN)}\n\n: keep-alive\n\n"
    assert contract.check_turn_events(event) == [TURN]
    with pytest.raises(OpenAPIError):
        contract.check_turn_events(f"event: turn\ndata: {json.dumps({**TURN, 'x': 1})}\n\n")
