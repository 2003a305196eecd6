"""Interchangeable history stores, chosen by ``HISTORY_STORE`` as Django chooses a session
backend: ``sessions_app.stores.<name>.HistoryStore``."""

import functools

from django.conf import settings
from django.utils.module_loading import import_string

from .base import (
    BaseHistoryStore,
    DuplicateReply,
    ForeignData,
    MessageMissing,
    ReplyOvertaken,
    SeqTaken,
    SessionRef,
    StoredMessage,
    StoreUnavailable,
)

__all__ = (
    "BaseHistoryStore",
    "DuplicateReply",
    "ForeignData",
    "MessageMissing",
    "ReplyOvertaken",
    "SeqTaken",
    "SessionRef",
    "StoreUnavailable",
    "StoredMessage",
    "history_store",
)

NAMES = ("db", "redis", "cached_db")


@functools.lru_cache(maxsize=len(NAMES))
def _store(name: str) -> BaseHistoryStore:
    # A store object holds configuration only, never conversation data: one per process.
    return import_string(f"sessions_app.stores.{name}.HistoryStore")()


def history_store() -> BaseHistoryStore:
    """Return the history store that ``HISTORY_STORE`` names."""
    return _store(settings.HISTORY_STORE)
