"""The bench's floor endpoint (bench/urls.py, bench/tasks.py) keeps working.

No suite runs the benches, and the floor reaches into ``sessions_app.llm`` and the
notifications by name: a rename there must fail here, not in the next measurement.
"""

import pytest

from sessions_app import services

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
