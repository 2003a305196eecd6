"""The stateless token: a conversation sealed for its user to keep, and opened again.

A token is a Fernet token (``crypto.seal``: AES-CBC with HMAC-SHA256 under the first of
``ENCRYPTION_KEYS``, opened under any of them, so keys rotate) of zlib-compressed JSON::

    {"v": 1, "u": user id, "c": conversation id, "t": issued at (Unix seconds),
     "m": [[role, content], ...], "p": {placeholder: original}}

No one without the keys can read or alter it. It is bound to its user: anyone else's
request with it is refused and told nothing of what it holds. It expires
``SESSION_TTL_SECONDS`` after the turn that issued it, and no turn may grow it past
``STATELESS_TOKEN_MAX_BYTES``. Its messages are those Claude saw (``PII_MODE`` applied);
the pseudonymisation vault travels inside it, so what its owner reads has the originals.
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

from django.conf import settings

from .. import crypto
from ..isolation import HistoryMessage

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


def token_issue(conversation: Conversation, *, now: float | None = None) -> str:
    """Return a token carrying ``conversation``, issued now (or at ``now``, Unix seconds).

    Raise ``TokenTooLarge`` if it would be longer than ``STATELESS_TOKEN_MAX_BYTES``.
    """
    payload = {
        "v": VERSION,
        "u": conversation.user_id,
        "c": str(conversation.id),
        # Not rounded to the second: a token issued at x.9 s would expire 0.9 s early.
        "t": time.time() if now is None else now,
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
    ``TokenInvalid`` unless it is an unaltered token of ours; ``TokenTooLarge`` if it is
    longer than the limit; ``TokenOtherUser`` if it was issued to someone else;
    ``TokenExpired`` if the turn that issued it was more than ``SESSION_TTL_SECONDS`` ago.
    """
    # The form first (a regex and a base64 decode, bounded by MAX_REQUEST_BYTES): text
    # that is no token is malformed however long. Then its authenticity (an HMAC over at
    # most MAX_REQUEST_BYTES), before its size: no token is issued past the limit, so one
    # past it is either ours, issued before the limit was lowered, which any turn would
    # grow further (413), or altered or forged (400, audited as every refused token).
    _check_form(token)
    try:
        packed = crypto.unseal(token.encode())
    except crypto.InvalidToken as exc:
        raise TokenInvalid() from exc
    if len(token) > settings.STATELESS_TOKEN_MAX_BYTES:
        raise TokenTooLarge()
    try:
        conversation, issued_at = _conversation(json.loads(_inflate(packed)))
    except (zlib.error, ValueError, KeyError, TypeError) as exc:
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
