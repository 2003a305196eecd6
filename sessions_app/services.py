"""Every write of conversation data: sessions, accepted messages, turn lifecycle."""

import logging
import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from audit_app.services import audit_message

from . import events
from .errors import ServiceUnavailable, TurnInFlight, is_outage
from .models import ChatSession, Message, Turn
from .selectors import chat_session_get_for_owner, turn_get, turn_list_stale

logger = logging.getLogger(__name__)


STALLED_DETAIL = "The reply was lost in transit; send the message again."


def _expiry(now: datetime) -> datetime:
    return now + timedelta(seconds=settings.SESSION_TTL_SECONDS)


def _deadline(now: datetime) -> datetime:
    return now + timedelta(seconds=settings.TURN_DEADLINE_SECONDS)


def chat_session_create(*, owner: AbstractBaseUser, title: str = "") -> ChatSession:
    """Create a session owned by ``owner``."""
    now = timezone.now()
    return ChatSession.objects.create(
        owner=owner, title=title, last_activity_at=now, expires_at=_expiry(now)
    )


@transaction.atomic
def chat_session_delete(*, user: AbstractBaseUser, session_id: object) -> None:
    """Erase the caller's session and, by cascade, its messages and turns."""
    session = chat_session_get_for_owner(user=user, session_id=session_id, for_update=True)
    in_flight = list(session.turns.filter(status__in=Turn.IN_FLIGHT).values_list("pk", flat=True))
    session.delete()
    for turn_id in in_flight:  # wakes their event streams, which then end
        events.publish_turn_changed(turn_id=turn_id)


def message_accept(*, user: AbstractBaseUser, session_id: object, content: str) -> Turn:
    """Store the user's message and open a pending turn for it, in one transaction.

    Raise ``TurnInFlight`` if the session already has a turn pending or running.
    """
    try:
        return _message_accept(user=user, session_id=session_id, content=content)
    except IntegrityError as exc:
        # The partial unique index, behind the row lock: a writer that skipped the lock.
        raise TurnInFlight() from exc


@transaction.atomic
def _message_accept(*, user: AbstractBaseUser, session_id: object, content: str) -> Turn:
    # The session row lock serialises accepts per session, so the check cannot race.
    session = chat_session_get_for_owner(user=user, session_id=session_id, for_update=True)
    _turn_in_flight_check(session=session)
    now = timezone.now()
    turn = Turn.objects.create(session=session, deadline_at=_deadline(now))
    message = Message.objects.create(
        session=session, turn=turn, seq=session.next_seq, role=Message.Role.USER, content=content
    )
    ChatSession.objects.filter(pk=session.pk).update(
        next_seq=F("next_seq") + 1, last_activity_at=now, expires_at=_expiry(now)
    )
    audit_message(user_id=user.pk, session_id=session.pk, role="user", content=content)
    return _with_messages(turn, [message])


def _turn_in_flight_check(*, session: ChatSession) -> None:
    """Raise ``TurnInFlight`` for a live turn; end a stale one, so the session is not stuck.

    Without beat (the embedded setup, or a production that lost it) a turn whose process
    died would otherwise answer every later message with 409 for good.
    """
    stale_before = timezone.now() - timedelta(seconds=settings.STALE_TURN_SECONDS)
    for turn in Turn.objects.filter(session=session, status__in=Turn.IN_FLIGHT):
        if turn.updated_at >= stale_before:
            raise TurnInFlight()
        turn_fail(turn_id=turn.pk, code="stalled", detail=STALLED_DETAIL)


def _with_messages(turn: Turn, messages: list[Message]) -> Turn:
    # Fill the prefetch cache with what was just written, as prefetch_related would, so
    # answering about the turn needs no further query (one that could fail after the
    # message was accepted, and make the client send it twice).
    queryset = turn.messages.all()
    queryset._result_cache = messages
    queryset._prefetch_done = True
    turn._prefetched_objects_cache = {"messages": queryset}
    return turn


def turn_discard(*, turn_id: uuid.UUID) -> None:
    """Remove a turn that could not be queued, with its message, as if never accepted."""
    with transaction.atomic():
        turn = Turn.objects.select_for_update().filter(pk=turn_id, status=Turn.Status.PENDING)
        session_ids = list(turn.values_list("session_id", flat=True))
        turn.delete()
        ChatSession.objects.filter(pk__in=session_ids).update(next_seq=F("next_seq") - 1)


def turn_claim(*, turn_id: object) -> Turn | None:
    """Mark a turn running and count the attempt; return None if it needs no more work.

    A turn past its attempt budget is failed here, so a task redelivered forever still ends.
    """
    updated = Turn.objects.filter(pk=turn_id, status__in=Turn.IN_FLIGHT).update(
        status=Turn.Status.RUNNING,
        attempts=F("attempts") + 1,
        started_at=timezone.now(),
        updated_at=timezone.now(),
    )
    if not updated:
        return None
    turn = turn_get(turn_id=turn_id)
    if turn is not None and turn.attempts > settings.TURN_MAX_ATTEMPTS:
        turn_fail(
            turn_id=turn.pk,
            code="retries_exhausted",
            detail="The assistant could not be reached after several attempts; send again.",
        )
        return None
    if turn is not None:
        events.publish_turn_changed(turn_id=turn.pk)
    return turn


def turn_requeue(*, turn_id: object, attempt: int) -> bool:
    """Put a running turn back to pending before a retry; False if a newer attempt owns it."""
    updated = Turn.objects.filter(pk=turn_id, status=Turn.Status.RUNNING, attempts=attempt).update(
        status=Turn.Status.PENDING, updated_at=timezone.now()
    )
    if updated:
        events.publish_turn_changed(turn_id=turn_id)
    return bool(updated)


def turn_complete(*, turn_id: object, reply: str) -> bool:
    """Store the reply and end the turn ``completed``; return False if it had already ended.

    The turn row is locked first, and the (turn, role) unique constraint backs it up, so
    two concurrent runs of one turn never store two replies.
    """
    try:
        with transaction.atomic():
            turn = (
                Turn.objects.select_related("session")
                .select_for_update(of=("self", "session"))
                .filter(pk=turn_id)
                .first()
            )
            if turn is None or turn.is_finished:
                return False
            session = turn.session
            Message.objects.create(
                session=session,
                turn=turn,
                seq=session.next_seq,
                role=Message.Role.ASSISTANT,
                content=reply,
            )
            ChatSession.objects.filter(pk=session.pk).update(next_seq=F("next_seq") + 1)
            now = timezone.now()
            Turn.objects.filter(pk=turn.pk).update(
                status=Turn.Status.COMPLETED,
                finished_at=now,
                updated_at=now,
                error_code="",
                error_detail="",
            )
            audit_message(
                user_id=session.owner_id,
                session_id=session.pk,
                role="assistant",
                content=reply,
                kind="reply",
            )
    except IntegrityError:
        logger.info("turn %s already has a reply; discarding a duplicate", turn_id)
        return False
    events.publish_turn_changed(turn_id=turn_id)
    return True


def turn_fail(*, turn_id: object, code: str, detail: str, attempt: int | None = None) -> bool:
    """End an unfinished turn ``failed``; the user's message stays so they can send again.

    With ``attempt``, only that attempt may fail the turn: a run overtaken by a redelivered
    one (which claimed a later attempt) leaves the decision to the newer run.
    """
    now = timezone.now()
    unfinished = Turn.objects.filter(pk=turn_id, status__in=Turn.IN_FLIGHT)
    if attempt is not None:
        unfinished = unfinished.filter(attempts=attempt)
    updated = unfinished.update(
        status=Turn.Status.FAILED,
        error_code=code,
        error_detail=detail,
        finished_at=now,
        updated_at=now,
    )
    if updated:
        events.publish_turn_changed(turn_id=turn_id)
    return bool(updated)


def _enqueue(turn_id: uuid.UUID) -> None:
    from .tasks import run_turn  # tasks import this module

    run_turn.delay(str(turn_id))


def turn_enqueue(*, turn_id: uuid.UUID) -> None:
    """Queue the turn's task; if the broker is down, undo the turn and raise 503.

    Called after the accepting transaction committed, so a worker never sees a turn
    that is not there yet; undoing keeps "an error leaves nothing behind".
    """
    try:
        _enqueue(turn_id)
    except Exception as exc:
        if not is_outage(exc):
            raise
        logger.warning("broker unavailable; discarding turn %s", turn_id)
        turn_discard(turn_id=turn_id)
        raise ServiceUnavailable() from exc


def turn_sweep_stale(*, older_than_seconds: int) -> dict[str, int]:
    """Re-queue or fail turns left pending or running past the bound; return the counts.

    Their task was lost (the broker restarted empty) or their worker died after acking.
    Each turn is decided under a skip-locked row lock and its ``updated_at`` is bumped, so
    with many sweepers at once exactly one re-queues it per period.
    """
    counts = {"requeued": 0, "failed": 0}
    for turn_id in turn_list_stale(older_than_seconds=older_than_seconds).values_list(
        "pk", flat=True
    ):
        outcome = _turn_sweep_one(turn_id=turn_id, older_than_seconds=older_than_seconds)
        if outcome:
            counts[outcome] += 1
    return counts


def _turn_sweep_one(*, turn_id: uuid.UUID, older_than_seconds: int) -> str | None:
    with transaction.atomic():
        turn = (
            turn_list_stale(older_than_seconds=older_than_seconds)
            .select_for_update(skip_locked=True)
            .filter(pk=turn_id)
            .first()
        )
        if turn is None:
            return None  # another sweeper has it, or it moved on
        if turn.attempts >= settings.TURN_MAX_ATTEMPTS:
            outcome = "failed"
            turn_fail(turn_id=turn.pk, code="stalled", detail=STALLED_DETAIL)
        else:
            outcome = "requeued"
            now = timezone.now()
            Turn.objects.filter(pk=turn.pk).update(
                status=Turn.Status.PENDING, updated_at=now, deadline_at=_deadline(now)
            )
    if outcome == "requeued":
        logger.warning("re-queueing stale turn %s", turn_id)
        _enqueue(turn_id)
    return outcome


def chat_session_purge_expired() -> int:
    """Erase every expired session with its messages and turns; return how many."""
    deleted, per_model = ChatSession.objects.filter(expires_at__lte=timezone.now()).delete()
    return per_model.get(ChatSession._meta.label, 0)
