"""Turn change notifications: Redis pub/sub when Redis is configured.

``?wait`` and the event stream wake on these instead of polling the database in a loop.
The payload carries only the turn id; readers re-fetch the turn through the owner check,
so a notification can never carry conversation data to the wrong reader.
"""

import logging
import time
import uuid
from collections.abc import Callable, Iterator

import redis.exceptions
from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from rest_framework.exceptions import Throttled

from .models import Turn

logger = logging.getLogger(__name__)

# Without Redis (the embedded setup) turns run eagerly; polling is the rare fallback.
POLL_INTERVAL_SECONDS = 0.25


def _channel(turn_id: object) -> str:
    return f"{settings.CACHES['default'].get('KEY_PREFIX', 'isolation')}:turn:{turn_id}:events"


def _redis():
    from django_redis import get_redis_connection

    return get_redis_connection("default")


def publish_turn_changed(*, turn_id: object) -> None:
    """Tell waiters that the turn changed; a lost notification only delays them."""
    if settings.REDIS_URL:
        # After commit: a woken reader must find the change already visible.
        transaction.on_commit(lambda: _publish(turn_id))


def _publish(turn_id: object) -> None:
    try:
        _redis().publish(_channel(turn_id), str(turn_id))
    except Exception:  # noqa: BLE001 - a waiter re-checks on its own deadline anyway
        logger.warning("could not publish a change of turn %s", turn_id, exc_info=True)


def turn_changes(
    *, turn_id: uuid.UUID, timeout: float, tick: float = 15.0, poll_if_down: bool = False
) -> Iterator[bool]:
    """Yield True on each change notification of a turn and False on every idle ``tick``.

    The subscription is open before the first yield, so a caller that re-reads the turn
    after the first ``next()`` cannot miss a change that happened in between. Stops after
    ``timeout`` seconds. If Redis cannot be subscribed to, the first ``next()`` raises,
    unless ``poll_if_down``: then it falls back to a timer, as it does when Redis goes away
    mid-wait.
    """
    deadline = time.monotonic() + timeout
    if not settings.REDIS_URL:
        yield False
        yield from _poll(deadline)
        return
    pubsub = _redis().pubsub(ignore_subscribe_messages=True)
    try:
        try:
            pubsub.subscribe(_channel(turn_id))
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            if not poll_if_down:
                raise
            logger.warning("turn notifications unavailable; polling turn %s", turn_id)
            yield False
            yield from _poll(deadline)
            return
        yield False
        last = time.monotonic()
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                message = pubsub.get_message(timeout=min(1.0, remaining))
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                # Redis went away mid-wait: the turn was accepted and still ends, so the
                # waiter re-reads it on a timer instead of answering an error.
                logger.warning("turn notifications lost; polling turn %s", turn_id)
                yield from _poll(deadline)
                return
            now = time.monotonic()
            if message is not None:
                last = now
                yield True
            elif now - last >= tick:
                last = now
                yield False
    finally:
        pubsub.close()


def _poll(deadline: float) -> Iterator[bool]:
    while (remaining := deadline - time.monotonic()) > 0:
        time.sleep(min(POLL_INTERVAL_SECONDS, remaining))
        yield True


def turn_watch(
    *,
    turn: Turn,
    refresh: Callable[[Turn], Turn],
    timeout: float,
    tick: float = 15.0,
    poll_if_down: bool = False,
) -> Iterator[Turn | None]:
    """Yield the turn as it is now, then each time it changes, until it ends or ``timeout``.

    On an idle ``tick`` the turn is re-read as well (a lost notification cannot hold a
    watcher until its timeout) and None is yielded if nothing changed: the event stream
    sends a keep-alive then. ``refresh`` re-reads the turn for its owner. Subscribed
    before the first read, so no change can slip by unseen; if Redis cannot be subscribed
    to, the first ``next()`` raises, unless ``poll_if_down``.
    """
    changes = turn_changes(turn_id=turn.pk, timeout=timeout, tick=tick, poll_if_down=poll_if_down)
    next(changes)
    try:
        turn = refresh(turn)
        last = (turn.status, turn.updated_at)
        yield turn
        while not turn.is_finished and (changed := next(changes, None)) is not None:
            turn = refresh(turn)
            if (turn.status, turn.updated_at) != last:
                last = (turn.status, turn.updated_at)
                yield turn
            elif not changed:
                yield None
    finally:
        changes.close()


class TooManyWaits(Throttled):
    default_detail = (
        "You already have as many replies being waited for or streamed as allowed; "
        "close one, or poll the turn instead."
    )
    default_code = "too_many_waits"


# A counter left behind by a process that died mid-wait fades after this long.
WAIT_SLOT_TTL_SECONDS = 15 * 60
WAIT_RETRY_AFTER_SECONDS = 5


def wait_slot_acquire(*, user_id: int) -> Callable[[], None]:
    """Take one of the user's ``MAX_WAITS_PER_USER`` slots; return the function releasing it.

    Raise ``TooManyWaits`` (429 with ``Retry-After``) when they are all taken: one user's
    open streams must not hold every web thread while everyone else waits.
    """
    key = f"wait-slots:{user_id}"
    cache.add(key, 0, timeout=WAIT_SLOT_TTL_SECONDS)
    held = cache.incr(key)
    cache.touch(key, WAIT_SLOT_TTL_SECONDS)

    def release() -> None:
        try:
            cache.decr(key)
        except ValueError:
            pass  # faded meanwhile: nothing left to give back
        except Exception:  # noqa: BLE001 - the cache went away; the counter fades with it
            logger.warning("could not release a wait slot of user %s", user_id)

    if held > settings.MAX_WAITS_PER_USER:
        release()
        raise TooManyWaits(wait=WAIT_RETRY_AFTER_SECONDS)
    return release
