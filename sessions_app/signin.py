"""The failed-sign-in limit, shared by every place that checks a password.

Each check runs through ``ThrottledModelBackend``, so the API token endpoint, the login page
and the admin login share one count per username and one per client address; the admin's
password change counts its old password there too (``PasswordCheckForm``). A sign-in past
``LOGIN_THROTTLE_RATE`` raises ``SignInThrottled`` before any password hash is spent; the API
answers it as DRF answers any throttle (JSON ``detail`` and ``code``), the HTML pages with their
form again, saying why (``SignInForm``, ``AdminSignInForm``), as 429 (``throttled_page``).

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
from typing import Any, TypeVar

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm, AdminPasswordChangeForm
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.views import PasswordChangeView
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from rest_framework.exceptions import Throttled
from rest_framework.throttling import BaseThrottle, SimpleRateThrottle

from .tokens import password_check

T = TypeVar("T")


class SignInThrottled(Throttled):
    default_detail = "Too many failed sign-ins for this username or address."
    extra_detail_singular = "Try again in {wait} second."
    extra_detail_plural = "Try again in {wait} seconds."


class SignInCount:
    """One sign-in's place in the failure counts of its username and its client address."""

    def __init__(self, request: HttpRequest | None, username: str) -> None:
        # DRF's reading of the rate, as its throttles read CHAT_THROTTLE_RATE (parse_rate
        # reads nothing of its instance); settings refused any rate it could not read.
        rate = settings.LOGIN_THROTTLE_RATE
        self.limit, self.window = SimpleRateThrottle.parse_rate(None, rate)
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
            key, ends, count = self._count(name)
            self.counted.append(key)
            if count > self.limit:
                self.release()  # a refused sign-in is not a failure: it checked nothing
                raise SignInThrottled(wait=max(1, math.ceil(ends - time.time())))

    def _count(self, name: str) -> tuple[str, float, int]:
        while True:
            key, ends = self._open_window(name)
            cache.add(key, 0, self.window)
            try:
                return key, ends, cache.incr(key)
            except ValueError:
                # The counter expired between the add and the increment (its window
                # ended just then): count in the next window.
                continue

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


def password_checked(request: HttpRequest | None, username: str, check: Callable[[], T]) -> T:
    """Run ``check`` (a password check of ``username``) in its place in the failure count:
    given back if it answers truly (the password was right) or fails (an outage is not the
    client's failure), kept if it answers falsely. Past the limit, raise ``SignInThrottled``
    without running it."""
    count = SignInCount(request, username)
    count.reserve()
    try:
        with password_check():  # a rehash of the password is no new password
            result = check()
    except Exception:
        count.release()
        raise
    if result:
        count.release()
    return result


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
        return password_checked(
            request,
            str(username),
            lambda: super(ThrottledModelBackend, self).authenticate(
                request, username=username, password=password
            ),
        )


# Where a login form leaves the refusal for ``throttled_page``, on the request it served.
_THROTTLED = "_sign_in_throttled"


class _SaysWhenThrottled:
    """A login form that, past the limit, is shown again with why and when to try again."""

    throttled: SignInThrottled | None = None

    def clean(self) -> dict[str, Any]:
        try:
            return super().clean()
        except SignInThrottled as exc:
            self.throttled = exc
            raise _refusal_said(self.request, exc) from exc


def _refusal_said(request: HttpRequest | None, exc: SignInThrottled) -> ValidationError:
    """Leave the refusal on the request, for ``throttled_page``; return the form's error."""
    if request is not None:
        setattr(request, _THROTTLED, exc)
    return ValidationError(str(exc.detail), code="throttled")


class SignInForm(_SaysWhenThrottled, AuthenticationForm):
    """The login page's form."""


class AdminSignInForm(_SaysWhenThrottled, AdminAuthenticationForm):
    """The admin login's form."""


class PasswordCheckForm(AdminPasswordChangeForm):
    """The admin's own password change, whose old password is checked under the limit.

    Django checks it with ``check_password``, past every authentication backend: a stolen
    staff session could guess the password there without end, then sign in anywhere.
    """

    def __init__(self, *args: Any, request: HttpRequest, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.request = request

    def clean_old_password(self) -> str:
        old = self.cleaned_data["old_password"]
        try:
            right = password_checked(
                self.request, self.user.get_username(), lambda: self.user.check_password(old)
            )
        except SignInThrottled as exc:
            raise _refusal_said(self.request, exc) from exc
        if not right:
            raise ValidationError(
                self.error_messages["password_incorrect"], code="password_incorrect"
            )
        return old


class _PasswordChangeView(PasswordChangeView):
    form_class = PasswordCheckForm

    def get_form_kwargs(self) -> dict[str, Any]:
        return {**super().get_form_kwargs(), "request": self.request}


def admin_password_change(request: HttpRequest) -> HttpResponse:
    """``admin.site.password_change`` with ``PasswordCheckForm`` (the admin hard-codes its
    form); route it under ``admin.site.admin_view`` and ``throttled_page``."""
    site = admin.site
    request.current_app = site.name
    return _PasswordChangeView.as_view(
        success_url=reverse("admin:password_change_done", current_app=site.name),
        extra_context=site.each_context(request),
        template_name=site.password_change_template or PasswordChangeView.template_name,
    )(request)


def throttled_page(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Answer a throttled sign-in on an HTML login page with 429 and ``Retry-After``: its
    form again, with the reason, when the view's form is one of the above; plain text if not.
    """

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            response = view(request, *args, **kwargs)
        except SignInThrottled as exc:
            response = HttpResponse(str(exc.detail), content_type="text/plain; charset=utf-8")
            setattr(request, _THROTTLED, exc)
        if (throttled := getattr(request, _THROTTLED, None)) is not None:
            response.status_code = throttled.status_code
            response["Retry-After"] = str(throttled.wait)
        return response

    return wrapper
