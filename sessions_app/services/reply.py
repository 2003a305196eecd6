"""A turn's reply: scanned, stored or withheld, and the turn ended with it."""

import dataclasses
import logging
from collections.abc import Collection

from django.db import transaction
from django.utils import timezone

from audit_app.holds import audit_reply
from audit_app.services import ScanResult, fingerprints_register, reply_scan
from core.ids import as_uuid

from .. import crypto, events, privacy, rows
from ..models import ChatSession, Turn
from ..stores import DuplicateReply, MessageMissing, ReplyOvertaken, StoredMessage, history_store
from .common import (
    FENCE_SEQUENCE,
    IN_FLIGHT_SQL,
    SESSION_TABLE,
    TURN_TABLE,
    fence_next,
    withheld_notice,
)
from .turns import turn_lock

logger = logging.getLogger(__name__)


# The session's row is updated (locked) before the turn's, the order a DELETE takes them.
# If the turn ended meanwhile, the turn's UPDATE re-reads its row and matches nothing.
_END_SQL = f"""
    WITH s AS (
        UPDATE "{SESSION_TABLE}" SET "next_seq" = "next_seq" + 1
        WHERE "id" = (
            SELECT "session_id" FROM "{TURN_TABLE}"
            WHERE "id" = %s AND "status" IN ({IN_FLIGHT_SQL})
        )
        RETURNING *
    )
    UPDATE "{TURN_TABLE}" AS t
    SET "status" = %s, "withheld" = %s, "finished_at" = %s, "updated_at" = %s,
        "error_code" = '', "error_detail" = ''
    FROM s
    WHERE t."id" = %s AND t."session_id" = s."id" AND t."status" IN ({IN_FLIGHT_SQL})
    RETURNING {rows.columns("t", Turn)}, {rows.columns("s", ChatSession)},
        nextval('{FENCE_SEQUENCE}')
"""  # noqa: S608 - names from the models, statuses from constants; values are parameters


def turn_deliver(
    *, turn: Turn, reply: str, known_placeholders: Collection[str] = frozenset()
) -> str | None:
    """Scan the reply against the fingerprint index, then store or withhold it (one read);
    return how the turn ended, as ``turn_complete``.

    Raise ``IndexUnavailable`` if the index cannot be reached: the task tries again later.
    """
    scan = reply_scan(user_id=turn.session.owner_id, session_id=turn.session_id, text=reply)
    return turn_complete(
        turn_id=turn.pk,
        reply=reply,
        scan=scan,
        held=turn.leak_hold,
        known_placeholders=known_placeholders,
    )


def turn_complete(
    *,
    turn_id: object,
    reply: str,
    scan: ScanResult | None = None,
    held: bool = False,
    known_placeholders: Collection[str] = frozenset(),
) -> str | None:
    """Store the reply and end the turn; return how it ended (``completed``, or
    ``suppressed`` by the leak scan or the hold), or None if it had already ended.

    The turn and session rows are locked first, and the store keeps one reply per turn,
    so two concurrent runs of one turn never store two replies. A reply the ``scan`` found
    to carry other users' data is flagged for review and, under ``LEAK_ACTION=suppress``,
    withheld: sealed on the turn, the neutral notice stored in its place, the turn ended
    ``suppressed``. While its owner is ``held`` (``audit_app.holds``) every reply is
    withheld so, whatever the scan found, under the hold's own notice. A delivered reply's
    fingerprints join the index. ``known_placeholders``: the vault's, as the reply's scrub
    read them (the vault is not read again for the reply's placeholders among them).
    """
    notice = withheld_notice(leaked=scan is not None and scan.leaked, held=held)
    suppress = notice is not None
    end = Turn.Status.SUPPRESSED if suppress else Turn.Status.COMPLETED
    withheld = crypto.seal(reply.encode()) if suppress else None
    try:
        with transaction.atomic():
            turn = _turn_end(turn_id, status=end, withheld=withheld)
            if turn is None:
                transaction.set_rollback(True)  # the seq it may have taken goes back
                return None
            seq, fence = turn.session.next_seq - 1, turn.reply_fence
            message = _reply_append(
                turn=turn,
                seq=seq,
                reply=notice if suppress else reply,
                status="suppressed" if suppress else "ok",
                fence=fence,
            )
            if message.seq != seq:  # an earlier run's reply, kept at the seq it took
                ChatSession.objects.filter(pk=turn.session_id).update(next_seq=message.seq + 1)
            message = _reply_as_decided(turn, message, reply=reply, notice=notice, fence=fence)
            # The reply's made-up placeholders, withheld too (a release would show it).
            privacy.placeholders_reserve(
                session_id=turn.session_id,
                text=f"{reply}\n{message.content}",
                known=known_placeholders,
            )
            audit_reply(
                user_id=turn.session.owner_id,
                session_id=turn.session_id,
                turn_id=turn.pk,
                scanned=reply,
                shown=message.content,
                scan=scan,
                delivered=not suppress,
                held=held,
            )
            if not suppress:
                # What is stored (an earlier run's reply, if one was kept): the index
                # holds what the session holds.
                fingerprints_register(
                    user_id=turn.session.owner_id,
                    session_id=turn.session_id,
                    text=message.content,
                    scan=scan,  # its digests, when the stored text is the one scanned
                )
    except ReplyOvertaken:
        logger.warning("turn %s: a later run locked it since; this run's reply is dropped", turn_id)
        return None
    except DuplicateReply:
        logger.info("turn %s already has a reply; discarding a duplicate", turn_id)
        return None
    events.publish_turn_changed(turn_id=turn_id, status=end)
    return end.value


def _turn_end(turn_id: object, *, status: str, withheld: bytes | None) -> Turn | None:
    """End an unfinished turn and take the next seq of its session for the reply; return the
    turn with its session (``next_seq`` already past the reply's) and its ``reply_fence``,
    or None if it had ended.

    Both rows stay locked to the end of the caller's transaction, the session's first, as
    ``chat_session_delete`` takes them: a DELETE waits, and seq stays gap-free. Call it
    inside a transaction, and roll that back on None: the session may have moved on.
    """
    now = timezone.now()
    if rows.in_sql():
        tid = as_uuid(turn_id)
        params = [tid, str(status), withheld, now, now, tid]
        row = rows.one(_END_SQL, params)
        if row is None:
            return None
        turn = rows.turn_from_row(row[:-1])
        turn.reply_fence = row[-1]
        return turn
    turn = turn_lock(turn_id)
    if turn is None or turn.is_finished:
        return None
    turn.reply_fence = fence_next()
    turn.session.next_seq += 1
    ChatSession.objects.filter(pk=turn.session_id).update(next_seq=turn.session.next_seq)
    Turn.objects.filter(pk=turn.pk).update(
        status=status,
        withheld=withheld,
        finished_at=now,
        updated_at=now,
        error_code="",
        error_detail="",
    )
    return turn


def _reply_as_decided(
    turn: Turn, message: StoredMessage, *, reply: str, notice: str | None, fence: int
) -> StoredMessage:
    """Return the turn's stored reply as this run decided it: an earlier run's reply kept at
    this seq (its database end was lost, the store's write was not) is written over.

    No reader has seen that one: it lies past the session's counter, which its lost end did
    not move. Kept as it was, the turn would end as this run decided while showing another
    run's text and status: a held user's turn showing a reply, or the other way round.

    Fenced by ``fence``, taken as this run locked the turn: a run that stalls here and
    loses its connection (its locks gone; another run perhaps ended the turn since and showed
    its reply) finds the reply raised to that run's higher fence, and the store refuses its
    write (``ReplyOvertaken``).
    """
    content, status = (reply, "ok") if notice is None else (notice, "suppressed")
    if (message.content, message.status) == (content, status):
        return message
    if message.seq < turn.session.next_seq - 1:
        # Below this run's seq: the session's counter was behind its messages (a fault of
        # ours), and a reader may have seen it. Left as it is.
        return message
    history_store().reply_rewrite(
        session=turn.session, turn_id=turn.pk, content=content, status=status, fence=fence
    )
    return dataclasses.replace(message, content=content, status=status)


def turn_release_withheld(*, turn_id: object) -> bool:
    """Deliver a withheld reply that review found harmless; return False if there is none,
    or no stored reply to show it in (the ``redis`` store's history lost): left withheld.

    The turn then shows it (``completed``), and its fingerprints join the index.
    """
    try:
        with transaction.atomic():
            turn = turn_lock(turn_id)
            if turn is None or turn.status != Turn.Status.SUPPRESSED or not turn.withheld:
                return False
            text = crypto.unseal(bytes(turn.withheld)).decode()
            privacy.placeholders_reserve(session_id=turn.session_id, text=text)
            # Before the rewrite: the leak index refusing (out) must leave nothing shown. The
            # ``redis`` store's rewrite is not undone by this transaction's rollback.
            owner = turn.session.owner_id
            fingerprints_register(user_id=owner, session_id=turn.session_id, text=text)
            # Taken under the turn's lock: any run stalled since its own lock is refused.
            history_store().reply_rewrite(
                session=turn.session,
                turn_id=turn.pk,
                content=text,
                status="ok",
                fence=fence_next(),
            )
            Turn.objects.filter(pk=turn.pk).update(
                status=Turn.Status.COMPLETED, withheld=None, updated_at=timezone.now()
            )
    except MessageMissing:
        logger.warning("turn %s: no stored reply to release its withheld text into", turn_id)
        return False
    except ReplyOvertaken:
        # Its fence below the reply's: the sequence went back (a restore of Postgres that
        # kept Redis, say; README, Operations). Left withheld rather than half released.
        logger.error("turn %s: the release's fence is below its reply's; left withheld", turn_id)
        return False
    events.publish_turn_changed(turn_id=turn.pk, status=Turn.Status.COMPLETED)
    return True


def _reply_append(*, turn: Turn, seq: int, reply: str, status: str, fence: int) -> StoredMessage:
    try:
        return history_store().append_reply(
            session=turn.session,
            turn_id=turn.pk,
            seq=seq,
            content=reply,
            status=status,
            fence=fence,
        )
    except DuplicateReply as duplicate:
        if duplicate.existing is None:
            raise  # the database store: the reply is there, this transaction is spoilt
        # An earlier run stored it and then lost its database commit: finish with it.
        return duplicate.existing
