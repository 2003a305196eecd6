"""``PII_MODE`` applied where content enters and where its owner reads it.

Before storage, a user's message is redacted or pseudonymised (placeholders, originals in
the session's vault); a reply is scrubbed too: a PII value of this session's vault goes
back to its placeholder, any other is redacted. What the owner reads has the placeholders
of their own session restored; a placeholder of another session, or one the model made
up, stays as it is.
"""

import dataclasses
import json
import uuid
from collections.abc import Sequence

from django.conf import settings

from . import crypto
from .models import SessionVault
from .pii import (
    PLACEHOLDER,
    pseudonymize_spans,
    redact_spans,
    restore,
    scrub_reply_spans,
    spans_to_scrub,
)
from .stores import StoredMessage


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
    wrapped = bytes(row[0])
    return wrapped, json.loads(crypto.open_with(wrapped, bytes(row[1])))


def _vault_write(*, session_id: uuid.UUID, wrapped: bytes | None, entries: dict[str, str]) -> None:
    """Store the session's vault under its data key, the first time under a new one.

    The caller holds the session's row lock, so no other writer can create it meanwhile.
    """
    if wrapped is not None:
        sealed = crypto.seal_with(wrapped, json.dumps(entries).encode())
        SessionVault.objects.filter(session_id=session_id).update(entries=sealed)
        return
    wrapped = crypto.data_key_new()[1]
    sealed = crypto.seal_with(wrapped, json.dumps(entries).encode())
    SessionVault.objects.create(session_id=session_id, wrapped_key=wrapped, entries=sealed)


def content_scrub(*, session_id: uuid.UUID, content: str) -> str:
    """Return the user's message as it may be stored and sent to Claude.

    Call with the session's row locked: new placeholders extend its vault.
    """
    if settings.PII_MODE == "off":
        return content
    spans = spans_to_scrub(content, regions=settings.PII_PHONE_REGIONS)
    if not spans:
        return content  # nothing found: the vault need not be read
    if settings.PII_MODE == "redact":
        return redact_spans(content, spans)
    wrapped, vault = _vault_open(session_id)
    scrubbed, new = pseudonymize_spans(content, spans, vault=vault)
    if new:
        _vault_write(session_id=session_id, wrapped=wrapped, entries={**vault, **new})
    return scrubbed


def reply_scrub(*, session_id: uuid.UUID, reply: str) -> str:
    """Return Claude's reply as it may be stored: no PII but this session's placeholders."""
    mode = settings.PII_MODE
    if mode == "off":
        return reply
    spans = spans_to_scrub(reply, regions=settings.PII_PHONE_REGIONS)
    if not spans:
        return reply  # nothing found: the vault need not be read
    vault = vault_read(session_id=session_id) if mode == "pseudonymize" else {}
    return scrub_reply_spans(reply, spans, vault=vault, mode=mode)


def messages_restore(
    *, session_id: uuid.UUID, messages: Sequence[StoredMessage]
) -> list[StoredMessage]:
    """Return the messages with this session's placeholders replaced by the originals."""
    if not any(PLACEHOLDER.search(m.content) for m in messages):
        return list(messages)
    vault = vault_read(session_id=session_id)
    return [dataclasses.replace(m, content=restore(m.content, vault=vault)) for m in messages]
