"""Reading the environment for ``settings.py``: a setting either works or refuses to start.

Each reader returns the variable's value, or its default when it is unset or empty, and
raises ``ImproperlyConfigured`` naming the variable for a value the service could not use
(which would otherwise start, and then fail every request, or silently mean something else).
"""

from collections.abc import Sequence

import environ
from django.core.exceptions import ImproperlyConfigured

env = environ.Env()


def _listed(words: Sequence[str]) -> str:
    *rest, last = words
    return f"{', '.join(rest)} or {last}" if rest else last


def env_choice(name: str, default: str, choices: Sequence[str]) -> str:
    """Return ``name``, one of ``choices``."""
    value = env.str(name, default="") or default
    if value not in choices:
        raise ImproperlyConfigured(
            f"{name}={value!r}: choose {_listed([repr(c) for c in choices])}."
        )
    return value
