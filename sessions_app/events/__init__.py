"""Turn change notifications: Redis pub/sub when Redis is configured; and what waits on them.

``?wait`` and the event stream wake on these instead of polling the database in a loop.
The payload carries only the turn's new status; readers re-fetch the turn through the owner
check, so a notification can never carry conversation data to the wrong reader.

One listener connection per process fans notifications out. Under ASGI a waiter awaits on
the event loop (``AsyncTurnWatch``), and only the re-reads take a thread, briefly. Under WSGI
a waiter holds its thread (``turn_changes``, ``turn_watch``), within the process's wait
budget (``wait_budget_take``), and the listener runs on an event loop of its own thread
(``loop_thread``).
"""

from .listener import SUBSCRIBE_TIMEOUT_SECONDS, TurnListener, turn_listener
from .notify import (
    POLL_INTERVAL_SECONDS,
    UNKNOWN,
    never,
    new_turn_id,
    publish_turn_changed,
    turn_changes,
    turn_watch,
)
from .slots import (
    WAIT_BUDGET_RETRY_AFTER_SECONDS,
    WAIT_RETRY_AFTER_SECONDS,
    WAIT_SLOT_TTL_SECONDS,
    TooManyWaits,
    WaitBudgetSpent,
    wait_budget_size,
    wait_budget_take,
    wait_budget_warning,
    wait_slot_acquire,
)
from .subscription import Subscription
from .threads import in_thread
from .watch import AsyncTurnWatch

__all__ = (
    "POLL_INTERVAL_SECONDS",
    "SUBSCRIBE_TIMEOUT_SECONDS",
    "WAIT_BUDGET_RETRY_AFTER_SECONDS",
    "WAIT_RETRY_AFTER_SECONDS",
    "WAIT_SLOT_TTL_SECONDS",
    "AsyncTurnWatch",
    "Subscription",
    "UNKNOWN",
    "TooManyWaits",
    "TurnListener",
    "WaitBudgetSpent",
    "in_thread",
    "never",
    "new_turn_id",
    "publish_turn_changed",
    "turn_changes",
    "turn_listener",
    "turn_watch",
    "wait_budget_size",
    "wait_budget_take",
    "wait_budget_warning",
    "wait_slot_acquire",
)
