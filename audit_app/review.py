"""A reviewer's decisions on flagged entries and what they do to the withheld replies: the
review console's (``admin.py``) actions and pages call these, and hold nothing of their own.

A reply is released only if its user is not held (``holds``): delivered during the hold,
it would tell a prober that it was flagged, or that it was clean, the one thing the hold
keeps from them.
"""

from collections.abc import Iterable

from django.db.models import Q

from sessions_app.services import turn_release_withheld

from . import services
from .holds import HELD_REASON, leak_hold_active
from .models import AuditEntry

# A decision taken; one taken whose release waits for its user's leak hold to lift.
DECIDED, KEPT_HELD = "decided", "kept while held"
KEPT_NOTE = (
    "replies stay withheld while their user is held: release them with "
    '"Release withheld replies found harmless" once the hold has lifted'
)


def review_decide(
    *,
    entry_id: int,
    reviewer_id: int,
    leak: bool,
    release: bool,
    open_only: bool = False,
    seen: str | None = None,
) -> str | None:
    """Record the decision (with ``open_only``, only on an open flag; with ``seen``, only in
    that state; None if it was not); a false positive released delivers the withheld reply,
    unless its user is held (``KEPT_HELD``)."""
    entry = services.audit_review_decide(
        entry_id=entry_id, reviewer_id=reviewer_id, leak=leak, open_only=open_only, seen=seen
    )
    if entry is None:
        return None
    wanted = release and not leak and entry.turn_id is not None
    if wanted and leak_hold_active(user_id=entry.user_id):
        return KEPT_HELD
    if wanted and turn_release_withheld(turn_id=entry.turn_id):
        services.audit_reply_released(entry_id=entry.pk, reviewer_id=reviewer_id)
    return DECIDED


def harmless_release(entry_ids: Iterable[int], *, reviewer_id: int) -> tuple[int, int]:
    """Deliver the withheld replies of ``entry_ids`` found harmless: those the leak hold
    alone withheld (the scan found nothing in them) and flags marked false positives, of
    users no longer held; return how many were released and how many left for their user's
    hold. Released after the hold, a prober's still tell which held replies were clean:
    release them only when review has found their user no prober."""
    harmless = AuditEntry.objects.filter(
        pk__in=list(entry_ids), kind=AuditEntry.Kind.REPLY, turn_id__isnull=False
    ).filter(
        Q(flagged=False, reason=HELD_REASON)
        | Q(flagged=True, review_state=AuditEntry.ReviewState.FALSE_POSITIVE)
    )
    released = still_held = 0
    for entry in harmless.only("pk", "user_id", "turn_id"):
        if leak_hold_active(user_id=entry.user_id):
            still_held += 1
        elif turn_release_withheld(turn_id=entry.turn_id):
            services.audit_reply_released(entry_id=entry.pk, reviewer_id=reviewer_id)
            released += 1
    return released, still_held
