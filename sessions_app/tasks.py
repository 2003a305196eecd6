"""Celery tasks: each takes an id, re-fetches, returns early if the work is done."""

import logging

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import close_old_connections

from . import llm, services
from .errors import is_outage
from .isolation import IsolationViolation, bound
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
        turn = services.turn_claim(turn_id=turn_id)
    except Exception as exc:
        if not is_outage(exc):
            raise
        # A dropped database connection: close it so the retry opens a fresh one.
        close_old_connections()
        raise self.retry(countdown=_backoff(1), exc=exc) from exc
    if turn is None:
        return "skipped"
    owner_id = turn.session.owner_id
    with bound(user_id=owner_id, session_id=turn.session_id):
        try:
            reply = llm.send(turn_history(turn=turn, user_id=owner_id))
        except IsolationViolation:
            services.turn_fail(
                turn_id=turn.pk,
                code="isolation_violation",
                detail="The reply was refused by the isolation guard; send again.",
            )
            return "failed"
        except (llm.LLMError, SoftTimeLimitExceeded) as exc:
            return _retry_or_fail(self, turn=turn, exc=exc)
        except Exception as exc:
            if not is_outage(exc):
                services.turn_fail(
                    turn_id=turn.pk,
                    code="internal_error",
                    detail="The reply could not be produced; send again.",
                )
                raise
            close_old_connections()
            services.turn_requeue(turn_id=turn.pk)
            raise self.retry(countdown=_backoff(turn.attempts), exc=exc) from exc
        try:
            services.turn_complete(turn_id=turn.pk, reply=reply)
        except Exception as exc:
            if not is_outage(exc):
                raise
            close_old_connections()
            raise self.retry(countdown=_backoff(turn.attempts), exc=exc) from exc
    return "completed"


def _retry_or_fail(task, *, turn, exc: Exception) -> str:
    transient = getattr(exc, "transient", True)
    if transient and turn.attempts < settings.TURN_MAX_ATTEMPTS:
        logger.info("turn %s attempt %s failed; retrying", turn.pk, turn.attempts)
        services.turn_requeue(turn_id=turn.pk)
        raise task.retry(countdown=_backoff(turn.attempts), exc=exc)
    services.turn_fail(
        turn_id=turn.pk,
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
