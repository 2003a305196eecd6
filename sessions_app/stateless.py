"""Stateless sessions: the whole conversation travels in a token that its user keeps.

For serverless and edge deployments that keep no conversation on the server: each turn
brings the token of the last one and a message, and gets the reply and the next token.

A token is a Fernet token (``crypto.seal``: AES-CBC with HMAC-SHA256 under the first of
``ENCRYPTION_KEYS``, opened under any of them, so keys rotate) of zlib-compressed JSON::

    {"v": 1, "u": user id, "c": conversation id, "t": issued at (Unix seconds),
     "m": [[role, content], ...], "p": {placeholder: original}}

No one without the keys can read or alter it. It is bound to its user: anyone else's
request with it is refused and told nothing of what it holds. It expires
``SESSION_TTL_SECONDS`` after the turn that issued it, and no turn may grow it past
``STATELESS_TOKEN_MAX_BYTES``. Its messages are those Claude saw (``PII_MODE`` applied);
the pseudonymisation vault travels inside it, so what its owner reads has the originals.

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

import base64
import binascii
import json
import re
import time
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction

from audit_app.holds import HELD_NOTICE, HELD_REASON, leak_hold_active, leak_hold_note
from audit_app.services import (
    ScanResult,
    audit_flagged_reply,
    audit_message,
    audit_security_event,
    fingerprints_register,
    reply_scan,
)

from . import crypto, llm
from .isolation import HistoryMessage, bound
from .pii import pseudonymize, redact, restore, scrub_reply, unknown_placeholders
from .services import SUPPRESSED_NOTICE

VERSION = 1
# Fernet's layout: version byte 0x80, timestamp (8), IV (16), AES blocks (16 each), HMAC (32).
FERNET_VERSION = b"\x80"
FERNET_OVERHEAD = 1 + 8 + 16 + 32
AES_BLOCK = 16
TOKEN_TEXT = re.compile(r"[A-Za-z0-9_-]+={0,2}")
# The JSON a token may hold, as a multiple of its size limit: a bound on what one opened
# token can cost in memory, however well its history compresses.
MAX_EXPANSION = 32


class TokenError(Exception):
    """A stateless token that cannot be used; ``code`` and ``detail`` say why."""

    code = "token_invalid"
    detail = "The token cannot be used."

    def __init__(self) -> None:
        super().__init__(self.detail)


class TokenRefused(TokenError):
    """The token sent is not one this user may continue: nothing is sent or kept."""


class TokenMalformed(TokenRefused):
    code = "token_malformed"
    detail = (
        "The token is malformed: it is not a stateless chat token. Send the token of your "
        "last reply unchanged, or null to start a conversation."
    )


class TokenTruncated(TokenRefused):
    code = "token_truncated"
    detail = "The token is truncated: send the whole token of your last reply."


class TokenInvalid(TokenRefused):
    code = "token_invalid"
    detail = (
        "The token failed its integrity check: it was altered, or was not issued by this "
        "service. Send the token of your last reply unchanged, or null to start again."
    )


class TokenExpired(TokenRefused):
    code = "token_expired"
    detail = "The token has expired: send null to start a new conversation."


class TokenOtherUser(TokenRefused):
    code = "token_other_user"
    detail = "This token was issued to another user."

    def __init__(self, *, owner_id: int, conversation_id: uuid.UUID) -> None:
        super().__init__()
        self.owner_id = owner_id
        self.conversation_id = conversation_id


class TokenTooLarge(TokenError):
    code = "token_too_large"
    detail = (
        "The conversation has grown past what a stateless token may carry; your last "
        "token is unchanged. Start a new conversation (token null) to go on."
    )


@dataclass(frozen=True)
class Conversation:
    """What a token carries: whose conversation, its id, its messages and PII vault."""

    user_id: int
    id: uuid.UUID
    messages: tuple[tuple[str, str], ...] = ()
    vault: Mapping[str, str] = field(default_factory=dict)

    def added(
        self, role: str, content: str, *, vault: Mapping[str, str] | None = None
    ) -> "Conversation":
        """Return the conversation with one more message (and the vault it needs)."""
        vault = self.vault if vault is None else vault
        return Conversation(self.user_id, self.id, (*self.messages, (role, content)), vault)

    def history(self) -> list[HistoryMessage]:
        """Return the messages as they go to Claude, each naming this user and conversation."""
        return [
            HistoryMessage(user_id=self.user_id, session_id=self.id, role=role, content=content)
            for role, content in self.messages
        ]


@dataclass(frozen=True)
class StatelessReply:
    reply: str
    token: str


# The token ---------------------------------------------------------------------------------


def token_issue(conversation: Conversation, *, now: float | None = None) -> str:
    """Return a token carrying ``conversation``, issued now (or at ``now``, Unix seconds).

    Raise ``TokenTooLarge`` if it would be longer than ``STATELESS_TOKEN_MAX_BYTES``.
    """
    payload = {
        "v": VERSION,
        "u": conversation.user_id,
        "c": str(conversation.id),
        "t": int(time.time() if now is None else now),
        "m": [list(message) for message in conversation.messages],
        "p": dict(conversation.vault),
    }
    plain = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    limit = settings.STATELESS_TOKEN_MAX_BYTES
    if len(plain) > limit * MAX_EXPANSION:
        raise TokenTooLarge()
    token = crypto.seal(zlib.compress(plain)).decode()
    if len(token) > limit:
        raise TokenTooLarge()
    return token


def token_open(token: str, *, user_id: int, now: float | None = None) -> Conversation:
    """Return the conversation ``token`` carries for ``user_id``.

    Raise ``TokenMalformed`` or ``TokenTruncated`` unless it is shaped as a whole token;
    ``TokenTooLarge`` if it is longer than the limit; ``TokenInvalid`` unless it is an
    unaltered token of ours;
    ``TokenOtherUser`` if it was issued to someone else; ``TokenExpired`` if the turn that
    issued it was more than ``SESSION_TTL_SECONDS`` ago.
    """
    # The form first (a regex and a base64 decode, bounded by MAX_REQUEST_BYTES): text
    # that is no token is malformed however long; only a token may be too large (issued
    # before the limit was lowered).
    _check_form(token)
    if len(token) > settings.STATELESS_TOKEN_MAX_BYTES:
        raise TokenTooLarge()
    try:
        payload = json.loads(_inflate(crypto.unseal(token.encode())))
        conversation, issued_at = _conversation(payload)
    except (crypto.InvalidToken, zlib.error, ValueError, KeyError, TypeError) as exc:
        raise TokenInvalid() from exc
    if conversation.user_id != user_id:
        raise TokenOtherUser(owner_id=conversation.user_id, conversation_id=conversation.id)
    if (time.time() if now is None else now) - issued_at > settings.SESSION_TTL_SECONDS:
        raise TokenExpired()
    return conversation


def _check_form(token: str) -> None:
    """Raise unless ``token`` is canonical url-safe base64 of something shaped like Fernet.

    Canonical, because a lenient decoder maps many texts to one token: a changed text
    must never be accepted as the token it resembles.
    """
    if not TOKEN_TEXT.fullmatch(token):
        raise TokenMalformed()
    body = token.rstrip("=")
    if len(body) % 4 == 1:
        raise TokenTruncated()
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except binascii.Error as exc:
        raise TokenMalformed() from exc
    canonical = base64.urlsafe_b64encode(raw).decode()
    if canonical != token:
        raise TokenTruncated() if canonical.startswith(token) else TokenMalformed()
    if not raw.startswith(FERNET_VERSION):
        raise TokenMalformed()
    blocks = len(raw) - FERNET_OVERHEAD
    if blocks < AES_BLOCK or blocks % AES_BLOCK:
        raise TokenTruncated()


def _inflate(packed: bytes) -> bytes:
    limit = settings.STATELESS_TOKEN_MAX_BYTES * MAX_EXPANSION
    inflater = zlib.decompressobj()
    plain = inflater.decompress(packed, limit)
    if inflater.unconsumed_tail or not inflater.eof:
        raise ValueError("the token's content is past the size bound")
    return plain


def _conversation(payload: dict) -> tuple[Conversation, float]:
    if payload["v"] != VERSION:
        raise ValueError(f"token version {payload['v']!r}")
    messages = tuple((str(role), str(content)) for role, content in payload["m"])
    if any(role not in ("user", "assistant") for role, _ in messages):
        raise ValueError("a message of an unknown role")
    vault = {str(key): str(value) for key, value in payload["p"].items()}
    conversation = Conversation(int(payload["u"]), uuid.UUID(payload["c"]), messages, vault)
    return conversation, float(payload["t"])


# The turn ----------------------------------------------------------------------------------


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
    suppress = held or (scan.leaked and settings.LEAK_ACTION == "suppress")
    if suppress:
        notice = HELD_NOTICE if held else SUPPRESSED_NOTICE
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
    if scan.leaked:
        audit_flagged_reply(
            **ids, turn_id=None, content=scanned, result=scan, delivered=delivered, held=held
        )
        if not held:
            leak_hold_note(user_id=turn.user_id)
    elif held:
        audit_message(**ids, role="assistant", content=scanned, kind="reply", reason=HELD_REASON)
    else:
        audit_message(**ids, role="assistant", content=kept, kind="reply")
    if delivered:
        fingerprints_register(**ids, text=kept, scan=scan, erasable=False)
