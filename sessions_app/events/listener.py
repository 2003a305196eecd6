"""Waiting under ASGI: one listener per event loop, and the subscriptions of its waiters.

A waiter awaits on the event loop (``watch``); only its re-reads take a thread, briefly
(``threads``).
"""

import asyncio
import contextlib
import logging
import socket
import threading
import weakref
from collections import deque
from collections.abc import Callable, Collection

import redis.asyncio
import redis.exceptions
from django.conf import settings
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..models import Turn
from .notify import UNKNOWN, _channel, _status, own_pattern, own_turn

logger = logging.getLogger(__name__)


# Under ASGI: one listener per event loop ----------------------------------------------------
# A wait awaits a notification on the event loop instead of holding a thread: one Redis
# pub/sub connection per process (per event loop) carries every channel, subscribed once
# however many waiters share it, and fans each notification out to them. Database work
# (each re-read of a turn) runs on a bounded pool of threads and gives it straight back.

SUBSCRIBE_TIMEOUT_SECONDS = 5.0


def _keepalive() -> dict[int, int]:
    """Idle 10 s, then a probe every 3 s, 3 unanswered: gone (where the platform has them)."""
    wanted = (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 3), ("TCP_KEEPCNT", 3))
    return {
        option: value
        for name, value in wanted
        if (option := getattr(socket, name, None)) is not None
    }


class Subscription:
    """One waiter's hold on a turn's channel: ``changed`` is set on every notification,
    ``status`` says the newest one's status (``UNKNOWN`` if it did not say).

    ``lost`` turns true if the listener's connection is gone: the waiter polls from then
    on. ``close`` is idempotent and may be called from any thread.
    """

    def __init__(self, listener: "TurnListener", channel: str) -> None:
        self.listener = listener
        self.channel = channel
        self.changed = asyncio.Event()
        self.status = UNKNOWN
        self.lost = False
        self.closed = False

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for a notification (or the loss); True if one came."""
        try:
            await asyncio.wait_for(self.changed.wait(), timeout)
        except TimeoutError:
            return False
        self.changed.clear()
        return True

    async def take(self, timeout: float, skip: Collection[str] = ()) -> str | None:
        """``wait``, then return the status it was told (taken in the same step), or None.

        A status in ``skip`` is taken and waited past, within the same ``timeout``: a
        waiter with nothing to do on it is not woken for it (a thread wakes, a notification
        at a time, across the listener's loop and back).
        """
        deadline = asyncio.get_running_loop().time() + timeout
        while await self.wait(timeout):
            if self.lost or self.status not in skip:
                return self.status
            timeout = deadline - asyncio.get_running_loop().time()
        return None

    def told(self, status: str) -> None:
        """A notification came. Until the waiter takes it, an end (or an unknown status)
        is not overwritten by a later "pending" or "running": a redelivered run's claim
        published after another run's end must not hide that end from a ``?wait``."""
        if not (self._untaken() and self.status not in Turn.IN_FLIGHT):
            self.status = status
        self._wake()

    def told_lost(self) -> None:
        """The listener's connection is gone: the waiter polls from now on."""
        self.lost = True
        self.status = UNKNOWN
        self._wake()

    # What a waiter on another thread overrides (``loop_thread``): how it is woken, and
    # whether a notification is still untaken.
    def _untaken(self) -> bool:
        return self.changed.is_set()

    def _wake(self) -> None:
        self.changed.set()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        loop = self.listener.loop
        if loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        # Never waits for the listener's lock: a subscription can be closed by a finalizer
        # (a waiter's generator collected as garbage) run in a thread that holds it.
        if running is loop:
            if not self.listener.drop(self, blocking=False):
                loop.call_soon(self.listener.drop, self)
        elif not self.listener.drop_own(self):
            loop.call_soon_threadsafe(self.listener.drop, self)


class _Channel:
    def __init__(self, ready: asyncio.Future, *, own: bool = False) -> None:
        self.subscriptions: set[Subscription] = set()
        self.ready = ready  # True once Redis confirmed the subscription, False if it is lost
        self.own = own  # a turn of this process: under its pattern, not subscribed alone


class ListenerRetired(redis.exceptions.ConnectionError):
    """A listener's ``REDIS_URL`` is no longer the setting's: its connection is let go, and
    it connects no more (to its callers, notifications are unavailable)."""

    def __init__(self) -> None:
        super().__init__("REDIS_URL names another server now")


class TurnListener:
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
        self._later(self._command(command, name))
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

    def retire(self) -> None:
        """On the loop: let go of the connection of a listener that ``REDIS_URL`` no longer
        names (settings changed, as tests change them); its waiters poll, as on a loss, and
        it connects no more: whoever still holds it is told notifications are unavailable."""
        self._retired = True
        self._later(self._retired_now())

    async def _retired_now(self) -> None:
        async with self._lock:
            if self._pubsub is not None or self.channels:
                await self._lose(ListenerRetired())

    def _later(self, coroutine) -> None:
        task = self.loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _command(self, name: str, channel: str) -> None:
        async with self._lock:
            try:
                if name in ("subscribe", "psubscribe"):
                    pubsub = await self._connected()
                    await getattr(pubsub, name)(channel)
                    if self._reader is None:  # reads once something is subscribed
                        self._reader = self.loop.create_task(self._read(pubsub))
                elif self._pubsub is not None:
                    await self._pubsub.unsubscribe(channel)
            except Exception as exc:  # noqa: BLE001 - every waiter falls back to polling
                await self._lose(exc)

    async def _drop_unanswering(self) -> None:
        async with self._lock:
            if self._pubsub is not None:
                await self._lose(redis.exceptions.TimeoutError("no subscription confirmed"))

    async def _connected(self):
        if self._retired:
            raise ListenerRetired()
        if self._pubsub is None:
            # TCP keep-alive probes find a peer that vanished without closing the connection
            # within about 20 s: the read fails and every waiter polls instead.
            client = redis.asyncio.Redis.from_url(
                self.url,
                socket_connect_timeout=2,
                socket_keepalive=True,
                socket_keepalive_options=_keepalive(),
                retry=Retry(NoBackoff(), 0),
            )
            self._pubsub = client.pubsub()
        return self._pubsub

    async def _read(self, pubsub) -> None:
        try:
            while True:
                try:
                    message = await pubsub.get_message(timeout=None)
                except redis.exceptions.NoPermissionError:
                    if not self._pattern_refused():
                        raise
                    continue  # the connection itself is fine
                if message is not None:
                    self._dispatch(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            if pubsub is self._pubsub:
                async with self._lock:
                    await self._lose(exc)

    def _dispatch(self, message: dict) -> None:
        channel = message["channel"]
        channel = channel.decode() if isinstance(channel, bytes) else channel
        kind = message["type"]
        if kind in ("subscribe", "psubscribe"):  # a pattern's confirmation names the pattern
            waiting = self._confirmations.get(channel)
            if waiting:
                ready = waiting.popleft()
                if not waiting:
                    del self._confirmations[channel]
                if not ready.done():
                    ready.set_result(True)
        elif kind in ("message", "pmessage"):
            with self._guard:
                entry = self.channels.get(channel)
                subscriptions = tuple(entry.subscriptions) if entry else ()
            if subscriptions:
                status = _status(message["data"])
                for subscription in subscriptions:
                    subscription.told(status)

    async def _lose(self, exc: BaseException) -> None:
        """The connection is gone: every waiter polls; the next subscriber reconnects."""
        if isinstance(exc, ListenerRetired):  # let go on purpose: nothing is wrong
            logger.info("turn listener of a former REDIS_URL retired; its waiters poll")
        else:
            logger.warning("turn notifications lost (%s); waiters poll", exc.__class__.__name__)
        pubsub, self._pubsub = self._pubsub, None
        with self._guard:
            self._own = None  # the next connection subscribes the pattern anew
            lost, self.channels = self.channels, {}
        for entry in lost.values():
            for subscription in entry.subscriptions:
                subscription.told_lost()
            if not entry.ready.done():
                entry.ready.set_result(False)
        for waiting in self._confirmations.values():
            for ready in waiting:
                if not ready.done():
                    ready.set_result(False)
        self._confirmations.clear()
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()


def _confirmed(ready: asyncio.Future) -> bool:
    """True if Redis confirmed the subscription ``ready`` stands for (from any thread: a
    future's outcome, once set, does not change)."""
    return ready.done() and not ready.cancelled() and ready.exception() is None and ready.result()


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
