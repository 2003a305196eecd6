"""What the views share: path parameters, limits, the chat throttle."""

import math

from django.conf import settings
from django.core.cache import cache
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from redis.commands.core import Script
from rest_framework.throttling import UserRateThrottle

from core.api import (
    ErrorSerializer,
)
from core.cache import cache_redis

MAX_WAIT_SECONDS = 60
STREAM_MAX_SECONDS = 600
KEEPALIVE_SECONDS = 15

# Ids are UUIDs; anything else is simply an id that does not exist (404).
SESSION_ID = OpenApiParameter("session_id", OpenApiTypes.UUID, OpenApiParameter.PATH)
TURN_ID = OpenApiParameter("turn_id", OpenApiTypes.UUID, OpenApiParameter.PATH)
# A page number past the last page (or not a number) is 404, as DRF's paginator answers.
PAGE_NOT_FOUND = OpenApiResponse(ErrorSerializer, description="No such object, or no such page.")


# DRF's sliding window, on Redis in one script: one round trip, and atomic. DRF's own reads
# a user's request times and writes them back, two round trips on every post (the largest
# of the web's own steps in a turn, bench/turn_profile.py), between which two posts of one
# user can both take the last free place. The times are kept as DRF keeps them, newest
# first; those older than the period are dropped from the end. Admitted: 1. Refused: how
# many times are kept and the oldest, all DRF's ``wait`` reads to reckon Retry-After.
_ADMIT = Script(
    None,  # no client of its own: each call names the connection it runs on
    b"""
    local cutoff = tonumber(ARGV[1]) - tonumber(ARGV[2])
    while true do
        local oldest = redis.call('LINDEX', KEYS[1], -1)
        if not oldest or tonumber(oldest) > cutoff then break end
        redis.call('RPOP', KEYS[1])
    end
    local kept = redis.call('LLEN', KEYS[1])
    if kept >= tonumber(ARGV[3]) then
        return {kept, redis.call('LINDEX', KEYS[1], -1)}
    end
    redis.call('LPUSH', KEYS[1], ARGV[1])
    redis.call('EXPIRE', KEYS[1], ARGV[4])
    return 1
    """,
)


class ChatRateThrottle(UserRateThrottle):
    """Messages a user may post, over all sessions and the stateless endpoint."""

    scope = "chat"

    def get_rate(self) -> str:
        # Read at request time so the setting can change without re-importing DRF.
        return settings.CHAT_THROTTLE_RATE

    def allow_request(self, request, view) -> bool:
        """DRF's check; on Redis in one atomic round trip (``_ADMIT``), elsewhere DRF's own."""
        if self.rate is None or (connection := cache_redis()) is None:
            return super().allow_request(request, view)  # the embedded default's cache
        self.key = self.get_cache_key(request, view)
        if self.key is None:
            return True
        self.now = self.timer()
        answer = _ADMIT(
            keys=[cache.make_key(f"{self.key}:times")],
            args=(repr(self.now), self.duration, self.num_requests, math.ceil(self.duration)),
            client=connection,
        )
        if answer == 1:
            return True
        kept, oldest = answer  # the oldest is None when none are kept (a rate of 0)
        # A stand-in for the times: ``wait`` reads only how many and the oldest.
        self.history = [float(oldest)] * int(kept) if kept else []
        return self.throttle_failure()


def nothing() -> None:
    return None
