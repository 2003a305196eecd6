"""Reading the environment for ``settings.py``: a setting either works or refuses to start.

Each reader returns the variable's value, or its default when it is unset or empty, and
raises ``ImproperlyConfigured`` naming the variable for a value the service could not use
(which would otherwise start, and then fail every request, or silently mean something else).
Every value is read as set: django-environ would take one beginning with "$" for the name of
another variable, and fall back to the default when that one is unset ("$5 off" a prompt,
"$REDIS" a URL that gunicorn and Celery, reading the environment themselves, take as set).
"""

import math
import os
import re
from collections.abc import Callable, Collection, Sequence
from typing import TypeVar
from urllib.parse import urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured
from redis.connection import parse_url

Number = TypeVar("Number", int, float)
# The longest duration a setting takes, in seconds (ten years): a date that far on is one
# Python and Postgres can still write; one past year 9999 would fail every request.
MAX_SECONDS = 10 * 365 * 24 * 3600

# What DRF's SimpleRateThrottle.parse_rate reads: a count, "/", a period by its first letter;
# only the periods' own words are taken, since DRF would read "60/month" as 60 a minute.
# Only a check: DRF's parser reads every rate (the throttles' and the sign-in limit's), but
# importing it here, while settings load, would configure DRF from half-loaded settings.
# One letter takes no "s": "10/ms" would be 10 a minute to DRF, not per millisecond.
_RATE = re.compile(r"[0-9]+/(?:[smhd]|(?:sec|second|min|minute|hr|hour|day)s?)")
# A model id as the Messages API, Bedrock and Vertex AI name them ("claude-...-20251001",
# "anthropic.claude-...-v1:0", "claude-...@20251001").
_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]*")
# django-environ's "proxied value": the name of another variable after a "$".
_REFERENCE = re.compile(r"\$[A-Za-z_][A-Za-z0-9_]*")


def _listed(words: Sequence[str]) -> str:
    *rest, last = words
    return f"{', '.join(rest)} or {last}" if rest else last


def _value(name: str) -> str:
    """Return ``name`` as set ("" when unset), refusing a bare reference to another variable,
    which django-environ would have expanded and a program reading the environment itself
    (gunicorn, Celery) would not."""
    value = os.environ.get(name, "")
    if _REFERENCE.fullmatch(value.strip()):
        raise ImproperlyConfigured(
            f"{name} names another variable ({value.strip()}): values are read as set, so "
            f'give the value itself (export {name}="${value.strip()[1:]}" expands it in the '
            "shell)."
        )
    return value


def env_str(name: str, default: str) -> str:
    """Return ``name`` as given, or ``default`` when it is unset, empty or only blanks."""
    value = _value(name)
    return value if value.strip() else default


def env_secret(name: str) -> str:
    """Return the secret ``name`` as given, or "" when it is unset or empty.

    Blanks only are refused, not read as unset as other variables' are: whoever set them
    meant to give a secret (a placeholder left blank, a quoting slip), and used as given
    they would be a key anyone can guess. The refusal does not repeat the value.
    """
    # Read as set, not through django-environ: a generated secret may begin with "$"
    # (Django's alphabet has it) and would silently be another variable's value, or nothing.
    # A bare reference is refused: taken as set it would be a key anyone can read here, and
    # a generated secret is never just letters and "_".
    value = _value(name)
    if value and not value.strip():
        raise ImproperlyConfigured(
            f"{name} is only blanks: give the secret itself, or leave {name} unset."
        )
    return value


def env_list(name: str, default: Sequence[str]) -> list[str]:
    """Return ``name``, a comma list (each item stripped, empty ones dropped), or ``default``
    when it lists nothing: env.list reads ``ALLOWED_HOSTS=`` as no host at all."""
    items = [item.strip() for item in env_str(name, "").split(",")]
    return [item for item in items if item] or list(default)


def env_origins(name: str) -> list[str]:
    """Return ``name``, a comma list of origins, each with its scheme (``https://host``).

    Django compares a request's origin, scheme included, with each: one without a scheme
    matches nothing, and only ``check`` would say so, not the web or worker processes.
    """
    origins = env_list(name, [])
    bare = [origin for origin in origins if not _has_scheme_and_host(origin)]
    if bare:
        raise ImproperlyConfigured(
            f"{name}={_value(name)!r}: {_listed([repr(o) for o in bare])} without a scheme; "
            "give a comma list of origins with theirs, e.g. 'https://chat.example.com'."
        )
    # A browser's Origin header never ends in "/" or a path: such an entry matches nothing
    # (Django matches a wildcard entry by its host alone, so "https://*.x.com/" works).
    pathed = [origin for origin in origins if not _no_path(origin)]
    if pathed:
        raise ImproperlyConfigured(
            f"{name}={_value(name)!r}: {_listed([repr(o) for o in pathed])} not an origin; "
            "an origin is a scheme and a host (and port) with nothing after, "
            "e.g. 'https://chat.example.com'."
        )
    return origins


def _no_path(origin: str) -> bool:
    host, _, path = origin.partition("://")[2].partition("/")
    return not path and (host.startswith("*.") or not origin.endswith("/"))


def _has_scheme_and_host(origin: str) -> bool:
    scheme, sep, host = origin.partition("://")
    return bool(scheme and sep and host)


def env_choice(name: str, default: str, choices: Sequence[str], *, any_case: bool = False) -> str:
    """Return ``name``, one of ``choices``; with ``any_case``, upper-cased first."""
    raw = env_str(name, default)
    value = raw.upper() if any_case else raw
    if value not in choices:
        listed = _listed([repr(c) for c in choices])
        raise ImproperlyConfigured(
            f"{name}={raw!r}: choose {listed}{' (in any case)' if any_case else ''}."
        )
    return value


def env_codes(
    name: str,
    default: Sequence[str],
    known: Collection[str],
    what: str,
    case: Callable[[str], str] = str.upper,
) -> list[str]:
    """Return ``name``, a comma list of codes in ``known``, each in ``case`` (``what`` says
    what a code is in the refusal: ``known`` may be too long to list)."""
    codes = [case(code) for code in env_list(name, default)]
    unknown = [code for code in codes if code not in known]
    if unknown:
        raise ImproperlyConfigured(
            f"{name}={_value(name)!r}: {_listed([repr(c) for c in unknown])} unknown; "
            f"give a comma list of {what}."
        )
    return codes


# env.bool's words for on, and their opposites for off; it reads any other word as off.
_ON = frozenset(environ.Env.BOOLEAN_TRUE_STRINGS)
_OFF = frozenset(("false", "off", "n", "no"))


def env_bool(name: str, default: bool) -> bool:
    """Return ``name`` as env.bool reads it (a whole number is on unless 0; ``true``, ``yes``,
    ``y``, ``on``, ``ok`` on; ``false``, ``no``, ``n``, ``off`` off, in any case), refusing
    any other word, which env.bool would silently read as off."""
    raw = _value(name).strip()
    if not raw:
        return default
    try:
        return int(raw) != 0
    except ValueError:
        pass
    if raw.lower() not in _ON | _OFF:
        raise ImproperlyConfigured(
            f"{name}={raw!r}: give 1, true, yes or on to turn it on, 0, false, no or off to "
            "turn it off."
        )
    return raw.lower() in _ON


def env_number(
    name: str,
    default: Number | None,
    *,
    minimum: Number,
    maximum: Number | None = None,
    kind: type[Number] = int,
) -> Number | None:
    """Return ``name`` as a ``kind`` (``int`` or ``float``) from ``minimum`` to ``maximum``."""
    raw = _value(name).strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    too_big = maximum is not None and value is not None and value > maximum
    if value is None or not math.isfinite(value) or value < minimum or too_big:
        what = "a whole number" if kind is int else "a number"
        bound = f"from {minimum} to {maximum}" if maximum is not None else f"of at least {minimum}"
        raise ImproperlyConfigured(f"{name}={raw!r}: give {what} {bound}.")
    return value


def env_rate(name: str, default: str) -> str:
    """Return ``name``, a rate in DRF's syntax such as ``60/min``, of at least one a period."""
    rate = env_str(name, default)
    if not _RATE.fullmatch(rate):
        raise ImproperlyConfigured(f"{name}={rate!r}: give a count per period, e.g. '10/min'.")
    if int(rate.partition("/")[0]) < 1:
        # DRF would take it, and then refuse every request (every sign-in) as throttled.
        raise ImproperlyConfigured(
            f"{name}={rate!r}: give a count of at least 1 per period, e.g. '10/min'; "
            "0 would refuse every request."
        )
    return rate


def env_redis_url(name: str) -> str:
    """Return ``name``, a Redis URL (``redis://``, ``rediss://`` or ``unix://``), or ""."""
    url = env_str(name, "")
    if url:
        try:
            parse_url(url)  # redis-py's own reading, as the cache's and the index's clients do
        except ValueError as error:
            raise ImproperlyConfigured(
                f"{name}={_shown(url)!r}: {error}; e.g. redis://127.0.0.1:6379/0."
            ) from None
    return url


# The password of a URL's user, up to the "@" (a refusal is logged: it shows "***" instead).
_PASSWORD = re.compile(r"^([^:/]+://[^/@:]*:)[^/@]*@")


def _shown(url: str) -> str:
    return _PASSWORD.sub(r"\1***@", url, count=1)


def url_scheme_check(name: str, url: str, schemes: Sequence[str]) -> None:
    """Refuse ``url`` (set by ``name``) unless it starts with one of ``schemes`` and ``://``."""
    scheme, sep, _ = url.partition("://")
    if url and not (sep and scheme in schemes):
        starts = _listed([f"{s}://" for s in schemes])
        raise ImproperlyConfigured(f"{name}={_shown(url)!r}: give a URL starting {starts}.")


def env_http_url(name: str) -> str | None:
    """Return ``name``, an ``http://`` or ``https://`` URL with a host, or None when it is
    unset, empty or only blanks. Read as set: a URL is never another variable's name."""
    url = os.environ.get(name, "").strip()
    if not url:
        return None
    url_scheme_check(name, url, ("http", "https"))
    if not urlsplit(url).hostname:
        raise ImproperlyConfigured(f"{name}={_shown(url)!r}: give a URL with a host.")
    return url


# An HTTP header's name: letters, digits and "-" (a "_" is dropped or merged by many
# proxies and servers, and would never reach Django as written).
_HEADER_NAME = re.compile(r"[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*")


def env_header(name: str) -> str:
    """Return ``name``, an HTTP header's name such as ``X-Forwarded-Proto``, or "" when it is
    unset, empty or only blanks; refuse anything no request could carry."""
    header = os.environ.get(name, "").strip()
    if header and not _HEADER_NAME.fullmatch(header):
        raise ImproperlyConfigured(
            f"{name}={header!r} is not a header name: give it as the proxy sends it, "
            "letters, digits and '-' (e.g. X-Forwarded-Proto)."
        )
    return header


def env_model(name: str, default: str) -> str:
    """Return ``name``, a Claude model id such as ``claude-haiku-4-5-20251001``, or
    ``default``; refuse one with blanks or other characters, which every call would send
    and Claude refuse (a trailing newline from a secrets file, say)."""
    model = env_str(name, default)
    if not _MODEL_ID.fullmatch(model):
        raise ImproperlyConfigured(
            f"{name}={model!r} is not a model id: letters, digits and '.', '-', '_', ':', "
            "'@', '/' only, with no blanks (e.g. claude-haiku-4-5-20251001)."
        )
    return model


def env_database(name: str, default: str, schemes: Sequence[str]) -> dict:
    """Return ``name``, a database URL starting with one of ``schemes``, as a ``DATABASES``
    entry (django-environ's reading); env.db read an empty one as no engine at all."""
    url = env_str(name, default)
    url_scheme_check(name, url, schemes)
    try:
        return environ.Env.db_url_config(url)
    except ValueError as error:  # e.g. a port that is not a number
        raise ImproperlyConfigured(f"{name}={_shown(url)!r}: {error}.") from None
