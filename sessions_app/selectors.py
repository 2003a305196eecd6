"""Every read of conversation data, always scoped by owner.

This module is the ownership gate: someone else's id, an unknown id and an expired
session all raise the same ``NotFound``. Nothing else fetches ``ChatSession`` rows
(a test in ``tests/`` enforces it).
"""

import uuid
from datetime import timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.db import connection
from django.db.models import Prefetch, QuerySet, Subquery
from django.utils import timezone
from rest_framework.exceptions import NotFound

from . import events
from .errors import ForeignAccess, is_outage, once_more_on_fresh_connection
from .isolation import HistoryMessage
from .models import ChatSession, Message, Turn

SESSION_NOT_FOUND = "No session with this id."
TURN_NOT_FOUND = "No turn with this id."


def _as_uuid(value: object) -> uuid.UUID | None:
    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    except (TypeError, ValueError):
        return None


def chat_session_list_for_owner(*, user: AbstractBaseUser) -> QuerySet[ChatSession]:
    """Return the caller's live sessions, newest first."""
    return ChatSession.objects.filter(owner=user, expires_at__gt=timezone.now()).order_by(
        "-created_at", "-id"
    )


def _not_found(
    detail: str, *, user: AbstractBaseUser, foreign_session_id: uuid.UUID | None, what: str
) -> NotFound:
    if foreign_session_id is None:
        return NotFound(detail)
    return ForeignAccess(
        detail, user_id=user.pk, session_id=foreign_session_id, what=f"another user's {what}"
    )


def chat_session_get_for_owner(
    *, user: AbstractBaseUser, session_id: object, for_update: bool = False
) -> ChatSession:
    """Return the caller's live session, or raise the one NotFound for every other case."""
    sid = _as_uuid(session_id)
    if sid is not None:
        queryset = chat_session_list_for_owner(user=user)
        if for_update:
            queryset = queryset.select_for_update()
        session = queryset.filter(pk=sid).first()
        if session is not None:
            return session
        if ChatSession.objects.filter(pk=sid).exclude(owner=user).exists():
            raise _not_found(SESSION_NOT_FOUND, user=user, foreign_session_id=sid, what="session")
    raise NotFound(SESSION_NOT_FOUND)


def message_list_for_owner(*, user: AbstractBaseUser, session_id: object) -> QuerySet[Message]:
    """Return the messages of the caller's session, ordered by ``seq``."""
    session = chat_session_get_for_owner(user=user, session_id=session_id)
    return Message.objects.filter(session=session).order_by("seq")


def _turns_with_messages() -> QuerySet[Turn]:
    return Turn.objects.select_related("session").prefetch_related(
        Prefetch("messages", queryset=Message.objects.order_by("seq"))
    )


def turn_get_for_owner(*, user: AbstractBaseUser, turn_id: object) -> Turn:
    """Return the caller's turn in a live session, or raise the one NotFound."""
    tid = _as_uuid(turn_id)
    if tid is not None:
        turn = (
            _turns_with_messages()
            .filter(pk=tid, session__owner=user, session__expires_at__gt=timezone.now())
            .first()
        )
        if turn is not None:
            return turn
        foreign = Turn.objects.filter(pk=tid).exclude(session__owner=user)
        session_id = foreign.values_list("session_id", flat=True).first()
        if session_id is not None:
            raise _not_found(TURN_NOT_FOUND, user=user, foreign_session_id=session_id, what="turn")
    raise NotFound(TURN_NOT_FOUND)


def turn_get(*, turn_id: object) -> Turn | None:
    """Return a turn with its session for a worker, or None if it is gone."""
    tid = _as_uuid(turn_id)
    return Turn.objects.select_related("session").filter(pk=tid).first() if tid else None


def turn_history(*, turn: Turn, user_id: int) -> list[HistoryMessage]:
    """Return the conversation up to ``turn`` for its owner, oldest first.

    The owner is checked in the query itself, and each message carries the session and
    owner ids of its own row, so the send guard checks what was really read, not what was
    asked for.
    """
    user_seq = Message.objects.filter(turn_id=turn.pk, role=Message.Role.USER).values("seq")
    rows = (
        Message.objects.filter(
            session_id=turn.session_id,
            session__owner_id=user_id,
            seq__lte=Subquery(user_seq[:1]),
            status=Message.Status.OK,
        )
        .order_by("seq")
        .values_list("session_id", "session__owner_id", "role", "content")
    )
    return [
        HistoryMessage(user_id=owner_id, session_id=session_id, role=role, content=content)
        for session_id, owner_id, role, content in rows
    ]


def turn_list_stale(*, older_than_seconds: int) -> QuerySet[Turn]:
    """Return turns left pending or running for longer than the given age."""
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    return Turn.objects.filter(status__in=Turn.IN_FLIGHT, updated_at__lt=cutoff)


def turn_wait_for_owner(*, user: AbstractBaseUser, turn: Turn, timeout: float) -> Turn:
    """Return the caller's just-accepted turn once it has ended, or as it is after ``timeout``.

    Every read here goes through ``turn_refresh_for_owner``: the message is stored, so a
    connection lost now must not turn into an error that makes the client send it again.
    """
    if timeout <= 0:
        return turn_refresh_for_owner(user=user, turn=turn)
    changes = events.turn_changes(turn_id=turn.pk, timeout=timeout, poll_if_down=True)
    next(changes)  # subscribed: from here on no change can slip by unseen
    try:
        turn = turn_refresh_for_owner(user=user, turn=turn)
        while not turn.is_finished and next(changes, None) is not None:
            turn = turn_refresh_for_owner(user=user, turn=turn)
    finally:
        changes.close()
    return turn


def turn_refresh_for_owner(*, user: AbstractBaseUser, turn: Turn) -> Turn:
    """Re-read the caller's turn after a wait; if the database is unreachable, return ``turn``.

    The turn is accepted already: an error answer now would make the client send the
    message again. A connection killed during the wait (a restart, a failover) is replaced
    once; if the database still does not answer, the turn is returned as last read.
    """
    try:
        return once_more_on_fresh_connection(turn_get_for_owner, user=user, turn_id=turn.pk)
    except Exception as exc:
        if not is_outage(exc) or connection.in_atomic_block:
            raise
        return turn
