"""History in database rows (``Message``): the default store, the truth for ``cached_db``."""

import uuid
from collections.abc import Iterable

from django.db import IntegrityError
from django.db.models import QuerySet

from core import sql

from .. import rows
from ..models import MESSAGE_ONE_PER_TURN_ROLE, MESSAGE_SEQ_UNIQUE, ChatSession, Message
from .base import (
    BaseHistoryStore,
    DuplicateReply,
    MessageMissing,
    SeqTaken,
    SessionLike,
    StoredMessage,
)

FIELDS = ("id", "seq", "role", "content", "status", "created_at", "turn_id", "session_id")

# A turn's messages and a session's whole history are read on every turn (by the waiting
# view and by the worker): on Postgres written out (``rows``), the same query as ``_rows``.
_SELECT = f"""
    SELECT {", ".join(f'm."{Message._meta.get_field(name).column}"' for name in FIELDS)},
        s."owner_id"
    FROM "{Message._meta.db_table}" AS m
    JOIN "{ChatSession._meta.db_table}" AS s ON s."id" = m."session_id"
    WHERE m."session_id" = %s AND s."owner_id" = %s
"""  # noqa: S608 - names from the models; values are parameters
_ALL = _SELECT + 'ORDER BY m."seq"'
_OF_TURN = _SELECT + 'AND m."turn_id" = %s ORDER BY m."seq"'


class HistoryStore(BaseHistoryStore):
    def _rows(self, session: SessionLike) -> QuerySet[Message]:
        # The owner is in the query itself, and read back from the row's own session: the
        # check in the base class then compares what was really stored, not what was asked.
        return Message.objects.filter(
            session_id=session.pk, session__owner_id=session.owner_id
        ).order_by("seq")

    def _read(self, queryset: QuerySet[Message]) -> list[StoredMessage]:
        return _messages(queryset.values_list(*FIELDS, "session__owner_id"))

    def _append(self, session, *, turn_id, seq, role, content, status, fence=0) -> StoredMessage:
        # No ``fence``: a run's row goes with its transaction.
        try:
            message = sql.insert(
                Message(
                    session_id=session.pk,
                    turn_id=turn_id,
                    seq=seq,
                    role=role,
                    content=content,
                    status=status,
                )
            )
        except IntegrityError as exc:
            violated = sql.violated_constraint(exc)
            if violated == MESSAGE_SEQ_UNIQUE:  # the session's counter behind its rows
                raise SeqTaken(f"seq {seq} of session {session.pk} is taken") from exc
            if violated != MESSAGE_ONE_PER_TURN_ROLE:
                # A NOT NULL: a fault, not a duplicate; the caller would take it for a
                # stored reply.
                raise
            # The turn has its message of this role: the caller's transaction is spoilt
            # and rolls back, so the message already there cannot be read here.
            raise DuplicateReply(None) from exc
        return StoredMessage(
            id=message.pk,
            seq=seq,
            role=role,
            content=content,
            status=status,
            created_at=message.created_at,
            turn_id=turn_id,
            session_id=session.pk,
            user_id=session.owner_id,
        )

    def _turn_messages(self, session, turn_id: uuid.UUID) -> list[StoredMessage]:
        if rows.in_sql():
            return _messages(rows.many(_OF_TURN, [session.pk, session.owner_id, turn_id]))
        return self._read(self._rows(session).filter(turn_id=turn_id))

    def _all(self, session) -> list[StoredMessage]:
        if rows.in_sql():
            return _messages(rows.many(_ALL, [session.pk, session.owner_id]))
        return self._read(self._rows(session))

    def _page(self, session, offset: int, limit: int) -> list[StoredMessage]:
        return self._read(self._rows(session)[offset : offset + limit])

    def _discard_turn(self, session, turn_id: uuid.UUID, roles, fence: int = 0) -> None:
        self._rows(session).filter(turn_id=turn_id, role__in=roles).delete()

    def _erase(self, session_ids: list[uuid.UUID]) -> None:
        Message.objects.filter(session_id__in=session_ids).delete()

    def _rewrite(
        self, session, turn_id: uuid.UUID, role: str, content: str, status: str, *, fence: int
    ) -> None:
        rewritten = (
            self._rows(session)
            .filter(turn_id=turn_id, role=role)
            .update(content=content, status=status)
        )
        if not rewritten:
            raise MessageMissing(f"turn {turn_id} has no {role} message to rewrite")


def _messages(found: Iterable[tuple]) -> list[StoredMessage]:
    """Messages from rows of ``FIELDS`` and the owner's id read back from their session."""
    return [
        StoredMessage(user_id=owner_id, **dict(zip(FIELDS, values, strict=True)))
        for *values, owner_id in found
    ]
