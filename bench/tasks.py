"""The floor phase's task: a turn's Celery and Claude work, without the turn's promises."""

from celery import shared_task

from sessions_app import llm
from sessions_app.events.notify import _publish


@shared_task(name="bench.floor_turn", acks_late=True, reject_on_worker_lost=True)
def floor_turn(job: str, content: str) -> None:
    """Call Claude as a turn's worker does (the same SDK client and request), then wake the
    waiter as a turn's end does; no claim, history, scan, reply or audit to store."""
    llm._reply_text(llm._create([{"role": "user", "content": content}], timeout=30, retries=0))
    _publish(job, "completed")
