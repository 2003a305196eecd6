"""The one boundary to Claude: the official ``anthropic`` SDK and the offline responder.

``send`` is the only function that sends conversation content out of the process; it
checks the whole payload against the bound isolation context first.
"""

import functools
import logging
import re
import time

import anthropic
from django.conf import settings

from audit_app.services import audit_security_event

from .isolation import HistoryMessage, IsolationViolation, current_scope, guard_payload

logger = logging.getLogger(__name__)

# Below this, a call is not worth starting: the turn fails instead.
MIN_CALL_SECONDS = 1.0

TRANSIENT_STATUSES = {408, 409, 429, 500, 502, 503, 504, 529}


class LLMError(Exception):
    """Claude could not answer; ``transient`` says whether a later attempt may succeed."""

    def __init__(self, *, code: str, detail: str, transient: bool) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.transient = transient


@functools.lru_cache(maxsize=4)
def _client(
    api_key: str, base_url: str | None, timeout: float, max_retries: int
) -> anthropic.Anthropic:
    # One client per process and configuration: it holds a connection pool and no
    # conversation data, and building one per call costs more than the call's own work.
    return anthropic.Anthropic(
        api_key=api_key, base_url=base_url, timeout=timeout, max_retries=max_retries
    )


def client() -> anthropic.Anthropic:
    """Return the process's Anthropic client for the current settings."""
    return _client(
        settings.ANTHROPIC_API_KEY,
        settings.ANTHROPIC_BASE_URL,
        settings.CLAUDE_TIMEOUT_SECONDS,
        settings.CLAUDE_MAX_RETRIES,
    )


def _api_messages(history: list[HistoryMessage]) -> list[dict[str, str]]:
    # The Messages API wants alternating roles; a failed turn leaves two user messages
    # in a row, which read naturally as one. It also refuses a blank text block, so a
    # blank message (a reply stored before blank replies were refused) is left out.
    merged: list[dict[str, str]] = []
    for message in history:
        if not message.content.strip():
            continue
        if merged and merged[-1]["role"] == message.role:
            merged[-1]["content"] += "\n\n" + message.content
        else:
            merged.append({"role": message.role, "content": message.content})
    return merged


def _call_options(deadline: float | None) -> dict[str, float | int]:
    """Size one call's timeout so that all its SDK retries end before ``deadline``."""
    timeout = settings.CLAUDE_TIMEOUT_SECONDS
    if deadline is None:
        return {"timeout": timeout}
    retries = settings.CLAUDE_MAX_RETRIES
    # The SDK's backoff between retries is at most 0.5 s * 2**n (under a second of jitter).
    backoff = sum(min(0.5 * 2**n, 8.0) for n in range(retries))
    budget = deadline - time.time() - backoff
    if budget < MIN_CALL_SECONDS:
        raise LLMError(
            code="deadline_exceeded",
            detail="The assistant could not answer in time; send the message again.",
            transient=False,
        )
    return {"timeout": min(timeout, budget / (retries + 1))}


def _claude_reply(history: list[HistoryMessage], deadline: float | None) -> str:
    try:
        response = client().messages.create(
            **_call_options(deadline),
            model=settings.CLAUDE_MODEL,
            max_tokens=settings.CLAUDE_MAX_TOKENS,
            system=settings.CLAUDE_SYSTEM_PROMPT,
            messages=_api_messages(history),
        )
    except anthropic.APIStatusError as exc:
        raise LLMError(
            code=f"claude_http_{exc.status_code}",
            detail=f"The assistant answered with an error (HTTP {exc.status_code}).",
            transient=exc.status_code in TRANSIENT_STATUSES,
        ) from exc
    except anthropic.APIConnectionError as exc:
        raise LLMError(
            code="claude_unreachable",
            detail="The assistant could not be reached in time.",
            transient=True,
        ) from exc
    except (anthropic.APIError, ValueError) as exc:
        # A body that is not valid JSON surfaces as a bare ValueError from the SDK.
        raise LLMError(
            code="claude_bad_response",
            detail="The assistant sent a response that could not be read.",
            transient=True,
        ) from exc
    text = "".join(block.text for block in response.content if block.type == "text")
    if not text.strip():
        # Stored, it would show the user nothing, and a blank reply cannot be sent back.
        raise LLMError(
            code="claude_empty_reply",
            detail="The assistant sent an empty reply; send again.",
            transient=True,
        )
    return text


# Only "my name is" ignores case: the name itself is one or two capitalised words.
_NAME = re.compile(r"\b(?i:my name is) ([A-Z][\w'-]*(?: [A-Z][\w'-]*)?)")


def offline_reply(history: list[HistoryMessage]) -> str:
    """Answer deterministically from ``history`` alone, the session it is given.

    It remembers a name the user gave in this session, which makes isolation visible in
    the demo: another user asking "what is my name?" gets nothing of it.
    """
    user_texts = [m.content for m in history if m.role == "user"]
    last = user_texts[-1] if user_texts else ""
    names = [match.group(1) for text in user_texts for match in _NAME.finditer(text)]
    if "what is my name" in last.lower():
        if names:
            return f"Your name is {names[-1]}."
        return "You have not told me your name in this conversation."
    prefix = f"Hello {names[-1]}. " if names else ""
    return f"{prefix}(offline assistant) You said: {last}"


def send(history: list[HistoryMessage], *, deadline: float | None = None) -> str:
    """Send the conversation to the configured responder and return the reply text.

    Raise ``IsolationViolation`` (and audit it) if any message is not the bound
    (user, session)'s; raise ``LLMError`` if Claude cannot answer before ``deadline``
    (a ``time.time()`` value), retries included.
    """
    try:
        guard_payload(history)
    except IsolationViolation as exc:
        scope = current_scope()
        audit_security_event(
            user_id=scope.user_id if scope else None,
            session_id=scope.session_id if scope else None,
            reason=f"refused to send a payload: {exc}",
        )
        raise
    if settings.LLM_PROVIDER == "offline":
        return offline_reply(history)
    return _claude_reply(history, deadline)
