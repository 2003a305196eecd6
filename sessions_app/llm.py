"""The one boundary to Claude: the official ``anthropic`` SDK and the offline responder.

``send`` is the only function that sends conversation content out of the process; it
checks the whole payload against the bound isolation context first.

Retries within one call are ours, not the SDK's (its client has ``max_retries=0``): the
SDK sleeps for whatever ``retry-after`` a response names, which can run a turn far past
its deadline, while here no call starts and no wait ends past it.

Each call ends by its own timeout as a whole (``CLAUDE_TIMEOUT_SECONDS``, cut to the
deadline), however slowly Claude sends its answer: the SDK's ``timeout`` bounds each
network read, not the call.
"""

import asyncio
import email.utils
import functools
import logging
import random
import re
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence

import anthropic
from asgiref.sync import sync_to_async
from django.conf import settings

from audit_app.services import audit_security_event

from . import call_deadline
from .isolation import IsolationViolation, Message, current_scope, guard_payload

logger = logging.getLogger(__name__)

# Below this, a call is not worth starting: the turn fails instead.
MIN_CALL_SECONDS = 1.0

TRANSIENT_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})

# The SDK's backoff when a response names no wait: 0.5 s doubled per retry, at most 8 s.
RETRY_INITIAL_SECONDS = 0.5
RETRY_MAX_SECONDS = 8.0
# ``time.sleep`` refuses longer waits on some platforms; only reachable without a deadline.
SLEEP_MAX_SECONDS = 4_294_967.0


class TurnAbandoned(Exception):
    """The turn is gone (its session was deleted): nothing more may be sent for it."""


class LLMError(Exception):
    """Claude could not answer; ``transient`` says whether a later attempt may succeed."""

    def __init__(self, *, code: str, detail: str, transient: bool) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.transient = transient


@functools.lru_cache(maxsize=4)
def _client(api_key: str, base_url: str | None) -> anthropic.Anthropic:
    # One client per process and configuration: it holds a connection pool and no
    # conversation data, and building one per call costs more than the call's own work.
    # Every call passes its own timeout, and ``_claude_reply`` does the retrying. The
    # SDK's own HTTP client, with its calls bounded as a whole, which httpx2's own
    # timeouts do not.
    http_client = call_deadline.bound(anthropic.DefaultHttpxClient())
    return anthropic.Anthropic(
        api_key=api_key, base_url=base_url, max_retries=0, http_client=http_client
    )


def client() -> anthropic.Anthropic:
    """Return the process's Anthropic client for the current settings."""
    return _client(settings.ANTHROPIC_API_KEY, settings.ANTHROPIC_BASE_URL)


# The async client's connection pool belongs to the event loop it was first used in, so
# there is one per loop (uvicorn runs one per process), dropped with its loop.
_async_clients: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[str, str | None], anthropic.AsyncAnthropic]
] = weakref.WeakKeyDictionary()
_async_clients_lock = threading.Lock()


def async_client() -> anthropic.AsyncAnthropic:
    """Return the running event loop's AsyncAnthropic client for the current settings."""
    config = (settings.ANTHROPIC_API_KEY, settings.ANTHROPIC_BASE_URL)
    with _async_clients_lock:
        clients = _async_clients.setdefault(asyncio.get_running_loop(), {})
        if config not in clients:
            clients[config] = anthropic.AsyncAnthropic(
                api_key=config[0],
                base_url=config[1],
                max_retries=0,
                http_client=call_deadline.closing(anthropic.DefaultAsyncHttpxClient()),
            )
        return clients[config]


def _api_messages(history: Sequence[Message]) -> list[dict[str, str]]:
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


def _call_timeout(deadline: float | None) -> float:
    """Return one call's timeout: ``CLAUDE_TIMEOUT_SECONDS``, cut to end by ``deadline``."""
    timeout = settings.CLAUDE_TIMEOUT_SECONDS
    if deadline is None:
        return timeout
    left = deadline - time.time()
    if left < MIN_CALL_SECONDS:
        raise LLMError(
            code="deadline_exceeded",
            detail="The assistant could not answer in time; send the message again.",
            transient=False,
        )
    return min(timeout, left)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Return the wait in seconds a response asks for, read as the SDK reads it."""
    # Milliseconds first (more precise), then seconds (floats allowed), then an HTTP date.
    for name, per_second in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        try:
            return float(headers[name]) / per_second
        except (KeyError, ValueError):
            continue
    date = email.utils.parsedate_tz(headers.get("retry-after", ""))
    return None if date is None else email.utils.mktime_tz(date) - time.time()


# What a call that could not finish in time raises: the SDK's error for a connection
# that failed or timed out, and ``asyncio.timeout``'s on the event loop.
_UNFINISHED = (anthropic.APIConnectionError, TimeoutError)


def _retryable(exc: Exception) -> bool:
    # The SDK's own policy, so that moving the retries here changes no request counts:
    # an unreadable body is left to the task's next attempt, as the SDK left it.
    if isinstance(exc, _UNFINISHED):  # timeouts included
        return True
    if not isinstance(exc, anthropic.APIStatusError):
        return False
    server_says = exc.response.headers.get("x-should-retry")
    if server_says in ("true", "false"):
        return server_says == "true"
    return exc.status_code in TRANSIENT_STATUSES


def _retry_wait(exc: Exception, retries: int) -> float | None:
    """Return how long to wait before retrying ``exc``, or None if it is not retried here."""
    if retries >= settings.CLAUDE_MAX_RETRIES or not _retryable(exc):
        return None
    headers = exc.response.headers if isinstance(exc, anthropic.APIStatusError) else {}
    asked = _retry_after(headers)
    if asked is not None and asked > 0:
        return min(asked, SLEEP_MAX_SECONDS)
    backoff = min(RETRY_INITIAL_SECONDS * 2**retries, RETRY_MAX_SECONDS)
    # The SDK's jitter: up to a quarter shorter, so that rejected callers spread out.
    return backoff * (1 - 0.25 * random.random())


def _in_time(wait: float, deadline: float | None) -> bool:
    # A retry must leave a call worth starting before the deadline; otherwise the last
    # failure is raised now, and the task (which knows the deadline too) decides.
    return deadline is None or time.time() + wait <= deadline - MIN_CALL_SECONDS


def _llm_error(exc: Exception) -> LLMError:
    """Return the ``LLMError`` that tells the task what went wrong with one call."""
    if isinstance(exc, anthropic.APIStatusError):
        return LLMError(
            code=f"claude_http_{exc.status_code}",
            detail=f"The assistant answered with an error (HTTP {exc.status_code}).",
            transient=exc.status_code in TRANSIENT_STATUSES,
        )
    if isinstance(exc, _UNFINISHED):
        return LLMError(
            code="claude_unreachable",
            detail="The assistant could not be reached in time.",
            transient=True,
        )
    # A body that is not valid JSON surfaces as a bare ValueError from the SDK.
    return _unreadable()


def _unreadable() -> LLMError:
    return LLMError(
        code="claude_bad_response",
        detail="The assistant sent a response that could not be read.",
        transient=True,
    )


def _request(messages: list[dict[str, str]], *, timeout: float, retries: int) -> dict:
    """Return the arguments of one ``messages.create`` call, the same for both clients."""
    return {
        "model": settings.CLAUDE_MODEL,
        "max_tokens": settings.CLAUDE_MAX_TOKENS,
        "system": settings.CLAUDE_SYSTEM_PROMPT,
        "messages": messages,
        "timeout": timeout,
        # The header the SDK sets from its own retry count, which is always 0 now.
        "extra_headers": {"x-stainless-retry-count": str(retries)},
    }


def _create(
    messages: list[dict[str, str]], *, timeout: float, retries: int
) -> anthropic.types.Message:
    with call_deadline.within(timeout):
        return client().messages.create(**_request(messages, timeout=timeout, retries=retries))


async def _create_async(
    messages: list[dict[str, str]], *, timeout: float, retries: int
) -> anthropic.types.Message:
    request = _request(messages, timeout=timeout, retries=retries)
    # The SDK's timeout bounds each read; this bounds the call. Cancelled, httpcore2
    # closes the connection it was using (its clean-up is shielded from the cancel).
    async with asyncio.timeout(timeout):
        return await async_client().messages.create(**request)


def _wait_before_retry(exc: Exception, retries: int, deadline: float | None) -> float:
    """Return how long to wait before retrying after ``exc``; raise its ``LLMError`` if the
    call is not retried (not transient, out of retries, or no time left)."""
    error, wait = _llm_error(exc), _retry_wait(exc, retries)
    if wait is None or not _in_time(wait, deadline):
        raise error from exc
    logger.info("Claude call failed (%s); retry %d in %.2f s", error.code, retries + 1, wait)
    return wait


def _reply_text(response: anthropic.types.Message) -> str:
    try:
        text = "".join(block.text for block in response.content if block.type == "text")
    except (AttributeError, TypeError) as exc:
        # The SDK builds its models from JSON without validating them: a body of another
        # shape (``{}``, a text block without its text) surfaces only here, and is as
        # unreadable as one that is not JSON at all.
        raise _unreadable() from exc
    if not text.strip():
        # Stored, it would show the user nothing, and a blank reply cannot be sent back.
        raise LLMError(
            code="claude_empty_reply",
            detail="The assistant sent an empty reply; send again.",
            transient=True,
        )
    return text


def _claude_reply(
    history: Sequence[Message], deadline: float | None, still_wanted: Callable[[], bool]
) -> str:
    messages = _api_messages(history)
    retries = 0
    while True:
        if not still_wanted():
            raise TurnAbandoned()
        try:
            response = _create(messages, timeout=_call_timeout(deadline), retries=retries)
        except (anthropic.APIError, ValueError) as exc:
            time.sleep(_wait_before_retry(exc, retries, deadline))
            retries += 1
        else:
            return _reply_text(response)


async def _claude_reply_async(
    history: Sequence[Message], deadline: float | None, still_wanted: Callable[[], bool]
) -> str:
    # ``_claude_reply`` on the event loop: the same request, retry policy and errors.
    messages = _api_messages(history)
    retries = 0
    while True:
        if not still_wanted():
            raise TurnAbandoned()
        try:
            response = await _create_async(
                messages, timeout=_call_timeout(deadline), retries=retries
            )
        except (anthropic.APIError, ValueError, TimeoutError) as exc:
            await asyncio.sleep(_wait_before_retry(exc, retries, deadline))
            retries += 1
        else:
            return _reply_text(response)


# Only "my name is" ignores case: the name itself is one or two capitalised words, or
# the placeholder that stands for it once pseudonymised.
_NAME = re.compile(r"\b(?i:my name is) (<PERSON_\d+>|[A-Z][\w'-]*(?: [A-Z][\w'-]*)?)")


def offline_reply(history: Sequence[Message]) -> str:
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


def _always() -> bool:
    return True


def send(
    history: Sequence[Message],
    *,
    deadline: float | None = None,
    still_wanted: Callable[[], bool] = _always,
) -> str:
    """Send the conversation to the configured responder and return the reply text.

    Raise ``IsolationViolation`` (and audit it) if any message is not the bound
    (user, session)'s; raise ``LLMError`` if Claude cannot answer before ``deadline``
    (a ``time.time()`` value), retries included; raise ``TurnAbandoned`` if
    ``still_wanted()`` turns false: it is asked before every call, retries included.
    """
    try:
        guard_payload(history)
    except IsolationViolation as exc:
        _audit_refused(exc)
        raise
    if settings.LLM_PROVIDER == "offline":
        return offline_reply(history)
    return _claude_reply(history, deadline, still_wanted)


async def send_async(
    history: Sequence[Message],
    *,
    deadline: float | None = None,
    still_wanted: Callable[[], bool] = _always,
) -> str:
    """``send`` for the event loop: the same guard, retries and errors, awaiting Claude
    through the loop's ``AsyncAnthropic`` client.

    The guard reads the isolation scope of the calling coroutine: bind it there.
    """
    try:
        guard_payload(history)
    except IsolationViolation as exc:
        await sync_to_async(_audit_refused)(exc)  # the audit writes to the database
        raise
    if settings.LLM_PROVIDER == "offline":
        return offline_reply(history)
    return await _claude_reply_async(history, deadline, still_wanted)


def _audit_refused(exc: IsolationViolation) -> None:
    scope = current_scope()
    audit_security_event(
        user_id=scope.user_id if scope else None,
        session_id=scope.session_id if scope else None,
        reason=f"refused to send a payload: {exc}",
    )
