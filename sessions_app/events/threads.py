"""The process's pool of threads for database work from the event loop (``in_thread``).

An async view awaits on the event loop; its database work (each re-read of a turn) runs on a
bounded pool of threads, and the thread goes back to the pool after each call.
"""

import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections

T = TypeVar("T")


_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _database_threads() -> ThreadPoolExecutor:
    """The process's pool for database work of async views (``ASGI_THREADS``, default 8)."""
    global _executor
    with _executor_lock:
        if _executor is None:
            size = settings.ASGI_THREADS
            _executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="asgi-db")
        return _executor


async def in_thread(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` on a thread of the process's pool and await it; the thread goes back after.

    As around a request, unusable or expired database connections are dropped before and
    after: a pool thread's connection would otherwise never be health-checked (and, with
    ``CONN_MAX_AGE=0``, never closed).
    """
    pool = _database_threads()
    call = sync_to_async(_on_fresh_connections, thread_sensitive=False, executor=pool)
    return await call(functools.partial(fn, *args, **kwargs))


def _on_fresh_connections(fn: Callable[[], T]) -> T:
    close_old_connections()
    try:
        return fn()
    finally:
        close_old_connections()
