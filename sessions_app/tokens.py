"""API tokens: django-rest-knox's, one per sign-in, stored only as a hash, expiring.

Clients send ``Authorization: Token <key>`` or ``Authorization: Bearer <key>``; the schema
declares the bearer scheme, which generated clients speak without configuration.
"""

import binascii
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timedelta
from hmac import compare_digest

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import get_hasher, identify_hasher
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from knox.auth import TokenAuthentication as KnoxTokenAuthentication
from knox.crypto import hash_token
from knox.models import AuthToken
from knox.settings import CONSTANTS, knox_settings
from knox.signals import token_expired
from rest_framework.authentication import get_authorization_header
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request

from . import rows

# Knox keys are hexadecimal; anything else is refused before it reaches a query (a NUL,
# say, that Postgres would refuse with an error instead of a 401).
KEY_CHARACTERS = frozenset("0123456789abcdefABCDEF")


def auth_token_issue(*, user) -> tuple[str, datetime]:
    """Issue a new API token for ``user``; return its key (kept nowhere) and its expiry.

    The user's expired tokens go now, rather than on each request (see
    ``TokenAuthentication._cleanup_token``).
    """
    AuthToken.objects.filter(user=user, expiry__lt=timezone.now()).delete()
    token, key = AuthToken.objects.create(
        user=user, expiry=timedelta(seconds=settings.TOKEN_TTL_SECONDS)
    )
    return key, token.expiry


def auth_token_revoke(*, token: AuthToken) -> None:
    """Sign ``token`` out: from now on it authenticates nothing."""
    token.delete()


# Set while a sign-in checks a password (``signin.password_checked``): the one time Django
# writes a password that is not new, the rehash of an outdated hash.
_CHECKING_PASSWORD: ContextVar[bool] = ContextVar("checking_password", default=False)


@contextmanager
def password_check() -> Iterator[None]:
    """Mark a sign-in's password check: a rehash it writes signs no token out."""
    token = _CHECKING_PASSWORD.set(True)
    try:
        yield
    finally:
        _CHECKING_PASSWORD.reset(token)


def auth_tokens_revoke_on_password_change(sender, instance, update_fields=None, **kwargs) -> None:
    """``pre_save`` of the user model: a new password (or none) signs out every API token.

    Django's own password change signs out the user's browser sessions (their hash
    depends on the password); a token, issued under the old password to whoever held it,
    would go on working until it expired. A save that does not write the password (the
    ``last_login`` of each sign-in) costs nothing; one that does reads the stored hash once.
    A new hash of the same password is no new password: Django rehashes it on a sign-in
    whose stored hash is outdated (a new default hasher, more iterations after an upgrade),
    which must not sign the user's other devices out.
    """
    if instance.pk is None or (update_fields is not None and "password" not in update_fields):
        return
    stored = type(instance)._default_manager.filter(pk=instance.pk).values_list("password")
    row = stored.first()
    if row is None or row[0] == instance.password:
        return
    # The sign-in's rehash: during a password check, with no raw password pending (the
    # rehash clears it; ``set_password`` keeps it until the save), an outdated hash
    # replaced by an up-to-date one. A hash assigned by hand is a new password.
    pending = getattr(instance, "_password", None)
    if pending is None and _CHECKING_PASSWORD.get() and _rehashed(row[0], instance.password):
        return
    AuthToken.objects.filter(user_id=instance.pk).delete()


def _rehashed(old: str, new: str) -> bool:
    try:
        old_hasher, new_hasher = identify_hasher(old), identify_hasher(new)
    except ValueError:  # unusable, or no hash of ours
        return False
    preferred = get_hasher("default")
    outdated = old_hasher.algorithm != preferred.algorithm or preferred.must_update(old)
    return (
        outdated and new_hasher.algorithm == preferred.algorithm and not preferred.must_update(new)
    )


def auth_tokens_purge_expired() -> int:
    """Delete every expired token; return how many. Beat runs it with the session purge."""
    deleted, _ = AuthToken.objects.filter(expiry__lt=timezone.now()).delete()
    return deleted


class TokenAuthentication(KnoxTokenAuthentication):
    """Knox tokens under either spelling of the header: ``Token <key>`` or ``Bearer <key>``."""

    keywords = (b"token", b"bearer")

    def authenticate(self, request: Request) -> tuple | None:
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() not in self.keywords:
            return None  # not a token: the next authentication class may know it
        if len(parts) != 2:
            raise AuthenticationFailed("Invalid token header: send 'Token <key>'.")
        if not set(parts[1].decode("latin-1")) <= KEY_CHARACTERS:
            raise AuthenticationFailed("Invalid token.")
        return self.authenticate_credentials(parts[1])

    def authenticate_credentials(self, token: bytes) -> tuple:
        """Knox's check of the token presented, the tokens under its key read through
        ``_tokens_under``: every API request makes it, and building the ORM's query took
        more CPU than the rest of the request's authentication."""
        key = token.decode()
        for auth_token in _tokens_under(key[: CONSTANTS.TOKEN_KEY_LENGTH]):
            if self._cleanup_token(auth_token):
                continue
            try:
                digest = hash_token(key)
            except (TypeError, binascii.Error) as exc:
                raise AuthenticationFailed("Invalid token.") from exc
            if compare_digest(digest, auth_token.digest):
                if knox_settings.AUTO_REFRESH and auth_token.expiry:
                    self.renew_token(auth_token)
                return self.validate_user(auth_token)
        raise AuthenticationFailed("Invalid token.")

    def _cleanup_token(self, auth_token: AuthToken) -> bool:
        """Refuse (and delete) the token if it has expired; True if so.

        As knox's own, send knox's ``token_expired`` signal (``source="auth_token"``) when it
        goes. Knox's own also reads every other token of the user on every request, to delete
        the expired ones: a query per API call that grows with the user's sign-ins. Those
        go at the user's next sign-in and in the periodic purge instead; an expired token
        authenticates nothing either way.
        """
        if auth_token.expiry is not None and auth_token.expiry < timezone.now():
            username = auth_token.user.get_username()  # read with the token: no query
            auth_token.delete()
            token_expired.send(sender=self.__class__, username=username, source="auth_token")
            return True
        return False


def _tokens_under(key: str) -> list[AuthToken]:
    """The tokens whose key (their first characters, stored in the clear) is ``key``, each
    with its user: on Postgres one statement written out (``rows``), else knox's query."""
    if rows.in_sql():
        return [rows.joined(row, AuthToken, User, "user") for row in rows.many(_TOKENS, [key])]
    return list(AuthToken.objects.filter(token_key=key).select_related("user"))


User = get_user_model()
_TOKENS = f"""
    SELECT {rows.columns("t", AuthToken)}, {rows.columns("u", User)}
    FROM "{AuthToken._meta.db_table}" AS t
    JOIN "{User._meta.db_table}" AS u ON u."{User._meta.pk.column}" = t."user_id"
    WHERE t."token_key" = %s
"""  # noqa: S608 - names from the models; the key is a parameter


class BearerTokenScheme(OpenApiAuthenticationExtension):
    """Declare the API token in the OpenAPI document: the bearer scheme, or ``Token <key>``.

    Either spelling of the header is enough (OR): generated clients speak the bearer scheme
    without configuration; validators learn that ``Authorization: Token <key>`` is good too.
    """

    target_class = TokenAuthentication
    name = ("bearerAuth", "tokenAuth")

    def get_security_requirement(self, auto_schema) -> list[dict]:
        return [{name: []} for name in self.name]

    def get_security_definition(self, auto_schema) -> list[dict]:
        return [
            {
                "type": "http",
                "scheme": "bearer",
                "description": "An API token from `POST /api/v1/auth/token/`, sent as "
                "`Authorization: Bearer <token>`.",
            },
            {
                "type": "apiKey",
                "in": "header",
                "name": "Authorization",
                "description": "The same API token, sent as `Authorization: Token <token>`.",
            },
        ]
