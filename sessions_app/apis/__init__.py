"""DRF views, one per operation: parse input, call one service or selector, serialize."""

from .accounts import AuthTokenApi, SessionDetailApi, SessionListCreateApi
from .common import ChatRateThrottle
from .messages import MessageListCreateApi
from .stateless_chat import StatelessChatApi
from .turns import TurnDetailApi, TurnEventsApi

__all__ = (
    "AuthTokenApi",
    "ChatRateThrottle",
    "MessageListCreateApi",
    "SessionDetailApi",
    "SessionListCreateApi",
    "StatelessChatApi",
    "TurnDetailApi",
    "TurnEventsApi",
)
