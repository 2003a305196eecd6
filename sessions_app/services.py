"""Every write of conversation data: sessions, accepted messages, turn lifecycle.

Messages go to the configured history store; sessions and turns are rows. Nothing here
enqueues a task (``tasks`` does, and calls in here): no import circle.
"""

import dataclasses
import logging
import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import DatabaseError, IntegrityError, OperationalError, connection, transaction
from django.db.models import F
from django.utils import timezone

from audit_app.services import (
    IndexUnavailable,
    ScanResult,
    audit_flagged_reply,
    audit_message,
    fingerprints_erase_session,
    fingerprints_register,
    reply_scan,
)
from core import sql
from core.errors import once_more_on_fresh_connection
from core.ids import as_uuid

from . import crypto, events, privacy, rows
from .errors import TurnInFlight
from .models import TURN_ONE_IN_FLIGHT, ChatSession, Turn
from .queries import turn_get, turn_list_stale
from .selectors import chat_session_get_for_owner, chat_session_take_seq_for_owner
from .stores import DuplicateReply, ForeignData, SessionRef, StoredMessage, history_store

logger = logging.getLogger(__name__)


STALLED_DETAIL = "The reply was lost in transit; send the message again."
# What the user reads in place of a withheld reply: nothing of the withheld text.
SUPPRESSED_NOTICE = (
    "This reply was withheld because it appeared to contain information from another "
    "conversation. It has been sent for review; please ask again."
)


def _expiry(now: datetime) -> datetime:
    return now + timedelta(seconds=settings.SESSION_TTL_SECONDS)


def _deadline(now: datetime) -> datetime:
    return now + timedelta(seconds=settings.TURN_DEADLINE_SECONDS)


@transaction.atomic
def chat_session_create(*, owner: AbstractBaseUser, title: str = "") -> ChatSession:
    """Create a session owned by ``owner``, its title protected as messages are.

    Under pseudonymisation the title's originals start the session's vault; the session
    comes back with it, so that what its owner reads is restored without another read.
    """
    now = timezone.now()
    stored, originals = privacy.title_scrub(title=title)
    session = ChatSession.objects.create(
        owner=owner, title=stored, last_activity_at=now, expires_at=_expiry(now)
    )
    if vault := privacy.vault_create(session_id=session.pk, entries=originals):
        session.vault = vault
    return session


@transaction.atomic
def chat_session_delete(*, user: AbstractBaseUser, session_id: object) -> None:
    """Erase the caller's session everywhere: its fingerprint postings, its messages in the
    store, its turns.

    Under the session's row lock no turn can store a reply, or register one, meanwhile; a
    turn in retry finds itself gone before its next call to Claude. Raise
    ``IndexUnavailable`` (a 503) if the fingerprint index cannot be reached: the session is
    then left whole, so that deleting it again erases everything.
    """
    session = chat_session_get_for_owner(user=user, session_id=session_id, for_update=True)
    in_flight = list(session.turns.filter(status__in=Turn.IN_FLIGHT).values_list("pk", flat=True))
    _session_fingerprints_erase(session)
    erased = session.pk  # delete() clears it
    session.delete()
    # The rows first, the store's copy after, inside the transaction: if the store refuses,
    # the rows come back; only a failed COMMIT after it could leave a session without its
    # history (the other way round, any failure of the rows' DELETE did).
    history_store().erase(session_ids=[erased])
    for turn_id in in_flight:  # wakes their event streams, which then end
        events.publish_turn_changed(turn_id=turn_id)


def _session_fingerprints_erase(session: ChatSession) -> None:
    """Remove every posting that names the session from the fingerprint index, those of
    messages no longer stored (an accept undone, a turn discarded) too.

    The index finds them by the session. Only postings a Redis index took before it
    listed them per session are named by nothing but the texts registered (the messages
    as the store holds them), which it then asks for: so this comes before the messages
    are erased. Done twice it does no harm.
    """
    fingerprints_erase_session(session_id=session.pk, texts=lambda: _session_texts(session))


def _session_texts(session: ChatSession) -> list[str]:
    try:
        stored = history_store().page(session=session, offset=0, limit=session.next_seq - 1)
    except ForeignData as refused:
        # Not the session's own to read: audited, and its erasure does not wait on it
        # (the postings of what it could not read age out of the index).
        refused.audit()
        return []
    return [message.content for message in stored]


def message_accept(*, user: AbstractBaseUser, session_id: object, content: str) -> Turn:
    """Store the user's message and open a pending turn for it, in one transaction.

    Raise ``TurnInFlight`` if the session already has a turn pending or running; a turn
    in flight past ``STALE_TURN_SECONDS`` is ended first, so the session is not stuck.
    """
    try:
        return _message_accept_or_undo(user=user, session_id=session_id, content=content)
    except TurnInFlight:
        if not _turn_stale_end(user=user, session_id=session_id):
            raise
    return _message_accept_or_undo(user=user, session_id=session_id, content=content)


def _message_accept_or_undo(*, user: AbstractBaseUser, session_id: object, content: str) -> Turn:
    turn_id = events.new_turn_id()  # under this process's tag: its waits need no SUBSCRIBE
    turn = None
    try:
        with transaction.atomic():
            turn = _message_accept(
                user=user, session_id=session_id, content=content, turn_id=turn_id
            )
        return turn
    except BaseException as exc:
        if turn is not None and _committed_after_all(exc, turn=turn):
            # The message is stored with a committed turn: it is accepted, and answered as
            # such (the caller queues the turn), instead of an error that would make the
            # client send it twice, or an undo that would leave the turn without it.
            logger.warning("the commit of turn %s was not acknowledged but took", turn_id)
            return turn
        # A store outside the database (Redis) does not roll back with the transaction:
        # what it took of this turn goes, so that an error answer leaves nothing behind.
        _message_undo(owner_id=user.pk, session_id=session_id, turn_id=turn_id)
        if isinstance(exc, IntegrityError) and sql.violated_constraint(exc) == TURN_ONE_IN_FLIGHT:
            # The partial unique index: one turn in flight per session. Relying on it
            # instead of looking first saves every accepted message a query. Any other
            # violation (a seq taken twice, a row gone) is a fault of ours and is answered
            # as one: told that a turn is in flight, a client would wait and retry for ever.
            raise TurnInFlight() from exc
        raise


# How long the check waits for a COMMIT still under way on the connection that was lost.
COMMIT_CHECK_LOCK_MS = 5000


def _committed_after_all(exc: BaseException, *, turn: Turn) -> bool:
    """Tell whether the accept's COMMIT, which raised ``exc``, committed all the same.

    The connection can drop after the server committed and before its answer arrived:
    only the turn's row, read on a fresh connection, tells. A check that cannot answer
    says no, and the accept is undone as for any other error.
    """
    if not isinstance(exc, DatabaseError) or isinstance(exc, IntegrityError):
        return False  # a constraint checked at COMMIT refused it: nothing committed
    if connection.in_atomic_block:
        return False  # only a savepoint was released: the caller's transaction decides
    try:
        return once_more_on_fresh_connection(
            _turn_committed, turn_id=turn.pk, session_id=turn.session_id
        )
    except Exception:  # noqa: BLE001 - unknown is answered as not committed, as before
        logger.warning("could not tell whether turn %s was committed", turn.pk)
        return False


class _StillCommitting(Exception):
    """The lost connection's transaction still held the session row at the lock timeout."""


def _turn_committed(*, turn_id: uuid.UUID, session_id: uuid.UUID) -> bool:
    if connection.vendor != "postgresql":
        return Turn.objects.filter(pk=turn_id).exists()
    try:
        with transaction.atomic():
            # The lost connection's server process may still be committing (waiting for a
            # synchronous standby, say), its accept holding the session row: until it
            # ends, the turn is not visible yet. This lock waits for that end.
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT set_config('lock_timeout', %s, true)", [f"{COMMIT_CHECK_LOCK_MS}ms"]
                )
            sessions = ChatSession.objects.select_for_update(no_key=True).filter(pk=session_id)
            list(sessions.values_list("pk"))
            found = Turn.objects.filter(pk=turn_id).exists()
            # Rolled back: the check keeps nothing, and the COMMIT of a transaction that
            # took a row lock would itself wait for a synchronous standby, unbounded.
            transaction.set_rollback(True)
            return found
    except OperationalError as exc:
        if getattr(exc.__cause__, "sqlstate", None) == "55P03":  # lock_not_available
            # Not an outage to retry on a fresh connection: it was waited for long enough.
            raise _StillCommitting(turn_id) from exc
        raise


def _message_undo(*, owner_id: int, session_id: object, turn_id: uuid.UUID) -> None:
    sid = as_uuid(session_id)
    if sid is None or not history_store().keeps_outside_the_database:
        return
    try:
        history_store().discard_turn(session=SessionRef(pk=sid, owner_id=owner_id), turn_id=turn_id)
    except Exception:  # noqa: BLE001 - the answer is an error already; the TTL ends the rest
        logger.warning("could not undo turn %s in the history store", turn_id)


def _message_accept(
    *, user: AbstractBaseUser, session_id: object, content: str, turn_id: uuid.UUID
) -> Turn:
    # Run in the caller's transaction, which must see its COMMIT fail to tell whether it
    # took. The session row lock serialises accepts per session.
    now = timezone.now()
    session = chat_session_take_seq_for_owner(
        user=user, session_id=session_id, now=now, expires_at=_expiry(now)
    )
    turn = sql.insert(Turn(id=turn_id, session=session, deadline_at=_deadline(now)))
    stored = privacy.content_scrub(
        session_id=session.pk, content=content, vault_row=session.vault_row
    )
    message = history_store().append_user_message(
        session=session, turn_id=turn.pk, seq=session.next_seq, content=stored
    )
    audit_message(
        user_id=user.pk, session_id=session.pk, turn_id=turn.pk, role="user", content=stored
    )
    fingerprints_register(user_id=user.pk, session_id=session.pk, text=stored)
    # What was just written answers the request: no further read that could fail after
    # the message was accepted (and make the client send it twice). Its owner reads the
    # originals, which under pseudonymisation are what was sent; redacted text stays so.
    shown = content if settings.PII_MODE == "pseudonymize" else stored
    turn.exchange = [dataclasses.replace(message, content=shown)]
    return turn


def _turn_stale_end(*, user: AbstractBaseUser, session_id: object) -> bool:
    """End the session's turns in flight past ``STALE_TURN_SECONDS``; True if there were any.

    Without beat (the embedded setup, or a production that lost it) a turn whose process
    died would otherwise answer every later message with 409 for good.
    """
    stale_before = timezone.now() - timedelta(seconds=settings.STALE_TURN_SECONDS)
    stale = Turn.objects.filter(
        session_id=as_uuid(session_id),
        session__owner=user,
        status__in=Turn.IN_FLIGHT,
        updated_at__lt=stale_before,
    ).values_list("pk", flat=True)
    ended = [turn_fail(turn_id=pk, code="stalled", detail=STALLED_DETAIL) for pk in stale]
    return any(ended)


def turn_discard(*, turn_id: uuid.UUID) -> None:
    """Remove a turn that could not be queued, with its message, as if never accepted."""
    with transaction.atomic():
        turn = _turn_lock(turn_id)
        if turn is None or turn.status != Turn.Status.PENDING:
            return
        history_store().discard_turn(session=turn.session, turn_id=turn.pk)
        turn.delete()
        ChatSession.objects.filter(pk=turn.session_id).update(next_seq=F("next_seq") - 1)


def turn_claim(*, turn_id: object) -> Turn | None:
    """Mark a turn running and count the attempt; return None if it needs no more work.

    A turn past its attempt budget is failed here, so a task redelivered forever still ends.
    """
    turn = _turn_start(turn_id)
    if turn is not None and turn.attempts > settings.TURN_MAX_ATTEMPTS:
        turn_fail(
            turn_id=turn.pk,
            code="retries_exhausted",
            detail="The assistant could not be reached after several attempts; send again.",
        )
        return None
    if turn is not None:
        events.publish_turn_changed(turn_id=turn.pk, status=Turn.Status.RUNNING)
    return turn


# Postgres claims a turn, and ends one, in one UPDATE ... RETURNING each, rows built from
# what it returns: a claim is then one round trip instead of an update and a read, a
# turn's end one instead of a lock and two updates (``rows``).
_TURN, _SESSION = Turn._meta, ChatSession._meta
_IN_FLIGHT = ", ".join(f"'{status}'" for status in Turn.IN_FLIGHT)  # constants, not input


_START_SQL = f"""
    UPDATE "{_TURN.db_table}" AS t
    SET "status" = %s, "attempts" = t."attempts" + 1, "started_at" = %s, "updated_at" = %s
    FROM "{_SESSION.db_table}" AS s
    WHERE t."id" = %s AND t."status" IN ({_IN_FLIGHT}) AND s."id" = t."session_id"
    RETURNING {rows.columns("t", Turn)}, {rows.columns("s", ChatSession)}
"""  # noqa: S608 - names from the models, statuses from constants; values are parameters
# The session's row is updated (locked) before the turn's, the order a DELETE takes them.
# If the turn ended meanwhile, the turn's UPDATE re-reads its row and matches nothing.
_END_SQL = f"""
    WITH s AS (
        UPDATE "{_SESSION.db_table}" SET "next_seq" = "next_seq" + 1
        WHERE "id" = (
            SELECT "session_id" FROM "{_TURN.db_table}"
            WHERE "id" = %s AND "status" IN ({_IN_FLIGHT})
        )
        RETURNING *
    )
    UPDATE "{_TURN.db_table}" AS t
    SET "status" = %s, "withheld" = %s, "finished_at" = %s, "updated_at" = %s,
        "error_code" = '', "error_detail" = ''
    FROM s
    WHERE t."id" = %s AND t."session_id" = s."id" AND t."status" IN ({_IN_FLIGHT})
    RETURNING {rows.columns("t", Turn)}, {rows.columns("s", ChatSession)}
"""  # noqa: S608 - names from the models, statuses from constants; values are parameters


def _turn_start(turn_id: object) -> Turn | None:
    """Mark the turn running and count the attempt; return it with its session, or None if
    it is finished or gone."""
    tid = as_uuid(turn_id)
    if tid is None:
        return None
    now = timezone.now()
    if rows.in_sql():
        return rows.turn_from_row(rows.one(_START_SQL, [Turn.Status.RUNNING.value, now, now, tid]))
    updated = Turn.objects.filter(pk=tid, status__in=Turn.IN_FLIGHT).update(
        status=Turn.Status.RUNNING, attempts=F("attempts") + 1, started_at=now, updated_at=now
    )
    return turn_get(turn_id=tid) if updated else None


def turn_requeue(*, turn_id: object, attempt: int) -> bool:
    """Put a running turn back to pending before a retry; False if a newer attempt owns it."""
    updated = Turn.objects.filter(pk=turn_id, status=Turn.Status.RUNNING, attempts=attempt).update(
        status=Turn.Status.PENDING, updated_at=timezone.now()
    )
    if updated:
        events.publish_turn_changed(turn_id=turn_id, status=Turn.Status.PENDING)
    return bool(updated)


def turn_deliver(*, turn: Turn, reply: str) -> str | None:
    """Scan the reply against the fingerprint index, then store or withhold it (one read);
    return how the turn ended, as ``turn_complete``.

    Raise ``IndexUnavailable`` if the index cannot be reached: the task tries again later.
    """
    scan = reply_scan(user_id=turn.session.owner_id, session_id=turn.session_id, text=reply)
    return turn_complete(turn_id=turn.pk, reply=reply, scan=scan)


def turn_complete(*, turn_id: object, reply: str, scan: ScanResult | None = None) -> str | None:
    """Store the reply and end the turn; return how it ended (``completed``, or
    ``suppressed`` by the leak scan), or None if it had already ended.

    The turn and session rows are locked first, and the store keeps one reply per turn,
    so two concurrent runs of one turn never store two replies. A reply the ``scan`` found
    to carry other users' data is flagged for review and, under ``LEAK_ACTION=suppress``,
    withheld: sealed on the turn, the neutral notice stored in its place, the turn ended
    ``suppressed``. A delivered reply's fingerprints join the index.
    """
    leaked = scan is not None and scan.leaked
    suppress = leaked and settings.LEAK_ACTION == "suppress"
    end = Turn.Status.SUPPRESSED if suppress else Turn.Status.COMPLETED
    withheld = crypto.seal(reply.encode()) if suppress else None
    try:
        with transaction.atomic():
            turn = _turn_end(turn_id, status=end, withheld=withheld)
            if turn is None:
                transaction.set_rollback(True)  # the seq it may have taken goes back
                return None
            seq = turn.session.next_seq - 1
            message = _reply_append(
                turn=turn,
                seq=seq,
                reply=SUPPRESSED_NOTICE if suppress else reply,
                status="suppressed" if suppress else "ok",
            )
            if message.seq != seq:  # an earlier run's reply, kept at the seq it took
                ChatSession.objects.filter(pk=turn.session_id).update(next_seq=message.seq + 1)
            _reply_audit(turn=turn, content=message.content, scan=scan if leaked else None)
            if not suppress:
                # What is stored (an earlier run's reply, if one was kept): the index
                # holds what the session holds.
                fingerprints_register(
                    user_id=turn.session.owner_id,
                    session_id=turn.session_id,
                    text=message.content,
                    scan=scan,  # its digests, when the stored text is the one scanned
                )
    except DuplicateReply:
        logger.info("turn %s already has a reply; discarding a duplicate", turn_id)
        return None
    events.publish_turn_changed(turn_id=turn_id, status=end)
    return end.value


def _turn_end(turn_id: object, *, status: str, withheld: bytes | None) -> Turn | None:
    """End an unfinished turn and take the next seq of its session for the reply; return the
    turn with its session (``next_seq`` already past the reply's), or None if it had ended.

    Both rows stay locked to the end of the caller's transaction, the session's first, as
    ``chat_session_delete`` takes them: a DELETE waits, and seq stays gap-free. Call it
    inside a transaction, and roll that back on None: the session may have moved on.
    """
    now = timezone.now()
    if rows.in_sql():
        tid = as_uuid(turn_id)
        params = [tid, str(status), withheld, now, now, tid]
        return rows.turn_from_row(rows.one(_END_SQL, params))
    turn = _turn_lock(turn_id)
    if turn is None or turn.is_finished:
        return None
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


def _turn_lock(turn_id: object) -> Turn | None:
    """Lock the turn's session row, then the turn's; return the turn with that session, or
    None if either is gone.

    The session's row comes first, as every path takes them (a ``DELETE``, an accept, the
    turn's end): two transactions taking the same two rows in opposite orders can each hold
    one and wait for the other. One locking query over the join would leave the order to
    the plan (the turn's first, in practice).
    """
    tid = as_uuid(turn_id)
    if tid is None:
        return None
    of_turn = Turn.objects.filter(pk=tid).values("session_id")  # never changes: no lock needed
    session = ChatSession.objects.select_for_update().filter(pk__in=of_turn).first()
    if session is None:
        return None
    turn = Turn.objects.select_for_update().filter(pk=tid, session_id=session.pk).first()
    if turn is not None:
        Turn.session.field.set_cached_value(turn, session)
    return turn


def _reply_audit(*, turn: Turn, content: str, scan: ScanResult | None) -> None:
    ids = {"user_id": turn.session.owner_id, "session_id": turn.session_id, "turn_id": turn.pk}
    if scan is None:
        audit_message(**ids, role="assistant", content=content, kind="reply")
    else:
        delivered = settings.LEAK_ACTION != "suppress"
        audit_flagged_reply(**ids, content=content, result=scan, delivered=delivered)


def turn_release_withheld(*, turn_id: object) -> bool:
    """Deliver a withheld reply that review found harmless; return False if there is none.

    The turn then shows it (``completed``), and its fingerprints join the index.
    """
    with transaction.atomic():
        turn = _turn_lock(turn_id)
        if turn is None or turn.status != Turn.Status.SUPPRESSED or not turn.withheld:
            return False
        text = crypto.unseal(bytes(turn.withheld)).decode()
        history_store().reply_rewrite(
            session=turn.session, turn_id=turn.pk, content=text, status="ok"
        )
        Turn.objects.filter(pk=turn.pk).update(
            status=Turn.Status.COMPLETED, withheld=None, updated_at=timezone.now()
        )
        fingerprints_register(user_id=turn.session.owner_id, session_id=turn.session_id, text=text)
    events.publish_turn_changed(turn_id=turn.pk, status=Turn.Status.COMPLETED)
    return True


def _reply_append(*, turn: Turn, seq: int, reply: str, status: str) -> StoredMessage:
    try:
        return history_store().append_reply(
            session=turn.session,
            turn_id=turn.pk,
            seq=seq,
            content=reply,
            status=status,
        )
    except DuplicateReply as duplicate:
        if duplicate.existing is None:
            raise  # the database store: the reply is there, this transaction is spoilt
        # An earlier run stored it and then lost its database commit: finish with it.
        return duplicate.existing


def turn_fail(*, turn_id: object, code: str, detail: str, attempt: int | None = None) -> bool:
    """End an unfinished turn ``failed``; the user's message stays so they can send again.

    With ``attempt``, only that attempt may fail the turn: a run overtaken by a redelivered
    one (which claimed a later attempt) leaves the decision to the newer run.
    """
    now = timezone.now()
    unfinished = Turn.objects.filter(pk=turn_id, status__in=Turn.IN_FLIGHT)
    if attempt is not None:
        unfinished = unfinished.filter(attempts=attempt)
    updated = unfinished.update(
        status=Turn.Status.FAILED,
        error_code=code,
        error_detail=detail,
        finished_at=now,
        updated_at=now,
    )
    if updated:
        events.publish_turn_changed(turn_id=turn_id, status=Turn.Status.FAILED)
    return bool(updated)


def turn_sweep_stale(*, older_than_seconds: int) -> tuple[list[Turn], int]:
    """Decide turns left pending or running past the bound: return those put back to
    pending (for the caller to queue again) and how many were failed.

    Their task was lost (the broker restarted empty) or their worker died after acking.
    Each turn is decided under a skip-locked row lock and its ``updated_at`` is bumped, so
    with many sweepers at once exactly one re-queues it per period.
    """
    requeued: list[Turn] = []
    failed = 0
    for turn_id in turn_list_stale(older_than_seconds=older_than_seconds).values_list(
        "pk", flat=True
    ):
        turn = _turn_sweep_one(turn_id=turn_id, older_than_seconds=older_than_seconds)
        if turn is not None and turn.is_finished:
            failed += 1
        elif turn is not None:
            logger.warning("re-queueing stale turn %s", turn_id)
            requeued.append(turn)
    return requeued, failed


def _turn_sweep_one(*, turn_id: uuid.UUID, older_than_seconds: int) -> Turn | None:
    with transaction.atomic():
        turn = (
            turn_list_stale(older_than_seconds=older_than_seconds)
            .select_for_update(skip_locked=True)
            .filter(pk=turn_id)
            .first()
        )
        if turn is None:
            return None  # another sweeper has it, or it moved on
        if turn.attempts >= settings.TURN_MAX_ATTEMPTS:
            turn_fail(turn_id=turn.pk, code="stalled", detail=STALLED_DETAIL)
            turn.status = Turn.Status.FAILED
        else:
            now = timezone.now()
            Turn.objects.filter(pk=turn.pk).update(
                status=Turn.Status.PENDING, updated_at=now, deadline_at=_deadline(now)
            )
    return turn


PURGE_BATCH = 500


def chat_session_purge_expired() -> int:
    """Erase every expired session everywhere, as ``DELETE`` does; return how many.

    If the fingerprint index cannot be reached, the sessions are erased all the same: the
    postings hold no content and age out of the index (``FINGERPRINT_TTL_SECONDS``), where
    the conversation must not outlive its expiry.
    """
    erased = 0
    while batch := _purge_expired_batch():
        erased += batch
    return erased


@transaction.atomic
def _purge_expired_batch() -> int:
    # Locked and skipped if busy: a session being written to now is taken next time.
    expired = ChatSession.objects.filter(expires_at__lte=timezone.now()).select_for_update(
        skip_locked=True
    )
    return _sessions_erase(list(expired[:PURGE_BATCH]))


@transaction.atomic
def account_sessions_erase(*, owner_id: int) -> int:
    """Erase every session of the account everywhere, as the expiry purge does; return how
    many.

    Run as the account is deleted (``account_erase_on_delete``): the database's cascade
    takes the rows only, and would leave the ``redis`` store's history, the ``cached_db``
    cache and the fingerprint postings behind, out of the purge's reach, which starts from
    the session rows. If the store cannot be reached the account's deletion fails whole.
    """
    # The account's row first: a sign-in meanwhile (a new token, whose foreign key Postgres
    # checks at COMMIT) waits for the delete and fails then, rather than failing the
    # delete's COMMIT after the store's copies were erased.
    list(get_user_model().objects.select_for_update().filter(pk=owner_id).values_list("pk"))
    owned = ChatSession.objects.filter(owner_id=owner_id).select_for_update()
    return _sessions_erase(list(owned))


def account_erase_on_delete(sender: type, instance: AbstractBaseUser, **kwargs: object) -> None:
    """``pre_delete`` receiver of the user model: erase the account's sessions first."""
    account_sessions_erase(owner_id=instance.pk)


def _sessions_erase(sessions: list[ChatSession]) -> int:
    # Locked by the caller. An unreachable index does not keep a conversation past its
    # end: the postings hold no content and age out (``FINGERPRINT_TTL_SECONDS``).
    if not sessions:
        return 0
    try:
        for session in sessions:
            _session_fingerprints_erase(session)
    except IndexUnavailable:
        logger.warning("fingerprint index unavailable: erased sessions' postings will age out")
    ids = [session.pk for session in sessions]
    ChatSession.objects.filter(pk__in=ids).delete()
    history_store().erase(session_ids=ids)  # after the rows, as in chat_session_delete
    return len(ids)
