"""History in database rows (``Message``): the default store, the truth for ``cached_db``."""

import uuid

from django.db import IntegrityError
from django.db.models import QuerySet

from ..models import Message
from .base import BaseHistoryStore, DuplicateReply, SessionLike, StoredMessage

FIELDS = ("id", "seq", "role", "content", "status", "created_at", "turn_id", "session_id")


class HistoryStore(BaseHistoryStore):
    def _rows(self, session: SessionLike) -> QuerySet[Message]:
        # The owner is in the query itself, and read back from the row's own session: the
        # check in the base class then compares what was really stored, not what was asked.
        return Message.objects.filter(
            session_id=session.pk, session__owner_id=session.owner_id
        ).order_by("seq")

    def _read(self, queryset: QuerySet[Message]) -> list[StoredMessage]:
        return [
            StoredMessage(user_id=owner_id, **dict(zip(FIELDS, values, strict=True)))
            for *values, owner_id in queryset.values_list(*FIELDS, "session__owner_id")
        ]

    def _append(self, session, *, turn_id, seq, role, content, status) -> StoredMessage:
        try:
            message = Message.objects.create(
                session_id=session.pk,
                turn_id=turn_id,
                seq=seq,
                role=role,
                content=content,
                status=status,
            )
        except IntegrityError as exc:
            # (turn, role) or (session, seq) is taken: the caller's transaction is spoilt
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
        return self._read(self._rows(session).filter(turn_id=turn_id))

    def _all(self, session) -> list[StoredMessage]:
        return self._read(self._rows(session))

    def _page(self, session, offset: int, limit: int) -> list[StoredMessage]:
        return self._read(self._rows(session)[offset : offset + limit])

    def _discard_turn(self, session, turn_id: uuid.UUID) -> None:
        self._rows(session).filter(turn_id=turn_id).delete()

    def _erase(self, session_ids: list[uuid.UUID]) -> None:
        Message.objects.filter(session_id__in=session_ids).delete()

    def _rewrite(self, session, turn_id: uuid.UUID, role: str, content: str, status: str) -> None:
        self._rows(session).filter(turn_id=turn_id, role=role).update(
            content=content, status=status
        )
