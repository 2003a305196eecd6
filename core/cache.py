"""The Redis connection behind Django's default cache, for the steps that run a script."""

from django.core.cache import caches
from django_redis import get_redis_connection
from django_redis.cache import RedisCache
from redis import Redis


def cache_redis() -> Redis | None:
    """The Redis connection behind the default cache, or None for any other cache (the
    embedded default's in-process one, where no other process races a reader or a writer)."""
    return get_redis_connection("default") if isinstance(caches["default"], RedisCache) else None
