"""The leak hold: a bound on what the leak scan tells a user who probes it.

A withheld reply answers a question: did another user write this token? A user who gets
Claude to spell out a guess (a card number written backwards, say) learns from each
``suppressed`` turn that someone else holds it. Every such hit is flagged for review; the
hold bounds how many a user gets before a person has looked. Under
``LEAK_ACTION=suppress``, once a user has ``LEAK_HOLD_AFTER`` replies withheld as leaks in
the last ``LEAK_HOLD_SECONDS`` that review has not found harmless, every reply of theirs is
withheld, flagged or not, with the same notice: a ``suppressed`` turn then says nothing
about other users. The hold lifts as the window passes, or as soon as review marks enough
of them false positives.

Only the flags the user could see count: a reply flagged while held (its entry says "reply
held") looked like every other held reply, so it neither prolongs the hold nor, marked a
false positive, shortens it; else when the hold lifted would tell which held reply was a
hit. Under ``LEAK_ACTION=flag`` nothing is withheld and no flag is seen: no hold, whose
start would itself tell the user that a flag was raised.

Nothing is stored for it: it is the count of those entries, read with the claim of each
turn (``LEAK_HOLD_SQL``, a subquery of the claim's statement, over a partial index that
holds flagged entries only), and by the stateless turn (``leak_hold_active``).
"""

import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils.timezone import now

from .fingerprint import ScanResult
from .models import AuditEntry
from .services import audit_flagged_reply, audit_message, audit_security_event

__all__ = [
    "HELD_FLAG",
    "HELD_NOTICE",
    "HELD_REASON",
    "LEAK_HOLD_SQL",
    "audit_reply",
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


def held_reply(entry: AuditEntry) -> bool:
    """Tell whether ``entry`` records a reply withheld by the hold alone (no flag): its
    text is withheld as a flagged reply's is, and staff may read it the same way."""
    return entry.kind == AuditEntry.Kind.REPLY and not entry.flagged and entry.reason == HELD_REASON


# How the reason of a reply flagged while its user was held begins (``audit_flagged_reply``).
HELD_FLAG = "reply held:"
# The reason of the security entry that says a user's hold began.
HOLD_STARTED = "replies held: {after} flagged replies within {window} s"

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
                AND a."reason" NOT LIKE '{HELD_FLAG}%%'
            LIMIT %s
        ) AS held
    ) >= %s)
"""  # noqa: S608 - the table from the model, kinds, states and reasons from constants


def _budget() -> int:
    # 0: no hold. Under ``flag`` no flag is ever seen, so none is counted.
    return settings.LEAK_HOLD_AFTER if settings.LEAK_ACTION == "suppress" else 0


def leak_hold_params() -> list[object]:
    """Return ``LEAK_HOLD_SQL``'s parameters, in order, for a claim now."""
    after = _budget()
    return [after, _since(), after, after]


def leak_hold_active(*, user_id: int) -> bool:
    """Tell whether the user's replies are held now."""
    after = _budget()
    return after > 0 and _flagged(user_id, limit=after) >= after


def leak_hold_note(*, user_id: int) -> None:
    """After a flagged reply of the user (not held) is recorded: once it commits, if the
    user is held and no entry says so within the window, write the security entry that
    does, where staff look. After the commit, so that two flags committing at once cannot
    each miss the other's; two writing it at once are one entry (the aggregation window)."""
    if _budget() > 0:
        transaction.on_commit(lambda: _hold_started(user_id))


def audit_reply(
    *,
    user_id: int,
    session_id: uuid.UUID,
    turn_id: uuid.UUID | None,
    scanned: str,
    shown: str,
    scan: ScanResult | None,
    delivered: bool,
    held: bool,
) -> None:
    """Record a reply's audit entry: flagged if the ``scan`` found it leaked (then noted for
    the hold, unless already held), a held one's saying so; each of the reply as ``scanned``,
    withheld or not (what a flag's evidence points into, what a reviewer reads), a
    delivered clean one of the text ``shown``."""
    ids = {"user_id": user_id, "session_id": session_id, "turn_id": turn_id}
    if scan is not None and scan.leaked:
        audit_flagged_reply(**ids, content=scanned, result=scan, delivered=delivered, held=held)
        if not held:
            leak_hold_note(user_id=user_id)
    elif held:
        audit_message(**ids, role="assistant", content=scanned, kind="reply", reason=HELD_REASON)
    else:
        audit_message(**ids, role="assistant", content=shown, kind="reply")


def _hold_started(user_id: int) -> None:
    if not leak_hold_active(user_id=user_id):
        return
    reason = HOLD_STARTED.format(after=settings.LEAK_HOLD_AFTER, window=settings.LEAK_HOLD_SECONDS)
    said = AuditEntry.objects.filter(
        kind=AuditEntry.Kind.SECURITY, user_id=user_id, reason=reason, created_at__gte=_since()
    )
    if not said.exists():
        audit_security_event(user_id=user_id, session_id=None, reason=reason)


def _flagged(user_id: int, *, limit: int) -> int:
    # The flagged replies that count, up to ``limit``: LEAK_HOLD_SQL's count, through the ORM.
    counted = (
        AuditEntry.objects.filter(
            user_id=user_id, flagged=True, kind=AuditEntry.Kind.REPLY, created_at__gte=_since()
        )
        .exclude(review_state=AuditEntry.ReviewState.FALSE_POSITIVE)
        .exclude(reason__startswith=HELD_FLAG)
    )
    return len(counted.values("pk")[:limit])


def _since() -> datetime:
    return now() - timedelta(seconds=settings.LEAK_HOLD_SECONDS)
