"""The leak hold: a bound on what the leak scan tells a user who probes it.

A withheld reply answers a question: did another user write this token? A user who gets
Claude to spell out a guess (a card number written backwards, say) learns from each
``suppressed`` turn that someone else holds it. Every such hit is flagged for review; the
hold bounds how many a user gets before a person has looked. Once a user has
``LEAK_HOLD_AFTER`` flagged replies written in the last ``LEAK_HOLD_SECONDS`` that review
has not found harmless, every reply of theirs is withheld, flagged or not, with the same
notice: a ``suppressed`` turn then says nothing about other users. The hold lifts as the
window passes, or as soon as review marks enough of them false positives.

Nothing is stored for it: it is the count of those entries, read with the claim of each
turn (``LEAK_HOLD_SQL``, a subquery of the claim's statement, over a partial index that
holds flagged entries only), and by the stateless turn (``leak_hold_active``).
"""

from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from .models import AuditEntry
from .services import audit_security_event

__all__ = [
    "HELD_NOTICE",
    "HELD_REASON",
    "LEAK_HOLD_SQL",
    "leak_hold_active",
    "leak_hold_note",
    "leak_hold_params",
]

# What a user reads in place of every reply while held: the same whatever the scan found.
HELD_NOTICE = (
    "This reply is held for review: replies in this account are held for a while after "
    "several were withheld for appearing to contain information from other conversations. "
    "Please ask again later."
)
# The audit reason of a reply withheld by the hold alone (the scan found nothing in it).
HELD_REASON = "reply withheld: the user's replies are held (leak hold)"

_TABLE = AuditEntry._meta.db_table
_FALSE_POSITIVE = AuditEntry.ReviewState.FALSE_POSITIVE.value
_REPLY = AuditEntry.Kind.REPLY.value

# A boolean for the row whose owner is ``{owner}``; ``leak_hold_params`` gives its
# parameters. The inner LIMIT keeps a user with thousands of flags as cheap as one with a few.
LEAK_HOLD_SQL = f"""
    (%s > 0 AND (
        SELECT count(*) FROM (
            SELECT 1 FROM "{_TABLE}" AS a
            WHERE a."user_id" = {{owner}} AND a."flagged" AND a."kind" = '{_REPLY}'
                AND a."review_state" <> '{_FALSE_POSITIVE}' AND a."created_at" >= %s
            LIMIT %s
        ) AS held
    ) >= %s)
"""  # noqa: S608 - the table from the model, kinds and states from constants


def leak_hold_params(now: datetime | None = None) -> list[object]:
    """Return ``LEAK_HOLD_SQL``'s parameters, in order, for a claim at ``now``."""
    after = settings.LEAK_HOLD_AFTER
    return [after, _since(now), after, after]


def leak_hold_active(*, user_id: int) -> bool:
    """Tell whether the user's replies are held now."""
    after = settings.LEAK_HOLD_AFTER
    return after > 0 and _flagged(user_id, limit=after) >= after


def leak_hold_note(*, user_id: int) -> None:
    """After a flagged reply of the user is recorded: if it is the one that starts the
    hold, say so in the audit trail (a security entry), where staff look."""
    after = settings.LEAK_HOLD_AFTER
    if after > 0 and _flagged(user_id, limit=after + 1) == after:
        window = settings.LEAK_HOLD_SECONDS
        reason = f"replies held: {after} flagged replies within {window} s"
        audit_security_event(user_id=user_id, session_id=None, reason=reason)


def _flagged(user_id: int, *, limit: int) -> int:
    # The flagged replies that count, up to ``limit``: LEAK_HOLD_SQL's count, through the ORM.
    counted = AuditEntry.objects.filter(
        user_id=user_id, flagged=True, kind=AuditEntry.Kind.REPLY, created_at__gte=_since()
    ).exclude(review_state=AuditEntry.ReviewState.FALSE_POSITIVE)
    return len(counted.values("pk")[:limit])


def _since(now: datetime | None = None) -> datetime:
    return (now or timezone.now()) - timedelta(seconds=settings.LEAK_HOLD_SECONDS)
