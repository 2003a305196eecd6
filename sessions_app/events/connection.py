"""The listener's connection to Redis: connect, send its commands in order, read and fan out
what comes, and let the connection go (lost, or retired).

``ListenerConnection`` is the half of ``TurnListener`` (``listener``) that talks to Redis,
apart from the half that keeps which waiters wait on which channel; a listener is one object,
so the two share its state (see the class).
"""

import asyncio
import contextlib
import logging
import socket

import redis.asyncio
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from .notify import _status

# The listener's one log, whichever of its modules writes: its level is set by this name.
logger = logging.getLogger("sessions_app.events.listener")


def _keepalive() -> dict[int, int]:
    """Idle 10 s, then a probe every 3 s, 3 unanswered: gone (where the platform has them)."""
    wanted = (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 3), ("TCP_KEEPCNT", 3))
    return {
        option: value
        for name, value in wanted
        if (option := getattr(socket, name, None)) is not None
    }


class ListenerRetired(redis.exceptions.ConnectionError):
    """A listener's ``REDIS_URL`` is no longer the setting's: its connection is let go, and
    it connects no more (to its callers, notifications are unavailable)."""

    def __init__(self) -> None:
        super().__init__("REDIS_URL names another server now")


class ListenerConnection:
    """``TurnListener``'s connection to Redis, as a base of that class only.

    It uses the state ``TurnListener.__init__`` sets up (``url``, ``loop``, ``channels``,
    ``_confirmations``, ``_pubsub``, ``_reader``, ``_lock``, ``_tasks``, ``_own``,
    ``_retired``, ``_guard``) and calls back its ``_pattern_refused``.
    """

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

    async def _command(self, name: str, channel: str, ready: asyncio.Future | None = None) -> None:
        async with self._lock:
            if ready is not None and ready.done():
                # Answered before its turn came: a connection lost meanwhile (``_lose``
                # told its waiters and forgot the channel) or a refused pattern. Sent on
                # the next connection, it would hold a channel no one waits on, for good.
                return
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
