"""``DbIndex``: the fingerprint index in a database table, the embedded default."""

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta

from django.db import DatabaseError, transaction
from django.utils import timezone

from ..fingerprint import Posting
from ..models import FingerprintPosting
from .base import MAX_RECORDS, SEVERAL_SESSION, IndexUnavailable

# The database's ``*``: the user of a row that marks a feature too many users introduced.
SHARED_USER = 0


def _signed(digest: bytes) -> int:
    return int.from_bytes(digest, "big", signed=True)


@contextmanager
def _database_answers() -> Iterator[None]:
    try:
        yield
    except DatabaseError as exc:
        raise IndexUnavailable("the fingerprint index (database) is unavailable") from exc


class DbIndex:
    """The embedded index: a table of postings, read with one query per scan.

    ``RedisIndex``'s rules, counted per user where Redis counts per value: a row per
    (feature, user, session), at most ``MAX_RECORDS`` sessions of a user per feature and
    then one row of that user with ``SEVERAL_SESSION`` (Redis folds as soon as its value of
    ``MAX_RECORDS`` records is full), and once more than ``MAX_RECORDS`` users introduced a
    feature one row of ``SHARED_USER``. Erasing a session removes neither of those: a
    user's rows of several sessions go when the user is erased (``erase_user``), the rest
    age out. So a feature has a bounded number of rows, whatever one user repeats.

    A database error is ``IndexUnavailable``, as Redis's are. An erasure fails alone (in a
    savepoint), so that its caller's transaction goes on, as the expiry purge's does; a
    failed ``add`` or ``lookup`` spoils it (a savepoint would cost every turn two round
    trips, and their callers roll back on the error anyway).
    """

    def __init__(self, *, ttl_seconds: int) -> None:
        self.ttl = timedelta(seconds=ttl_seconds)

    def add(
        self,
        digests: Sequence[bytes],
        *,
        user_id: int,
        session_id: uuid.UUID,
        erasable: bool = True,
    ) -> None:
        """Record that the session introduced each of ``digests`` not already too shared
        (``erasable`` or not: its column names the session, there is no list to leave out)."""
        wanted = {_signed(d) for d in digests}
        with _database_answers():
            self._add(wanted, user_id=user_id, session_id=session_id)

    def _add(self, wanted: set[int], *, user_id: int, session_id: uuid.UUID) -> None:
        live: dict[int, dict[int, set[uuid.UUID]]] = {}
        for digest, user, session in self._rows(wanted).values_list(
            "digest", "user_id", "session_id"
        ):
            live.setdefault(digest, {}).setdefault(user, set()).add(session)
        session_id = uuid.UUID(str(session_id))
        rows = []
        for digest in wanted:
            users = live.get(digest, {})
            mine = users.get(user_id, set())
            if SHARED_USER in users or session_id in mine or SEVERAL_SESSION in mine:
                continue
            if not mine and len(users) >= MAX_RECORDS:
                rows.append((digest, SHARED_USER, SEVERAL_SESSION))
            elif len(mine) >= MAX_RECORDS:
                rows.append((digest, user_id, SEVERAL_SESSION))
            else:
                rows.append((digest, user_id, session_id))
        now = timezone.now()
        # A conflict is a row past its retention (not live, so not seen above) or one a
        # concurrent add just wrote: either way it is introduced now, and its retention
        # starts again; ignored, a posting past its retention would stay unseen for good.
        FingerprintPosting.objects.bulk_create(
            [
                FingerprintPosting(digest=d, user_id=u, session_id=s, created_at=now)
                for d, u, s in rows
            ],
            update_conflicts=True,
            unique_fields=["digest", "user_id", "session_id"],
            update_fields=["created_at"],
        )

    def lookup(self, digests: Sequence[bytes]) -> dict[bytes, list[Posting] | None]:
        """Return each digest's postings (None: too many users share it); one query."""
        by_int = {_signed(d): d for d in digests}
        found: dict[bytes, dict[int, Posting] | None] = {d: {} for d in digests}
        with _database_answers():
            rows = list(self._rows(set(by_int)).values_list("digest", "user_id", "session_id"))
        for digest, user, session in rows:
            known = found[by_int[digest]]
            if known is None:
                continue
            if user == SHARED_USER:
                found[by_int[digest]] = None
                continue
            # One posting per user: a session of theirs rather than "several", if there is one.
            if user not in known or known[user].session_id is None:
                several = session == SEVERAL_SESSION
                known[user] = Posting(user, None if several else str(session))
        return {
            d: (None if p is None or len(p) > MAX_RECORDS else list(p.values()))
            for d, p in found.items()
        }

    def erase_session(
        self, digests: Sequence[bytes] | None = None, *, session_id: uuid.UUID
    ) -> bool:
        """Remove every posting of the session, found by its column (``SEVERAL_SESSION``
        and ``SHARED_USER`` rows stay, and age out); return False: the texts' ``digests``
        are never needed here. On a database error nothing is erased."""
        with _database_answers(), transaction.atomic():
            FingerprintPosting.objects.filter(session_id=session_id).delete()
        return False

    def erase_user(self, *, user_id: int) -> None:
        """Remove the user's rows of ``SEVERAL_SESSION`` (its sessions' own rows are
        ``erase_session``'s). On a database error nothing is erased."""
        # By session too: the session index finds the rows of several sessions (few, of
        # every user) where user_id alone, unindexed, would scan the whole table.
        several = FingerprintPosting.objects.filter(session_id=SEVERAL_SESSION, user_id=user_id)
        with _database_answers(), transaction.atomic():
            several.delete()

    def purge_expired(self) -> int:
        """Delete postings past their retention; return how many."""
        expired = FingerprintPosting.objects.filter(created_at__lt=timezone.now() - self.ttl)
        with _database_answers():
            return expired.delete()[0]

    def _rows(self, digests: set[int]):
        since = timezone.now() - self.ttl
        return FingerprintPosting.objects.filter(digest__in=digests, created_at__gte=since)
