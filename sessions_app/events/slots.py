"""What a wait may hold: the user's share (``MAX_WAITS_PER_USER``) and, under WSGI, the
process's wait budget (``WAITS_PER_PROCESS``)."""

import logging
import os
import threading
from collections.abc import Callable

from django.conf import settings
from django.core.cache import cache
from redis.commands.core import Script
from rest_framework.exceptions import APIException, Throttled

from core.cache import cache_redis

logger = logging.getLogger(__name__)


class TooManyWaits(Throttled):
    default_detail = (
        "You already have as many replies being waited for or streamed as allowed; "
        "close one, or poll the turn instead."
    )
    default_code = "too_many_waits"


# A counter left behind by a process that died mid-wait fades after this long.
WAIT_SLOT_TTL_SECONDS = 15 * 60
WAIT_RETRY_AFTER_SECONDS = 5


# A user's slots are one counter in the cache. On Redis each step is one script, atomic and
# one round trip (EVALSHA): a wait's cost is paid on every chat turn that waits.
# Take: count one more, renew the fade-out, and give it straight back past the cap.
_TAKE = Script(
    None,  # no client of its own: each call names the connection it runs on
    b"""
    local held = redis.call('INCR', KEYS[1])
    redis.call('EXPIRE', KEYS[1], ARGV[1])
    if held > tonumber(ARGV[2]) then
        redis.call('DECR', KEYS[1])
        return 0
    end
    return held
    """,
)
# Give back: never below zero, and never bring back a counter that has faded (it would
# have no fade-out of its own).
_GIVE_BACK = Script(
    None,
    b"""
    local held = tonumber(redis.call('GET', KEYS[1]))
    if held and held > 0 then
        return redis.call('DECR', KEYS[1])
    end
    return 0
    """,
)


def wait_slot_acquire(*, user_id: int) -> Callable[[], None]:
    """Take one of the user's ``MAX_WAITS_PER_USER`` slots; return the function releasing it.

    Raise ``TooManyWaits`` (429 with ``Retry-After``) when they are all taken: one user's
    open streams must not hold every web thread while everyone else waits.
    """
    key = f"wait-slots:{user_id}"
    if (connection := cache_redis()) is None:
        return _cache_slot_acquire(key)  # the embedded default: the in-process cache
    redis_key = cache.make_key(key)
    args = (WAIT_SLOT_TTL_SECONDS, settings.MAX_WAITS_PER_USER)
    if not _TAKE(keys=[redis_key], args=args, client=connection):
        raise TooManyWaits(wait=WAIT_RETRY_AFTER_SECONDS)

    def release() -> None:
        try:
            _GIVE_BACK(keys=[redis_key], client=connection)
        except Exception:  # noqa: BLE001 - Redis went away; the counter fades with it
            logger.warning("could not release a wait slot of user %s", user_id)

    return release


def _cache_slot_acquire(key: str) -> Callable[[], None]:
    """``wait_slot_acquire`` on any other Django cache: three calls, cheap in-process."""
    cache.add(key, 0, timeout=WAIT_SLOT_TTL_SECONDS)
    held = cache.incr(key)
    cache.touch(key, WAIT_SLOT_TTL_SECONDS)

    def release() -> None:
        try:
            if cache.decr(key) < 0:
                cache.incr(key)  # a counter that faded and came back: not below zero
        except ValueError:
            pass  # faded meanwhile: nothing left to give back
        except Exception:  # noqa: BLE001 - the cache went away; the counter fades with it
            logger.warning("could not release a wait slot (%s)", key)

    if held > settings.MAX_WAITS_PER_USER:
        release()
        raise TooManyWaits(wait=WAIT_RETRY_AFTER_SECONDS)
    return release


# The process's wait budget ------------------------------------------------------------------
# Under WSGI a wait holds one of the server's threads for its whole length: past a budget the
# process answers ?wait with 202 at once (the client polls) and a stream with 503, so some
# threads always stay free for short requests and a burst of waits never queues them.

WAIT_BUDGET_RETRY_AFTER_SECONDS = 2


class _Budget:
    def __init__(self, size: int) -> None:
        self.size = size
        self.semaphore = threading.BoundedSemaphore(size) if size else None


_budget_lock = threading.Lock()
_budget: _Budget | None = None


def wait_budget_size() -> int | None:
    """Return how many waits this process lets run at once, or None for no bound.

    The ``WAITS_PER_PROCESS`` setting says it outright. Otherwise under gunicorn
    (``gunicorn.conf.py`` names its thread count in ``WEB_THREADS``) it is the threads less
    an eighth (at least one) kept for short requests; under ASGI, where a wait holds no
    thread, and under any other server there is no bound.
    """
    if settings.WAITS_PER_PROCESS is not None:
        return max(0, settings.WAITS_PER_PROCESS)
    threads = int(os.environ.get("WEB_THREADS") or 0)
    return threads - max(1, threads // 8) if threads else None


def wait_budget_take() -> Callable[[], None] | None:
    """Take one of the process's wait slots without blocking; return its release, or None.

    None means none is free: the caller answers at once instead of waiting.
    """
    global _budget
    size = wait_budget_size()
    if size is None:
        return _nothing
    with _budget_lock:
        if _budget is None or _budget.size != size:
            _budget = _Budget(size)  # a changed setting: slots held of the old one go back to it
        budget = _budget
    if budget.semaphore is None or not budget.semaphore.acquire(blocking=False):
        return None
    return _once(budget.semaphore.release)


def _once(release: Callable[[], None]) -> Callable[[], None]:
    done = threading.Event()

    def once() -> None:
        if not done.is_set():
            done.set()
            release()

    return once


def _nothing() -> None:
    return None


class WaitBudgetSpent(APIException):
    """503 with ``Retry-After``: every wait this process may hold is taken."""

    status_code = 503
    default_detail = "The server is busy with other streams; try again shortly."
    default_code = "unavailable"

    def __init__(self) -> None:
        super().__init__()
        self.wait = WAIT_BUDGET_RETRY_AFTER_SECONDS
