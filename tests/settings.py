"""Test settings: the production settings module on the real Postgres and Redis.

Every pytest-xdist worker gets its own Redis database number and (through pytest-django)
its own Postgres test database, so parallel runs cannot see each other's data.
``TEST_DB_NAME`` and ``TEST_REDIS_DB_BASE`` let two checkouts test side by side.
"""

import os

_worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
_redis_db = int(os.environ.get("TEST_REDIS_DB_BASE", "1")) + _worker
_db_name = os.environ.get("TEST_DB_NAME", "isolation")

os.environ.setdefault("SECRET_KEY", "test-only-secret-key")
os.environ.setdefault("ENCRYPTION_KEYS", "rP0RmBBqN7Yx7PrwnWbJ1dGPLmVZ8kxAqV8VwK9xG2c=")
os.environ.setdefault("DATABASE_URL", f"postgres://postgres@127.0.0.1:5432/{_db_name}")
# Overwritten, not defaulted: xdist workers inherit the controller's environment.
os.environ["REDIS_URL"] = f"redis://127.0.0.1:6379/{_redis_db}"
os.environ.setdefault("CELERY_TASK_ALWAYS_EAGER", "1")
os.environ.setdefault("LLM_PROVIDER", "offline")
os.environ.setdefault("CHAT_THROTTLE_RATE", "10000/min")
# Tests that sign in often are not about the failed-sign-in limit; test_auth sets its own.
os.environ.setdefault("LOGIN_THROTTLE_RATE", "10000/min")
# The suite speaks plain HTTP to its own servers (tests of the HTTPS policy turn it on).
os.environ.setdefault("SECURE_HTTPS", "off")

from isolation_site.settings import *  # noqa: E402, F403

REDIS_DB = _redis_db
TURN_RETRY_DELAY_SECONDS = 0.05
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast test logins
# The suite does not run collectstatic: WhiteNoise finds the assets where they lie.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
