"""Celery tasks, and the one place that queues them.

Each task takes ids, re-fetches, returns early if the work is done and calls services.
Services never queue a task: they write; this module queues and calls them.
"""

import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from celery import Task, current_app, shared_task
from celery.exceptions import Reject, Retry, SoftTimeLimitExceeded
from django.conf import settings
from django.core.cache import cache
from django.db import close_old_connections

from audit_app.services import IndexUnavailable, audit_chain_seal, fingerprints_purge_expired
from core.errors import ServiceUnavailable, is_outage, once_more_on_fresh_connection

from . import llm, privacy, services
from .isolation import IsolationViolation, bound
from .models import Turn
from .pii import holds_placeholder
from .queries import turn_history, turn_in_flight
from .stores import StoredMessage, history_store
from .tokens import auth_tokens_purge_expired

logger = logging.getLogger(__name__)


def _backoff(attempt: int) -> float:
    return settings.TURN_RETRY_DELAY_SECONDS * (2 ** max(attempt - 1, 0))


def turn_enqueue(*, turn: Turn) -> None:
    """Queue the turn's task; if the broker is down, raise 503.

    Called after the accepting transaction committed, so a worker never sees a turn
    that is not there yet. The caller undoes the turn on any error here (the view's
    ``_unqueued_discard``), which keeps "an error leaves nothing behind". The task
    carries the owner and session fixed when the message was accepted: the worker binds
    its isolation scope from them, not from the row it is about to read.
    """
    try:
        _queue(turn)
    except Exception as exc:
        if not is_outage(exc):
            raise
        logger.warning("broker unavailable; turn %s not queued", turn.pk)
        raise ServiceUnavailable() from exc


def turn_settle_later(*, turn_id: uuid.UUID, session_id: uuid.UUID) -> None:
    """Have an accept whose COMMIT nothing could confirm settled once the database answers:
    its turn, if the COMMIT took, removed with its message, as its 503 told the client.

    Queued, to outlive the request and a database that is still down; the stale-turn sweep
    removes the turn too if this cannot (``services.turn_mark_unconfirmed``). Never raises:
    the 503 being answered matters more.
    """
    try:
        if current_app.conf.task_always_eager:
            # An eager task's retries would run in-line at once: one try, then the sweep's.
            services.turn_discard(turn_id=turn_id, session_id=session_id)
        else:
            discard_unconfirmed_turn.apply_async(args=[str(turn_id), str(session_id)], countdown=1)
    except Exception:  # noqa: BLE001 - the sweep removes the marked turn
        logger.warning("turn %s, perhaps committed, is left to the sweep", turn_id, exc_info=True)


# About four minutes of tries while the database is down or the turn's COMMIT still under
# way; past the stale-turn bound the sweep removes the marked turn as well.
SETTLE_RETRIES, SETTLE_MAX_DELAY = 12, 30


@shared_task(bind=True, acks_late=True, max_retries=SETTLE_RETRIES, ignore_result=True)
def discard_unconfirmed_turn(self: Task, turn_id: str, session_id: str) -> None:
    """Remove the turn of an accept answered 503 whose COMMIT took after all, with its
    message; nothing if it did not take, or if a worker already has it."""
    try:
        services.turn_discard(turn_id=uuid.UUID(turn_id), session_id=uuid.UUID(session_id))
    except Exception as exc:
        if not is_outage(exc):
            raise
        countdown = min(2**self.request.retries, SETTLE_MAX_DELAY)
        raise self.retry(countdown=countdown, exc=exc) from exc


def _queue(turn: Turn) -> None:
    run_turn.delay(str(turn.pk), turn.session.owner_id, str(turn.session_id))


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def run_turn(self, turn_id: str, user_id: int, session_id: str) -> str:
    """Answer one turn: call Claude with the session's history and store the reply.

    Safe to redeliver, even while a first run is alive: a finished turn is skipped, and
    ``turn_complete`` keeps one reply per turn.
    """
    turn = None
    try:
        turn = once_more_on_fresh_connection(services.turn_claim, turn_id=turn_id)
        if turn is None:
            return "skipped"
        return _run_turn(self, turn, user_id=user_id, session_id=uuid.UUID(session_id))
    except (Retry, Reject):
        # Reject: the retry could not be queued (the broker is down). The turn is pending
        # again (``_retry_or_fail``), and the stale-turn sweep queues it once more.
        raise
    except Exception as exc:
        if callable(audit := getattr(exc, "audit", None)):
            audit()  # after the failed step's transaction: the trail keeps it
        if not is_outage(exc):
            services.turn_fail(
                turn_id=turn_id,
                # Only this run's attempt: a redelivered run that claimed the turn since
                # owns it, and its reply must not be thrown away for this run's error.
                attempt=None if turn is None else turn.attempts,
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


def _run_turn(task: Task, turn: Turn, *, user_id: int, session_id: uuid.UUID) -> str:
    # The turn's whole life, every attempt included, fits in TURN_DEADLINE_SECONDS, so a
    # turn Claude cannot answer still ends ``failed`` within API.md's 120 s.
    deadline = (turn.deadline_at or _deadline_of(turn)).timestamp()
    with bound(user_id=user_id, session_id=session_id):
        history = once_more_on_fresh_connection(turn_history, turn=turn)
        if not history:
            return _message_lost(turn)
        try:
            reply = llm.send(
                history, deadline=deadline, still_wanted=_still_wanted(turn, history=history)
            )
        except IsolationViolation:
            return _failed(
                turn,
                code="isolation_violation",
                detail="The reply was refused by the isolation guard; send the message again.",
            )
        except llm.TurnAbandoned:
            return "abandoned"  # the session was deleted: nothing more is sent or stored
        except (llm.LLMError, SoftTimeLimitExceeded) as exc:
            return _retry_or_fail(task, turn=turn, exc=exc, deadline=deadline)
        sent = any(holds_placeholder(message.content) for message in history)
        scrubbed = privacy.reply_scrub_read(
            session_id=turn.session_id, reply=reply, sent_placeholders=sent
        )
        ended = once_more_on_fresh_connection(
            services.turn_deliver,
            turn=turn,
            reply=scrubbed.text,
            known_placeholders=scrubbed.vault_placeholders,
        )
    # The worker's log line says how the turn ended: completed, or suppressed by the scan.
    return ended or "skipped"


def _message_lost(turn: Turn) -> str:
    # The history holds no message of this turn: its session was deleted meanwhile, or a
    # store outside the database lost it (an undo after a COMMIT whose outcome could not be
    # told, an eviction). Claude is not sent a conversation without what it is to answer.
    if not turn_in_flight(turn_id=turn.pk):
        return "abandoned"
    logger.warning("turn %s: its message is not in the history store", turn.pk)
    return _failed(
        turn,
        code="message_lost",
        detail="Your message was lost before it could be answered; send it again.",
    )


def _failed(turn: Turn, *, code: str, detail: str) -> str:
    # This run's attempt only: a redelivered run that claimed the turn since owns it.
    services.turn_fail(turn_id=turn.pk, attempt=turn.attempts, code=code, detail=detail)
    return "failed"


def _still_wanted(turn: Turn, *, history: list[StoredMessage]) -> Callable[[], bool]:
    """Return the check ``llm.send`` makes before each call to Claude: is the turn still in
    flight, its session not deleted?

    Before the first call the history just read answers it, if it is not empty (a DELETE
    erases all of a session's messages) and the store's reads miss what a DELETE erased:
    the session was there when the statement that runs right before the call ran. Retries
    ask the database.
    """
    answered = bool(history) and history_store().reads_see_erase

    def check() -> bool:
        nonlocal answered
        if answered:
            answered = False
            return True
        return turn_in_flight(turn_id=turn.pk)

    return check


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
    return _failed(
        turn,
        code=getattr(exc, "code", "timeout"),
        detail=getattr(exc, "detail", "The assistant took too long to answer; send again."),
    )


def turns_sweep(*, older_than_seconds: int) -> dict[str, int]:
    """Re-queue or fail turns whose task was lost, and remove those answered 503 whose
    COMMIT took; return the counts."""
    requeued, failed, discarded = services.turn_sweep_stale(older_than_seconds=older_than_seconds)
    for turn in requeued:
        _queue(turn)
    return {"requeued": len(requeued), "failed": failed, "discarded": discarded}


@shared_task(acks_late=False, ignore_result=True)
def sweep_stale_turns() -> dict[str, int]:
    """Re-queue or fail turns whose task was lost; beat runs it every ``SWEEP_INTERVAL``."""
    return turns_sweep(older_than_seconds=settings.STALE_TURN_SECONDS)


@shared_task(acks_late=False, ignore_result=True)
def purge_expired_sessions() -> int:
    """Erase expired sessions, and expired API tokens and fingerprint postings; beat runs
    it periodically."""
    auth_tokens_purge_expired()
    erased = services.chat_session_purge_expired()
    try:
        fingerprints_purge_expired()
    except IndexUnavailable:
        logger.warning(
            "fingerprint index unavailable: its expired postings wait for the next purge"
        )
    return erased


def beat_jobs_if_due() -> None:
    """Without beat (the embedded setup runs tasks eagerly), run its jobs in-line, each at
    most once per its period, on whichever request comes first.

    Expired sessions must not stay in the SQLite file for good, the audit log must be
    sealed into its hash chain there too, and a turn whose run was lost (the server
    stopped mid-turn) must still end: the sweep re-runs it, here in the request.
    """
    if not current_app.conf.task_always_eager:
        return  # beat's job
    jobs = (
        ("sweep-stale-due", settings.SWEEP_INTERVAL_SECONDS, sweep_stale_turns),
        ("purge-expired-due", settings.PURGE_INTERVAL_SECONDS, purge_expired_sessions),
        ("seal-audit-chain-due", settings.AUDIT_SEAL_INTERVAL_SECONDS, audit_chain_seal),
    )
    for key, period, job in jobs:
        try:
            due = cache.add(key, 1, timeout=period)
        except Exception as exc:
            if not is_outage(exc):
                raise
            return  # the cache is down: the jobs wait for a request that finds it up
        if due:
            job()
