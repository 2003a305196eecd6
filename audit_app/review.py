"""A reviewer's decisions on flagged entries and what they do to the withheld replies: the
review console's (``admin.py``) actions and pages call these, and hold nothing of their own.

A reply is released only if its user is not held (``holds``): delivered during the hold,
it would tell a prober that it was flagged, or that it was clean, the one thing the hold
keeps from them.
"""

import logging
from collections.abc import Collection, Iterable
from types import MappingProxyType

from django.db.models import Q

from core.errors import BackendUnavailable
from sessions_app.services import turn_release_withheld

from . import services
from .holds import HELD_REASON, leak_hold_active
from .index import IndexUnavailable
from .models import AuditEntry

logger = logging.getLogger(__name__)

# A decision taken; one taken whose release waits for its user's leak hold to lift; one
# taken whose release the leak index or the history store refused (out): the reply is still
# withheld, and the same action releases it later. A release registers the reply's
# fingerprints before it rewrites the stored reply, so either can be the one out: the
# outcome says which, so that the reviewer is told what to wait for.
DECIDED, KEPT_HELD = "decided", "kept while held"
NOT_RELEASED_INDEX = "not released: the leak index refused"
NOT_RELEASED_STORE = "not released: the history store refused"
NOT_RELEASED = (NOT_RELEASED_INDEX, NOT_RELEASED_STORE)
_REFUSER = MappingProxyType(
    {NOT_RELEASED_INDEX: "the leak index", NOT_RELEASED_STORE: "the history store"}
)
KEPT_NOTE = (
    "replies stay withheld while their user is held: release them with "
    '"Release withheld replies found harmless" once the hold has lifted'
)


def refusers(outcomes: Collection[str | None]) -> str:
    """Name what refused the releases among ``outcomes`` ("the leak index", "the history
    store" or both, joined by "and"), for a notice; empty if nothing refused."""
    return " and ".join(name for outcome, name in _REFUSER.items() if outcome in outcomes)


def not_released_note(outcomes: Collection[str | None]) -> str:
    """Say, after a count, that those replies stay withheld and what did not answer."""
    parts = refusers(outcomes)
    they = "they do" if " and " in parts else "it does"
    return (
        f"replies stay withheld, as {parts} did not answer: release them with "
        f'"Release withheld replies found harmless" once {they}'
    )


def _not_released(exc: BackendUnavailable) -> str:
    return NOT_RELEASED_INDEX if isinstance(exc, IndexUnavailable) else NOT_RELEASED_STORE


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
        except BackendUnavailable as exc:  # the leak index or the history store
            outcome = _not_released(exc)
            logger.warning("entry %s decided; its reply %s", entry.pk, outcome)
            return outcome
        if released:
            services.audit_reply_released(entry_id=entry.pk, reviewer_id=reviewer_id)
    return DECIDED


def harmless_release(entry_ids: Iterable[int], *, reviewer_id: int) -> tuple[int, int, list[str]]:
    """Deliver the withheld replies of ``entry_ids`` found harmless: those the leak hold
    alone withheld (the scan found nothing in them) and flags marked false positives, of
    users no longer held; return how many were released, how many left for their user's
    hold, and the ``NOT_RELEASED`` outcome of each the leak index or the history store
    refused (to try again). Released after the hold, a prober's still tell which held
    replies were clean: release them only when review has found their user no prober."""
    harmless = AuditEntry.objects.filter(
        pk__in=list(entry_ids), kind=AuditEntry.Kind.REPLY, turn_id__isnull=False
    ).filter(
        Q(flagged=False, reason=HELD_REASON)
        | Q(flagged=True, review_state=AuditEntry.ReviewState.FALSE_POSITIVE)
    )
    released = still_held = 0
    refused: list[str] = []
    for entry in harmless.only("pk", "user_id", "turn_id"):
        if leak_hold_active(user_id=entry.user_id):
            still_held += 1
            continue
        try:
            if turn_release_withheld(turn_id=entry.turn_id):
                services.audit_reply_released(entry_id=entry.pk, reviewer_id=reviewer_id)
                released += 1
        except BackendUnavailable as exc:  # the leak index or the history store
            refused.append(_not_released(exc))
            logger.warning("entry %s: its reply %s", entry.pk, refused[-1])
    return released, still_held, refused
