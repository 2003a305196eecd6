"""What a wait may hold: the user's share (``MAX_WAITS_PER_USER``) and, under WSGI, the
process's wait budget (``WAITS_PER_PROCESS``)."""

import logging
import os
import secrets
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


# A slot left behind by a process that died mid-wait (a gunicorn timeout, a deploy's
# SIGKILL) or whose give-back was lost fades after this long.
WAIT_SLOT_TTL_SECONDS = 15 * 60
WAIT_RETRY_AFTER_SECONDS = 5


# On Redis a user's slots are one sorted set: a member per slot held (a random token of its
# holder), scored by the time the slot fades. Each slot so fades on its own: a counter
# renewed by every take (a refused one too) kept slots leaked by a dead process for as long
# as their user kept retrying, and a user who had leaked the cap got 429 on every ?wait and
# stream for good. Each step is one script or command, atomic and one round trip: a wait's
# cost is paid on every chat turn that waits. The one key is declared (KEYS[1]), so this
# runs on Redis Cluster too. The time is Redis's own (TIME; Redis 5+ replicates a script's
# effects, so a read of the clock may precede writes): one clock for every web machine, and
# the one that expires the key, so a web machine's skewed clock neither fades slots others
# hold nor keeps its own past their time.
# Take: drop the faded slots; a slot this token holds already is taken (the call sent again
# after its answer was lost); past the cap refuse, changing nothing more (a refusal renews
# nothing); else add this one, and let the key fade with its newest slot.
_TAKE = Script(
    None,  # no client of its own: each call names the connection it runs on
    b"""
    local clock = redis.call('TIME')
    local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
    if redis.call('ZSCORE', KEYS[1], ARGV[3]) then
        return 1
    end
    if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
        return 0
    end
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[3])
    local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2]
    redis.call('PEXPIREAT', KEYS[1], math.ceil(tonumber(newest) * 1000))
    return 1
    """,
)


def wait_slot_acquire(*, user_id: int) -> Callable[[], None]:
    """Take one of the user's ``MAX_WAITS_PER_USER`` slots; return the function releasing it.

    Raise ``TooManyWaits`` (429 with ``Retry-After``) when they are all taken: one user's
    open streams must not hold every web thread while everyone else waits. A slot never
    given back fades ``WAIT_SLOT_TTL_SECONDS`` after it was taken; releasing twice gives
    back one slot.
    """
    if (connection := cache_redis()) is None:
        return _cache_slot_acquire(f"wait-slots:{user_id}")  # the embedded default's cache
    # Not the former counter's key (a string): during a rolling deploy the processes of
    # both versions would each find the other's type there, and fail.
    redis_key = cache.make_key(f"wait-slot-holders:{user_id}")
    token = secrets.token_hex(8)
    args = (WAIT_SLOT_TTL_SECONDS, settings.MAX_WAITS_PER_USER, token)
    try:
        taken = _TAKE(keys=[redis_key], args=args, client=connection)
    except Exception:
        # The script may have run and its answer been lost (a timeout): the request is
        # answered 503, so the slot it may hold must not be held for WAIT_SLOT_TTL_SECONDS.
        try:
            connection.zrem(redis_key, token)
        except Exception:  # noqa: BLE001 - Redis went away; the slot fades with it
            logger.warning("could not give back a wait slot of user %s", user_id)
        raise
    if not taken:
        raise TooManyWaits(wait=WAIT_RETRY_AFTER_SECONDS)

    def release() -> None:
        # Only this holder's own slot: never another's, however often it is called, and
        # nothing comes back of a set that has faded (ZREM makes no key).
        try:
            connection.zrem(redis_key, token)
        except Exception:  # noqa: BLE001 - Redis went away; the slot fades with it
            logger.warning("could not release a wait slot of user %s", user_id)

    return release


def _cache_slot_acquire(key: str) -> Callable[[], None]:
    """``wait_slot_acquire`` on any other Django cache: a counter, cheap in-process.

    The embedded default's: one process, whose slots go with it if it dies, so the counter
    fades as a whole. Only a slot taken renews it: a refusal must not keep a counter alive
    (a give-back lost, say) while its user retries.
    """
    cache.add(key, 0, timeout=WAIT_SLOT_TTL_SECONDS)
    held = cache.incr(key)

    def release() -> None:
        try:
            if cache.decr(key) < 0:
                cache.incr(key)  # a counter that faded and came back: not below zero
        except ValueError:
            pass  # faded meanwhile: nothing left to give back
        except Exception:  # noqa: BLE001 - the cache went away; the counter fades with it
            logger.warning("could not release a wait slot (%s)", key)

    release = _once(release)  # as on Redis: a second call gives back nothing more
    if held > settings.MAX_WAITS_PER_USER:
        release()
        raise TooManyWaits(wait=WAIT_RETRY_AFTER_SECONDS)
    cache.touch(key, WAIT_SLOT_TTL_SECONDS)
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


def wait_budget_warning() -> None:
    """Log, as a WSGI process starts, a wait budget of none: every ``?wait`` is then
    answered 202 at once and every event stream 503, for as long as it runs, which its
    ``Retry-After`` of a few seconds does not tell the operator."""
    if wait_budget_size() == 0:
        threads = os.environ.get("WEB_THREADS")
        logger.warning(
            "no waits may be held in this process (%s): every ?wait is answered 202 at once "
            "and every event stream 503. Serve with threads (-k gthread --threads 8) or set "
            "WAITS_PER_PROCESS.",
            f"{threads} thread(s), one kept for short requests"
            if settings.WAITS_PER_PROCESS is None
            else "WAITS_PER_PROCESS=0",
        )


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
