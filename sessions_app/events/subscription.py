"""What a waiter holds: its ``Subscription`` to a turn's channel, and the listener's record
of a channel (``_Channel``) with the future that says whether Redis confirmed it.

Apart from the listener (``listener``) that keeps them: this is the waiter's side, which
watches hold (``watch``) and a waiting thread's subscription extends (``loop_thread``); it
sends nothing to Redis itself.
"""

import asyncio
from collections.abc import Collection
from typing import TYPE_CHECKING

from ..models import Turn
from .notify import UNKNOWN

if TYPE_CHECKING:  # only named in an annotation: the listener imports this module
    from .listener import TurnListener


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


def _confirmed(ready: asyncio.Future) -> bool:
    """True if Redis confirmed the subscription ``ready`` stands for (from any thread: a
    future's outcome, once set, does not change)."""
    return ready.done() and not ready.cancelled() and ready.exception() is None and ready.result()
