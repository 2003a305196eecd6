"""Writes to the audit trail. Entries hold hashes and counts, never raw content."""

import hashlib
import hmac
import logging
import uuid

from django.conf import settings

from .models import AuditEntry

logger = logging.getLogger(__name__)


def content_hash(text: str) -> str:
    """Return a keyed hash of ``text``: comparable within the service, not reversible.

    A plain SHA-256 of a card number or a phone number is recovered by trying candidates;
    keyed by the server's secret it is not.
    """
    key = hashlib.sha256(b"audit-content-hash:" + settings.SECRET_KEY.encode()).digest()
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def audit_security_event(*, user_id: int | None, session_id: uuid.UUID | None, reason: str) -> None:
    """Record a refused access or isolation violation; never let auditing break the caller."""
    logger.warning("security event: %s (user=%s session=%s)", reason, user_id, session_id)
    AuditEntry.objects.create(
        kind=AuditEntry.Kind.SECURITY, user_id=user_id, session_id=session_id, reason=reason
    )


def audit_message(
    *, user_id: int, session_id: uuid.UUID, role: str, content: str, kind: str = "message"
) -> AuditEntry:
    """Record that a message was stored: its hash and token count, not its text."""
    return AuditEntry.objects.create(
        kind=kind,
        user_id=user_id,
        session_id=session_id,
        role=role,
        content_hash=content_hash(content),
        token_count=len(content.split()),
    )
