"""Every path that locks a turn and its session takes the session's row first, as ``DELETE``,
an accept and the worker's end of a turn do: two transactions taking the same two rows in
opposite orders can each hold one and wait for the other (a deadlock).

Shown on Postgres with a connection per thread: this test's transaction holds the session's
row, as a ``DELETE`` does; the path under test, in a thread, waits for it; meanwhile the
turn's row is still free, so the holder takes it too (``NOWAIT``: with the turn's row taken
first by the path, that would be the deadlock, made an immediate error).
"""

import pytest
from django.db import connections, transaction

from audit_app.services import ScanResult
from sessions_app import privacy, services
from sessions_app.models import ChatSession, Message, Turn
from sessions_app.stores import history_store

from ..support import lock_waiter

pytestmark = pytest.mark.django_db(transaction=True)

LEAKED = ScanResult(leaked=True, score=1.0)  # the scan's verdict: the reply is withheld


def _pending(user) -> Turn:
    session = services.chat_session_create(owner=user)
    return services.message_accept(user=user, session_id=session.pk, content="hello")


def _withheld(user) -> Turn:
    turn = _pending(user)
    assert services.turn_complete(turn_id=turn.pk, reply="held back", scan=LEAKED)
    return turn


def _discarded(turn: Turn) -> None:
    assert not Turn.objects.filter(pk=turn.pk).exists()
    assert not Message.objects.filter(session_id=turn.session_id).exists()


def _released(turn: Turn) -> None:
    turn.refresh_from_db()
    assert turn.status == "completed" and turn.withheld is None
    reply = Message.objects.get(turn=turn, role="assistant")
    assert (reply.content, reply.status) == ("held back", "ok")


def _ended(turn: Turn) -> None:
    turn.refresh_from_db()
    assert turn.status == "completed"
    assert Message.objects.get(turn=turn, role="assistant").content == "the reply"


ORM_END = "end-through-the-orm"
# name: (the turn it needs, the path, what it returns, what it leaves)
PATHS = {
    "discard": (_pending, lambda turn: services.turn_discard(turn_id=turn.pk), True, _discarded),
    "release": (
        _withheld,
        lambda turn: services.turn_release_withheld(turn_id=turn.pk),
        True,
        _released,
    ),
    ORM_END: (
        _pending,
        lambda turn: services.turn_complete(turn_id=turn.pk, reply="the reply"),
        "completed",
        _ended,
    ),
}


@pytest.mark.parametrize("path", PATHS)
def test_a_path_locking_a_turn_waits_for_its_session_before_it_takes_the_turn(
    path, user, monkeypatch
):
    if path == ORM_END:  # as databases without UPDATE ... RETURNING (SQLite) end a turn
        monkeypatch.setattr(type(connections["default"]), "vendor", "other")  # every thread
    make, call, returned, leaves = PATHS[path]
    turn = make(user)
    run = None
    try:
        with transaction.atomic():  # a DELETE's or a turn end's order: the session's row...
            ChatSession.objects.select_for_update().get(pk=turn.session_id)
            run, results = lock_waiter(lambda: call(turn), on_this_connection=True)
            # ...then the turn's, which the path has not taken while it waits.
            Turn.objects.select_for_update(nowait=True).get(pk=turn.pk)
    finally:
        if run is not None:
            run.join(30)
    assert not run.is_alive()
    assert results == [returned]
    leaves(turn)


def test_a_path_finding_its_session_deleted_meanwhile_does_nothing(user):
    """What the session's lock protects: a release that waited for a DELETE finds nothing."""
    turn = _withheld(user)
    with transaction.atomic():
        services.chat_session_delete(user=user, session_id=turn.session_id)
        run, results = lock_waiter(
            lambda: services.turn_release_withheld(turn_id=turn.pk), on_this_connection=True
        )
    run.join(30)
    assert not run.is_alive()
    assert results == [False]
    assert not Message.objects.filter(session_id=turn.session_id).exists()


def _accept_behind(user, session: ChatSession, meanwhile) -> object:
    """Accept Alice's address and, holding its transaction, start accepting Bob's, which
    waits for the session's lock; run ``meanwhile(first_turn)`` in that transaction, then
    commit. Return what the waiting accept returned or raised."""
    run = None
    try:
        with transaction.atomic():
            first = services.message_accept(
                user=user, session_id=session.pk, content="alice.one@example.org"
            )
            run, results = lock_waiter(
                lambda: services.message_accept(
                    user=user, session_id=session.pk, content="bob.two@example.org"
                ),
                on_this_connection=True,
            )
            meanwhile(first)
    finally:
        if run is not None:
            run.join(30)
    [second] = results
    return second


@pytest.mark.usefixtures("vendor")  # Postgres's written-out statement and the ORM's raw one
@pytest.mark.parametrize("before", [[], ["carol.zero@example.org"]])
def test_an_accept_that_waited_for_another_extends_the_vault_that_one_left(before, user, settings):
    """An accept that waited for the session's lock read the vault as it was before the
    holder's commit. If the holder's turn ended meanwhile by a path that takes no session
    lock (a failure), the waiting accept is not refused with 409 and must build on the
    vault as it is now: no placeholder given twice, no entry lost, and no 409 for a vault
    it thought missing."""
    settings.PII_MODE = "pseudonymize"
    session = services.chat_session_create(owner=user)
    for address in before:  # an earlier turn, ended, left the vault with an entry
        turn = services.message_accept(user=user, session_id=session.pk, content=address)
        Turn.objects.filter(pk=turn.pk).update(status=Turn.Status.FAILED)
    second = _accept_behind(
        user,
        session,
        lambda first: Turn.objects.filter(pk=first.pk).update(status=Turn.Status.FAILED),
    )
    assert isinstance(second, Turn), second
    addresses = [*before, "alice.one@example.org", "bob.two@example.org"]
    placeholders = [f"<EMAIL_ADDRESS_{n}>" for n in range(1, len(addresses) + 1)]
    expected = dict(zip(placeholders, addresses, strict=True))
    assert privacy.vault_read(session_id=session.pk) == expected
    session.refresh_from_db()
    stored = [m.content for m in history_store().page(session=session, offset=0, limit=9)]
    assert stored == placeholders


@pytest.mark.usefixtures("vendor")
def test_an_accept_that_waited_behind_an_accept_taken_back_keeps_the_vault(user, settings):
    """The counter goes back when a turn is discarded, so an accept that waited behind an
    accept and its undoing cannot tell it waited; the vault that one created meanwhile is
    found when this one creates it, and its placeholders are numbered from it."""
    settings.PII_MODE = "pseudonymize"
    session = services.chat_session_create(owner=user)
    second = _accept_behind(user, session, lambda first: services.turn_discard(turn_id=first.pk))
    assert isinstance(second, Turn), repr(second)
    vault = privacy.vault_read(session_id=session.pk)
    assert vault["<EMAIL_ADDRESS_2>"] == "bob.two@example.org"
    session.refresh_from_db()
    stored = [m.content for m in history_store().page(session=session, offset=0, limit=9)]
    assert stored == ["<EMAIL_ADDRESS_2>"]


def test_an_account_being_deleted_holds_its_row_before_erasing_anything(user):
    """A sign-in meanwhile (a new token, its foreign key checked at COMMIT) waits for the
    delete and fails then, rather than failing the delete's COMMIT after the account's
    history outside the database was erased."""
    from django.db import IntegrityError
    from knox.models import AuthToken

    services.chat_session_create(owner=user)
    with transaction.atomic():
        services.account_sessions_erase(owner_id=user.pk)
        run, results = lock_waiter(lambda: AuthToken.objects.create(user), on_this_connection=True)
        type(user).objects.filter(pk=user.pk).delete()
    run.join(30)
    assert not run.is_alive()
    assert len(results) == 1 and isinstance(results[0], IntegrityError), results
    assert not type(user).objects.filter(pk=user.pk).exists()
