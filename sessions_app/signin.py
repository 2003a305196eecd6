"""The failed-sign-in limit, shared by every place that checks a password.

Each check runs through ``ThrottledModelBackend``, so the API token endpoint, the login page
and the admin login share one count per username and one per client address. A sign-in past
``LOGIN_THROTTLE_RATE`` raises ``SignInThrottled`` before any password hash is spent; the API
answers it as DRF answers any throttle, the HTML pages through ``throttled_page``.

The counters are fixed windows that open at the first attempt, in the Django cache (Redis in
production, so all web processes share them). A sign-in reserves its place in the count
before the password is checked and gives it back if the password was right: parallel guesses
cannot slip past the limit while their hashes run, and successes never count.
"""

import contextlib
import functools
import hashlib
import math
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from rest_framework.exceptions import Throttled
from rest_framework.throttling import BaseThrottle


class SignInThrottled(Throttled):
    default_detail = "Too many failed sign-ins for this username or address."
    extra_detail_singular = "Try again in {wait} second."
    extra_detail_plural = "Try again in {wait} seconds."


def parse_rate(rate: str) -> tuple[int, int]:
    """Return ``(failures, window seconds)`` of a DRF-style rate such as ``10/min``."""
    count, period = rate.split("/")
    return int(count), {"s": 1, "m": 60, "h": 3600, "d": 86400}[period[0]]


class SignInCount:
    """One sign-in's place in the failure counts of its username and its client address."""

    def __init__(self, request: HttpRequest | None, username: str) -> None:
        self.limit, self.window = parse_rate(settings.LOGIN_THROTTLE_RATE)
        # Hashed: a username may be any length or character a client sends.
        self.names = ["signin:user:" + hashlib.sha256(username.encode()).hexdigest()]
        if request is not None:
            # No address (a Unix socket, some test clients): such sign-ins share one count.
            address = BaseThrottle().get_ident(request) or "unknown"
            self.names.append("signin:addr:" + address)
        self.counted: list[str] = []

    def reserve(self) -> None:
        """Count this sign-in as a failure; raise ``SignInThrottled`` if past the limit."""
        for name in self.names:
            key, ends = self._open_window(name)
            cache.add(key, 0, self.window)
            self.counted.append(key)
            if cache.incr(key) > self.limit:
                self.release()  # a refused sign-in is not a failure: it checked nothing
                raise SignInThrottled(wait=max(1, math.ceil(ends - time.time())))

    def release(self) -> None:
        """Take this sign-in out of the counts again (its password was right)."""
        for key in self.counted:
            with contextlib.suppress(ValueError):  # its window has just ended
                cache.decr(key)
        self.counted = []

    def _open_window(self, name: str) -> tuple[str, float]:
        # The window opens at the first attempt; its counter is named after its end, so a
        # counter never outlives its window, and Retry-After says when the window ends.
        ends = cache.get_or_set(name, lambda: time.time() + self.window, self.window)
        return f"{name}:{ends!r}", ends


class ThrottledModelBackend(ModelBackend):
    """Django's username and password check behind the failed-sign-in limit."""

    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> Any:
        if username is None:
            username = kwargs.get(get_user_model().USERNAME_FIELD)
        if username is None or password is None:
            return None  # nothing to check, no hash spent (as ModelBackend does)
        count = SignInCount(request, str(username))
        count.reserve()
        try:
            user = super().authenticate(request, username=username, password=password)
        except Exception:
            count.release()  # an outage is not the client's failure
            raise
        if user is not None:
            count.release()
        return user


def throttled_page(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Answer a throttled sign-in on an HTML login page with 429 and ``Retry-After``."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)
        except SignInThrottled as exc:
            response = HttpResponse(
                str(exc.detail), status=exc.status_code, content_type="text/plain; charset=utf-8"
            )
            response["Retry-After"] = str(exc.wait)
            return response

    return wrapper
