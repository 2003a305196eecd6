"""The fingerprint index: keyed feature hashes -> the (user, session) pairs that introduced them.

Two interchangeable backends with one contract: ``RedisIndex`` (the app's only Redis
code) and ``DbIndex`` (the embedded default, a table shared by every process using the
database). Both raise ``IndexUnavailable`` when their store is down, never its own error.

One module per backend (``redis``, ``db``) and what both share (``base``); callers import
from here.
"""

from .base import MAX_RECORDS, IndexUnavailable
from .db import DbIndex
from .redis import GENERATIONS, LISTED_SINCE, Layout, RedisIndex

__all__ = [
    "GENERATIONS",
    "LISTED_SINCE",
    "MAX_RECORDS",
    "DbIndex",
    "IndexUnavailable",
    "Layout",
    "RedisIndex",
]
