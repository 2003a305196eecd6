"""A turn's lifecycle in the worker: claim it, put it back, fail it, sweep the stale."""

import logging
import uuid

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from core.ids import as_uuid

from .. import events, rows
from ..models import ChatSession, Turn
from ..queries import turn_get, turn_list_stale
from .common import IN_FLIGHT_SQL, SESSION_TABLE, STALLED_DETAIL, TURN_TABLE, deadline

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


_START_SQL = f"""
    UPDATE "{TURN_TABLE}" AS t
    SET "status" = %s, "attempts" = t."attempts" + 1, "started_at" = %s, "updated_at" = %s
    FROM "{SESSION_TABLE}" AS s
    WHERE t."id" = %s AND t."status" IN ({IN_FLIGHT_SQL}) AND s."id" = t."session_id"
    RETURNING {rows.columns("t", Turn)}, {rows.columns("s", ChatSession)}
"""  # noqa: S608 - names from the models, statuses from constants; values are parameters


def _turn_start(turn_id: object) -> Turn | None:
    """Mark the turn running and count the attempt; return it with its session, or None if
    it is finished or gone."""
    tid = as_uuid(turn_id)
    if tid is None:
        return None
    now = timezone.now()
    if rows.in_sql():
        return rows.turn_from_row(rows.one(_START_SQL, [Turn.Status.RUNNING.value, now, now, tid]))
    updated = Turn.objects.filter(pk=tid, status__in=Turn.IN_FLIGHT).update(
        status=Turn.Status.RUNNING, attempts=F("attempts") + 1, started_at=now, updated_at=now
    )
    return turn_get(turn_id=tid) if updated else None


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


def turn_sweep_stale(*, older_than_seconds: int) -> tuple[list[Turn], int]:
    """Decide turns left pending or running past the bound: return those put back to
    pending (for the caller to queue again) and how many were failed.

    Their task was lost (the broker restarted empty) or their worker died after acking.
    Each turn is decided under a skip-locked row lock and its ``updated_at`` is bumped, so
    with many sweepers at once exactly one re-queues it per period.
    """
    requeued: list[Turn] = []
    failed = 0
    for turn_id in turn_list_stale(older_than_seconds=older_than_seconds).values_list(
        "pk", flat=True
    ):
        turn = _turn_sweep_one(turn_id=turn_id, older_than_seconds=older_than_seconds)
        if turn is not None and turn.is_finished:
            failed += 1
        elif turn is not None:
            logger.warning("re-queueing stale turn %s", turn_id)
            requeued.append(turn)
    return requeued, failed


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
