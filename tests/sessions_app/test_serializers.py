"""``turn_data``: one shared serializer answers every turn, as a new one per turn would."""

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from sessions_app import selectors, services
from sessions_app.serializers import TurnSerializer, turn_data

from ..fakes.claude import FakeClaude
from ..support import post_and_wait

pytestmark = pytest.mark.django_db


def test_the_shared_serializer_answers_as_a_new_one_for_every_kind_of_turn(
    user, api, fake_claude: FakeClaude
):
    sid, answered = post_and_wait(api, "Hello")
    pending = services.message_accept(user=user, session_id=sid, content="still waiting")
    services.turn_fail(turn_id=pending.pk, code="timeout", detail="Too slow.")
    failed = selectors.turn_get_for_owner(user=user, turn_id=pending.pk)
    pending = services.message_accept(user=user, session_id=sid, content="and now?")
    turns = [
        selectors.turn_get_for_owner(user=user, turn_id=answered["id"]),
        failed,
        selectors.turn_get_for_owner(user=user, turn_id=pending.pk),
    ]
    shown = [turn_data(turn) for turn in turns]
    assert shown == [TurnSerializer(turn).data for turn in turns]
    assert [(t["status"], t["reply"] is None, t["error"]) for t in shown] == [
        ("completed", False, None),
        ("failed", True, {"code": "timeout", "detail": "Too slow."}),
        ("pending", True, None),
    ]
    assert json.loads(json.dumps(shown[0], default=str)) == answered  # what the wait said


def test_threads_sharing_it_each_get_their_own_turn(user, api, fake_claude: FakeClaude):
    turns = [
        selectors.turn_get_for_owner(user=user, turn_id=post_and_wait(api, f"m{n}")[1]["id"])
        for n in range(4)
    ]
    with ThreadPoolExecutor(4) as pool:
        shown = list(pool.map(turn_data, turns * 50))
    assert [t["user_message"]["content"] for t in shown] == [f"m{n}" for n in range(4)] * 50
