"""A reviewer's decisions on flagged entries and what they do to the withheld replies: the
review console's (``admin.py``) actions and pages call these, and hold nothing of their own.

A reply is released only if its user is not held (``holds``): delivered during the hold,
it would tell a prober that it was flagged, or that it was clean, the one thing the hold
keeps from them.
"""

import logging
from collections.abc import Iterable

from django.db.models import Q

from core.errors import BackendUnavailable
from sessions_app.services import turn_release_withheld

from . import services
from .holds import HELD_REASON, leak_hold_active
from .models import AuditEntry

logger = logging.getLogger(__name__)

# A decision taken; one taken whose release waits for its user's leak hold to lift; one
# taken whose release the history store or the leak index refused (out): the reply is still
# withheld, and the same action releases it later.
DECIDED, KEPT_HELD, NOT_RELEASED = "decided", "kept while held", "not released"
KEPT_NOTE = (
    "replies stay withheld while their user is held: release them with "
    '"Release withheld replies found harmless" once the hold has lifted'
)
NOT_RELEASED_NOTE = (
    "replies stay withheld, as the history store did not answer: release them with "
    '"Release withheld replies found harmless" once it does'
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
    if wanted:
        try:
            released = turn_release_withheld(turn_id=entry.turn_id)
        except BackendUnavailable:  # the history store or the leak index
            logger.warning("entry %s decided; its reply not released: store down", entry.pk)
            return NOT_RELEASED
        if released:
            services.audit_reply_released(entry_id=entry.pk, reviewer_id=reviewer_id)
    return DECIDED


def harmless_release(entry_ids: Iterable[int], *, reviewer_id: int) -> tuple[int, int, int]:
    """Deliver the withheld replies of ``entry_ids`` found harmless: those the leak hold
    alone withheld (the scan found nothing in them) and flags marked false positives, of
    users no longer held; return how many were released, how many left for their user's
    hold and how many the history store refused (to try again). Released after the hold, a
    prober's still tell which held replies were clean: release them only when review has
    found their user no prober."""
    harmless = AuditEntry.objects.filter(
        pk__in=list(entry_ids), kind=AuditEntry.Kind.REPLY, turn_id__isnull=False
    ).filter(
        Q(flagged=False, reason=HELD_REASON)
        | Q(flagged=True, review_state=AuditEntry.ReviewState.FALSE_POSITIVE)
    )
    released = still_held = refused = 0
    for entry in harmless.only("pk", "user_id", "turn_id"):
        if leak_hold_active(user_id=entry.user_id):
            still_held += 1
            continue
        try:
            if turn_release_withheld(turn_id=entry.turn_id):
                services.audit_reply_released(entry_id=entry.pk, reviewer_id=reviewer_id)
                released += 1
        except BackendUnavailable:  # the history store or the leak index
            logger.warning("entry %s: its reply not released: store down", entry.pk)
            refused += 1
    return released, still_held, refused
