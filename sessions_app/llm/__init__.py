"""The one boundary to Claude: the official ``anthropic`` SDK and the offline responder.

``send`` is the only function that sends conversation content out of the process; it
checks the whole payload against the bound isolation context first.

A package, so that each part stays short enough to read whole: ``claude`` makes the calls
through the SDK, ``retries`` decides how long each may last and whether it is made again,
``offline`` answers without Claude. Callers import from here.
"""

from collections.abc import Callable, Sequence

from asgiref.sync import sync_to_async
from django.conf import settings

from audit_app.services import audit_security_event

from ..isolation import IsolationViolation, Message, current_scope, guard_payload
from .claude import (
    TurnAbandoned,
    _claude_reply,
    _claude_reply_async,
    async_client,
    client,
)
from .offline import offline_reply
from .retries import (
    MIN_CALL_SECONDS,
    RETRY_INITIAL_SECONDS,
    RETRY_MAX_SECONDS,
    SLEEP_MAX_SECONDS,
    TRANSIENT_STATUSES,
    LLMError,
)

__all__ = (
    "MIN_CALL_SECONDS",
    "RETRY_INITIAL_SECONDS",
    "RETRY_MAX_SECONDS",
    "SLEEP_MAX_SECONDS",
    "TRANSIENT_STATUSES",
    "LLMError",
    "TurnAbandoned",
    "async_client",
    "client",
    "offline_reply",
    "send",
    "send_async",
)


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
