"""``PII_MODE`` applied where content enters and where its owner reads it.

Before storage, a user's message and a session's title are redacted or pseudonymised
(placeholders, originals in the session's vault); a reply is scrubbed too: a PII value of
this session's vault goes back to its placeholder, any other is redacted. What the owner
reads has the placeholders of their own session restored; a placeholder of another session,
or one the model made up, stays as it is.
"""

import dataclasses
import enum
import json
import re
import uuid
from collections.abc import Collection, Sequence
from typing import Final, NamedTuple

from django.conf import settings
from django.db import IntegrityError, transaction

from . import crypto
from .models import ChatSession, SessionVault
from .pii import (
    ENTITY_TYPES,
    PLACEHOLDER,
    holds_placeholder,
    pseudonymize_spans,
    redact_spans,
    restore,
    scrub_reply_spans,
    spans_to_scrub,
    unknown_placeholders,
)
from .stores import StoredMessage


class _Unread(enum.Enum):
    UNREAD = enum.auto()


# ``messages_restore``'s vault row not given: it reads the row itself if it needs it.
UNREAD: Final = _Unread.UNREAD


def vault_read(*, session_id: uuid.UUID) -> dict[str, str]:
    """Return the session's ``{placeholder: original}``, or {} if it has none."""
    return _vault_open(session_id)[1]


def _vault_open(session_id: uuid.UUID) -> tuple[bytes | None, dict[str, str]]:
    """Return the session's wrapped data key (None: no vault yet) and its entries."""
    row = (
        SessionVault.objects.filter(session_id=session_id)
        .values_list("wrapped_key", "entries")
        .first()
    )
    if row is None:
        return None, {}
    return _vault_unseal(wrapped=row[0], entries=row[1])


def _vault_unseal(*, wrapped: bytes, entries: bytes) -> tuple[bytes, dict[str, str]]:
    wrapped = bytes(wrapped)  # Postgres hands binary columns back as memoryview
    return wrapped, json.loads(crypto.open_with(wrapped, bytes(entries)))


def _vault_write(*, session_id: uuid.UUID, wrapped: bytes | None, entries: dict[str, str]) -> bool:
    """Store the session's vault under its data key, the first time under a new one.

    The caller holds the session's row lock. False if the vault it read as missing exists:
    an accept it waited for created it (and took its message back) after its read.
    """
    if wrapped is not None:
        sealed = crypto.seal_with(wrapped, json.dumps(entries).encode())
        SessionVault.objects.filter(session_id=session_id).update(entries=sealed)
        return True
    try:
        with transaction.atomic():  # a savepoint: a lost race leaves the caller's usable
            vault_create(session_id=session_id, entries=entries)
    except IntegrityError:
        if not SessionVault.objects.filter(session_id=session_id).exists():
            raise  # not the vault's primary key: not a race this resolves
        return False
    return True


def content_scrub(
    *, session_id: uuid.UUID, content: str, vault_row: SessionVault | None | _Unread = UNREAD
) -> str:
    """Return the user's message as it may be stored and sent to Claude.

    Call with the session's row locked: new placeholders extend its vault. ``vault_row`` is
    the vault as read under that lock (None: none yet); left out, it is read here if needed.
    """
    if settings.PII_MODE == "off":
        return content
    spans = spans_to_scrub(content, regions=settings.PII_PHONE_REGIONS)
    if settings.PII_MODE == "redact":
        return redact_spans(content, spans) if spans else content
    wrapped, vault = _vault_of(session_id, vault_row)  # no query when the row came along
    if not spans and not vault and not holds_placeholder(content):
        return content  # nothing found, no value of this session's to find, none to reserve
    scrubbed, new = pseudonymize_spans(content, spans, vault=vault)
    if new and not _vault_write(session_id=session_id, wrapped=wrapped, entries={**vault, **new}):
        # Numbered anew from the vault found; it exists now, so this writes, never recurses.
        return content_scrub(session_id=session_id, content=content)
    return scrubbed


def placeholders_reserve(
    *, session_id: uuid.UUID, text: str, known: Collection[str] = frozenset()
) -> None:
    """Reserve in the session's vault the placeholders of ``text`` (a reply as stored) that
    it does not hold, so that none of them is ever given to a real value
    (``unknown_placeholders``).

    Call with the session's row locked. Only under pseudonymisation, and only a text with a
    placeholder in it that is not ``known`` reads the vault: ``known`` are placeholders read
    from the vault earlier in this turn (``reply_scrub_read``), which it still holds, as a
    vault only grows.
    """
    if settings.PII_MODE != "pseudonymize" or not holds_placeholder(text):
        return
    if known and not unknown_placeholders(text, dict.fromkeys(known, "")):
        return  # Claude wrote only placeholders the vault holds: nothing to reserve
    wrapped, vault = _vault_open(session_id)
    reserved = unknown_placeholders(text, vault)
    if reserved and not _vault_write(
        session_id=session_id, wrapped=wrapped, entries={**vault, **reserved}
    ):
        placeholders_reserve(session_id=session_id, text=text)  # created meanwhile: once more


def reply_scrub(*, session_id: uuid.UUID, reply: str, sent_placeholders: bool = True) -> str:
    """Return Claude's reply as it may be stored: no PII but this session's placeholders.

    ``sent_placeholders``: whether the history Claude was sent held any. Claude may then
    write a vault value in full (a name first found after its cue, "my name is"), which
    only the vault tells; if it held none, Claude knows no value of the vault, and a reply
    in which the detector finds nothing needs no read of it.
    """
    return reply_scrub_read(
        session_id=session_id, reply=reply, sent_placeholders=sent_placeholders
    ).text


class ScrubbedReply(NamedTuple):
    """A reply as it may be stored, and the placeholders of the vault its scrub read (none
    if it read none)."""

    text: str
    vault_placeholders: frozenset[str]


def reply_scrub_read(
    *, session_id: uuid.UUID, reply: str, sent_placeholders: bool = True
) -> ScrubbedReply:
    """``reply_scrub``, with the placeholders of the vault it read: the turn's end need not
    read it again to reserve the reply's (``placeholders_reserve``'s ``known``)."""
    mode = settings.PII_MODE
    if mode == "off":
        return ScrubbedReply(reply, frozenset())
    spans = spans_to_scrub(reply, regions=settings.PII_PHONE_REGIONS)
    if not spans and not (sent_placeholders and mode == "pseudonymize"):
        return ScrubbedReply(reply, frozenset())  # nothing found: the vault need not be read
    vault = vault_read(session_id=session_id) if mode == "pseudonymize" else {}
    return ScrubbedReply(scrub_reply_spans(reply, spans, vault=vault, mode=mode), frozenset(vault))


# The title column's size. The API's limit is on the title as sent, and a placeholder or
# a "[TYPE]" can be longer than the value it replaces: such a title is shortened to fit.
TITLE_MAX_CHARS: Final = ChatSession._meta.get_field("title").max_length
_TITLE_MARKER = re.compile(rf"{PLACEHOLDER.pattern}|\[(?:{'|'.join(ENTITY_TYPES)})\]")


def title_scrub(*, title: str) -> tuple[str, dict[str, str]]:
    """Return a new session's title as it may be stored, and the originals it stands for.

    The originals ({} unless pseudonymising) are to start the session's vault
    (``vault_create``) once its row exists. A title whose protected form outgrows the column
    is cut to fit, never inside a placeholder; originals it no longer holds are not kept.
    """
    mode = settings.PII_MODE
    spans = [] if mode == "off" else spans_to_scrub(title, regions=settings.PII_PHONE_REGIONS)
    typed = mode == "pseudonymize" and holds_placeholder(title)  # to reserve
    if not spans and not typed:
        return title, {}
    if mode == "redact":
        return _title_fit(redact_spans(title, spans)), {}
    stored, originals = pseudonymize_spans(title, spans, vault={})
    stored = _title_fit(stored)
    return stored, {key: value for key, value in originals.items() if key in stored}


def _title_fit(title: str) -> str:
    if len(title) <= TITLE_MAX_CHARS:
        return title
    end = TITLE_MAX_CHARS - 1  # room for the ellipsis
    for marker in _TITLE_MARKER.finditer(title):
        if marker.start() < end < marker.end():
            end = marker.start()  # the cut would split it: it goes whole
    return title[:end].rstrip() + "\N{HORIZONTAL ELLIPSIS}"


def vault_create(*, session_id: uuid.UUID, entries: dict[str, str]) -> SessionVault | None:
    """Start a new session's vault with ``entries``; return it, or None if there are none.

    The caller makes sure nobody creates it meanwhile: it inserted the session in the same
    transaction, or it holds the session's row lock.
    """
    if not entries:
        return None
    wrapped = crypto.data_key_new()[1]
    sealed = crypto.seal_with(wrapped, json.dumps(entries).encode())
    return SessionVault.objects.create(session_id=session_id, wrapped_key=wrapped, entries=sealed)


def title_restore(*, session: ChatSession) -> str:
    """Return the session's title as its owner reads it: its own placeholders restored.

    The vault is the one read along with the session (``select_related("vault")``), or
    read here, and only if the title holds a placeholder.
    """
    if not holds_placeholder(session.title):
        return session.title
    vault = _vault_of(session.pk, getattr(session, "vault", None))[1]
    return restore(session.title, vault=vault)


def messages_restore(
    *,
    session_id: uuid.UUID,
    messages: Sequence[StoredMessage],
    vault_row: SessionVault | None | _Unread = UNREAD,
) -> list[StoredMessage]:
    """Return the messages with this session's placeholders replaced by the originals.

    ``vault_row`` is the session's vault as the caller read it along with the session
    (``select_related("vault")``; None: it has none), so the restore needs no query of
    its own; left out, the vault is read here, and only if a message holds a placeholder.
    """
    if not any(holds_placeholder(m.content) for m in messages):
        return list(messages)
    vault = _vault_of(session_id, vault_row)[1]
    return [dataclasses.replace(m, content=restore(m.content, vault=vault)) for m in messages]


def _vault_of(
    session_id: uuid.UUID, row: SessionVault | None | _Unread
) -> tuple[bytes | None, dict[str, str]]:
    """``_vault_open`` of a row the caller read already, or by a read of its own."""
    if row is UNREAD:
        return _vault_open(session_id)
    if row is None:
        return None, {}
    if row.session_id != session_id:
        # Another session's originals must never fill this one's placeholders.
        raise ValueError("the vault row given is not this session's")
    return _vault_unseal(wrapped=row.wrapped_key, entries=row.entries)
