"""A turn's whole life fits in TURN_DEADLINE_SECONDS (API.md: failed within 120 s)."""

import time
from datetime import timedelta

import pytest

from sessions_app import llm, services
from sessions_app.models import Turn
from sessions_app.tasks import run_turn

pytestmark = pytest.mark.django_db


def test_default_deadline_keeps_the_promise(settings):
    assert settings.TURN_DEADLINE_SECONDS <= 110  # 120 s promise, minus queueing slack


def test_call_timeout_shrinks_so_every_sdk_retry_ends_before_the_deadline(settings):
    settings.CLAUDE_TIMEOUT_SECONDS = 25
    settings.CLAUDE_MAX_RETRIES = 3
    assert llm._call_options(None) == {"timeout": 25}
    assert llm._call_options(time.time() + 200) == {"timeout": 25}
    timeout = llm._call_options(time.time() + 40)["timeout"]
    backoff = 0.5 + 1 + 2
    assert 4 * timeout + backoff <= 40
    with pytest.raises(llm.LLMError) as caught:
        llm._call_options(time.time() + 3)
    assert caught.value.code == "deadline_exceeded" and not caught.value.transient


def test_a_turn_past_its_deadline_fails_without_calling_claude(api, user, fake_claude, settings):
    session = services.chat_session_create(owner=user)
    turn = services.message_accept(user=user, session_id=session.pk, content="late")
    Turn.objects.filter(pk=turn.pk).update(
        created_at=turn.created_at - timedelta(seconds=settings.TURN_DEADLINE_SECONDS)
    )
    assert run_turn.apply(args=[str(turn.pk)]).result == "failed"
    turn.refresh_from_db()
    assert turn.status == "failed" and turn.error_code == "deadline_exceeded"
    assert fake_claude.request_count() == 0


def test_hanging_claude_fails_the_turn_by_its_deadline(api, fake_claude, settings):
    settings.TURN_DEADLINE_SECONDS = 6
    settings.CLAUDE_TIMEOUT_SECONDS = 30  # the deadline, not this, must bound the wait
    settings.CLAUDE_MAX_RETRIES = 0
    fake_claude.hang(times=100)
    sid = api.post("/api/v1/sessions/", {}, format="json").json()["id"]
    response = api.post(
        f"/api/v1/sessions/{sid}/messages/?wait=30", {"content": "hi"}, format="json"
    )
    assert response.status_code == 200
    assert response.json()["status"] == "failed"
    # Without the deadline each of the 3 attempts would wait its full 30 s timeout; with
    # it, the first call is cut to the deadline and no further attempt starts.
    assert fake_claude.request_count() == 1
