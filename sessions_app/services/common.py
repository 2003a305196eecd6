"""What the services' modules share: the clocks of sessions and turns, the texts users read
in place of a reply, and the names the turn's statements are written with."""

from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection

from audit_app.holds import HELD_NOTICE

from ..models import FENCE_SEQUENCE, ChatSession, Turn

STALLED_DETAIL = "The reply was lost in transit; send the message again."
# What the user reads in place of a withheld reply: nothing of the withheld text.
SUPPRESSED_NOTICE = (
    "This reply was withheld because it appeared to contain information from another "
    "conversation. It has been sent for review; please ask again."
)


def withheld_notice(*, leaked: bool, held: bool) -> str | None:
    """Return what its user reads in place of a reply, or None if the reply is delivered:
    the hold's notice while its user is held (``audit_app.holds``), whatever the scan found;
    else, for a reply the scan found ``leaked``, the neutral notice under
    ``LEAK_ACTION=suppress``."""
    if held:
        return HELD_NOTICE
    return SUPPRESSED_NOTICE if leaked and settings.LEAK_ACTION == "suppress" else None


# A Postgres sequence (migration 0005) whose values fence the writes to a history store
# outside the database (``BaseHistoryStore.reply_rewrite``): one is taken by each writer as
# it locks the row it writes under (a turn's end in its locking statement, a release and an
# accept just after theirs, in the same transaction), so they follow the order of the locks,
# and a rolled-back writer's value is never handed out again, as a counter in a row would
# be. Not the claim's attempt number: runs claim in one order and lock in another.


def fence_next() -> int:
    """Return a fence for a writer that holds the lock it writes under.

    0 off Postgres: a SQLite process keeps its lock for as long as it lives, so no writer
    ever resumes after another locked the same row.
    """
    if connection.vendor != "postgresql":
        return 0
    with connection.cursor() as cursor:
        cursor.execute("SELECT nextval(%s)", [FENCE_SEQUENCE])
        return cursor.fetchone()[0]


def expiry(now: datetime) -> datetime:
    """When a session active at ``now`` expires (``SESSION_TTL_SECONDS``)."""
    return now + timedelta(seconds=settings.SESSION_TTL_SECONDS)


def deadline(now: datetime) -> datetime:
    """When a turn started or re-queued at ``now`` is past due (``TURN_DEADLINE_SECONDS``)."""
    return now + timedelta(seconds=settings.TURN_DEADLINE_SECONDS)


# Postgres claims a turn, and ends one, in one UPDATE ... RETURNING each (``turns``,
# ``reply``), rows built from what it returns: a claim is then one round trip instead of an
# update and a read, a turn's end one instead of a lock and two updates (``rows``).
TURN_TABLE, SESSION_TABLE = Turn._meta.db_table, ChatSession._meta.db_table
IN_FLIGHT_SQL = ", ".join(f"'{status}'" for status in Turn.IN_FLIGHT)  # constants, not input


def lock_timeout(milliseconds: int) -> None:
    """Bound every lock wait of the current transaction on Postgres (``lock_timeout``): a
    wait past it raises ``OperationalError`` (55P03). Elsewhere, nothing."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config('lock_timeout', %s, true)", [f"{milliseconds}ms"])
