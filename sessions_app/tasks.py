"""Celery tasks: each takes an id, re-fetches, returns early if the work is done."""

import logging
import time
from datetime import datetime, timedelta

from celery import Task, shared_task
from celery.exceptions import Retry, SoftTimeLimitExceeded
from django.conf import settings
from django.db import close_old_connections

from . import llm, services
from .errors import is_outage, once_more_on_fresh_connection
from .isolation import IsolationViolation, bound
from .models import Turn
from .selectors import turn_history

logger = logging.getLogger(__name__)


def _backoff(attempt: int) -> float:
    return settings.TURN_RETRY_DELAY_SECONDS * (2 ** max(attempt - 1, 0))


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def run_turn(self, turn_id: str) -> str:
    """Answer one turn: call Claude with the session's history and store the reply.

    Safe to redeliver, even while a first run is alive: a finished turn is skipped, and
    ``turn_complete`` keeps one reply per turn in the database.
    """
    try:
        return _run_turn(self, turn_id)
    except Retry:
        raise
    except Exception as exc:
        if not is_outage(exc):
            services.turn_fail(
                turn_id=turn_id,
                code="internal_error",
                detail="The reply could not be produced; send the message again.",
            )
            raise
        # Still down after a reconnect: try the whole turn again a little later.
        close_old_connections()
        if self.request.is_eager:
            # An eager retry runs at once, in this very call: it would spin while the
            # service is down. The turn stays in flight; the sweep or the session's next
            # message ends it.
            raise
        raise self.retry(countdown=_backoff(1), exc=exc) from exc


def _run_turn(task: Task, turn_id: str) -> str:
    turn = once_more_on_fresh_connection(services.turn_claim, turn_id=turn_id)
    if turn is None:
        return "skipped"
    # The turn's whole life, every attempt included, fits in TURN_DEADLINE_SECONDS, so a
    # turn Claude cannot answer still ends ``failed`` within API.md's 120 s.
    deadline = (turn.deadline_at or _deadline_of(turn)).timestamp()
    owner_id = turn.session.owner_id
    with bound(user_id=owner_id, session_id=turn.session_id):
        history = once_more_on_fresh_connection(turn_history, turn=turn, user_id=owner_id)
        try:
            reply = llm.send(history, deadline=deadline)
        except IsolationViolation:
            services.turn_fail(
                turn_id=turn.pk,
                attempt=turn.attempts,
                code="isolation_violation",
                detail="The reply was refused by the isolation guard; send the message again.",
            )
            return "failed"
        except (llm.LLMError, SoftTimeLimitExceeded) as exc:
            return _retry_or_fail(task, turn=turn, exc=exc, deadline=deadline)
        stored = once_more_on_fresh_connection(services.turn_complete, turn_id=turn.pk, reply=reply)
    return "completed" if stored else "skipped"


def _deadline_of(turn: Turn) -> datetime:
    # Turns accepted before deadline_at existed.
    return turn.created_at + timedelta(seconds=settings.TURN_DEADLINE_SECONDS)


def _retry_or_fail(task: Task, *, turn: Turn, exc: Exception, deadline: float) -> str:
    countdown = _backoff(turn.attempts)
    transient = getattr(exc, "transient", True)
    in_time = time.time() + countdown < deadline - llm.MIN_CALL_SECONDS
    if transient and in_time and turn.attempts < settings.TURN_MAX_ATTEMPTS:
        logger.info("turn %s attempt %s failed; retrying", turn.pk, turn.attempts)
        if not services.turn_requeue(turn_id=turn.pk, attempt=turn.attempts):
            return "skipped"  # a newer run of this turn owns it now
        raise task.retry(countdown=countdown, exc=exc)
    services.turn_fail(
        turn_id=turn.pk,
        attempt=turn.attempts,
        code=getattr(exc, "code", "timeout"),
        detail=getattr(exc, "detail", "The assistant took too long to answer; send again."),
    )
    return "failed"


@shared_task(acks_late=False, ignore_result=True)
def sweep_stale_turns() -> dict[str, int]:
    """Re-queue or fail turns whose task was lost; beat runs it every ``SWEEP_INTERVAL``."""
    return services.turn_sweep_stale(older_than_seconds=settings.STALE_TURN_SECONDS)


@shared_task(acks_late=False, ignore_result=True)
def purge_expired_sessions() -> int:
    """Erase expired sessions; beat runs it periodically."""
    return services.chat_session_purge_expired()
