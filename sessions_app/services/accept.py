"""Accept a user's message: the message stored and its turn opened, or nothing left.

A store outside the database (Redis) does not roll back with the transaction, and a
COMMIT whose answer was lost may have taken: both are settled here."""

import dataclasses
import logging
import uuid
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import DatabaseError, IntegrityError, OperationalError, connection, transaction
from django.utils import timezone

from audit_app.services import (
    audit_message,
    fingerprints_register,
)
from core import sql
from core.errors import once_more_on_fresh_connection
from core.ids import as_uuid

from .. import events, privacy
from ..errors import CommitUnconfirmed, TurnInFlight
from ..models import TURN_ONE_IN_FLIGHT, ChatSession, Turn
from ..selectors import chat_session_take_seq_for_owner
from ..stores import SessionRef, history_store
from .common import STALLED_DETAIL, deadline, expiry, lock_timeout
from .turns import turn_discard, turn_fail, turn_mark_unconfirmed, turn_unconfirmed

logger = logging.getLogger(__name__)


def message_accept(*, user: AbstractBaseUser, session_id: object, content: str) -> Turn:
    """Store the user's message and open a pending turn for it, in one transaction.

    Raise ``TurnInFlight`` if the session already has a turn pending or running; a turn
    in flight past ``STALE_TURN_SECONDS``, or one whose accept was answered 503
    (``turn_unconfirmed``), is ended or removed first, so the session is not stuck.
    Raise ``CommitUnconfirmed`` if the COMMIT's answer was lost and nothing could tell
    whether it took: the caller answers 503 and has the turn settled
    (``tasks.turn_settle_later``).
    """
    try:
        return _message_accept_or_undo(user=user, session_id=session_id, content=content)
    except TurnInFlight:
        if not _turns_in_flight_end(user=user, session_id=session_id):
            raise
    return _message_accept_or_undo(user=user, session_id=session_id, content=content)


def _message_accept_or_undo(*, user: AbstractBaseUser, session_id: object, content: str) -> Turn:
    turn_id = events.new_turn_id()  # under this process's tag: its waits need no SUBSCRIBE
    turn = None
    try:
        with transaction.atomic():
            turn = _message_accept(
                user=user, session_id=session_id, content=content, turn_id=turn_id
            )
        return turn
    except BaseException as exc:
        committed = False if turn is None else _committed_after_all(exc, turn=turn)
        if committed:
            # The message is stored with a committed turn: it is accepted, and answered as
            # such (the caller queues the turn), instead of an error that would make the
            # client send it twice, or an undo that would leave the turn without it.
            logger.warning("the commit of turn %s was not acknowledged but took", turn_id)
            return turn
        # A store outside the database (Redis) does not roll back with the transaction:
        # what it took of this turn goes, so that an error answer leaves nothing behind.
        _message_undo(owner_id=user.pk, session_id=session_id, turn_id=turn_id)
        if committed is None:
            # Perhaps committed: the caller has the turn settled later (removed if it took),
            # and the sweep, or the next accept, removes it too instead of answering it.
            turn_mark_unconfirmed(turn_id=turn_id)
            raise CommitUnconfirmed(turn_id=turn_id, session_id=turn.session_id) from exc
        if isinstance(exc, IntegrityError) and sql.violated_constraint(exc) == TURN_ONE_IN_FLIGHT:
            # The partial unique index: one turn in flight per session. Relying on it
            # instead of looking first saves every accepted message a query. Any other
            # violation (a seq taken twice, a row gone) is a fault of ours and is answered
            # as one: told that a turn is in flight, a client would wait and retry for ever.
            raise TurnInFlight() from exc
        raise


# How long the check waits for a COMMIT still under way on the connection that was lost.
COMMIT_CHECK_LOCK_MS = 5000


def _committed_after_all(exc: BaseException, *, turn: Turn) -> bool | None:
    """Tell whether the accept's COMMIT, which raised ``exc``, committed all the same; None
    if that cannot be told.

    The connection can drop after the server committed and before its answer arrived:
    only the turn's row, read on a fresh connection, tells. A check that cannot answer
    (the database unreachable, or the lost connection's COMMIT still under way past
    ``COMMIT_CHECK_LOCK_MS``) leaves it unknown.
    """
    if not isinstance(exc, DatabaseError) or isinstance(exc, IntegrityError):
        return False  # a constraint checked at COMMIT refused it: nothing committed
    if connection.in_atomic_block:
        return False  # only a savepoint was released: the caller's transaction decides
    try:
        return once_more_on_fresh_connection(
            _turn_committed, turn_id=turn.pk, session_id=turn.session_id
        )
    except Exception:  # noqa: BLE001 - whatever stopped the check, the answer is unknown
        logger.warning("could not tell whether turn %s was committed", turn.pk)
        return None


class _StillCommitting(Exception):
    """The lost connection's transaction still held the session row at the lock timeout."""


def _turn_committed(*, turn_id: uuid.UUID, session_id: uuid.UUID) -> bool:
    if connection.vendor != "postgresql":
        return Turn.objects.filter(pk=turn_id).exists()
    try:
        with transaction.atomic():
            # The lost connection's server process may still be committing (waiting for a
            # synchronous standby, say), its accept holding the session row: until it
            # ends, the turn is not visible yet. This lock waits for that end.
            lock_timeout(COMMIT_CHECK_LOCK_MS)
            sessions = ChatSession.objects.select_for_update(no_key=True).filter(pk=session_id)
            list(sessions.values_list("pk"))
            found = Turn.objects.filter(pk=turn_id).exists()
            # Rolled back: the check keeps nothing, and the COMMIT of a transaction that
            # took a row lock would itself wait for a synchronous standby, unbounded.
            transaction.set_rollback(True)
            return found
    except OperationalError as exc:
        if getattr(exc.__cause__, "sqlstate", None) == "55P03":  # lock_not_available
            # Not an outage to retry on a fresh connection: it was waited for long enough.
            raise _StillCommitting(turn_id) from exc
        raise


def _message_undo(*, owner_id: int, session_id: object, turn_id: uuid.UUID) -> None:
    sid = as_uuid(session_id)
    if sid is None or not history_store().keeps_outside_the_database:
        return
    try:
        history_store().discard_turn(session=SessionRef(pk=sid, owner_id=owner_id), turn_id=turn_id)
    except Exception:  # noqa: BLE001 - the answer is an error already; the TTL ends the rest
        logger.warning("could not undo turn %s in the history store", turn_id)


def _message_accept(
    *, user: AbstractBaseUser, session_id: object, content: str, turn_id: uuid.UUID
) -> Turn:
    # Run in the caller's transaction, which must see its COMMIT fail to tell whether it
    # took. The session row lock serialises accepts per session.
    now = timezone.now()
    session = chat_session_take_seq_for_owner(
        user=user, session_id=session_id, now=now, expires_at=expiry(now)
    )
    turn = sql.insert(Turn(id=turn_id, session=session, deadline_at=deadline(now)))
    stored = privacy.content_scrub(
        session_id=session.pk, content=content, vault_row=session.vault_row
    )
    store = history_store()
    message = store.append_user_message(
        session=session,
        turn_id=turn.pk,
        seq=session.next_seq,
        content=stored,
        # Taken by the statement that locked the session: an accept or a run that stalled
        # past its own lock must not take this message's seq over (the redis store's APPEND).
        fence=session.accept_fence,
    )
    audit_message(
        user_id=user.pk, session_id=session.pk, turn_id=turn.pk, role="user", content=stored
    )
    fingerprints_register(user_id=user.pk, session_id=session.pk, text=stored)
    # What was just written answers the request: no further read that could fail after
    # the message was accepted (and make the client send it twice). Its owner reads the
    # originals, which under pseudonymisation are what was sent; redacted text stays so.
    shown = content if settings.PII_MODE == "pseudonymize" else stored
    turn.exchange = [dataclasses.replace(message, content=shown)]
    return turn


def _turns_in_flight_end(*, user: AbstractBaseUser, session_id: object) -> bool:
    """Remove the session's turns in flight whose accept was answered 503, and end those in
    flight past ``STALE_TURN_SECONDS``; True if there were any.

    The client told 503 sends again at once: its earlier turn must not answer 409 until the
    settling task runs. And without beat (the embedded setup, or a production that lost
    it) a turn whose process died would otherwise answer every later message with 409.
    """
    stale_before = timezone.now() - timedelta(seconds=settings.STALE_TURN_SECONDS)
    in_flight = Turn.objects.filter(
        session_id=as_uuid(session_id), session__owner=user, status__in=Turn.IN_FLIGHT
    ).values_list("pk", "session_id", "updated_at")
    ended = [
        _turn_in_flight_end(turn_id=pk, session_id=sid, stale=updated < stale_before)
        for pk, sid, updated in in_flight
    ]
    return any(ended)


def _turn_in_flight_end(*, turn_id: uuid.UUID, session_id: uuid.UUID, stale: bool) -> bool:
    # Marked: answered 503, so removed, not kept as failed. A cache that cannot say is an
    # outage of this request (503), not a reason to keep the 503'd message as a failure.
    if turn_unconfirmed(turn_id=turn_id):
        return turn_discard(turn_id=turn_id, session_id=session_id)
    return stale and turn_fail(turn_id=turn_id, code="stalled", detail=STALLED_DETAIL)
