"""Writes to the audit trail and the fingerprint index. Entries hold hashes, counts and
offsets, never raw content.

The fingerprint index's functions live in ``leak_scan``; they are re-exported here, where
the other apps find the app's writes."""

import hashlib
import hmac
import logging
import uuid
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Subquery
from django.utils import timezone

from core import sql

from . import chain, fingerprint
from .fingerprint import ScanResult
from .index import IndexUnavailable
from .leak_scan import (
    fingerprint_index,
    fingerprints_erase_session,
    fingerprints_erase_user,
    fingerprints_purge_expired,
    fingerprints_register,
    reply_scan,
)
from .models import AuditChainHead, AuditEntry

__all__ = (
    "IndexUnavailable",
    "ScanResult",
    "audit_chain_seal",
    "audit_flagged_reply",
    "audit_message",
    "audit_reply_released",
    "audit_review_decide",
    "audit_security_event",
    "audit_withheld_text_read",
    "content_hash",
    "fingerprint_index",
    "fingerprints_erase_session",
    "fingerprints_erase_user",
    "fingerprints_purge_expired",
    "fingerprints_register",
    "reply_scan",
)

logger = logging.getLogger(__name__)

DEFAULT_AGGREGATE_WINDOW_SECONDS = 60


def content_hash(text: str) -> str:
    """Return a keyed hash of ``text``: comparable within the service, not reversible.

    A plain SHA-256 of a card number or a phone number is recovered by trying candidates;
    keyed by the server's secret it is not.
    """
    key = hashlib.sha256(b"audit-content-hash:" + settings.SECRET_KEY.encode()).digest()
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


# Audit entries ---------------------------------------------------------------------------


def audit_security_event(
    *,
    user_id: int | None,
    session_id: uuid.UUID | None,
    reason: str,
    turn_id: uuid.UUID | None = None,
) -> None:
    """Record a refused access or isolation violation; never let auditing break the caller.

    Repeats of the same event by the same user on the same session and turn within the
    aggregation window add to one entry's ``count``, so a flood cannot bury other events;
    each foreign session or turn reached keeps an entry naming it.
    """
    logger.warning("security event: %s (user=%s session=%s)", reason, user_id, session_id)
    try:
        with transaction.atomic():  # a savepoint: a failure leaves the caller's transaction
            _security_event_count(
                user_id=user_id, session_id=session_id, reason=reason, turn_id=turn_id
            )
    except Exception as exc:  # noqa: BLE001 - the caller's answer matters more than the trail
        logger.error("could not audit a security event: %s", exc.__class__.__name__)


def _security_event_count(
    *, user_id: int | None, session_id: uuid.UUID | None, reason: str, turn_id: uuid.UUID | None
) -> None:
    window = getattr(settings, "AUDIT_AGGREGATE_WINDOW_SECONDS", DEFAULT_AGGREGATE_WINDOW_SECONDS)
    open_entries = AuditEntry.objects.filter(
        kind=AuditEntry.Kind.SECURITY,
        user_id=user_id,
        session_id=session_id,
        turn_id=turn_id,
        reason=reason,
        chain_seq__isnull=True,
        created_at__gte=timezone.now() - timedelta(seconds=window),
    )
    # One row only, and still unsealed when the UPDATE gets its lock: a row the sealer
    # took meanwhile is re-checked by the database and left alone.
    first = Subquery(open_entries.order_by("id").values("id")[:1])
    if open_entries.filter(id__in=first).update(count=F("count") + 1):
        return
    AuditEntry.objects.create(
        kind=AuditEntry.Kind.SECURITY,
        user_id=user_id,
        session_id=session_id,
        turn_id=turn_id,
        reason=reason,
    )


def audit_message(
    *,
    user_id: int,
    session_id: uuid.UUID,
    role: str,
    content: str,
    kind: str = "message",
    turn_id: uuid.UUID | None = None,
    reason: str = "",
) -> AuditEntry:
    """Record that a message was stored: its hash and token count, not its text."""
    return sql.insert(
        AuditEntry(
            kind=kind,
            user_id=user_id,
            session_id=session_id,
            turn_id=turn_id,
            role=role,
            content_hash=content_hash(content),
            token_count=len(content.split()),
            reason=reason,
        )
    )


def evidence_json(result: ScanResult) -> dict:
    """Return the evidence of ``result`` as stored: offsets and ids, no text, no floats."""
    return {
        "score_pct": round(result.score * 100),
        "items": [
            {
                "start": item.start,
                "end": item.end,
                "weight_pct": round(item.weight * 100),
                "introduced_by": [
                    {"user_id": p.user_id, "session_id": p.session_id} for p in item.introduced_by
                ],
            }
            for item in result.evidence
        ],
    }


def audit_flagged_reply(
    *,
    user_id: int,
    session_id: uuid.UUID,
    turn_id: uuid.UUID,
    content: str,
    result: ScanResult,
    delivered: bool,
    held: bool = False,
) -> AuditEntry:
    """Record a reply judged to carry another user's data, open for review. One its user's
    leak hold withheld (``held``) says so: it counts for no hold (``audit_app.holds``)."""
    action = "held" if held else "delivered and flagged" if delivered else "suppressed"
    return AuditEntry.objects.create(
        kind=AuditEntry.Kind.REPLY,
        user_id=user_id,
        session_id=session_id,
        turn_id=turn_id,
        role="assistant",
        content_hash=content_hash(content),
        token_count=len(content.split()),
        flagged=True,
        reason=f"reply {action}: {len(result.evidence)} token(s) introduced only by other users",
        evidence=evidence_json(result),
        review_state=AuditEntry.ReviewState.OPEN,
    )


@transaction.atomic
def audit_review_decide(
    *,
    entry_id: int,
    reviewer_id: int,
    leak: bool,
    open_only: bool = False,
    seen: str | None = None,
) -> AuditEntry | None:
    """Record a reviewer's decision on a flagged entry, and a ``review`` entry saying so.

    With ``open_only``, only if no decision was taken yet; with ``seen``, only if the entry
    is still in the review state the reviewer saw. Either is checked as the row is when
    locked, so two reviewers at once cannot overturn each other; None if it moved on.
    """
    entries = AuditEntry.objects.select_for_update().filter(pk=entry_id, flagged=True)
    expected = AuditEntry.ReviewState.OPEN if open_only else seen
    if expected is not None:
        entries = entries.filter(review_state=expected)
        if (entry := entries.first()) is None:
            return None
    else:
        entry = entries.get()
    state = AuditEntry.ReviewState.CONFIRMED if leak else AuditEntry.ReviewState.FALSE_POSITIVE
    entry.review_state, entry.reviewed_by_id, entry.reviewed_at = state, reviewer_id, timezone.now()
    entry.save(update_fields=["review_state", "reviewed_by", "reviewed_at"])
    # Counted under the entry's row lock, which every decision on it takes; found by the
    # session (indexed), which each decision's review entry copies, not by a scan of the log.
    earlier = AuditEntry.objects.filter(
        session_id=entry.session_id,
        kind=AuditEntry.Kind.REVIEW,
        reason__in=[
            chain.review_decision_reason(entry_id=entry.pk, state=s)
            for s in (AuditEntry.ReviewState.CONFIRMED, AuditEntry.ReviewState.FALSE_POSITIVE)
        ],
    ).count()
    mac = chain.decision_mac(
        key=chain_key(),
        entry_id=entry.pk,
        ordinal=earlier + 1,
        state=state.value,
        reviewer_id=reviewer_id,
        reviewed_at=entry.reviewed_at,
    )
    AuditEntry.objects.create(
        kind=AuditEntry.Kind.REVIEW,
        user_id=reviewer_id,
        session_id=entry.session_id,
        turn_id=entry.turn_id,
        reason=chain.review_decision_reason(entry_id=entry.pk, state=state.value),
        content_hash=mac,
    )
    return entry


def audit_reply_released(*, entry_id: int, reviewer_id: int) -> AuditEntry:
    """Record that a reviewer released the withheld reply behind a flagged entry."""
    return _review_note(entry_id, reviewer_id, "withheld reply of entry {} released to its user")


def audit_withheld_text_read(*, entry_id: int, reader_id: int) -> AuditEntry:
    """Record that a staff member read the withheld text behind a flagged or held entry."""
    return _review_note(entry_id, reader_id, "withheld text of entry {} read")


def _review_note(entry_id: int, staff_id: int, reason: str) -> AuditEntry:
    entry = AuditEntry.objects.get(pk=entry_id)
    return AuditEntry.objects.create(
        kind=AuditEntry.Kind.REVIEW,
        user_id=staff_id,
        session_id=entry.session_id,
        turn_id=entry.turn_id,
        reason=reason.format(entry.pk),
    )


# The hash chain ----------------------------------------------------------------------------


def chain_key() -> bytes:
    """Return the key of the audit hash chain (``AUDIT_CHAIN_KEY``, else from SECRET_KEY)."""
    secret = getattr(settings, "AUDIT_CHAIN_KEY", "") or settings.SECRET_KEY
    return fingerprint.derive_key(secret, "audit-chain")


def audit_chain_seal(*, batch_size: int = 1000) -> int:
    """Seal every entry written so far into the hash chain, in id order; return how many.

    Writers never wait for this: they insert unsealed rows. Only sealers queue, on the
    chain head's row lock.
    """
    total = 0
    while (sealed := _chain_seal_batch(batch_size)) > 0:
        total += sealed
        if sealed < batch_size:
            break
    return total


@transaction.atomic
def _chain_seal_batch(limit: int) -> int:
    AuditChainHead.objects.bulk_create([AuditChainHead(pk=1)], ignore_conflicts=True)
    head = AuditChainHead.objects.select_for_update().get(pk=1)
    # Locked, so a flood counter cannot bump an entry between its hashing and its seal.
    rows = list(
        AuditEntry.objects.select_for_update().filter(chain_seq__isnull=True).order_by("id")[:limit]
    )
    key, prev, seq, now = chain_key(), head.entry_hash or chain.GENESIS, head.seq, timezone.now()
    for row in rows:
        seq += 1
        row.chain_seq, row.prev_hash, row.sealed_at = seq, prev, now
        fields = {name: getattr(row, name) for name in chain.HASHED_FIELDS}
        row.entry_hash = prev = chain.entry_hash(key=key, prev_hash=prev, fields=fields)
    AuditEntry.objects.bulk_update(rows, ["chain_seq", "prev_hash", "entry_hash", "sealed_at"])
    AuditChainHead.objects.filter(pk=1).update(seq=seq, entry_hash=prev, updated_at=now)
    return len(rows)
