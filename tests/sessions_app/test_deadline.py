"""A turn's whole life fits in TURN_DEADLINE_SECONDS (API.md: failed within 120 s)."""

import email.utils
import time
from datetime import timedelta

import pytest

from sessions_app import llm, services
from sessions_app.models import Turn
from sessions_app.tasks import run_turn

from ..support import turn_task_args

pytestmark = pytest.mark.django_db


def test_default_deadline_keeps_the_promise(settings):
    assert settings.TURN_DEADLINE_SECONDS <= 110  # 120 s promise, minus queueing slack


def test_call_timeout_shrinks_so_every_call_ends_before_the_deadline(settings):
    settings.CLAUDE_TIMEOUT_SECONDS = 25
    assert llm.retries._call_timeout(None) == 25
    assert llm.retries._call_timeout(time.time() + 200) == 25
    # Each call, retries included, is cut to the time left, so none outlives the deadline.
    assert 9 < llm.retries._call_timeout(time.time() + 10) <= 10
    with pytest.raises(llm.LLMError) as caught:
        llm.retries._call_timeout(time.time() + llm.MIN_CALL_SECONDS / 2)
    assert caught.value.code == "deadline_exceeded" and not caught.value.transient


def test_a_turn_past_its_deadline_fails_without_calling_claude(api, user, fake_claude, settings):
    session = services.chat_session_create(owner=user)
    turn = services.message_accept(user=user, session_id=session.pk, content="late")
    past = turn.created_at - timedelta(seconds=settings.TURN_DEADLINE_SECONDS)
    Turn.objects.filter(pk=turn.pk).update(created_at=past, deadline_at=turn.created_at)
    assert run_turn.apply(args=turn_task_args(turn.pk)).result == "failed"
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


@pytest.mark.parametrize("headers", [False, True], ids=["drip-body", "drip-headers"])
def test_a_dripping_claude_fails_the_turn_by_its_deadline(api, fake_claude, settings, headers):
    settings.TURN_DEADLINE_SECONDS = 3
    settings.CLAUDE_TIMEOUT_SECONDS = 30  # the deadline, not this, must bound the call
    # Each answer would come whole after 6 s, each byte well within any read timeout.
    fake_claude.drip(times=100, every=0.1, count=60, headers=headers)
    turn, took = post_and_time(api)
    assert turn["status"] == "failed" and turn["error"]["code"] == "claude_unreachable"
    assert took < settings.TURN_DEADLINE_SECONDS + 1
    assert fake_claude.request_count() == 1


# Retries within one attempt: the llm package's own, bounded by the deadline ----------------


def post_and_time(api) -> tuple[dict, float]:
    """Post a message, wait for its turn (tasks are eager) and return it with the time taken."""
    sid = api.post("/api/v1/sessions/", {}, format="json").json()["id"]
    started = time.monotonic()
    response = api.post(
        f"/api/v1/sessions/{sid}/messages/?wait=30", {"content": "hi"}, format="json"
    )
    assert response.status_code == 200, response.content
    return response.json(), time.monotonic() - started


def http_date(seconds_from_now: float) -> str:
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


@pytest.mark.parametrize(
    "wait_header",
    [
        {"retry_after_ms": 60_000},
        {"retry_after_ms": None, "retry_after": 60},
        {"retry_after_ms": None, "retry_after": "60.5"},
        {"retry_after_ms": None, "retry_after": http_date},
    ],
    ids=["retry-after-ms", "retry-after-seconds", "retry-after-float", "retry-after-date"],
)
def test_a_wait_past_the_deadline_is_not_slept(api, fake_claude, settings, wait_header):
    settings.TURN_DEADLINE_SECONDS = 6
    settings.TURN_MAX_ATTEMPTS = 1  # one attempt, so every request counted is a retry's
    if callable(wait_header.get("retry_after")):
        # A date a minute from now, taken when the test runs, not when it was collected.
        wait_header = {**wait_header, "retry_after": wait_header["retry_after"](60)}
    fake_claude.fail(429, times=10, **wait_header)
    turn, took = post_and_time(api)
    assert turn["status"] == "failed" and turn["error"]["code"] == "claude_http_429"
    # The SDK slept the 60 s it was told (past the deadline) and retried; now the last
    # failure is raised at once.
    assert fake_claude.request_count() == 1
    assert took < 2


def test_short_waits_are_retried_within_the_attempt(api, fake_claude):
    fake_claude.fail(429, times=2, retry_after_ms=50)
    turn, _ = post_and_time(api)
    assert turn["status"] == "completed" and turn["reply"]["content"] == "Echo: hi"
    assert fake_claude.request_count() == 3
    assert Turn.objects.get(pk=turn["id"]).attempts == 1
    # The SDK's retry-count header still tells the API which try this is.
    counts = [headers["x-stainless-retry-count"] for headers in fake_claude.request_headers]
    assert counts == ["0", "1", "2"]


@pytest.mark.parametrize(
    "wait_header",
    [{"retry_after_ms": 300}, {"retry_after_ms": None, "retry_after": 0.3}],
    ids=["retry-after-ms", "retry-after"],
)
def test_the_wait_the_server_asks_for_is_honoured(api, fake_claude, wait_header):
    fake_claude.fail(529, times=2, **wait_header)
    turn, took = post_and_time(api)
    assert turn["status"] == "completed"
    first, second, third = fake_claude.request_times
    assert second - first >= 0.29 and third - second >= 0.29
    assert took >= 0.6


def test_without_a_named_wait_the_backoff_grows(api, fake_claude):
    fake_claude.fail(503, times=2, retry_after_ms=None)
    turn, _ = post_and_time(api)
    assert turn["status"] == "completed"
    first, second, third = fake_claude.request_times
    # 0.5 s then 1 s, each up to a quarter shorter (jitter).
    assert 0.37 <= second - first < 0.9
    assert 0.74 <= third - second < 1.5


def test_retries_stop_before_the_deadline(api, fake_claude, settings):
    settings.TURN_DEADLINE_SECONDS = 3
    settings.TURN_MAX_ATTEMPTS = 1
    fake_claude.fail(503, times=10, retry_after_ms=None)  # backoff: 0.5, 1, 2 s
    turn, took = post_and_time(api)
    assert turn["status"] == "failed" and turn["error"]["code"] == "claude_http_503"
    # A call is started only with MIN_CALL_SECONDS left before the deadline the turn got
    # when it was accepted (its arrival at the fake may lag its start on a busy machine).
    deadline = Turn.objects.get(pk=turn["id"]).deadline_at.timestamp()
    to_wall_clock = time.time() - time.monotonic()
    last_start = deadline - llm.MIN_CALL_SECONDS
    assert all(at + to_wall_clock < last_start + 0.5 for at in fake_claude.request_times)
    assert 1 <= fake_claude.request_count() < 4
    assert took < settings.TURN_DEADLINE_SECONDS


def test_a_hung_retry_is_cut_at_the_deadline(api, fake_claude, settings):
    settings.TURN_DEADLINE_SECONDS = 4
    settings.CLAUDE_TIMEOUT_SECONDS = 30
    fake_claude.fail(529, retry_after_ms=50)
    fake_claude.hang(times=100)
    turn, took = post_and_time(api)
    assert turn["status"] == "failed" and turn["error"]["code"] == "claude_unreachable"
    assert fake_claude.request_count() == 2
    assert took < settings.TURN_DEADLINE_SECONDS + 1


def test_should_retry_false_is_obeyed(api, fake_claude, settings):
    settings.TURN_MAX_ATTEMPTS = 1
    fake_claude.fail(529, times=10, should_retry=False)
    turn, _ = post_and_time(api)
    assert turn["status"] == "failed" and turn["error"]["code"] == "claude_http_529"
    assert fake_claude.request_count() == 1
