"""The database itself guards the invariants, whatever the Python code does."""

import threading

import pytest
from django.db import IntegrityError, connection, transaction

from sessions_app import services
from sessions_app.errors import TurnInFlight
from sessions_app.models import Message, Turn

from ..factories import UserFactory


@pytest.mark.django_db
def test_a_second_turn_in_flight_is_refused_by_the_database(user):
    session = services.chat_session_create(owner=user)
    Turn.objects.create(session=session)
    with pytest.raises(IntegrityError), transaction.atomic():
        Turn.objects.create(session=session, status=Turn.Status.RUNNING)
    Turn.objects.create(session=session, status=Turn.Status.COMPLETED)  # ended ones are free


@pytest.mark.django_db
def test_seq_is_unique_per_session_and_a_turn_has_one_reply(user):
    session = services.chat_session_create(owner=user)
    turn = services.message_accept(user=user, session_id=session.pk, content="hi")
    with pytest.raises(IntegrityError), transaction.atomic():
        Message.objects.create(session=session, turn=turn, seq=1, role="assistant", content="x")
    Message.objects.create(session=session, turn=turn, seq=2, role="assistant", content="x")
    with pytest.raises(IntegrityError), transaction.atomic():
        Message.objects.create(session=session, turn=turn, seq=3, role="assistant", content="y")


@pytest.mark.django_db(transaction=True)
def test_racing_posts_to_one_session_start_one_turn():
    user = UserFactory()
    session = services.chat_session_create(owner=user)
    barrier = threading.Barrier(6)
    outcomes: list[str] = []

    def post(i: int) -> None:
        try:
            barrier.wait(5)
            services.message_accept(user=user, session_id=session.pk, content=f"m{i}")
            outcomes.append("accepted")
        except TurnInFlight:
            outcomes.append("409")
        finally:
            connection.close()

    threads = [threading.Thread(target=post, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes) == ["409"] * 5 + ["accepted"]
    assert Turn.objects.filter(session=session).count() == 1
    assert Message.objects.filter(session=session).count() == 1
