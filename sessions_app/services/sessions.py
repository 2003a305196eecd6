"""Sessions' lifecycle: create, delete, and erase them everywhere (expiry, account)."""

import logging

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from audit_app.services import (
    IndexUnavailable,
    fingerprints_erase_session,
    fingerprints_erase_user,
)

from .. import events, privacy
from ..models import ChatSession, Turn
from ..selectors import chat_session_get_for_owner
from ..stores import ForeignData, history_store
from .common import expiry

logger = logging.getLogger(__name__)


@transaction.atomic
def chat_session_create(*, owner: AbstractBaseUser, title: str = "") -> ChatSession:
    """Create a session owned by ``owner``, its title protected as messages are.

    Under pseudonymisation the title's originals start the session's vault; the session
    comes back with it, so that what its owner reads is restored without another read.
    """
    now = timezone.now()
    stored, originals = privacy.title_scrub(title=title)
    session = ChatSession.objects.create(
        owner=owner, title=stored, last_activity_at=now, expires_at=expiry(now)
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
    history_store().erase_begin(session_ids=[session.pk])
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
    the session rows. The account's postings that stand for several of its sessions, which
    no session's erasure takes, go too. If the store cannot be reached the account's
    deletion fails whole; if the index cannot, the postings are left to age out.
    """
    # The account's row first: a sign-in meanwhile (a new token, whose foreign key Postgres
    # checks at COMMIT) waits for the delete and fails then, rather than failing the
    # delete's COMMIT after the store's copies were erased.
    list(get_user_model().objects.select_for_update().filter(pk=owner_id).values_list("pk"))
    owned = ChatSession.objects.filter(owner_id=owner_id).select_for_update()
    erased = _sessions_erase(list(owned))
    _account_fingerprints_erase(owner_id)
    return erased


def _account_fingerprints_erase(owner_id: int) -> None:
    # After its sessions' postings, so that no one's registration folds their records into
    # a new one of several sessions after it. The account's postings that stay (those of
    # its stateless conversations, in Redis) can still be folded so by another user's
    # registration later: such a record names the deleted account, holds no content, and
    # ages out. Also with no session left: those deleted one by one left their records of
    # several sessions.
    try:
        fingerprints_erase_user(user_id=owner_id)
    except IndexUnavailable:
        # As for the sessions' postings (``_sessions_erase``): no content, they age out.
        logger.warning(
            "fingerprint index unavailable: the account's postings of several sessions will age out"
        )


def account_erase_on_delete(sender: type, instance: AbstractBaseUser, **kwargs: object) -> None:
    """``pre_delete`` receiver of the user model: erase the account's sessions first."""
    account_sessions_erase(owner_id=instance.pk)


def _sessions_erase(sessions: list[ChatSession]) -> int:
    # Locked by the caller. An unreachable index does not keep a conversation past its
    # end: the postings hold no content and age out (``FINGERPRINT_TTL_SECONDS``).
    if not sessions:
        return 0
    history_store().erase_begin(session_ids=[session.pk for session in sessions])
    try:
        for session in sessions:
            _session_fingerprints_erase(session)
    except IndexUnavailable:
        logger.warning("fingerprint index unavailable: erased sessions' postings will age out")
    ids = [session.pk for session in sessions]
    ChatSession.objects.filter(pk__in=ids).delete()
    history_store().erase(session_ids=ids)  # after the rows, as in chat_session_delete
    return len(ids)
