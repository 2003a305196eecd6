"""The calls to Claude: the SDK's clients, one request, and the loop that makes it again
as ``retries`` decides, synchronously or on the event loop.

Each call ends by its own timeout as a whole (``CLAUDE_TIMEOUT_SECONDS``, cut to the
deadline), however slowly Claude sends its answer: the SDK's ``timeout`` bounds each
network read, not the call.
"""

import asyncio
import functools
import threading
import time
import weakref
from collections.abc import Callable, Sequence

import anthropic
from django.conf import settings

from .. import call_deadline
from ..isolation import Message
from .retries import LLMError, _call_timeout, _unreadable, _wait_before_retry


class TurnAbandoned(Exception):
    """The turn is gone (its session was deleted): nothing more may be sent for it."""


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
