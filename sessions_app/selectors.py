"""The ownership gate: every read of conversation data for a user, scoped by owner.

Someone else's id, an unknown id and an expired session all raise the same ``NotFound``
(another user's existing id is audited as well). Nothing else fetches ``ChatSession`` rows
for a user (a test in ``tests/`` enforces it).
"""

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TypeVar

from django.contrib.auth.models import AbstractBaseUser
from django.db import connection
from django.db.models import F, QuerySet
from django.utils import timezone
from rest_framework.exceptions import NotFound

from core.errors import is_outage, once_more_on_fresh_connection
from core.ids import as_uuid

from . import privacy, rows
from .errors import ForeignAccess
from .models import FENCE_SEQUENCE, ChatSession, SessionVault, Turn
from .stores import history_store

T = TypeVar("T")

SESSION_NOT_FOUND = "No session with this id."
TURN_NOT_FOUND = "No turn with this id."


def _live_owned(user: AbstractBaseUser) -> QuerySet[ChatSession]:
    """The one definition of "this user's live sessions" every read starts from."""
    return ChatSession.objects.filter(owner=user, expires_at__gt=timezone.now())


def _not_found(
    *,
    user: AbstractBaseUser,
    session_id: uuid.UUID | None,
    detail: str,
    what: str,
    turn_id: uuid.UUID | None = None,
):
    """Return the one NotFound, audited (naming the session, and the turn if one was
    asked for) if ``session_id`` is another user's session."""
    foreign = ChatSession.objects.filter(pk=session_id).exclude(owner=user)
    if session_id is not None and foreign.exists():
        return ForeignAccess(
            detail,
            user_id=user.pk,
            session_id=session_id,
            turn_id=turn_id,
            what=f"another user's {what}",
        )
    return NotFound(detail)


def chat_session_list_for_owner(*, user: AbstractBaseUser) -> QuerySet[ChatSession]:
    """Return the caller's live sessions, newest first, each with its PII vault.

    The vault rides along (a LEFT JOIN on its primary key): restoring a page of titles
    takes no query per session.
    """
    return _live_owned(user).select_related("vault").order_by("-created_at", "-id")


def chat_session_get_for_owner(
    *,
    user: AbstractBaseUser,
    session_id: object,
    for_update: bool = False,
    with_vault: bool = False,
) -> ChatSession:
    """Return the caller's live session, or raise the one NotFound for every other case.

    ``with_vault`` reads the session's PII vault along with it, for restoring its title
    (not with ``for_update``: a lock cannot take the nullable side of the join).
    """
    sid = as_uuid(session_id)
    queryset = _live_owned(user).select_for_update() if for_update else _live_owned(user)
    if with_vault:
        queryset = queryset.select_related("vault")
    session = queryset.filter(pk=sid).first() if sid else None
    if session is None:
        raise _not_found(user=user, session_id=sid, detail=SESSION_NOT_FOUND, what="session")
    return session


def chat_session_take_seq_for_owner(
    *, user: AbstractBaseUser, session_id: object, now: datetime, expires_at: datetime
) -> ChatSession:
    """Lock the caller's live session for a new message, and take the message's ``seq``.

    One statement (``UPDATE ... RETURNING``) does what a locking read and an update did:
    the counter advances, the session is kept alive until ``expires_at``, and its row stays
    locked until the transaction ends, serialising the session's accepts. The session comes
    back with ``next_seq`` as it was before, the seq taken, and with its PII vault as
    ``vault_row`` (None: it has none yet), read in the same statement for the message's
    scrub (a database without ``UPDATE ... RETURNING`` locks and updates in two statements,
    and the scrub reads the vault). Every other case raises the one NotFound, as
    ``chat_session_get_for_owner`` does.

    The vault comes from the statement's snapshot: if the statement waited for another
    writer's lock, the session row is the fresh one but the vault the one from before that
    writer's commit. Usually that writer left a turn in flight and this accept ends in 409,
    but its turn may have ended meanwhile by a path that takes no session lock (a failure).
    So the statement also reads the session's ``next_seq`` as its snapshot holds it: the
    seq it takes, or less if it waited, and then ``vault_row`` is left ``UNREAD`` for the
    scrub to read the vault as it is now, under the lock. (A discarded turn takes its seq
    back, so a wait behind an accept and its undoing goes unseen: the vault that accept
    created is then found when the scrub creates it, ``privacy.content_scrub``.)
    """
    sid = as_uuid(session_id)
    session, vault_row = None, privacy.UNREAD
    if sid and rows.in_sql():  # the row built as ``rows`` builds them: no RawQuerySet
        row = rows.one(_TAKE_SEQ_FENCED, [now, expires_at, sid, user.pk, now])
        if row is not None:
            session = rows.built(ChatSession, row[:-4])
            vault_row = _vault_unless_waited(session, *row[-4:-1])
            session.accept_fence = row[-1]
    elif sid and _update_returns_rows():
        ops, pk = connection.ops, ChatSession._meta.pk
        params = [
            ops.adapt_datetimefield_value(now),
            ops.adapt_datetimefield_value(expires_at),
            pk.get_db_prep_value(sid, connection),
            user.pk,
            ops.adapt_datetimefield_value(now),
        ]
        session = next(iter(ChatSession.objects.raw(_TAKE_SEQ, params)), None)
        if session is not None:
            vault_row = _vault_unless_waited(
                session, session.vault_wrapped_key, session.vault_entries, session.seen_seq
            )
    elif sid:
        # No UPDATE ... RETURNING (SQLite before 3.35, which Django 5.2 still runs on): a
        # locking read and an update; the scrub reads the vault if it needs it.
        live = ChatSession.objects.filter(pk=sid, owner=user, expires_at__gt=now)
        session = live.select_for_update().first()
        if session is not None:
            live.update(next_seq=F("next_seq") + 1, last_activity_at=now, expires_at=expires_at)
            session.next_seq += 1
            session.last_activity_at, session.expires_at = now, expires_at
    if session is None:
        raise _not_found(user=user, session_id=sid, detail=SESSION_NOT_FOUND, what="session")
    session.next_seq -= 1
    session.vault_row = vault_row
    return session


def _update_returns_rows() -> bool:
    """Whether ``UPDATE ... RETURNING`` runs here: on Postgres and on SQLite from 3.35
    (Django's ``can_return_columns_from_insert``); MySQL and MariaDB have no such UPDATE."""
    return connection.vendor != "mysql" and connection.features.can_return_columns_from_insert


def _vault_unless_waited(
    session: ChatSession, wrapped_key: bytes | None, entries: bytes | None, seen_seq: int
) -> SessionVault | None | privacy._Unread:
    """The vault ``_TAKE_SEQ`` read, or ``UNREAD`` if the statement waited for a lock.

    ``seen_seq`` is the counter as the statement's snapshot holds it: on Postgres the one
    before this statement's increment, or less if it waited for another writer; SQLite's
    subquery sees the increment, and a write there never works from an older snapshot.
    """
    if seen_seq < session.next_seq - 1:
        return privacy.UNREAD
    return _vault(session.pk, wrapped_key, entries)


# Its columns are named, not ``*``: a connection keeps the statement prepared, and a
# prepared statement whose result columns change (a migration adds one) fails. The table
# goes by its own name, not an alias: SQLite's RETURNING knows no alias of the table.
_SESSIONS = ChatSession._meta.db_table
_TAKE_SEQ = f"""
    UPDATE {_SESSIONS}
    SET next_seq = next_seq + 1, last_activity_at = %s, expires_at = %s
    WHERE id = %s AND owner_id = %s AND expires_at > %s
    RETURNING {rows.columns(_SESSIONS, ChatSession)},
        (SELECT v.wrapped_key FROM sessions_app_sessionvault AS v
            WHERE v.session_id = {_SESSIONS}.id) AS vault_wrapped_key,
        (SELECT v.entries FROM sessions_app_sessionvault AS v
            WHERE v.session_id = {_SESSIONS}.id) AS vault_entries,
        (SELECT seen.next_seq FROM {_SESSIONS} AS seen WHERE seen.id = {_SESSIONS}.id) AS seen_seq
"""  # noqa: S608 - column names from the model; values are parameters
# On Postgres, the fence of the message (``services.common.fence_next``), taken in the
# statement that locks the session: RETURNING runs once the row is locked.
_TAKE_SEQ_FENCED = f"{_TAKE_SEQ.rstrip()},\n        nextval('{FENCE_SEQUENCE}') AS fence\n"


def turn_get_for_owner(*, user: AbstractBaseUser, turn_id: object) -> Turn:
    """Return the caller's turn in a live session, with its messages in ``exchange``."""
    tid = as_uuid(turn_id)
    turn, vault_row = _turn_owned(user, tid) if tid else (None, None)
    if turn is None:
        session_id = Turn.objects.filter(pk=tid).values_list("session_id", flat=True).first()
        raise _not_found(
            user=user, session_id=session_id, turn_id=tid, detail=TURN_NOT_FOUND, what="turn"
        )
    exchange = history_store().turn_messages(session=turn.session, turn_id=turn.pk)
    turn.exchange = privacy.messages_restore(
        session_id=turn.session_id, messages=exchange, vault_row=vault_row
    )
    return turn


def _turn_owned(user: AbstractBaseUser, tid: uuid.UUID) -> tuple[Turn | None, SessionVault | None]:
    """Return the caller's turn in a live session with its session, and the session's vault
    (None: it has none), read along so that restoring the exchange needs no query of its own.

    Every wait ends with this read: on Postgres it is one statement written out
    (``rows``), which costs a fraction of the CPU the ORM takes to build it.
    """
    if rows.in_sql():
        row = rows.one(_TURN_OWNED, [tid, user.pk, timezone.now()])
        turn = rows.turn_from_row(row[:-2] if row else None)
        return turn, (_vault(turn.session_id, *row[-2:]) if turn else None)
    turns = Turn.objects.select_related("session", "session__vault")
    turn = turns.filter(pk=tid, session__in=_live_owned(user)).first()
    return turn, getattr(turn.session, "vault", None) if turn else None


def _vault(
    session_id: uuid.UUID, wrapped_key: bytes | None, entries: bytes | None
) -> SessionVault | None:
    if wrapped_key is None:
        return None
    return SessionVault(session_id=session_id, wrapped_key=wrapped_key, entries=entries)


# The owner gate of ``_live_owned``, written out: the owner's live session.
_TURN_OWNED = f"""
    SELECT {rows.columns("t", Turn)}, {rows.columns("s", ChatSession)},
        v."wrapped_key", v."entries"
    FROM "{Turn._meta.db_table}" AS t
    JOIN "{ChatSession._meta.db_table}" AS s ON s."id" = t."session_id"
    LEFT JOIN "{SessionVault._meta.db_table}" AS v ON v."session_id" = t."session_id"
    WHERE t."id" = %s AND s."owner_id" = %s AND s."expires_at" > %s
"""  # noqa: S608 - names from the models; values are parameters


class SessionHistory(Sequence):
    """A session's messages as a sequence a paginator can slice: each slice is one read."""

    def __init__(self, session: ChatSession) -> None:
        self.session = session

    def __len__(self) -> int:
        return self.session.next_seq - 1  # seq runs 1, 2, 3... without gaps

    def __getitem__(self, index):
        if not isinstance(index, slice):
            raise TypeError("a session's history is read by slices")
        start, stop, _ = index.indices(len(self))
        page = history_store().page(session=self.session, offset=start, limit=stop - start)
        return privacy.messages_restore(session_id=self.session.pk, messages=page)


def message_list_for_owner(*, user: AbstractBaseUser, session_id: object) -> SessionHistory:
    """Return the messages of the caller's session, ordered by ``seq``."""
    return SessionHistory(chat_session_get_for_owner(user=user, session_id=session_id))


def turn_refresh_for_owner(*, user: AbstractBaseUser, turn: Turn) -> Turn:
    """Re-read the caller's turn after a wait; if the database is unreachable, return ``turn``.

    The turn is accepted already: an error answer now would make the client send the
    message again. A connection killed during the wait (a restart, a failover) is replaced
    once; if the database still does not answer, the turn is returned as last read.
    """
    return _or_when_down(turn, turn_get_for_owner, user=user, turn_id=turn.pk)


def turn_ended_for_owner(*, user: AbstractBaseUser, turn: Turn) -> bool:
    """Tell whether the caller's turn has ended or is gone: one small query, no content.

    A wait re-reads the whole turn only once this says so. If the database cannot answer,
    say no: the wait goes on, as ``turn_refresh_for_owner`` would have it.
    """
    return _or_when_down(False, _turn_ended, user=user, turn_id=turn.pk)


def _turn_ended(*, user: AbstractBaseUser, turn_id: uuid.UUID) -> bool:
    owned = Turn.objects.filter(pk=turn_id, session__in=_live_owned(user))
    return owned.values_list("status", flat=True).first() not in Turn.IN_FLIGHT


def _or_when_down(fallback: T, fn: Callable[..., T], /, **kwargs: object) -> T:
    """Run ``fn``, once more on a fresh connection if its own was lost; if the database
    still does not answer, return ``fallback``.

    For reads after a wait, whose answer must not turn into an error. Inside a transaction
    the error stands: the transaction is broken and its owner must decide.
    """
    try:
        return once_more_on_fresh_connection(fn, **kwargs)
    except Exception as exc:
        if not is_outage(exc) or connection.in_atomic_block:
            raise
        return fallback
