"""History in the database, read through a cache: the database is the truth.

One cache entry per session holds its whole history, names its owner and session, and
records how many messages it holds, the session's expiry and the session's cache version it
was read under. It is used only when that count and that expiry equal the session row's
(``next_seq - 1`` and ``expires_at``, read under the ownership gate), so an entry written
before an accept can never be served after it, even if its invalidation was lost: every
accept moves the expiry on, and a discard, which takes its seq back, leaves the count of an
entry that held the discarded message but not the expiry of the accept after it; and only
when its version is the session's current one. Every write deletes the entry, and when it
commits deletes it again and gives the session a new version: a reader that read the
database before a rewrite committed (a rewrite keeps the count) took the version before it,
so what it caches after is never served; on Redis it is not even written (nor after an
erase, which deletes the version). A rewrite also sets, before its commit, a version under
which nothing is cached, so that a new version lost after the commit leaves no reader's
entry of the text before it to be served. A cache that does not answer is read past: the database
alone still serves. Two writes refuse instead (``StoreUnavailable``), as nothing else would
catch what they leave: an erase (the conversation would outlive its session's rows, out of
every later erasure's reach) and a rewrite (it keeps the count and the expiry, so the entry
from before it would be served until it expires).
"""

import logging
import secrets
import threading
import uuid

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from redis.commands.core import Script

from core.cache import cache_redis

from . import db
from .base import SessionLike, StoredMessage, StoreUnavailable

logger = logging.getLogger(__name__)


def _key(session_id: uuid.UUID) -> str:
    return f"session:{{{session_id}}}:messages"


def _version_key(session_id: uuid.UUID) -> str:
    return f"session:{{{session_id}}}:version"


def _all_keys(session_ids: list[uuid.UUID]) -> list[str]:
    """Every key the store keeps for these sessions: what an erasure deletes."""
    return [key for sid in session_ids for key in (_key(sid), _version_key(sid))]


def _new_version() -> int:
    # An integer, which the Redis cache stores as its digits: the script below compares it.
    return secrets.randbits(62)


# The version a rewrite sets before it commits: no reader caches under it, so one that read
# the database before the commit caches nothing, even if the new version the commit gives
# is lost (the cache blinking then); a later write, or the key's TTL, ends it.
_WRITING = -1


# On Redis an entry is written only while the session's version is still the one its reader
# took before reading the database: one script, atomic (both keys in the session's cluster
# slot). A reader that read before a write, or before an erase, which deletes the version,
# then caches nothing, instead of a copy that would wait for its TTL.
_SET_IF_VERSION = Script(
    None,  # no client of its own: each call names the connection it runs on
    b"""
    if redis.call('GET', KEYS[2]) == ARGV[1] then
        redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
        return 1
    end
    return 0
    """,
)


_DELETE_IF_VERSION = Script(
    None,
    b"""
    if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
    return 0
    """,
)


# On the in-process cache (no Redis: the embedded setup) the scripts' atomicity is this
# lock's: a renewal's or a reader's check of a version and its write are one step against an
# erasure's deletes, as one process's threads (runserver's, gunicorn's gthread) race them. A
# check-then-set alone would let an erasure delete in between and the version, or the
# erased session's messages, come back.
_IN_PROCESS = threading.Lock()


class HistoryStore(db.HistoryStore):
    # An entry may still be read in the instant between an erase's commit and its keys'
    # deletion (a racing reader can no longer refill one after: its write is refused).
    reads_see_erase = False

    def _all(self, session) -> list[StoredMessage]:
        count = session.next_seq - 1
        cached = self._cache_get(session.pk)
        if cached is None:  # the cache does not answer: the database alone serves
            return super()._all(session)
        entry, version = cached
        if (
            isinstance(entry, dict)
            and entry.get("user_id") == session.owner_id
            and entry.get("session_id") == session.pk
            and entry.get("count") == count
            and entry.get("expires_at") == session.expires_at
            and version is not None
            and entry.get("version") == version
        ):
            return entry["messages"]
        # The version is taken before the database is read: a write committed after the
        # read gives the session a newer one, and the entry cached below goes unused.
        started = version is None
        version = version or self._version_start(session.pk)
        messages = super()._all(session)
        if version is None or version == _WRITING:
            return messages
        if len(messages) == count:
            self._cache_set(session, messages, version)
        elif started:
            # The session moved on since its row was read, or was erased (a run reading the
            # history of a session deleted since its claim): leave no key of it behind.
            self._version_drop(session.pk, version)
        return messages

    def _page(self, session, offset: int, limit: int) -> list[StoredMessage]:
        return self._all(session)[offset : offset + limit]

    def _append(self, session, **kwargs) -> StoredMessage:
        message = super()._append(session, **kwargs)
        self._invalidate([session.pk])
        return message

    def _discard_turn(self, session, turn_id: uuid.UUID, roles, fence: int = 0) -> None:
        super()._discard_turn(session, turn_id, roles, fence)
        self._invalidate([session.pk])

    def _erase_begin(self, session_ids: list[uuid.UUID]) -> None:
        # The entries can go now: a rollback needs none of them (a read fills them again).
        keys = _all_keys(session_ids)
        self._cache_delete(keys, strict=True)

    def _erase(self, session_ids: list[uuid.UUID]) -> None:
        super()._erase(session_ids)
        keys = _all_keys(session_ids)
        self._cache_delete(keys, strict=True)  # else the rows' deletion rolls back
        transaction.on_commit(lambda: self._cache_delete(keys))

    def _rewrite(
        self, session, turn_id: uuid.UUID, role: str, content: str, status: str, *, fence: int
    ) -> None:
        super()._rewrite(session, turn_id, role, content, status, fence=fence)
        # The count and the expiry stay: only the version keeps a reader racing this write
        # from caching what it read before the commit, so it is set now, strictly.
        try:
            cache.delete(_key(session.pk))
            cache.set(_version_key(session.pk), _WRITING, timeout=settings.SESSION_TTL_SECONDS)
        except Exception as exc:
            raise StoreUnavailable("the history cache did not answer") from exc
        transaction.on_commit(lambda: self._renew([session.pk]))

    def _invalidate(self, session_ids: list[uuid.UUID]) -> None:
        # Now, so that the writer's own transaction reads past the entry; and once the write
        # is visible, with a new version: a reader that read the database before that took
        # the version before it, and what it caches is never served.
        self._cache_delete([_key(sid) for sid in session_ids])
        transaction.on_commit(lambda: self._renew(session_ids))

    def _renew(self, session_ids: list[uuid.UUID]) -> None:
        """Delete the sessions' entries and give each a new version (on Redis, in one round
        trip)."""
        versions = {_version_key(sid): _new_version() for sid in session_ids}
        ttl = settings.SESSION_TTL_SECONDS
        try:
            if (redis := cache_redis()) is None:
                with _IN_PROCESS:  # only over a version, as on Redis below
                    cache.delete_many([_key(sid) for sid in session_ids])
                    held = cache.get_many(list(versions))
                    cache.set_many({k: versions[k] for k in held}, timeout=ttl)
                return
            pipe = redis.pipeline(transaction=False)
            pipe.delete(*(cache.make_key(_key(sid)) for sid in session_ids))
            for key, version in versions.items():  # the digits, as the cache stores an int
                # Only over a version: none means no reader holds one (an erasure that
                # committed first deleted it), and none must come back after an erasure.
                pipe.set(cache.make_key(key), version, ex=ttl, xx=True)
            pipe.execute()
        except Exception:  # noqa: BLE001 - a lost renewal leaves the entry to its count check
            logger.warning("history cache unavailable; session versions not renewed")

    def _version_start(self, session_id: uuid.UUID) -> int | None:
        """Give a session with no version one; return its version (None: no cache)."""
        key = _version_key(session_id)
        try:
            if cache.add(key, version := _new_version(), timeout=settings.SESSION_TTL_SECONDS):
                return version
            return cache.get(key)  # another reader's, or a writer's newer one
        except Exception:  # noqa: BLE001 - the database is the truth; read past the cache
            logger.warning("history cache unavailable; not caching")
            return None

    def _cache_get(self, session_id: uuid.UUID) -> tuple[object, int | None] | None:
        """The session's entry and its current version, in one round trip; None if the
        cache does not answer."""
        keys = (_key(session_id), _version_key(session_id))
        try:
            found = cache.get_many(keys)
        except Exception:  # noqa: BLE001 - the database is the truth; read past the cache
            logger.warning("history cache unavailable; reading the database")
            return None
        return found.get(keys[0]), found.get(keys[1])

    def _version_drop(self, session_id: uuid.UUID, version: int) -> None:
        """Delete the session's version if it is still ``version`` (on Redis, atomically)."""
        key = _version_key(session_id)
        try:
            if (redis := cache_redis()) is None:
                with _IN_PROCESS:  # as the script: no renewal between the check and the delete
                    if cache.get(key) == version:
                        cache.delete(key)
                return
            _DELETE_IF_VERSION(keys=[cache.make_key(key)], args=[str(version)], client=redis)
        except Exception:  # noqa: BLE001 - a version left behind holds nothing and expires
            logger.warning("history cache unavailable; a session version left to expire")

    def _cache_set(self, session: SessionLike, messages: list[StoredMessage], version: int) -> None:
        entry = {
            "user_id": session.owner_id,
            "session_id": session.pk,
            "count": len(messages),
            "expires_at": session.expires_at,
            "version": version,
            "messages": messages,
        }
        ttl = settings.SESSION_TTL_SECONDS
        try:
            if (redis := cache_redis()) is None:
                # As the script: only under the version the reader read with, so a reader that
                # read before an erasure leaves nothing of the session in memory after it.
                with _IN_PROCESS:
                    if cache.get(_version_key(session.pk)) == version:
                        cache.set(_key(session.pk), entry, timeout=ttl)
                return
            keys = [cache.make_key(_key(session.pk)), cache.make_key(_version_key(session.pk))]
            args = [str(version), cache.client.encode(entry), ttl]
            _SET_IF_VERSION(keys=keys, args=args, client=redis)
        except Exception:  # noqa: BLE001 - an entry not cached is only a slower read
            logger.warning("history cache unavailable; not caching")

    def _cache_delete(self, keys: list[str], *, strict: bool = False) -> None:
        try:
            if cache_redis() is None:
                with _IN_PROCESS:  # not between a renewal's check and its set
                    cache.delete_many(keys)
            else:
                cache.delete_many(keys)
        except Exception as exc:  # noqa: BLE001 - a stale entry is refused by its count anyway
            if strict:
                raise StoreUnavailable("the history cache did not answer") from exc
            logger.warning("history cache unavailable; entry left to its count check")
