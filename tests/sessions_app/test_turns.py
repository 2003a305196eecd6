"""Turn reliability against the fake Claude, through the real anthropic SDK.

Transient failures are retried (by the SDK, then by the task's attempt budget), permanent
ones fail at once, every turn ends, a redelivered or concurrent run never stores a second
reply, and the payload Claude receives holds this session only. Tasks run eagerly.
"""

import json
import re
import threading
import time
import uuid

import pytest
from celery.exceptions import Reject
from django.db import connection

from sessions_app import llm, services, tasks
from sessions_app.models import Message, Turn
from sessions_app.tasks import run_turn

from ..fakes.claude import FakeClaude, canaries_in
from ..support import broker_at, free_port, turn_task_args, wait_until

pytestmark = pytest.mark.django_db

CODE = re.compile(r"^[a-z][a-z0-9_]*$")


def canary() -> str:
    return f"CANARY-{uuid.uuid4().hex}"


def new_session(api) -> str:
    response = api.post("/api/v1/sessions/", {}, format="json")
    assert response.status_code == 201, response.content
    return response.json()["id"]


def send(api, sid: str, content: str) -> dict:
    """Post a message and return the ended turn (eager tasks end it before the answer)."""
    response = api.post(
        f"/api/v1/sessions/{sid}/messages/?wait=10", {"content": content}, format="json"
    )
    assert response.status_code == 200, response.content
    turn = response.json()
    assert api.get(f"/api/v1/turns/{turn['id']}/").json() == turn
    return turn


def history(api, sid: str) -> list[tuple[str, str]]:
    page = api.get(f"/api/v1/sessions/{sid}/messages/").json()
    return [(m["role"], m["content"]) for m in page["results"]]


def rerun(turn_id: object) -> str:
    """Run the task again in this thread, as a redelivery would, and return its outcome."""
    # Not ``.get()``: Celery's "never block in a task" flag is process-wide, and eager
    # ``delay()`` calls racing in other threads can leave it set.
    result = run_turn.apply(args=turn_task_args(turn_id))
    assert result.successful(), result.traceback
    return result.result


def attempts(turn: dict) -> int:
    return Turn.objects.get(pk=turn["id"]).attempts


def assert_failed(turn: dict, code: str) -> None:
    assert turn["status"] == "failed", turn
    assert turn["reply"] is None and turn["finished_at"] is not None
    error = turn["error"]
    assert set(error) == {"code", "detail"}
    assert error["code"] == code and CODE.match(error["code"])
    # A sentence a person can act on, not an exception dump.
    assert error["detail"][:1].isupper() and error["detail"].endswith(".")
    assert len(error["detail"].split()) >= 4 and "Traceback" not in error["detail"]


# 1. Transient failures, then success ------------------------------------------------------


@pytest.mark.parametrize("status", [529, 429, 500])
def test_three_transient_failures_then_success_complete_the_turn(
    api, fake_claude: FakeClaude, status
):
    fake_claude.fail(status, times=3)
    sid = new_session(api)
    text = canary()
    turn = send(api, sid, text)
    assert turn["status"] == "completed" and turn["error"] is None
    assert turn["reply"]["content"] == f"Echo: {text}"
    # The SDK's own retries absorbed all three: one task attempt, four HTTP requests.
    assert fake_claude.request_count() == 4
    assert attempts(turn) == 1
    assert history(api, sid) == [("user", text), ("assistant", f"Echo: {text}")]


def test_failures_past_one_sdk_call_are_absorbed_by_the_task_attempts(
    api, fake_claude: FakeClaude, settings
):
    settings.CLAUDE_MAX_RETRIES = 3
    settings.TURN_MAX_ATTEMPTS = 3
    fake_claude.fail(529, times=5)
    sid = new_session(api)
    turn = send(api, sid, "hello")
    assert turn["status"] == "completed"
    assert turn["reply"]["content"] == "Echo: hello"
    # Attempt 1: four 529s; attempt 2: one 529, then the answer.
    assert fake_claude.request_count() == 6
    assert attempts(turn) == 2
    assert history(api, sid) == [("user", "hello"), ("assistant", "Echo: hello")]


@pytest.mark.parametrize(("failures", "status"), [(2, "completed"), (3, "failed")])
def test_the_attempt_budget_is_exact_without_sdk_retries(
    api, fake_claude: FakeClaude, settings, failures, status
):
    settings.CLAUDE_MAX_RETRIES = 0
    settings.TURN_MAX_ATTEMPTS = 3
    fake_claude.fail(503, times=failures)
    turn = send(api, new_session(api), "hello")
    assert turn["status"] == status
    assert fake_claude.request_count() == 3
    assert attempts(turn) == 3


# 2. Persistent failure, then a new message once Claude is back ----------------------------


def test_persistent_500_fails_the_turn_keeps_the_message_and_allows_a_retry(
    api, fake_claude: FakeClaude, settings
):
    fake_claude.fail(500, times=1000)
    sid = new_session(api)
    first = canary()
    failed = send(api, sid, first)
    assert_failed(failed, "claude_http_500")
    assert failed["user_message"]["content"] == first
    # Three task attempts of one call plus three SDK retries each.
    assert fake_claude.request_count() == settings.TURN_MAX_ATTEMPTS * 4
    assert attempts(failed) == settings.TURN_MAX_ATTEMPTS
    assert all(r["messages"] == [{"role": "user", "content": first}] for r in fake_claude.requests)
    assert history(api, sid) == [("user", first)]

    fake_claude.reset()
    second = canary()
    response = api.post(
        f"/api/v1/sessions/{sid}/messages/?wait=10", {"content": second}, format="json"
    )
    assert response.status_code == 200, response.content
    retried = response.json()
    assert retried["status"] == "completed" and retried["error"] is None
    merged = f"{first}\n\n{second}"
    assert retried["reply"]["content"] == f"Echo: {merged}"
    assert history(api, sid) == [
        ("user", first),
        ("user", second),
        ("assistant", f"Echo: {merged}"),
    ]
    # The retry carries the earlier message too, merged so that roles alternate.
    assert fake_claude.request_count() == 1
    assert fake_claude.requests[0]["messages"] == [{"role": "user", "content": merged}]
    # The failed turn stays failed.
    assert api.get(f"/api/v1/turns/{failed['id']}/").json()["status"] == "failed"


# 3. Permanent errors fail at once ---------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 403])
def test_a_non_transient_error_fails_at_once_without_retrying(api, fake_claude: FakeClaude, status):
    fake_claude.fail(status, times=10)
    sid = new_session(api)
    turn = send(api, sid, "hello")
    assert_failed(turn, f"claude_http_{status}")
    assert fake_claude.request_count() == 1
    assert attempts(turn) == 1
    assert history(api, sid) == [("user", "hello")]


# 4. Malformed bodies and dropped connections ----------------------------------------------


# Not JSON; JSON of another shape (the SDK builds its message from it without validating it,
# so only reading the reply finds out); a text block without its text.
UNREADABLE = [b'{"id": "msg_trunc', b"{}", b'{"type": "message", "content": [{"type": "text"}]}']


@pytest.mark.parametrize("body", UNREADABLE, ids=["cut-short", "empty-object", "textless-block"])
def test_a_malformed_body_is_retried_by_the_task(api, fake_claude: FakeClaude, body):
    fake_claude.malformed(body=body)
    turn = send(api, new_session(api), "hello")
    assert turn["status"] == "completed"
    assert turn["reply"]["content"] == "Echo: hello"
    # The SDK does not retry an unreadable body; the task's second attempt does.
    assert fake_claude.request_count() == 2
    assert attempts(turn) == 2


@pytest.mark.parametrize("body", UNREADABLE, ids=["cut-short", "empty-object", "textless-block"])
def test_persistent_malformed_bodies_end_failed(api, fake_claude: FakeClaude, settings, body):
    fake_claude.malformed(times=100, body=body)
    sid = new_session(api)
    turn = send(api, sid, "hello")
    assert_failed(turn, "claude_bad_response")
    assert fake_claude.request_count() == settings.TURN_MAX_ATTEMPTS
    assert history(api, sid) == [("user", "hello")]


def test_dropped_connections_are_retried(api, fake_claude: FakeClaude, settings):
    settings.CLAUDE_MAX_RETRIES = 1
    fake_claude.drop(times=2)
    turn = send(api, new_session(api), "hello")
    assert turn["status"] == "completed"
    assert turn["reply"]["content"] == "Echo: hello"
    # Attempt 1: dropped, retried by the SDK, dropped again; attempt 2 is answered.
    assert fake_claude.request_count() == 3
    assert attempts(turn) == 2


def test_persistent_dropped_connections_end_failed(api, fake_claude: FakeClaude, settings):
    settings.CLAUDE_MAX_RETRIES = 0
    fake_claude.drop(times=100)
    sid = new_session(api)
    turn = send(api, sid, "hello")
    assert_failed(turn, "claude_unreachable")
    assert fake_claude.request_count() == settings.TURN_MAX_ATTEMPTS
    assert history(api, sid) == [("user", "hello")]


# 5. Timeouts --------------------------------------------------------------------------------


@pytest.fixture
def short_timeout(settings, fake_claude: FakeClaude) -> FakeClaude:
    settings.CLAUDE_TIMEOUT_SECONDS = 0.5
    settings.CLAUDE_MAX_RETRIES = 0
    return fake_claude


def test_a_hung_call_times_out_and_the_next_attempt_answers(api, short_timeout: FakeClaude):
    short_timeout.hang()
    turn = send(api, new_session(api), "hello")
    assert turn["status"] == "completed"
    assert turn["reply"]["content"] == "Echo: hello"
    assert short_timeout.request_count() == 2


def test_persistent_hangs_end_failed(api, short_timeout: FakeClaude, settings):
    short_timeout.hang(times=100)
    sid = new_session(api)
    turn = send(api, sid, "hello")
    assert_failed(turn, "claude_unreachable")
    assert short_timeout.request_count() == settings.TURN_MAX_ATTEMPTS
    assert history(api, sid) == [("user", "hello")]


# 6. Redelivery --------------------------------------------------------------------------------


def test_redelivering_a_completed_turn_does_not_call_claude_again(api, fake_claude: FakeClaude):
    sid = new_session(api)
    turn = send(api, sid, "hello")
    assert turn["status"] == "completed" and fake_claude.request_count() == 1

    assert rerun(turn["id"]) == "skipped"
    assert run_turn(*turn_task_args(turn["id"])) == "skipped"
    assert run_turn.delay(*turn_task_args(turn["id"])).result == "skipped"

    assert fake_claude.request_count() == 1
    assert api.get(f"/api/v1/turns/{turn['id']}/").json() == turn
    assert history(api, sid) == [("user", "hello"), ("assistant", "Echo: hello")]
    assert attempts(turn) == 1


def test_redelivering_a_failed_turn_leaves_it_failed(api, fake_claude: FakeClaude):
    fake_claude.fail(400)
    sid = new_session(api)
    turn = send(api, sid, "hello")
    assert turn["status"] == "failed"

    assert rerun(turn["id"]) == "skipped"
    assert fake_claude.request_count() == 1
    assert api.get(f"/api/v1/turns/{turn['id']}/").json() == turn
    assert history(api, sid) == [("user", "hello")]


def test_a_turn_of_a_deleted_session_is_skipped(api, user, fake_claude: FakeClaude):
    sid = new_session(api)
    turn = services.message_accept(user=user, session_id=sid, content="hello")  # not queued
    queued = turn_task_args(turn.pk)
    assert api.delete(f"/api/v1/sessions/{sid}/").status_code == 204
    assert run_turn.apply(args=queued).result == "skipped"
    assert fake_claude.request_count() == 0
    assert not Message.objects.filter(turn_id=turn.pk).exists()


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_runs_of_one_turn_store_one_reply(user, fake_claude: FakeClaude):
    sid = services.chat_session_create(owner=user).pk
    turn = services.message_accept(user=user, session_id=sid, content="hello")  # not queued
    fake_claude.delay(1, times=2)  # both runs are inside the Claude call at once
    start = threading.Barrier(2)
    results: list[object] = []

    def redeliver() -> None:
        try:
            start.wait()
            results.append(rerun(turn.pk))
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            results.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=redeliver) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    assert len(results) == 2 and all(isinstance(r, str) for r in results), results
    # Both runs really reached Claude: neither was skipped by the status check.
    assert fake_claude.request_count() == 2

    turn.refresh_from_db()
    assert turn.status == Turn.Status.COMPLETED
    replies = Message.objects.filter(turn=turn, role=Message.Role.ASSISTANT)
    assert list(replies.values_list("content", flat=True)) == ["Echo: hello"]
    assert list(Message.objects.filter(session_id=sid).values_list("seq", flat=True)) == [1, 2]

    # A late third run: refused by the status check.
    assert services.turn_complete(turn_id=turn.pk, reply="late") is None
    # Even one that read the turn as still running: refused by the database.
    Turn.objects.filter(pk=turn.pk).update(status=Turn.Status.RUNNING)
    assert services.turn_complete(turn_id=turn.pk, reply="late") is None
    assert list(replies.values_list("content", flat=True)) == ["Echo: hello"]
    assert Message.objects.filter(session_id=sid).count() == 2


def test_an_overtaken_runs_error_leaves_the_turn_to_the_newer_run(user, monkeypatch):
    """Any failure of a run that a redelivered run overtook is not the turn's end."""
    sid = services.chat_session_create(owner=user).pk
    turn = services.message_accept(user=user, session_id=sid, content="hello")  # not queued

    def overtaken(history, **kwargs):
        # Meanwhile the task is redelivered, and the second run claims the turn ...
        assert services.turn_claim(turn_id=turn.pk).attempts == 2
        raise RuntimeError("... and this first run meets an error of its own")

    monkeypatch.setattr(llm, "send", overtaken)
    result = run_turn.apply(args=turn_task_args(turn.pk))
    assert isinstance(result.result, RuntimeError)
    turn.refresh_from_db()
    assert (turn.status, turn.attempts) == (Turn.Status.RUNNING, 2)
    assert services.turn_complete(turn_id=turn.pk, reply="the newer run's") == "completed"


def test_a_retry_the_broker_cannot_take_leaves_the_turn_to_the_sweep(
    user, fake_claude: FakeClaude, settings
):
    """A transient error of Claude while the broker blinks is no reason to fail the turn."""
    settings.CLAUDE_MAX_RETRIES = 0  # the 529 goes to the task's own retry
    fake_claude.fail(529)
    sid = services.chat_session_create(owner=user).pk
    turn = services.message_accept(user=user, session_id=sid, content="hello")  # not queued
    args = turn_task_args(turn.pk)
    with broker_at(settings, f"redis://127.0.0.1:{free_port()}/0"):  # nothing listens
        # As a worker runs it: its retry is published, not run in this call.
        request = {"args": args, "kwargs": {}, "retries": 0, "delivery_info": {}}
        run_turn.push_request(
            id=str(uuid.uuid4()), is_eager=False, called_directly=False, **request
        )
        try:
            with pytest.raises(Reject):
                run_turn.run(*args)
        finally:
            run_turn.pop_request()
    turn.refresh_from_db()
    assert (turn.status, turn.error_code) == (Turn.Status.PENDING, "")

    assert tasks.turns_sweep(older_than_seconds=0) == {"requeued": 1, "failed": 0, "discarded": 0}
    turn.refresh_from_db()
    assert turn.status == Turn.Status.COMPLETED
    assert fake_claude.request_count() == 2


# 7. The payload Claude receives -------------------------------------------------------------


def test_the_payload_holds_this_session_only(api, other_api, fake_claude: FakeClaude, settings):
    mine, my_other, theirs = new_session(api), new_session(api), new_session(other_api)
    words = {name: [canary(), canary()] for name in ("mine", "my_other", "theirs")}
    sessions = {"mine": (api, mine), "my_other": (api, my_other), "theirs": (other_api, theirs)}
    expected: list[str] = []  # the session each request was sent for, in order
    for round_ in range(2):
        for name, (client, sid) in sessions.items():
            assert send(client, sid, f"note {words[name][round_]}")["status"] == "completed"
            expected.append(name)

    assert fake_claude.request_count() == len(expected)
    for name, body in zip(expected, fake_claude.requests, strict=True):
        assert body["model"] == settings.CLAUDE_MODEL
        assert body["system"] == settings.CLAUDE_SYSTEM_PROMPT and body["system"].strip()
        assert isinstance(body["max_tokens"], int) and body["max_tokens"] > 0
        assert body["max_tokens"] == settings.CLAUDE_MAX_TOKENS
        assert body.get("stream") in (None, False)
        assert canaries_in(json.dumps(body)) <= set(words[name]), name
    last = fake_claude.requests[-1]  # "theirs", second round
    assert canaries_in(json.dumps(last)) == set(words["theirs"])
    a, b = words["theirs"]
    assert last["messages"] == [
        {"role": "user", "content": f"note {a}"},
        {"role": "assistant", "content": f"Echo: note {a}"},
        {"role": "user", "content": f"note {b}"},
    ]
    assert fake_claude.request_headers[-1]["authorization"] == "Bearer test-key"


def test_an_empty_reply_is_retried_not_stored(api, fake_claude: FakeClaude):
    answers = iter(["", " \n "])
    fake_claude.set_responder(lambda body: next(answers, "a real answer"))
    sid = new_session(api)
    turn = send(api, sid, "hello")
    assert turn["status"] == "completed"
    assert turn["reply"]["content"] == "a real answer"
    assert fake_claude.request_count() == 3
    assert history(api, sid) == [("user", "hello"), ("assistant", "a real answer")]


def test_persistent_empty_replies_end_failed_and_the_session_goes_on(
    api, fake_claude: FakeClaude, settings
):
    fake_claude.set_responder(lambda body: "")
    sid = new_session(api)
    turn = send(api, sid, "hello")
    assert_failed(turn, "claude_empty_reply")
    assert fake_claude.request_count() == settings.TURN_MAX_ATTEMPTS
    assert history(api, sid) == [("user", "hello")]
    fake_claude.reset()
    assert send(api, sid, "again")["reply"]["content"] == "Echo: hello\n\nagain"


def test_a_stored_blank_reply_is_left_out_of_the_payload(api, user, fake_claude: FakeClaude):
    # The real API refuses a blank text block, so sending one would fail every later turn.
    sid = new_session(api)
    first = services.message_accept(user=user, session_id=sid, content="first")
    assert services.turn_complete(turn_id=first.pk, reply="  ")
    turn = send(api, sid, "second")
    assert turn["status"] == "completed"
    assert fake_claude.requests[-1]["messages"] == [{"role": "user", "content": "first\n\nsecond"}]


@pytest.mark.parametrize("store", ["db", "redis", "cached_db"])
@pytest.mark.django_db(transaction=True)
def test_deleting_a_session_stops_its_turn_retrying(
    store: str, settings, api, user, fake_claude: FakeClaude
):
    """From the 204 on, no request carrying the session's content starts towards Claude."""
    settings.HISTORY_STORE = store
    sid = new_session(api)
    turn = services.message_accept(user=user, session_id=sid, content="CANARY-deleted")
    fake_claude.fail(500, times=50, retry_after_ms=300)  # retried, again and again
    outcome: list[str] = []
    queued = turn_task_args(turn.pk)

    def redelivered() -> None:
        try:
            outcome.append(run_turn.apply(args=queued).result)
        finally:
            connection.close()

    run = threading.Thread(target=redelivered)
    run.start()
    assert wait_until(lambda: fake_claude.request_count() >= 2, 10)
    assert api.delete(f"/api/v1/sessions/{sid}/").status_code == 204
    calls_at_204 = fake_claude.request_count()
    run.join(30)
    assert not run.is_alive() and outcome == ["abandoned"]
    time.sleep(0.5)  # longer than a retry's wait: a call still to come would have come
    assert fake_claude.request_count() == calls_at_204
    assert not Message.objects.filter(session_id=sid).exists()
    assert not Turn.objects.filter(pk=turn.pk).exists()
