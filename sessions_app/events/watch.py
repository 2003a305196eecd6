"""Waiting under ASGI: the asynchronous watch of a turn (``AsyncTurnWatch``).

It awaits notifications from the event loop's listener (``listener``); only its re-reads
take a thread of the process's pool (``threads``), briefly.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection

import redis.exceptions
from django.conf import settings

from ..models import Turn
from .listener import turn_listener
from .notify import POLL_INTERVAL_SECONDS, RESUBSCRIBE_SECONDS, UNKNOWN
from .subscription import Subscription
from .threads import in_thread

logger = logging.getLogger(__name__)


class AsyncTurnWatch:
    """``turn_watch`` for the event loop: the turn now, then on each change, until it ends.

    ``await start()`` subscribes and then reads the turn (so no change slips by unseen) and
    returns it; if Redis cannot be reached it raises, unless ``poll_if_down``. A watch of a
    turn that cannot change yet (one not queued) calls ``subscribe()`` alone instead, and
    needs no first read. Iterating yields the turn at each change, None on an idle ``tick``
    (after a re-read that found nothing new), and stops when the turn ends or after
    ``timeout``. Every read runs ``refresh`` on the database pool; nothing holds a thread in
    between. A notification naming a status in ``unread`` is not read (a wait has nothing
    to answer before the turn ends); one naming another status is read with
    ``refresh_told`` if given (a wait told of the end reads the turn whole at once, where
    ``refresh`` would check its status first). If Redis goes away mid-wait, the watch
    re-reads on a timer instead. ``close`` (any thread, idempotent) ends the subscription.
    """

    def __init__(
        self,
        *,
        turn: Turn,
        refresh: Callable[[Turn], Turn],
        timeout: float,
        tick: float = 15.0,
        poll_if_down: bool = False,
        unread: Collection[str] = (),
        refresh_told: Callable[[Turn], Turn] | None = None,
    ) -> None:
        self.turn = turn
        self.unread = unread
        self.refresh = refresh
        self.refresh_told = refresh_told or refresh
        self.deadline = time.monotonic() + timeout
        self.tick = tick
        self.poll_if_down = poll_if_down
        self.subscription: Subscription | None = None
        self.closed = False
        self._last_seen = (turn.status, turn.updated_at)
        self._last_event = time.monotonic()
        self._resubscribe_at = time.monotonic() + RESUBSCRIBE_SECONDS
        self._resubscribing: asyncio.Future | None = None
        self._renewal: Subscription | None = None
        self._reread = False

    async def start(self) -> Turn:
        await self.subscribe()
        return await self.read()

    async def subscribe(self) -> None:
        """Subscribe to the turn's changes through the event loop's listener; read nothing.

        Active on Redis when this returns. If Redis cannot be reached, raise, unless
        ``poll_if_down``: then the watch polls.
        """
        if not settings.REDIS_URL:
            return
        try:
            self.subscription = await turn_listener().subscribe(self.turn.pk)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            if not self.poll_if_down:
                raise
            logger.warning("turn notifications unavailable; polling turn %s", self.turn.pk)

    async def read(self) -> Turn:
        """Read the turn now (``refresh``) and return it; iterating yields what changes after."""
        self.turn = await in_thread(self.refresh, self.turn)
        self._last_seen = (self.turn.status, self.turn.updated_at)
        self._last_event = time.monotonic()
        return self.turn

    def __aiter__(self) -> "AsyncTurnWatch":
        return self

    async def __anext__(self) -> Turn | None:
        while not self.turn.is_finished and not self.closed:
            changed = await self._next_change()
            if changed is None:
                break
            said = self.subscription.status if changed and self.subscription else UNKNOWN
            if self._reread:  # subscribed again: read once, whatever the subscription heard
                said, self._reread = UNKNOWN, False
            if said in self.unread:
                continue
            self.turn = await in_thread(self.refresh_told if said else self.refresh, self.turn)
            seen = (self.turn.status, self.turn.updated_at)
            if seen != self._last_seen:
                self._last_seen = seen
                return self.turn
            if not changed:
                return None
        raise StopAsyncIteration

    async def _next_change(self) -> bool | None:
        """True on a notification (or a poll), False on an idle tick, None past the deadline."""
        now = time.monotonic()
        remaining = self.deadline - now
        if remaining <= 0:
            return None
        subscription = self.subscription
        if subscription is None or subscription.lost:
            await asyncio.sleep(min(POLL_INTERVAL_SECONDS, remaining))
            if settings.REDIS_URL:
                self._resubscribe_step(subscription)
            if time.monotonic() - self._last_event < self.tick:
                return True
            self._last_event = time.monotonic()
            return False  # a tick while polling too: the stream's keep-alive is due
        until_tick = max(self.tick - (now - self._last_event), 0)
        if await subscription.wait(min(until_tick, remaining)):
            self._last_event = time.monotonic()
            return True  # a lost subscription wakes its waiter too: it re-reads, then polls
        if time.monotonic() >= self.deadline:
            return None
        self._last_event = time.monotonic()
        return False

    def _resubscribe_step(self, lost: Subscription | None) -> None:
        # Polling since Redis went away: every RESUBSCRIBE_SECONDS ask for a subscription in
        # a task of its own, not awaited (a Redis that hangs would hold the watch for
        # SUBSCRIBE_TIMEOUT_SECONDS: no read, no keep-alive); once it is there, the next
        # read looks at what changed before it, and notifications follow.
        task = self._resubscribing
        if task is None:
            if time.monotonic() >= self._resubscribe_at:
                self._resubscribing = asyncio.ensure_future(self._renewed())
            return
        if not task.done():
            return
        self._resubscribing = None
        self._resubscribe_at = time.monotonic() + RESUBSCRIBE_SECONDS
        renewed = None if task.cancelled() else task.result()
        if renewed is not None:
            if lost is not None:
                lost.close()
            self.subscription = renewed
            self._renewal = None
            if self.closed:  # closed meanwhile, from another thread, after it looked
                renewed.close()
            self._reread = True  # what changed while it was polling, whatever it is told
            logger.info("turn notifications back; turn %s", self.turn.pk)

    async def _renewed(self) -> Subscription | None:
        try:
            renewed = await turn_listener().subscribe(self.turn.pk)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            return None
        self._renewal = renewed
        if self.closed:  # closed meanwhile (from any thread): this one goes too
            renewed.close()
            return None
        return renewed

    def close(self) -> None:
        self.closed = True
        if self.subscription is not None:
            self.subscription.close()
        if self._renewal is not None:  # asked for, and not taken yet
            self._renewal.close()
        if (task := self._resubscribing) is not None:
            with contextlib.suppress(RuntimeError):  # its loop closed: the task is gone too
                task.get_loop().call_soon_threadsafe(task.cancel)
