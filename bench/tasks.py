"""The floor phase's task: a turn's Celery and Claude work, without the turn's promises;
and the sql phase's: the same with the worker's statements of a turn."""

import uuid

from celery import shared_task
from django.utils import timezone

from bench import statements
from sessions_app import services
from sessions_app.events.notify import publish_turn_changed
from sessions_app.llm import claude


@shared_task(name="bench.floor_turn", acks_late=True, reject_on_worker_lost=True)
def floor_turn(job: str, content: str) -> None:
    """Call Claude through the worker's SDK client and request builder (one message, not a
    history: a lower bound), then wake the waiter as a turn's end does; no claim, history,
    scan, reply or audit to store."""
    status = "failed"  # told on any error too, so the waiting request is freed now, not in 30 s
    try:
        claude._reply_text(
            claude._create([{"role": "user", "content": content}], timeout=30, retries=0)
        )
        status = "completed"
    finally:
        publish_turn_changed(turn_id=job, status=status)


@shared_task(name="bench.statements_turn", acks_late=True, reject_on_worker_lost=True)
def statements_turn(turn_id: str, content: str, merged: bool = False) -> None:
    """``floor_turn`` with the worker's statements of a turn around the call: the claim and
    the history read before it, the end with its reply and audit entry after (``merged``:
    the end's statements as one)."""
    tid, status = uuid.UUID(turn_id), "failed"
    try:
        if statements.claim(tid, timezone.now()) is None:
            return  # ended already: the waiter reads how
        reply = claude._reply_text(
            claude._create([{"role": "user", "content": content}], timeout=30, retries=0)
        )
        end = statements.end_merged if merged else statements.end
        if end(tid, reply, timezone.now()):
            status = "completed"
    finally:
        if status == "failed":  # ended, so the session's next post is not refused as in flight
            services.turn_fail(turn_id=tid, code="bench", detail="The bench's call failed.")
        publish_turn_changed(turn_id=turn_id, status=status)
