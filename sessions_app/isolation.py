"""The isolation context: which (user, session) the current code works for.

A ``ContextVar`` follows the request, task or coroutine and nothing else, so two users
served by one thread pool or event loop never see each other's binding. ``guard_payload``
is called by the one function that sends to Claude.
"""

import contextlib
import logging
import uuid
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol

from core.logcontext import request_user, request_user_known


@dataclass(frozen=True)
class Scope:
    user_id: int
    session_id: uuid.UUID


class Message(Protocol):
    """What the guard reads of a message on its way to Claude: whose it is, and its text."""

    user_id: int
    session_id: uuid.UUID
    role: str
    content: str


@dataclass(frozen=True)
class HistoryMessage:
    """One message on its way to Claude, carrying the ids it came from."""

    user_id: int
    session_id: uuid.UUID
    role: str
    content: str


class IsolationViolation(Exception):
    """A payload held a message that does not belong to the bound (user, session)."""


_scope: ContextVar[Scope | None] = ContextVar("isolation_scope", default=None)


@contextlib.contextmanager
def bound(*, user_id: int, session_id: uuid.UUID) -> Iterator[Scope]:
    """Bind the isolation context for the duration of the block."""
    scope = Scope(user_id=user_id, session_id=session_id)
    token = _scope.set(scope)
    try:
        yield scope
    finally:
        _scope.reset(token)


def current_scope() -> Scope | None:
    """Return the bound scope, or None outside any request, task or coroutine scope."""
    return _scope.get()


def guard_payload(messages: Iterable[Message]) -> None:
    """Refuse a payload unless a scope is bound and every message belongs to it."""
    scope = _scope.get()
    if scope is None:
        raise IsolationViolation("no isolation context is bound")
    for message in messages:
        if message.user_id != scope.user_id or message.session_id != scope.session_id:
            raise IsolationViolation(
                f"message of session {message.session_id} in a payload bound to "
                f"session {scope.session_id}"
            )


class IsolationLogFilter(logging.Filter):
    """Stamp every log record with the ids of the bound scope, or of the web request."""

    def filter(self, record: logging.LogRecord) -> bool:
        scope = _scope.get()
        user = scope.user_id if scope else request_user()
        if user is None and hasattr(record, "request"):  # django.request's lines
            user = request_user_known(record.request)
        record.isolation_user = "-" if user is None else user
        record.isolation_session = scope.session_id if scope else "-"
        return True
