"""A turn's lifecycle in the worker: claim it, put it back, fail it, sweep the stale."""

import logging
import uuid

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from audit_app.holds import LEAK_HOLD_SQL, leak_hold_active, leak_hold_params
from core.errors import is_outage
from core.ids import as_uuid

from .. import events, rows
from ..models import ChatSession, Turn
from ..queries import turn_get, turn_list_stale
from ..stores import BaseHistoryStore, SessionRef, history_store
from ..stores.base import ASSISTANT, USER
from .common import (
    IN_FLIGHT_SQL,
    SESSION_TABLE,
    STALLED_DETAIL,
    TURN_TABLE,
    deadline,
    fence_next,
    lock_timeout,
)

logger = logging.getLogger(__name__)


def turn_claim(*, turn_id: object) -> Turn | None:
    """Mark a turn running and count the attempt; return None if it needs no more work.

    A turn past its attempt budget is failed here, so a task redelivered forever still ends.
    """
    turn = _turn_start(turn_id)
    if turn is not None and turn.attempts > settings.TURN_MAX_ATTEMPTS:
        turn_fail(
            turn_id=turn.pk,
            code="retries_exhausted",
            detail="The assistant could not be reached after several attempts; send again.",
        )
        return None
    if turn is not None:
        events.publish_turn_changed(turn_id=turn.pk, status=Turn.Status.RUNNING)
    return turn


# The owner's leak hold comes with it, a subquery over a small partial index: no statement
# more per turn.
_START_SQL = f"""
    UPDATE "{TURN_TABLE}" AS t
    SET "status" = %s, "attempts" = t."attempts" + 1, "started_at" = %s, "updated_at" = %s
    FROM "{SESSION_TABLE}" AS s
    WHERE t."id" = %s AND t."status" IN ({IN_FLIGHT_SQL}) AND s."id" = t."session_id"
    RETURNING {rows.columns("t", Turn)}, {rows.columns("s", ChatSession)},
        {LEAK_HOLD_SQL.format(owner='s."owner_id"')}
"""  # noqa: S608 - names from the models, statuses from constants; values are parameters


def _turn_start(turn_id: object) -> Turn | None:
    """Mark the turn running and count the attempt; return it with its session and its
    owner's ``leak_hold``, or None if it is finished or gone."""
    tid = as_uuid(turn_id)
    if tid is None:
        return None
    now = timezone.now()
    if rows.in_sql():
        params = [Turn.Status.RUNNING.value, now, now, tid, *leak_hold_params()]
        row = rows.one(_START_SQL, params)
        if row is None:
            return None
        turn = rows.turn_from_row(row[:-1])
        turn.leak_hold = bool(row[-1])
        return turn
    updated = Turn.objects.filter(pk=tid, status__in=Turn.IN_FLIGHT).update(
        status=Turn.Status.RUNNING, attempts=F("attempts") + 1, started_at=now, updated_at=now
    )
    turn = turn_get(turn_id=tid) if updated else None
    if turn is not None:
        turn.leak_hold = leak_hold_active(user_id=turn.session.owner_id)
    return turn


def turn_requeue(*, turn_id: object, attempt: int) -> bool:
    """Put a running turn back to pending before a retry; False if a newer attempt owns it."""
    updated = Turn.objects.filter(pk=turn_id, status=Turn.Status.RUNNING, attempts=attempt).update(
        status=Turn.Status.PENDING, updated_at=timezone.now()
    )
    if updated:
        events.publish_turn_changed(turn_id=turn_id, status=Turn.Status.PENDING)
    return bool(updated)


def turn_lock(turn_id: object) -> Turn | None:
    """Lock the turn's session row, then the turn's; return the turn with that session, or
    None if either is gone.

    The session's row comes first, as every path takes them (a ``DELETE``, an accept, the
    turn's end): two transactions taking the same two rows in opposite orders can each hold
    one and wait for the other. One locking query over the join would leave the order to
    the plan (the turn's first, in practice).
    """
    tid = as_uuid(turn_id)
    if tid is None:
        return None
    of_turn = Turn.objects.filter(pk=tid).values("session_id")  # never changes: no lock needed
    session = ChatSession.objects.select_for_update().filter(pk__in=of_turn).first()
    if session is None:
        return None
    turn = Turn.objects.select_for_update().filter(pk=tid, session_id=session.pk).first()
    if turn is not None:
        Turn.session.field.set_cached_value(turn, session)
    return turn


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
        events.publish_turn_changed(turn_id=turn_id, status=Turn.Status.FAILED)
    return bool(updated)


# How long removing a turn waits for its session's row: a COMMIT of the turn may still be
# under way on a connection that was lost, holding it.
DISCARD_LOCK_MS = 5000
# A turn whose accept was answered 503 though its COMMIT may have taken: marked in the
# cache, since the database could not be written then, for long enough to outlast an
# outage of the database.
UNCONFIRMED_TTL_SECONDS = 24 * 3600


def turn_discard(*, turn_id: uuid.UUID, session_id: uuid.UUID | None = None) -> bool:
    """Remove a pending turn with its message, as if never accepted; return whether it was
    there to remove. One that could not be queued, or one whose accept was answered 503
    while its COMMIT took. A turn gone, ended or running is left; a pending one is removed
    even between two attempts (its next attempt then finds it gone, before any reply).

    With ``session_id``, a COMMIT of the turn still under way is waited for, up to
    ``DISCARD_LOCK_MS``: its accept holds the session's row, and until it ends the turn
    cannot be seen. Past that, ``OperationalError``, to be tried again.
    """
    with transaction.atomic():
        if session_id is not None:
            lock_timeout(DISCARD_LOCK_MS)
            list(ChatSession.objects.select_for_update().filter(pk=session_id).values_list("pk"))
        turn = turn_lock(turn_id)
        if turn is None or turn.status != Turn.Status.PENDING:
            return False
        store = history_store()
        if store.keeps_outside_the_database:
            # The user message once the turn's removal commits: removed before, a COMMIT
            # that then failed would leave a pending turn without it, to end
            # ``message_lost``. Left behind (Redis down), it lies past the session's
            # counter: no reader sees it, the next message takes its seq, its TTL ends it.
            # A reply now: a pending turn's is one whose run lost its commit, never shown,
            # and left at the seq after, it would make the next message's seq look taken.
            # Fenced: a remover that stalled past its lock must not take a reply that a run
            # which claimed and ended the turn since has shown. None for a turn no run has
            # claimed (a run claims under this lock before it writes): one not queued is
            # removed so with its Redis out too (its broker, say), as its answer says.
            if turn.attempts:
                store.discard_turn(
                    session=turn.session,
                    turn_id=turn.pk,
                    roles=(ASSISTANT,),
                    fence=fence_next(),
                )
            ref = SessionRef(pk=turn.session_id, owner_id=turn.session.owner_id)
            tid = turn.pk  # not read in the callback: ``delete()`` sets it to None
            transaction.on_commit(lambda: _discard_outside(store, ref, tid))
        else:
            store.discard_turn(session=turn.session, turn_id=turn.pk)
        turn.delete()
        ChatSession.objects.filter(pk=turn.session_id).update(next_seq=F("next_seq") - 1)
    return True


def _discard_outside(store: BaseHistoryStore, session: SessionRef, turn_id: uuid.UUID) -> None:
    try:
        store.discard_turn(session=session, turn_id=turn_id, roles=(USER,))
    except Exception:  # noqa: BLE001 - committed: the turn is gone whatever this raises
        logger.warning(
            "turn %s removed; its message stays in the history store", turn_id, exc_info=True
        )


def _unconfirmed_key(turn_id: uuid.UUID) -> str:
    return f"turn:{turn_id}:unconfirmed"


def turn_mark_unconfirmed(*, turn_id: uuid.UUID) -> None:
    """Mark a turn whose accept was answered 503 while its COMMIT may have taken, so that
    the stale-turn sweep and the session's next accept remove it instead of answering it.

    The cache down too, the mark is lost: the sweep then answers the turn.
    """
    try:
        cache.set(_unconfirmed_key(turn_id), 1, timeout=UNCONFIRMED_TTL_SECONDS)
    except Exception as exc:
        if not is_outage(exc):
            raise
        logger.warning("cache unavailable: turn %s, perhaps committed, is unmarked", turn_id)


def turn_unconfirmed(*, turn_id: uuid.UUID) -> bool:
    """Tell whether the turn's accept was answered 503 (``turn_mark_unconfirmed``).

    Raise the cache's error if it cannot say: taken for "no", a brief outage would have a
    marked turn answered, or failed, for good.
    """
    return cache.get(_unconfirmed_key(turn_id)) is not None


def turn_sweep_stale(*, older_than_seconds: int) -> tuple[list[Turn], int, int]:
    """Decide turns left pending or running past the bound: return those put back to
    pending (for the caller to queue again), how many were failed and how many removed.

    Their task was lost (the broker restarted empty) or their worker died after acking.
    Each turn is decided under a skip-locked row lock and its ``updated_at`` is bumped, so
    with many sweepers at once exactly one re-queues it per period. A turn whose accept
    was answered 503 (``turn_unconfirmed``) is removed instead: its client was told that
    nothing was kept.
    """
    requeued: list[Turn] = []
    failed = discarded = 0
    for turn_id in turn_list_stale(older_than_seconds=older_than_seconds).values_list(
        "pk", flat=True
    ):
        try:
            marked = turn_unconfirmed(turn_id=turn_id)
        except Exception as exc:
            if not is_outage(exc):
                raise
            logger.warning("cache unavailable: stale turn %s waits for the next sweep", turn_id)
            continue  # still stale, so the next sweep decides it
        if marked:
            discarded += turn_discard(turn_id=turn_id)
            continue
        turn = _turn_sweep_one(turn_id=turn_id, older_than_seconds=older_than_seconds)
        if turn is not None and turn.is_finished:
            failed += 1
        elif turn is not None:
            logger.warning("re-queueing stale turn %s", turn_id)
            requeued.append(turn)
    return requeued, failed, discarded


def _turn_sweep_one(*, turn_id: uuid.UUID, older_than_seconds: int) -> Turn | None:
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
            turn_fail(turn_id=turn.pk, code="stalled", detail=STALLED_DETAIL)
            turn.status = Turn.Status.FAILED
        else:
            now = timezone.now()
            Turn.objects.filter(pk=turn.pk).update(
                status=Turn.Status.PENDING, updated_at=now, deadline_at=deadline(now)
            )
    return turn
