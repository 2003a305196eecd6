"""Turn change notifications (Redis pub/sub) and the synchronous watch of a turn.

The payload carries only the turn's new status (the channel names the turn); readers
re-fetch the turn through the owner check, so a notification can never carry conversation
data to the wrong reader. The status lets a ``?wait``, which answers only once its turn has
ended, skip the read at "running". Under WSGI a waiter holds its thread and shares the
process's one listener (``turn_changes``).
"""

import logging
import os
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Collection, Generator, Iterator
from typing import Any

import redis.asyncio
import redis.exceptions
from django.conf import settings
from django.db import transaction

from ..models import Turn

logger = logging.getLogger(__name__)
# Without Redis (the embedded setup) turns run eagerly; polling is the rare fallback.
POLL_INTERVAL_SECONDS = 0.25
# A waiter polling because Redis went away tries to subscribe again this often: after a
# failover every open stream would otherwise poll, reading its turn four times a second,
# until it ends (up to STREAM_MAX_SECONDS).
RESUBSCRIBE_SECONDS = 5.0


def _prefix() -> str:
    return settings.CACHES["default"].get("KEY_PREFIX", "isolation")


def _channel(turn_id: object) -> str:
    return f"{_prefix()}:turn:{turn_id}:events"


# A process's own turns ----------------------------------------------------------------------
# A turn accepted in a process gets an id whose first 32 bits are that process's tag, so the
# channels of its turns all fall under one pattern, which the process's listener subscribes
# to once. A ?wait on a turn accepted here then costs no SUBSCRIBE or UNSUBSCRIBE of its own
# (with their replies: a tenth of a web request's CPU). The other 90 bits stay random, and a
# notification names only a status, which every reader re-reads through the owner check.

_tag_lock = threading.Lock()
_tag: tuple[int, str] | None = None  # (pid, 8 hex digits)
_LOW_96_BITS = (1 << 96) - 1


def _process_tag() -> str:
    global _tag
    with _tag_lock:
        if _tag is None or _tag[0] != os.getpid():  # a forked child tags its own turns
            _tag = (os.getpid(), f"{secrets.randbits(32):08x}")
        return _tag[1]


def new_turn_id() -> uuid.UUID:
    """A random (version 4) id for a turn accepted in this process, under its tag."""
    return uuid.UUID(int=(int(_process_tag(), 16) << 96) | (uuid.uuid4().int & _LOW_96_BITS))


def own_turn(turn_id: object) -> bool:
    """Tell whether the turn's id carries this process's tag (its channel is under the
    process's pattern)."""
    return str(turn_id).startswith(f"{_process_tag()}-")


_GLOB = re.compile(r"([*?\[\]\\])")


def own_pattern() -> str:
    """The pattern every channel of this process's turns matches."""
    prefix = _GLOB.sub(r"\\\1", _prefix())  # the prefix matched as it is written
    return f"{prefix}:turn:{_process_tag()}-*:events"


def _redis():
    from django_redis import get_redis_connection

    return get_redis_connection("default")


# What a notification says when the publisher does not name the new status (a session
# deleted with its turns): readers re-read.
UNKNOWN = ""


def publish_turn_changed(*, turn_id: object, status: str = UNKNOWN) -> None:
    """Tell waiters that the turn changed, to ``status``; a lost notification only delays them."""
    if settings.REDIS_URL:
        # After commit: a woken reader must find the change already visible.
        transaction.on_commit(lambda: _publish(turn_id, status))


def _publish(turn_id: object, status: str = UNKNOWN) -> None:
    try:
        _redis().publish(_channel(turn_id), str(status))
    except Exception:  # noqa: BLE001 - a waiter re-checks on its own deadline anyway
        logger.warning("could not publish a change of turn %s", turn_id, exc_info=True)


def turn_changes(
    *,
    turn_id: uuid.UUID,
    timeout: float,
    tick: float = 15.0,
    poll_if_down: bool = False,
    gone: Callable[[], bool] | None = None,
    unread: Collection[str] = (),
) -> Iterator[str | None]:
    """Yield the new status (``UNKNOWN`` if not said) on each change notification of a
    turn, but not one naming a status in ``unread`` (the caller has nothing to do on it),
    and None first and on every idle ``tick``.

    The subscription is open before the first yield, so a caller that re-reads the turn
    after the first ``next()``, or creates or queues it then, cannot miss a change that
    happened after. Stops after ``timeout`` seconds, or as soon as ``gone()`` (checked
    about every second) says the client hung up. If Redis cannot be subscribed to, the
    first ``next()`` raises, unless ``poll_if_down``: then it falls back to a timer (a
    change of unknown status at once, then every ``POLL_INTERVAL_SECONDS``), as it does
    when Redis goes away mid-wait.
    """
    deadline = time.monotonic() + timeout
    gone = gone or never
    if not settings.REDIS_URL:
        yield None
        yield from _poll(deadline, gone)
        return
    try:
        subscription = _subscribe(turn_id, unread)
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
        if not poll_if_down:
            raise
        logger.warning("turn notifications unavailable; polling turn %s", turn_id)
        subscription = None
    try:
        yield None
        last = time.monotonic()
        while True:
            if subscription is None:
                # Redis is away: the turn was accepted and still ends, so the waiter re-reads
                # it on a timer (a look at once: no notification will say what happened
                # before), and subscribes again as soon as it can, then looks once more.
                subscription = yield from _poll(deadline, gone, resubscribe=(turn_id, unread))
                if subscription is None:
                    return
            while (remaining := deadline - time.monotonic()) > 0 and not gone():
                try:
                    status = subscription.wait(min(1.0, remaining), skip=unread)
                except redis.exceptions.TimeoutError:
                    status, lost = None, True  # the listener is stuck: as good as lost
                else:
                    lost = subscription.lost
                if lost:
                    logger.warning("turn notifications lost; polling turn %s", turn_id)
                    subscription.close()
                    subscription = None
                    break
                now = time.monotonic()
                if status is not None:
                    last = now
                    yield status
                elif now - last >= tick:
                    last = now
                    yield None
            else:
                return
    finally:
        if subscription is not None:
            subscription.close()


def _subscribe(turn_id: object, unread: Collection[str]):
    # Imported here: the loop thread builds on the listener, which imports this module.
    from .loop_thread import subscribe_from_thread

    return subscribe_from_thread(turn_id, skip=unread)


def never() -> bool:
    """A hang-up test for servers that cannot tell: the client is never gone."""
    return False


def _status(data: bytes | str) -> str:
    """The status a notification names; anything else counts as unknown (read to know)."""
    status = data.decode(errors="replace") if isinstance(data, bytes) else str(data)
    return status if status in Turn.Status.values else UNKNOWN


def _poll(
    deadline: float,
    gone: Callable[[], bool] = never,
    *,
    resubscribe: tuple[object, Collection[str]] | None = None,
) -> Generator[str, None, Any]:
    """Yield ``UNKNOWN`` at once and every ``POLL_INTERVAL_SECONDS`` until the deadline or
    ``gone()``. With ``resubscribe`` (a turn's id and its ``unread``), ask for a subscription
    every ``RESUBSCRIBE_SECONDS``, without waiting for it (a Redis that hangs would hold the
    poll): once confirmed, yield ``UNKNOWN`` once more (what happened before it) and return
    it; None past the end."""
    from .loop_thread import PendingSubscription  # see ``_subscribe``

    yield UNKNOWN
    retry = time.monotonic() + RESUBSCRIBE_SECONDS
    pending = None
    try:
        while (remaining := deadline - time.monotonic()) > 0 and not gone():
            time.sleep(min(POLL_INTERVAL_SECONDS, remaining))
            if resubscribe is not None and pending is None and time.monotonic() >= retry:
                pending = PendingSubscription(*resubscribe)
            if pending is not None:
                try:
                    subscription = pending.result()
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                    pending, retry = None, time.monotonic() + RESUBSCRIBE_SECONDS
                else:
                    if subscription is not None:
                        pending = None
                        logger.info("turn notifications back; turn %s", resubscribe[0])
                        try:
                            yield UNKNOWN
                        except BaseException:
                            subscription.close()
                            raise
                        return subscription
            yield UNKNOWN
    finally:
        if pending is not None:
            pending.close()
    return None


def turn_watch(
    *,
    turn: Turn,
    refresh: Callable[[Turn], Turn],
    timeout: float,
    tick: float = 15.0,
    poll_if_down: bool = False,
    gone: Callable[[], bool] | None = None,
) -> Iterator[Turn | None]:
    """Yield the turn as it is now, then each time it changes, until it ends or ``timeout``.

    On an idle ``tick`` the turn is re-read as well (a lost notification cannot hold a
    watcher until its timeout) and None is yielded if nothing changed: the event stream
    sends a keep-alive then. ``refresh`` re-reads the turn for its owner. Subscribed
    before the first read, so no change can slip by unseen; if Redis cannot be subscribed
    to, the first ``next()`` raises, unless ``poll_if_down``. Ends early once ``gone()``.
    """
    changes = turn_changes(
        turn_id=turn.pk, timeout=timeout, tick=tick, poll_if_down=poll_if_down, gone=gone
    )
    next(changes)
    try:
        turn = refresh(turn)
        last = (turn.status, turn.updated_at)
        said = time.monotonic()
        yield turn
        for change in () if turn.is_finished else changes:
            turn = refresh(turn)
            now = time.monotonic()
            if (turn.status, turn.updated_at) != last:
                last, said = (turn.status, turn.updated_at), now
                yield turn
            elif change is None or now - said >= tick:
                # An idle tick, or one due while polling (whose reads come every fraction
                # of a second, never idle): the stream's keep-alive, which also finds out
                # a client that hung up where the server cannot tell.
                said = now
                yield None
            if turn.is_finished:
                break
    finally:
        changes.close()
