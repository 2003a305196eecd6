"""A run overtaken by a redelivery of its task cannot fail the turn under the newer run."""

import time

import pytest

from sessions_app import services
from sessions_app.models import Message

pytestmark = pytest.mark.django_db


@pytest.fixture
def twice_claimed(user):
    session = services.chat_session_create(owner=user)
    turn = services.message_accept(user=user, session_id=session.pk, content="hi")
    first = services.turn_claim(turn_id=turn.pk)
    second = services.turn_claim(turn_id=turn.pk)  # the redelivered task, first still alive
    assert (first.attempts, second.attempts) == (1, 2)
    return turn


def test_the_overtaken_run_cannot_fail_or_requeue_the_turn(twice_claimed):
    turn = twice_claimed
    assert not services.turn_fail(turn_id=turn.pk, attempt=1, code="x", detail="y")
    services.turn_requeue(turn_id=turn.pk, attempt=1)
    turn.refresh_from_db()
    assert turn.status == "running" and turn.error_code == ""


def test_either_run_may_deliver_the_one_reply(twice_claimed):
    turn = twice_claimed
    assert services.turn_complete(turn_id=turn.pk, reply="from the first run")
    assert not services.turn_complete(turn_id=turn.pk, reply="from the second run")
    assert not services.turn_fail(turn_id=turn.pk, attempt=2, code="x", detail="y")
    turn.refresh_from_db()
    assert turn.status == "completed"
    replies = Message.objects.filter(turn=turn, role="assistant")
    assert list(replies.values_list("content", flat=True)) == ["from the first run"]


def test_the_newest_run_decides_a_failure(twice_claimed):
    turn = twice_claimed
    assert services.turn_fail(turn_id=turn.pk, attempt=2, code="claude_http_500", detail="d")
    turn.refresh_from_db()
    assert turn.status == "failed"


def test_an_overtaken_run_that_fails_transiently_does_not_schedule_a_retry(twice_claimed):
    from sessions_app import llm
    from sessions_app.tasks import _retry_or_fail, run_turn

    first = twice_claimed
    first.attempts = 1  # the first run's view of the turn, before the redelivery claimed it
    outcome = _retry_or_fail(
        run_turn,
        turn=first,
        exc=llm.LLMError(code="claude_http_529", detail="d", transient=True),
        deadline=time.time() + 60,
    )
    assert outcome == "skipped"
    first.refresh_from_db()
    assert first.status == "running" and first.attempts == 2
