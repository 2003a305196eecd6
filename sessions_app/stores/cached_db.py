"""History in the database, read through a cache: the database is the truth.

One cache entry per session holds its whole history, names its owner and session, and
records how many messages it holds. It is used only when that count equals the session
row's (``next_seq - 1``, read under the ownership gate), so an entry written before an
append can never be served after it, even if its invalidation was lost. Every write
invalidates it too (a rewrite keeps the count). A cache that does not answer is
read past: the database alone still serves.
"""

import logging
import uuid

from django.conf import settings
from django.core.cache import cache
from django.db import transaction

from . import db
from .base import SessionLike, StoredMessage

logger = logging.getLogger(__name__)


def _key(session_id: uuid.UUID) -> str:
    return f"session:{{{session_id}}}:messages"


class HistoryStore(db.HistoryStore):
    reads_see_erase = False  # an entry refilled by a racing reader outlives the erase

    def _all(self, session) -> list[StoredMessage]:
        count = session.next_seq - 1
        entry = self._cache_get(session.pk)
        if (
            isinstance(entry, dict)
            and entry.get("user_id") == session.owner_id
            and entry.get("session_id") == session.pk
            and entry.get("count") == count
        ):
            return entry["messages"]
        messages = super()._all(session)
        if len(messages) == count:
            self._cache_set(session, messages)
        return messages

    def _page(self, session, offset: int, limit: int) -> list[StoredMessage]:
        return self._all(session)[offset : offset + limit]

    def _append(self, session, **kwargs) -> StoredMessage:
        message = super()._append(session, **kwargs)
        self._invalidate([session.pk])
        return message

    def _discard_turn(self, session, turn_id: uuid.UUID) -> None:
        super()._discard_turn(session, turn_id)
        self._invalidate([session.pk])

    def _erase(self, session_ids: list[uuid.UUID]) -> None:
        super()._erase(session_ids)
        self._invalidate(session_ids)

    def _rewrite(self, session, turn_id: uuid.UUID, role: str, content: str, status: str) -> None:
        super()._rewrite(session, turn_id, role, content, status)
        self._invalidate([session.pk])

    def _invalidate(self, session_ids: list[uuid.UUID]) -> None:
        keys = [_key(sid) for sid in session_ids]
        self._cache_delete(keys)
        # Again once the write is visible: a reader between the two could have cached
        # the state before it.
        transaction.on_commit(lambda: self._cache_delete(keys))

    def _cache_get(self, session_id: uuid.UUID) -> object:
        try:
            return cache.get(_key(session_id))
        except Exception:  # noqa: BLE001 - the database is the truth; read past the cache
            logger.warning("history cache unavailable; reading the database")
            return None

    def _cache_set(self, session: SessionLike, messages: list[StoredMessage]) -> None:
        entry = {
            "user_id": session.owner_id,
            "session_id": session.pk,
            "count": len(messages),
            "messages": messages,
        }
        try:
            cache.set(_key(session.pk), entry, timeout=settings.SESSION_TTL_SECONDS)
        except Exception:  # noqa: BLE001 - an entry not cached is only a slower read
            logger.warning("history cache unavailable; not caching")

    def _cache_delete(self, keys: list[str]) -> None:
        try:
            cache.delete_many(keys)
        except Exception:  # noqa: BLE001 - a stale entry is refused by its count anyway
            logger.warning("history cache unavailable; entry left to its count check")
