"""Every write of conversation data: sessions, accepted messages, turn lifecycle.

Messages go to the configured history store; sessions and turns are rows. Nothing here
enqueues a task (``tasks`` does, and calls in here): no import circle. One module per part
of a conversation's life; callers import the services from here.
"""

from .accept import message_accept, turn_discard
from .common import STALLED_DETAIL, SUPPRESSED_NOTICE, withheld_notice
from .reply import turn_complete, turn_deliver, turn_release_withheld
from .sessions import (
    account_erase_on_delete,
    account_sessions_erase,
    chat_session_create,
    chat_session_delete,
    chat_session_purge_expired,
)
from .turns import turn_claim, turn_fail, turn_mark_unconfirmed, turn_requeue, turn_sweep_stale

__all__ = [
    "STALLED_DETAIL",
    "SUPPRESSED_NOTICE",
    "withheld_notice",
    "account_erase_on_delete",
    "account_sessions_erase",
    "chat_session_create",
    "chat_session_delete",
    "chat_session_purge_expired",
    "message_accept",
    "turn_claim",
    "turn_complete",
    "turn_deliver",
    "turn_discard",
    "turn_fail",
    "turn_mark_unconfirmed",
    "turn_release_withheld",
    "turn_requeue",
    "turn_sweep_stale",
]
