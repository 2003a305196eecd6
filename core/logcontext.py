"""Which user the current web request serves, for log lines only."""

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

from django.utils.functional import LazyObject, empty

# A web request sends nothing to Claude, so it binds no isolation scope; its log lines
# still name the user it serves. A ContextVar follows the request and nothing else.
_request_user: ContextVar[int | None] = ContextVar("request_user", default=None)


@contextlib.contextmanager
def request_bound() -> Iterator[None]:
    """Clear the request user for the block, and restore it after (threads are reused)."""
    token = _request_user.set(None)
    try:
        yield
    finally:
        _request_user.reset(token)


def request_user_set(user_id: int | None) -> None:
    """Name the request's authenticated user in its log lines (inside ``request_bound``)."""
    _request_user.set(user_id)


def request_user() -> int | None:
    """Return the user the current web request serves, if any."""
    return _request_user.get()


def request_user_known(request: object) -> int | None:
    """Return the id of the user ``request`` was authenticated as, if that is known already.

    Django logs a request's 4xx and 5xx (``django.request``) after the view has returned,
    when the user the view named is cleared; the record carries the request, which still
    holds it: DRF's authentication sets its user on the ``HttpRequest`` it wraps too. The
    lazy user of ``AuthenticationMiddleware`` stays unread if no one read it: reading it
    would query the session and the user for a log line.
    """
    user = getattr(request, "__dict__", {}).get("user")
    if isinstance(user, LazyObject) and user._wrapped is empty:
        return None
    return getattr(user, "pk", None)
