"""Waiting under ASGI: one listener per event loop, and which of its waiters wait on which
channel (subscribe, enter, drop: the turn's channel, or the process's pattern).

The listener's connection to Redis is its base class (``connection``); what a waiter holds
is in ``subscription``. A waiter awaits on the event loop (``watch``); only its re-reads
take a thread, briefly (``threads``).
"""

import asyncio
import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable

import redis.exceptions
from django.conf import settings

from .connection import ListenerConnection
from .notify import _channel, own_pattern, own_turn
from .subscription import Subscription, _Channel, _confirmed

logger = logging.getLogger(__name__)


# Under ASGI: one listener per event loop ----------------------------------------------------
# A wait awaits a notification on the event loop instead of holding a thread: one Redis
# pub/sub connection per process (per event loop) carries every channel, subscribed once
# however many waiters share it, and fans each notification out to them. Database work
# (each re-read of a turn) runs on a bounded pool of threads and gives it straight back.

SUBSCRIBE_TIMEOUT_SECONDS = 5.0


class TurnListener(ListenerConnection):
    """The event loop's one pub/sub connection; channels subscribed while someone waits."""

    def __init__(self, url: str, loop: asyncio.AbstractEventLoop) -> None:
        self.url = url
        self.loop = loop
        self.channels: dict[str, _Channel] = {}
        self._confirmations: dict[str, deque[asyncio.Future]] = {}
        self._pubsub = None
        self._reader: asyncio.Task | None = None
        self._lock = asyncio.Lock()  # commands go out in the order they were asked for
        self._tasks: set[asyncio.Task] = set()
        # The process's pattern and the future of its subscription, once asked for; None
        # again after a lost connection, or for good if Redis refuses patterns.
        self._own: tuple[str, asyncio.Future] | None = None
        self._patterns = True
        self._retired = False  # REDIS_URL names another server now: connect no more
        # A waiting thread enters and leaves its own turns' channels directly (``enter_own``,
        # ``drop_own``) rather than through the loop: the channels, and the pattern that
        # carries them, change under this lock wherever either side changes them.
        self._guard = threading.Lock()

    async def subscribe(self, turn_id: object) -> Subscription:
        """Return a subscription to the turn's changes, active on Redis when this returns.

        Raise ``redis.exceptions.ConnectionError`` if Redis cannot be reached.
        """
        subscription, ready = self.enter(turn_id)
        try:
            confirmed = await asyncio.wait_for(asyncio.shield(ready), SUBSCRIBE_TIMEOUT_SECONDS)
        except TimeoutError:
            self.unconfirmed(subscription)
            raise redis.exceptions.TimeoutError("no subscription confirmed in time") from None
        except BaseException:
            subscription.close()
            raise
        if not confirmed:
            subscription.close()
            raise redis.exceptions.ConnectionError("turn notifications are unavailable")
        return subscription

    def enter(
        self, turn_id: object, kind: Callable[..., Subscription] = Subscription
    ) -> tuple[Subscription, asyncio.Future]:
        """On the loop: a new ``kind`` of subscription to the turn's channel, and the future
        that says (True) once Redis confirmed the channel, or (False) that it is lost.

        ``subscribe`` awaits it; a waiting thread (``loop_thread``) is told of it instead,
        without a coroutine and its task to carry the answer across.
        """
        channel = _channel(turn_id)
        subscription = kind(self, channel)
        with self._guard:
            entry = self.channels.get(channel)
            if entry is None:
                if self._patterns and own_turn(turn_id):  # no command: the pattern carries it
                    entry = _Channel(self._own_pattern(), own=True)
                else:
                    entry = _Channel(self._asked("subscribe", channel))
                self.channels[channel] = entry
            entry.subscriptions.add(subscription)
        return subscription, entry.ready

    def enter_own(self, turn_id: object, kind: Callable[..., Subscription]) -> Subscription | None:
        """From any thread: a new ``kind`` of subscription to one of this process's turns,
        active at once, if the process's pattern is already confirmed on the live
        connection; None otherwise (the caller enters through the loop, ``enter``).

        A waiting thread so spends no hop to the loop and back on the process's own turns,
        which need no Redis command. Whatever later loses the connection tells this
        subscription too, since ``_lose`` clears the pattern under the same lock.
        """
        if not own_turn(turn_id):
            return None
        channel = _channel(turn_id)
        pattern = own_pattern()
        subscription = kind(self, channel)
        with self._guard:
            own = self._own
            if own is None or own[0] != pattern or not _confirmed(own[1]):
                return None
            entry = self.channels.get(channel)
            if entry is None:
                entry = self.channels[channel] = _Channel(own[1], own=True)
            elif not entry.own:
                return None
            entry.subscriptions.add(subscription)
        return subscription

    def _own_pattern(self) -> asyncio.Future:
        """The future of the process's pattern subscription: asked for once a connection
        (and again should the process's tag change: a pattern matches one tag's turns)."""
        pattern = own_pattern()
        if self._own is None or self._own[0] != pattern:
            self._own = (pattern, self._asked("psubscribe", pattern))
        return self._own[1]

    def _pattern_refused(self) -> bool:
        """Redis refused the pattern while it was being subscribed: its user may listen only
        on channels it names (ACL channel rules match a pattern literally). From now on this
        listener subscribes its own turns one by one too; the waits entered on the pattern
        meanwhile are told it is unavailable, and poll. False if no pattern was pending."""
        if self._own is None or self._own[1].done():
            return False
        pattern, _ = self._own
        with self._guard:
            self._own, self._patterns = None, False
        logger.warning("Redis refused %s; turns are subscribed one by one", pattern)
        for ready in self._confirmations.pop(pattern, ()):
            if not ready.done():
                ready.set_result(False)
        return True

    def _asked(self, command: str, name: str) -> asyncio.Future:
        ready = self.loop.create_future()
        self._confirmations.setdefault(name, deque()).append(ready)
        self._later(self._command(command, name, ready))
        return ready

    def unconfirmed(self, subscription: Subscription) -> None:
        """On the loop: a subscription Redis did not confirm in time is given up.

        A connection that confirms nothing is as good as gone (a failover, a host gone
        without closing it): it is dropped, so that the next subscriber connects afresh.
        """
        subscription.close()
        self._later(self._drop_unanswering())

    def drop(self, subscription: Subscription, *, blocking: bool = True) -> bool:
        """On the loop: forget a closed subscription; unsubscribe the channel when it was
        the last. False if not ``blocking`` and the lock was taken (nothing done)."""
        return self._forget(subscription, blocking=blocking, own_only=False)

    def drop_own(self, subscription: Subscription) -> bool:
        """From any thread: ``drop`` a subscription to one of this process's turns, which
        needs no command. False if its channel is not one (the loop must drop it) or the
        lock was taken (it never waits for it: see ``Subscription.close``)."""
        return self._forget(subscription, blocking=False, own_only=True)

    def _forget(self, subscription: Subscription, *, blocking: bool, own_only: bool) -> bool:
        if not self._guard.acquire(blocking):
            return False
        try:
            entry = self.channels.get(subscription.channel)
            if entry is None or subscription not in entry.subscriptions:
                return True  # nothing left to forget
            if own_only and not entry.own:
                return False  # its UNSUBSCRIBE is the loop's to send
            entry.subscriptions.discard(subscription)
            if entry.subscriptions:
                return True
            del self.channels[subscription.channel]
        finally:
            self._guard.release()
        if not entry.own:
            self._later(self._command("unsubscribe", subscription.channel))
        return True


# The listener's connection belongs to the event loop it was made in, so there is one per
# loop (uvicorn runs one per process), dropped with its loop. It holds a Redis connection
# and the names of the channels waited on (turn ids), never conversation data.
_listeners: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, TurnListener] = (
    weakref.WeakKeyDictionary()
)


def turn_listener() -> TurnListener:
    """Return the running event loop's listener (one per loop, so one per uvicorn worker)."""
    loop = asyncio.get_running_loop()
    listener = _listeners.get(loop)
    if listener is None or listener.url != settings.REDIS_URL:
        if listener is not None:
            listener.retire()
        listener = _listeners[loop] = TurnListener(settings.REDIS_URL, loop)
    return listener
