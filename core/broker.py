"""Celery's Redis broker transport, with one Redis client per channel instead of per command.

kombu's Redis channel builds a new ``redis.Redis`` for every publish, every delivery it
records as unacknowledged and every acknowledgement (``Channel.conn_or_acquire``). Each
build copies redis-py's table of some 170 response callbacks into a case-insensitive dict:
about 0.18 ms of CPU, as much as the command it then sends, paid once by the web process
and twice by the worker on every turn. A ``redis.Redis`` is safe to share between threads
(each command borrows a connection from its pool), so the channel keeps one per pool and
everything else (the pools, the BRPOP and pub/sub clients, the visibility timeout, the
restore of unacknowledged tasks) stays kombu's.

``settings.CELERY_BROKER_TRANSPORT`` names this class for ``redis://`` broker URLs; RabbitMQ,
the in-memory broker and ``rediss://`` (whose TLS kombu turns on by the transport's name)
keep their own transports.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import redis
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _shared_client: redis.Redis | None = None

    @contextmanager
    def conn_or_acquire(self, client: redis.Redis | None = None) -> Iterator[redis.Redis]:
        if client:
            yield client
            return
        shared = self._shared_client
        # A closed channel drops its pool and the next use builds a new one: follow it.
        if shared is None or shared.connection_pool is not self.pool:
            shared = self._shared_client = self._create_client()
        yield shared


class Transport(kombu_redis.Transport):
    Channel = Channel
