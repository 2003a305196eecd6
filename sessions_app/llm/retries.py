"""When a call to Claude may start, how long it may last, whether it is tried again and
after how long, and the ``LLMError`` a failed call ends in.

Retries within one call are ours, not the SDK's (its client has ``max_retries=0``): the
SDK sleeps for whatever ``retry-after`` a response names, which can run a turn far past
its deadline, while here no call starts and no wait ends past it.

Apart from the calls themselves (``claude``): this is policy only, read from the settings,
the clock and the SDK's errors, and it sends nothing.
"""

import email.utils
import logging
import random
import time
from collections.abc import Mapping

import anthropic
from django.conf import settings

logger = logging.getLogger(__name__)

# Below this, a call is not worth starting: the turn fails instead.
MIN_CALL_SECONDS = 1.0

TRANSIENT_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})

# The SDK's backoff when a response names no wait: 0.5 s doubled per retry, at most 8 s.
RETRY_INITIAL_SECONDS = 0.5
RETRY_MAX_SECONDS = 8.0
# ``time.sleep`` refuses longer waits on some platforms; only reachable without a deadline.
SLEEP_MAX_SECONDS = 4_294_967.0


class LLMError(Exception):
    """Claude could not answer; ``transient`` says whether a later attempt may succeed."""

    def __init__(self, *, code: str, detail: str, transient: bool) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.transient = transient


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


def _wait_before_retry(exc: Exception, retries: int, deadline: float | None) -> float:
    """Return how long to wait before retrying after ``exc``; raise its ``LLMError`` if the
    call is not retried (not transient, out of retries, or no time left)."""
    error, wait = _llm_error(exc), _retry_wait(exc, retries)
    if wait is None or not _in_time(wait, deadline):
        raise error from exc
    logger.info("Claude call failed (%s); retry %d in %.2f s", error.code, retries + 1, wait)
    return wait
