"""Stateless sessions: the whole conversation travels in a token that its user keeps.

For serverless and edge deployments that keep no conversation on the server: each turn
brings the token of the last one and a message, and gets the reply and the next token.

A package, so that each part stays short enough to read whole: ``codec`` issues and opens
the token (its format, keys, owner and expiry); here is the turn. Callers import from here.

Replays are allowed and fork the conversation: the server keeps nothing that could tell a
token already answered from a fresh one, so sending an older token again continues from
that turn. Every fork is the same user's own history, under the same expiry.

No conversation content stays on the server: the history lives in the request's memory.
A turn leaves only what holds no content, as every turn does: audit entries (keyed hashes
and counts), keyed hashes of distinctive tokens in the fingerprint index, the throttle's
counter. Nothing goes to the broker. The index's postings are what the leak scan of other
users' replies reads; nothing can erase a conversation the server does not keep, so they
age out of it, and none is listed for an erasure.
"""

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction

from audit_app.holds import audit_reply, leak_hold_active
from audit_app.services import (
    ScanResult,
    audit_message,
    audit_security_event,
    fingerprints_register,
    reply_scan,
)

from .. import llm
from ..isolation import bound
from ..pii import pseudonymize, redact, restore, scrub_reply, unknown_placeholders
from ..services import withheld_notice
from .codec import (
    AES_BLOCK,
    FERNET_OVERHEAD,
    FERNET_VERSION,
    MAX_EXPANSION,
    TOKEN_TEXT,
    VERSION,
    Conversation,
    TokenError,
    TokenExpired,
    TokenInvalid,
    TokenMalformed,
    TokenOtherUser,
    TokenRefused,
    TokenTooLarge,
    TokenTruncated,
    token_issue,
    token_open,
)

__all__ = (
    "AES_BLOCK",
    "FERNET_OVERHEAD",
    "FERNET_VERSION",
    "MAX_EXPANSION",
    "TOKEN_TEXT",
    "VERSION",
    "Conversation",
    "StatelessReply",
    "TokenError",
    "TokenExpired",
    "TokenInvalid",
    "TokenMalformed",
    "TokenOtherUser",
    "TokenRefused",
    "TokenTooLarge",
    "TokenTruncated",
    "stateless_chat",
    "stateless_chat_async",
    "stateless_turn_begin",
    "stateless_turn_end",
    "token_issue",
    "token_open",
)


@dataclass(frozen=True)
class StatelessReply:
    reply: str
    token: str


def stateless_turn_begin(*, user_id: int, token: str | None, content: str) -> Conversation:
    """Return the conversation of ``token`` (a new one if None) with the user's message in
    it, scrubbed as ``PII_MODE`` says.

    Raise ``TokenRefused`` (audited) or ``TokenTooLarge`` before anything is sent: a turn
    that could not be answered with a token is not started.
    """
    try:
        conversation = _conversation_for(user_id=user_id, token=token)
    except TokenRefused as exc:
        _audit_refused(exc, user_id=user_id)
        raise
    scrubbed, vault = _content_scrub(content, vault=conversation.vault)
    turn = conversation.added("user", scrubbed, vault=vault)
    token_issue(turn)  # raises TokenTooLarge now rather than after Claude's answer
    return turn


def stateless_turn_end(*, turn: Conversation, reply: str) -> StatelessReply:
    """Return what the owner reads of Claude's ``reply`` to ``turn``, and the next token.

    The reply is leak-scanned: one carrying other users' data is flagged and, under
    ``LEAK_ACTION=suppress``, replaced by the neutral notice and left out of the token;
    while the user is held (``audit_app.holds``) every reply is, under the hold's notice.
    Raise ``TokenTooLarge`` if the reply would grow the token past its limit (nothing is
    recorded then), ``IndexUnavailable`` if the fingerprint index is down.
    """
    # The user's own words first, as a stored session's are when accepted: echoing them is
    # no leak, and a scan before it would tell the user whether someone else used them.
    _, content = turn.messages[-1]
    fingerprints_register(user_id=turn.user_id, session_id=turn.id, text=content, erasable=False)
    # What is scanned and indexed is what may be kept, as for stored sessions.
    scrubbed = scrub_reply(
        reply, vault=turn.vault, mode=settings.PII_MODE, regions=settings.PII_PHONE_REGIONS
    )
    scan = reply_scan(user_id=turn.user_id, session_id=turn.id, text=scrubbed)
    held = leak_hold_active(user_id=turn.user_id)
    notice = withheld_notice(leaked=scan.leaked, held=held)
    suppress = notice is not None
    if suppress:
        kept, after, shown = notice, turn, notice
    else:
        kept = scrubbed
        # Its made-up placeholders reserved, as for stored sessions (``unknown_placeholders``).
        vault = {**turn.vault, **reserved} if (reserved := _reserved(kept, turn.vault)) else None
        after, shown = turn.added("assistant", kept, vault=vault), restore(kept, vault=turn.vault)
    token = token_issue(after)
    _turn_record(
        turn=turn, kept=kept, scanned=scrubbed, scan=scan, delivered=not suppress, held=held
    )
    return StatelessReply(reply=shown, token=token)


def stateless_chat(*, user_id: int, token: str | None, content: str) -> StatelessReply:
    """Run one stateless turn: open ``token``, ask Claude, return its reply and the next token.

    Raise what ``stateless_turn_begin`` and ``stateless_turn_end`` raise, and ``LLMError``
    if Claude cannot answer within ``TURN_DEADLINE_SECONDS``: the old token stays good.
    """
    turn = stateless_turn_begin(user_id=user_id, token=token, content=content)
    with bound(user_id=turn.user_id, session_id=turn.id):
        reply = llm.send(turn.history(), deadline=_deadline())
    return stateless_turn_end(turn=turn, reply=reply)


async def stateless_chat_async(*, user_id: int, token: str | None, content: str) -> StatelessReply:
    """``stateless_chat`` on the event loop: Claude is awaited in this coroutine's own
    isolation scope; the rest (PII detection, crypto, Redis, audit) runs in a thread."""
    turn = await sync_to_async(stateless_turn_begin)(user_id=user_id, token=token, content=content)
    with bound(user_id=turn.user_id, session_id=turn.id):
        reply = await llm.send_async(turn.history(), deadline=_deadline())
    return await sync_to_async(stateless_turn_end)(turn=turn, reply=reply)


def _conversation_for(*, user_id: int, token: str | None) -> Conversation:
    if token is None:
        return Conversation(user_id=user_id, id=uuid.uuid4())
    return token_open(token, user_id=user_id)


def _deadline() -> float:
    return time.time() + settings.TURN_DEADLINE_SECONDS


def _reserved(reply: str, vault: Mapping[str, str]) -> dict[str, str]:
    return unknown_placeholders(reply, vault) if settings.PII_MODE == "pseudonymize" else {}


def _content_scrub(content: str, *, vault: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """Return the message as Claude may see it, and the vault with its new placeholders."""
    mode, regions = settings.PII_MODE, settings.PII_PHONE_REGIONS
    if mode == "redact":
        return redact(content, regions=regions), dict(vault)
    if mode == "pseudonymize":
        scrubbed, new = pseudonymize(content, vault=vault, regions=regions)
        return scrubbed, {**vault, **new}
    return content, dict(vault)


def _audit_refused(exc: TokenRefused, *, user_id: int) -> None:
    # Ids and the reason only: nothing of what the token holds.
    if isinstance(exc, TokenOtherUser):
        reason = f"refused a stateless token of another user (user {exc.owner_id})"
        audit_security_event(user_id=user_id, session_id=exc.conversation_id, reason=reason)
    else:
        reason = f"refused a stateless token ({exc.code})"
        audit_security_event(user_id=user_id, session_id=None, reason=reason)


@transaction.atomic
def _turn_record(
    *, turn: Conversation, kept: str, scanned: str, scan: ScanResult, delivered: bool, held: bool
) -> None:
    """Audit both messages (hashes and counts; a flagged or held reply's of the reply as
    scanned, withheld or not) and index the reply if it was delivered."""
    ids = {"user_id": turn.user_id, "session_id": turn.id}
    _, content = turn.messages[-1]
    audit_message(**ids, role="user", content=content)
    audit_reply(
        **ids, turn_id=None, scanned=scanned, shown=kept, scan=scan, delivered=delivered, held=held
    )
    if delivered:
        fingerprints_register(**ids, text=kept, scan=scan, erasable=False)
