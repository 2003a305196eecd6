"""Waiting under WSGI: the process's one listener, on an event loop in a thread of its own.

A wait still holds its request's thread (WSGI gives it no other way), but not a Redis
connection: every wait of the process shares the listener that ASGI waits use, run on a
small event loop here. A connection per wait cost a connect and its handshake, and, since
a pub/sub connection is closed when its wait ends, a reconnect of the cache's next
command too.
"""

import asyncio
import os
import threading
from collections.abc import Collection
from concurrent.futures import TimeoutError as FutureTimeout

import redis.exceptions

from .listener import SUBSCRIBE_TIMEOUT_SECONDS, Subscription, turn_listener
from .notify import UNKNOWN

# How long past its own timeout a call into the loop may take before the loop counts as
# stuck: the waiter then polls, as when Redis goes away.
_GRACE_SECONDS = 5.0


class _Loop:
    """An event loop running forever in a daemon thread of this process."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="turn-listener", daemon=True
        )
        self.thread.start()

    def call(self, coroutine, timeout: float, *, late=None):
        """Run ``coroutine`` on the loop and return its result; ``late(result)`` is called
        on a result that comes after the caller gave up on it."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout + _GRACE_SECONDS)
        except FutureTimeout:
            if not future.cancel() and late is not None:
                future.add_done_callback(lambda done: _late(done, late))
            raise redis.exceptions.TimeoutError("the turn listener did not answer") from None


def _late(future, late) -> None:
    if not future.cancelled() and future.exception() is None:
        late(future.result())


_lock = threading.Lock()
_current: _Loop | None = None


def _process_loop() -> _Loop:
    """This process's loop; a forked child (a gunicorn worker) starts its own."""
    global _current
    with _lock:
        if _current is None or _current.pid != os.getpid():
            _current = _Loop()
        return _current


class ThreadSubscription:
    """A waiting thread's hold on a turn's channel of the process's listener."""

    def __init__(self, loop: _Loop, subscription: Subscription) -> None:
        self._loop = loop
        self._subscription = subscription

    @property
    def lost(self) -> bool:
        """True once the listener's connection is gone: the waiter polls from then on."""
        return self._subscription.lost

    def wait(self, timeout: float, skip: Collection[str] = ()) -> str | None:
        """Block up to ``timeout`` s for a notification whose status is not in ``skip``;
        return its status, or None if none came.

        Raise ``redis.exceptions.TimeoutError`` if the listener's loop does not answer.
        """
        status = self._loop.call(self._subscription.take(timeout, skip), timeout)
        if status is None:
            return None
        return UNKNOWN if self._subscription.lost else status

    def close(self) -> None:
        self._subscription.close()


def subscribe_from_thread(turn_id: object) -> ThreadSubscription:
    """Subscribe to a turn's changes from a (WSGI) thread; active on Redis when this returns.

    Raise ``redis.exceptions.ConnectionError`` or ``TimeoutError`` if Redis cannot be
    reached.
    """
    loop = _process_loop()

    async def subscribe() -> Subscription:
        return await turn_listener().subscribe(turn_id)

    subscription = loop.call(subscribe(), SUBSCRIBE_TIMEOUT_SECONDS, late=Subscription.close)
    return ThreadSubscription(loop, subscription)
