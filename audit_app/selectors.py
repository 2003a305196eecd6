"""Reads of the audit trail: listings, the chain's state, the review console's hooks."""

import uuid
from dataclasses import dataclass

from django.conf import settings
from django.db.models import Count, Min, Q, QuerySet
from django.utils import timezone
from django.utils.module_loading import import_string

from . import chain
from .models import AuditChainHead, AuditEntry
from .services import chain_key

_REVIEW_COLUMNS = (
    "id",
    "chain_seq",
    "kind",
    "flagged",
    "user_id",
    "session_id",
    "reason",
    "content_hash",
    "review_state",
    "reviewed_by_id",
    "reviewed_at",
)


def audit_entries_list(
    *,
    flagged: bool | None = None,
    kind: str | None = None,
    username: str | None = None,
    session_id: uuid.UUID | None = None,
) -> QuerySet[AuditEntry]:
    """Return audit entries, newest first, narrowed by the filters that are given."""
    entries = AuditEntry.objects.select_related("user").order_by("-created_at", "-id")
    if flagged is not None:
        entries = entries.filter(flagged=flagged)
    if kind:
        entries = entries.filter(kind=kind)
    if username:
        entries = entries.filter(user__username=username)
    if session_id:
        entries = entries.filter(session_id=session_id)
    return entries


def audit_open_flag_count() -> int:
    """Return how many flagged entries wait for a reviewer."""
    return AuditEntry.objects.filter(flagged=True, review_state=AuditEntry.ReviewState.OPEN).count()


@dataclass(frozen=True)
class ChainReport:
    verdict: chain.Verdict
    unsealed: int
    oldest_unsealed_age: float | None  # seconds; None when nothing awaits sealing
    # The first entry whose review columns disagree with its review entries; checked only
    # once the chain holds (a broken chain is reported first).
    review: chain.Broken | None = None

    @property
    def ok(self) -> bool:
        return self.verdict.ok and self.review is None


def audit_chain_verify() -> ChainReport:
    """Check the whole sealed chain and each review decision against it, and say how far
    sealing lags behind the writers."""
    head = AuditChainHead.objects.filter(pk=1).first()
    columns = (*chain.HASHED_FIELDS, "prev_hash", "entry_hash")
    sealed = (
        AuditEntry.objects.filter(chain_seq__isnull=False)
        .order_by("chain_seq")
        .values(*columns)
        .iterator(chunk_size=2000)
    )
    verdict = chain.verify(
        sealed,
        key=chain_key(),
        head_seq=head.seq if head else 0,
        head_hash=head.entry_hash if head else "",
    )
    lag = AuditEntry.objects.filter(chain_seq__isnull=True).aggregate(
        n=Count("id"), oldest=Min("created_at")
    )
    age = (timezone.now() - lag["oldest"]).total_seconds() if lag["oldest"] else None
    review = _reviews_verify() if verdict.ok else None
    return ChainReport(verdict=verdict, unsealed=lag["n"], oldest_unsealed_age=age, review=review)


def _reviews_verify() -> chain.Broken | None:
    # One statement, so one snapshot: a decision changes the entry and writes its review
    # entry in one transaction, and both are seen or neither. Review entries not sealed yet
    # count as much as sealed ones: the decision they record is already in the entry's
    # columns, so leaving them out would report every decision taken since the last seal as
    # tampering. Until sealed, such an entry is no better protected than any other unsealed
    # entry (``verify_audit_chain --seal`` seals first); once sealed, it is.
    entries = (
        AuditEntry.objects.filter(
            Q(kind=AuditEntry.Kind.REVIEW)
            | Q(flagged=True)
            | ~Q(review_state=AuditEntry.ReviewState.NONE)
            | Q(reviewed_by__isnull=False)
            | Q(reviewed_at__isnull=False)
        )
        .order_by("id")
        .values(*_REVIEW_COLUMNS)
        .iterator(chunk_size=2000)
    )
    return chain.verify_reviews(entries, key=chain_key())


def withheld_text_for(entry: AuditEntry) -> str | None:
    """Return the withheld reply behind a flagged entry (or a reply the leak hold alone
    withheld, ``holds.held_reply``), or None if there is none to show.

    The text is kept (encrypted) by sessions_app; ``AUDIT_WITHHELD_TEXT_READER`` names its
    function ``(*, turn_id) -> str | None``. Callers must check the permission and audit
    the read (``audit_withheld_text_read``).
    """
    reader = getattr(settings, "AUDIT_WITHHELD_TEXT_READER", "")
    if not reader or entry.turn_id is None:
        return None
    return import_string(reader)(turn_id=entry.turn_id)
