"""The contract every history store keeps, and the checks they share.

Shaped after ``django.contrib.sessions.backends.base``: this class does the shared work
(every message read back is checked against the owner and session asked for, and a
mismatch is audited and refused); a backend implements the short ``_``-prefixed contract.
Backends raise the neutral exceptions below, never their database's or Redis's own.

Sessions, turns and ownership are database rows whatever the store; a store keeps the
messages. Sequence numbers are allocated by the caller under the session's row lock, so a
store never decides an order.
"""

import abc
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from audit_app.services import audit_security_event
from core.errors import BackendUnavailable

USER = "user"
ASSISTANT = "assistant"
OK = "ok"


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One message as a store returns it, naming the owner and session it was stored for."""

    id: int
    seq: int
    role: str
    content: str
    status: str
    created_at: datetime
    turn_id: uuid.UUID
    session_id: uuid.UUID
    user_id: int


class StoreUnavailable(BackendUnavailable):
    """The store cannot be reached; nothing was written (an API call answers 503)."""


class ForeignData(StoreUnavailable):
    """A value read back names another owner or session: refused, audited, never used.

    The audit entry is written by whoever handles the error (the API's exception handler,
    the task), after the transaction it happened in has rolled back, so the trail keeps it.
    """

    def __init__(self, detail: str, *, user_id: int, session_id: uuid.UUID, store: str) -> None:
        super().__init__(detail)
        self.user_id = user_id
        self.session_id = session_id
        self.store = store

    def audit(self) -> None:
        audit_security_event(
            user_id=self.user_id,
            session_id=self.session_id,
            reason=f"{self.store} held a value of another owner or session; refused",
        )


class DuplicateReply(Exception):
    """The turn already has its message of this role.

    ``existing`` is that message when the store could read it without spoiling the caller's
    transaction, else None (the database store: the transaction must be rolled back).
    """

    def __init__(self, existing: StoredMessage | None) -> None:
        super().__init__("the turn already has this message")
        self.existing = existing


class ReplyOvertaken(DuplicateReply):
    """A writer that locked the turn after this one (a higher fence) has written or found its
    reply since: this one lost its lock (it cannot commit), and its rewrite would write over
    what the later one decided, and perhaps showed. Nothing was written."""

    def __init__(self) -> None:
        super().__init__(None)


class MessageMissing(Exception):
    """The turn has no message of that role to rewrite (its history expired or was lost, or
    its seq since holds another turn's message): nothing was written."""


class SeqTaken(Exception):
    """The seq holds a message of the session already: its counter is behind its messages.

    A fault, neither a duplicate (the caller would take it for a stored reply) nor an
    outage (retrying cannot help). Nothing was written; the database store's transaction
    is spoilt and must roll back.
    """


@dataclass(frozen=True)
class SessionRef:
    """A session named by its ids alone, for a store call that needs no more (an undo)."""

    pk: uuid.UUID
    owner_id: int


class SessionLike:
    """What a store needs of a session: its id, its owner's id and when it expires."""

    pk: uuid.UUID
    owner_id: int
    expires_at: datetime
    next_seq: int


class BaseHistoryStore(abc.ABC):
    """The history of each session, appended to and read back for its owner only."""

    # Whether a write outlives a rolled-back database transaction (and must be undone).
    keeps_outside_the_database = False
    # Whether a read that still finds a message shows its session was not erased before the
    # read: every read after ``erase`` misses what it erased (rows deleted in the erasing
    # transaction; Redis keys deleted before it commits). Not so for a cache, which a racing
    # reader may refill with what it read before the erase.
    reads_see_erase = True

    # -- public API: used by services and selectors ------------------------------------

    def append_user_message(
        self, *, session: SessionLike, turn_id: uuid.UUID, seq: int, content: str, fence: int = 0
    ) -> StoredMessage:
        """Store the user message of a new turn at ``seq``; raise ``DuplicateReply`` if the
        turn has one already, ``SeqTaken`` if ``seq`` holds another message. ``fence`` is
        the accept's, taken under the session's lock: see ``reply_rewrite``."""
        return self._append(
            session, turn_id=turn_id, seq=seq, role=USER, content=content, status=OK, fence=fence
        )

    def append_reply(
        self,
        *,
        session: SessionLike,
        turn_id: uuid.UUID,
        seq: int,
        content: str,
        status: str = OK,
        fence: int = 0,
    ) -> StoredMessage:
        """Store the one reply of a turn at ``seq``, atomically; raise ``DuplicateReply`` if
        it has one (a redelivered run racing the first), ``SeqTaken`` if ``seq`` holds
        another message. ``fence`` is the writer's, taken as it locked the turn: see
        ``reply_rewrite``."""
        return self._append(
            session,
            turn_id=turn_id,
            seq=seq,
            role=ASSISTANT,
            content=content,
            status=status,
            fence=fence,
        )

    def turn_messages(self, *, session: SessionLike, turn_id: uuid.UUID) -> list[StoredMessage]:
        """Return the turn's user message and reply (if any), in ``seq`` order."""
        messages = self._checked(session, self._turn_messages(session, turn_id))
        return [m for m in messages if m.turn_id == turn_id]

    def history(self, *, session: SessionLike, turn_id: uuid.UUID) -> list[StoredMessage]:
        """Return what Claude is sent for a turn: the session's delivered messages up to and
        including the turn's user message, oldest first."""
        messages = self._checked(session, self._all(session))
        upto = next((m.seq for m in messages if m.turn_id == turn_id and m.role == USER), None)
        if upto is None:
            return []
        return [m for m in messages if m.seq <= upto and m.status == OK]

    def page(self, *, session: SessionLike, offset: int, limit: int) -> list[StoredMessage]:
        """Return up to ``limit`` messages of the session from position ``offset``, by seq."""
        return self._checked(session, self._page(session, offset, limit))

    def discard_turn(
        self,
        *,
        session: SessionLike,
        turn_id: uuid.UUID,
        roles: Sequence[str] = (USER, ASSISTANT),
        fence: int = 0,
    ) -> None:
        """Remove a turn's messages (of ``roles``): it is being undone as if never accepted.

        ``fence``, the remover's (see ``reply_rewrite``; 0: none), keeps a message that a
        writer which locked the turn after the remover wrote."""
        self._discard_turn(session, turn_id, roles, fence)

    def erase_begin(self, *, session_ids: Iterable[uuid.UUID]) -> None:
        """Refuse (``StoreUnavailable``) an erasure this store could not finish, before the
        erasure's first step outside the database (the fingerprint postings) is taken: one
        the store refused after it would leave the session whole but its postings gone, its
        data no longer found in another user's reply. Erases nothing a rollback would need."""
        ids = list(session_ids)
        if ids:
            self._erase_begin(ids)

    def _erase_begin(self, session_ids: list[uuid.UUID]) -> None:
        # Nothing to check by default: the database's stores erase with its rows.
        return None

    def erase(self, *, session_ids: Iterable[uuid.UUID]) -> None:
        """Erase everything kept for these sessions; erasing an unknown session does nothing.

        Called after the session rows are deleted, in the same transaction (``DELETE`` and
        the expiry purge), so that a store that cannot erase rolls the rows back; a store
        with a TTL also lets expired sessions disappear by themselves.
        """
        ids = list(session_ids)
        if ids:
            self._erase(ids)

    def reply_rewrite(
        self, *, session: SessionLike, turn_id: uuid.UUID, content: str, status: str, fence: int
    ) -> None:
        """Replace the text and status of a turn's reply (a withheld reply released on review,
        a re-run's reply over one that a lost commit left).

        ``fence`` is a value the writer took as it locked the turn, higher for every later
        lock (``services.reply``). A store whose writes outlive a lost commit keeps the
        highest fence that wrote or found the reply, and refuses a lower one
        (``ReplyOvertaken``): a writer that stalled and lost its lock must not write over what
        one that locked the turn after it decided. (The database's stores need no fence: a
        writer's rows go with its transaction.)
        Raise ``MessageMissing`` if the turn has no reply to replace, ``ForeignData`` if the
        store's copy names another owner."""
        self._rewrite(session, turn_id, ASSISTANT, content, status, fence=fence)

    # -- the shared check --------------------------------------------------------------

    def _checked(
        self, session: SessionLike, messages: Sequence[StoredMessage]
    ) -> list[StoredMessage]:
        """Refuse a read that holds anything but this owner's and this session's messages.

        A reused connection, a mis-keyed cache entry or a bug must never hand one user's
        message to another: the value itself names its owner and session, and both must
        be the ones asked for.
        """
        for message in messages:
            if message.user_id != session.owner_id or message.session_id != session.pk:
                raise self._foreign(session)
        return list(messages)

    def _foreign(self, session: SessionLike) -> ForeignData:
        return ForeignData(
            "the history store returned a value of another session",
            user_id=session.owner_id,
            session_id=session.pk,
            store=type(self).__module__,
        )

    # -- the contract each backend implements ------------------------------------------

    @abc.abstractmethod
    def _append(
        self,
        session: SessionLike,
        *,
        turn_id: uuid.UUID,
        seq: int,
        role: str,
        content: str,
        status: str,
        fence: int = 0,
    ) -> StoredMessage:
        """Write one message atomically; one per (turn, role), else ``DuplicateReply`` (and
        for nothing else); one per seq, else ``SeqTaken``, having written nothing (another
        failure is an error of its own). A store that fences rewrites (``reply_rewrite``)
        keeps ``fence`` with the message, and raises it on the message it finds."""

    @abc.abstractmethod
    def _turn_messages(self, session: SessionLike, turn_id: uuid.UUID) -> list[StoredMessage]:
        """Return the turn's messages, as stored (the base class checks them)."""

    @abc.abstractmethod
    def _all(self, session: SessionLike) -> list[StoredMessage]:
        """Return every message of the session, by seq."""

    @abc.abstractmethod
    def _page(self, session: SessionLike, offset: int, limit: int) -> list[StoredMessage]:
        """Return a slice of the session's messages, by seq."""

    @abc.abstractmethod
    def _discard_turn(
        self, session: SessionLike, turn_id: uuid.UUID, roles: Sequence[str], fence: int = 0
    ) -> None:
        """Delete the turn's messages of ``roles`` (a fencing store: none of a higher fence)."""

    @abc.abstractmethod
    def _erase(self, session_ids: list[uuid.UUID]) -> None:
        """Delete every message of these sessions."""

    @abc.abstractmethod
    def _rewrite(
        self,
        session: SessionLike,
        turn_id: uuid.UUID,
        role: str,
        content: str,
        status: str,
        *,
        fence: int,
    ) -> None:
        """Replace one message's text and status; raise ``MessageMissing`` if there is none,
        ``ReplyOvertaken`` if the store fences and a higher fence than ``fence`` wrote."""
