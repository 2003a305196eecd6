"""Waiting under WSGI: the process's one listener, on an event loop in a thread of its own.

A wait still holds its request's thread (WSGI gives it no other way), but not a Redis
connection: every wait of the process shares the listener that ASGI waits use, run on a
small event loop here. A connection per wait cost a connect and its handshake, and, since
a pub/sub connection is closed when its wait ends, a reconnect of the cache's next
command too.

The waiting thread and the loop meet through plain callbacks and ``threading.Event``s, not
coroutines run on the loop: a coroutine handed across (a task, ``wait_for``'s timer, two
futures chained) cost as much CPU again as carrying the notification itself.
"""

import asyncio
import contextlib
import functools
import os
import threading
import time
from collections.abc import Callable, Collection

import redis.exceptions
from django.conf import settings

from .listener import SUBSCRIBE_TIMEOUT_SECONDS, TurnListener, turn_listener
from .notify import UNKNOWN
from .subscription import Subscription

# The loop notes the time every _BEAT_SECONDS; a waiter that finds the note older than
# this by _GRACE_SECONDS counts the loop as stuck and polls, as when Redis goes away.
_BEAT_SECONDS = 1.0
_GRACE_SECONDS = 5.0


class _Loop:
    """An event loop running forever in a daemon thread of this process."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.listener: TurnListener | None = None  # the loop's, once a wait has entered it
        self.beat = time.monotonic()
        self.loop.call_soon_threadsafe(self._beat)
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="turn-listener", daemon=True
        )
        self.thread.start()

    def _beat(self) -> None:
        self.beat = time.monotonic()
        self.loop.call_later(_BEAT_SECONDS, self._beat)

    def stuck(self) -> bool:
        """True if the loop has not run its timers for seconds: nothing it owes will come."""
        return time.monotonic() - self.beat > _BEAT_SECONDS + _GRACE_SECONDS


_lock = threading.Lock()
_current: _Loop | None = None


def _process_loop() -> _Loop:
    """This process's loop; a forked child (a gunicorn worker) starts its own."""
    global _current
    with _lock:
        if _current is None or _current.pid != os.getpid():
            _current = _Loop()
        return _current


class _Woken(Subscription):
    """A subscription whose waiter is a thread: the listener wakes it through a
    ``threading.Event``, so that a wait costs no coroutine, task or future on the loop."""

    def __init__(
        self, listener: TurnListener, channel: str, skip: Collection[str] = frozenset()
    ) -> None:
        super().__init__(listener, channel)
        self.woken = threading.Event()
        self.lock = threading.Lock()  # the status and the wake-up change together
        self.skip = skip  # statuses its waiter always waits past: they wake no one

    def told(self, status: str) -> None:
        with self.lock:
            super().told(status)

    def told_lost(self) -> None:
        with self.lock:
            super().told_lost()

    def _untaken(self) -> bool:
        return self.woken.is_set()

    def _wake(self) -> None:
        if self.lost or self.status not in self.skip:
            self.woken.set()

    async def wait(self, timeout: float) -> bool:
        raise TypeError("a thread's subscription is waited on with take_in_thread")

    async def take(self, timeout: float, skip: Collection[str] = ()) -> str | None:
        raise TypeError("a thread's subscription is waited on with take_in_thread")

    def take_in_thread(self, timeout: float, skip: Collection[str]) -> str | None:
        """``Subscription.take`` for the waiting thread. The subscription's own ``skip`` is
        skipped too, whatever ``skip`` says: those statuses never wake it."""
        skip = self.skip.union(skip) if self.skip else skip
        deadline = time.monotonic() + timeout
        while self.woken.wait(max(deadline - time.monotonic(), 0)):
            with self.lock:
                self.woken.clear()
                status, lost = self.status, self.lost
            if lost or status not in skip:
                return status
        return None


class ThreadSubscription:
    """A waiting thread's hold on a turn's channel of the process's listener."""

    def __init__(self, loop: _Loop, subscription: _Woken) -> None:
        self._loop = loop
        self._subscription = subscription

    @property
    def lost(self) -> bool:
        """True once the listener's connection is gone: the waiter polls from then on."""
        return self._subscription.lost

    def wait(self, timeout: float, skip: Collection[str] = ()) -> str | None:
        """Block up to ``timeout`` s for a notification whose status is not in ``skip``;
        return its status, or None if none came.

        Raise ``redis.exceptions.TimeoutError`` if the listener's loop is stuck.
        """
        status = self._subscription.take_in_thread(timeout, skip)
        if status is None:
            if self._loop.stuck():
                raise redis.exceptions.TimeoutError("the turn listener did not answer")
            return None
        return UNKNOWN if self._subscription.lost else status

    def close(self) -> None:
        self._subscription.close()


class _Entering:
    """A thread's subscription, entered and confirmed on the loop by plain callbacks.

    As in ``TurnListener.subscribe``, the confirmation is timed on the loop, from the moment
    the subscription is entered: a busy loop delays it but does not fail it, nor drop a
    connection that is only slow to be read. The thread gives up on its own only if the loop
    never gets to it at all.
    """

    def __init__(self, loop: _Loop, turn_id: object, kind: Callable[..., "_Woken"]) -> None:
        self.owner = loop
        self.turn_id = turn_id
        self.kind = kind
        self.done = threading.Event()
        self.lock = threading.Lock()  # the thread's giving up and the loop's answer exclude
        self.abandoned = False
        self.listener: TurnListener | None = None
        self.subscription: _Woken | None = None
        self.confirmed = False
        self.timed_out = False
        self.error: BaseException | None = None
        self.timer: asyncio.TimerHandle | None = None

    def enter(self) -> None:  # on the loop
        with self.lock:
            if self.abandoned:
                return
            try:
                self.listener = self.owner.listener = turn_listener()
                self.subscription, ready = self.listener.enter(self.turn_id, self.kind)
            except BaseException as exc:  # noqa: BLE001 - raised in the waiting thread
                self.error = exc
                self.done.set()
                return
        self.timer = self.listener.loop.call_later(SUBSCRIBE_TIMEOUT_SECONDS, self.expired, ready)
        ready.add_done_callback(self.answered)

    def answered(self, ready: asyncio.Future) -> None:  # on the loop
        self.timer.cancel()
        with self.lock:
            if self.abandoned or self.done.is_set():
                return
            self.confirmed = (
                not ready.cancelled() and ready.exception() is None and bool(ready.result())
            )
            self.done.set()

    def expired(self, ready: asyncio.Future) -> None:  # on the loop
        with self.lock:
            if self.abandoned or self.done.is_set() or ready.done():
                return  # answered, or about to be
            self.timed_out = True
            self.done.set()
        self.listener.unconfirmed(self.subscription)

    def give_up(self) -> bool:
        """In the thread, when the loop never answered: False if the answer came after all."""
        with self.lock:
            if self.done.is_set():
                return False
            self.abandoned = True
        if self.subscription is not None:
            self.subscription.close()
        return True


def subscribe_from_thread(turn_id: object, skip: Collection[str] = ()) -> ThreadSubscription:
    """Subscribe to a turn's changes from a (WSGI) thread; active on Redis when this returns.

    A notification naming a status in ``skip`` does not wake the thread, and every
    ``wait`` of the subscription waits past those.

    Raise ``redis.exceptions.ConnectionError`` or ``TimeoutError`` if Redis cannot be
    reached.
    """
    loop = _process_loop()
    kind = functools.partial(_Woken, skip=frozenset(skip))
    listener = loop.listener
    if listener is not None and listener.url == settings.REDIS_URL and not loop.stuck():
        # One of this process's turns, its pattern confirmed: entered from here, no hop.
        subscription = listener.enter_own(turn_id, kind)
        if subscription is not None:
            return ThreadSubscription(loop, subscription)
    pending = PendingSubscription(turn_id, skip, loop=loop, kind=kind)
    entering = pending.entering
    if not entering.done.wait(SUBSCRIBE_TIMEOUT_SECONDS + _GRACE_SECONDS) and entering.give_up():
        raise redis.exceptions.TimeoutError("the turn listener did not answer")
    return pending.answer()


class PendingSubscription:
    """A thread's subscription asked of the loop and not waited for: a waiter polling since
    Redis went away asks again without blocking (a Redis that hangs would hold it for
    ``SUBSCRIBE_TIMEOUT_SECONDS`` and more), and looks at each poll with ``result``."""

    def __init__(
        self,
        turn_id: object,
        skip: Collection[str] = (),
        *,
        loop: "_Loop | None" = None,
        kind: Callable[..., "_Woken"] | None = None,
    ) -> None:
        self.loop = loop or _process_loop()
        kind = kind or functools.partial(_Woken, skip=frozenset(skip))
        self.entering = _Entering(self.loop, turn_id, kind)
        self.asked = time.monotonic()
        self.loop.loop.call_soon_threadsafe(self.entering.enter)

    def result(self) -> ThreadSubscription | None:
        """The subscription once confirmed, None while it is not answered yet; raise
        ``redis.exceptions.ConnectionError`` or ``TimeoutError`` if it failed."""
        entering = self.entering
        if not entering.done.is_set():
            waited = time.monotonic() - self.asked
            if waited > SUBSCRIBE_TIMEOUT_SECONDS + _GRACE_SECONDS and entering.give_up():
                raise redis.exceptions.TimeoutError("the turn listener did not answer")
            if not entering.done.is_set():
                return None
        return self.answer()

    def answer(self) -> ThreadSubscription:
        """The subscription once answered (``entering.done``); raise as ``result`` does."""
        entering = self.entering
        if entering.error is not None:
            raise entering.error
        if entering.timed_out:
            raise redis.exceptions.TimeoutError("no subscription confirmed in time")
        if not entering.confirmed:
            entering.subscription.close()
            raise redis.exceptions.ConnectionError("turn notifications are unavailable")
        return ThreadSubscription(self.loop, entering.subscription)

    def close(self) -> None:
        """Give up a subscription not answered yet, or close one answered and not taken.

        Never waits for the entering's lock: a finalizer (a waiter's generator collected as
        garbage) may run this on the loop's thread while the loop holds it; then it is done
        from the loop, later.
        """
        entering = self.entering
        if not entering.lock.acquire(blocking=False):
            with contextlib.suppress(RuntimeError):  # the loop closed: nothing to give up
                self.loop.loop.call_soon_threadsafe(self.close)
            return
        try:
            if not entering.done.is_set():
                entering.abandoned = True
        finally:
            entering.lock.release()
        if entering.subscription is not None:
            entering.subscription.close()
