"""Turn notifications: what a waiter does when Redis is not there."""

import uuid

import pytest
import redis

from sessions_app import events


@pytest.fixture
def dead_redis(settings, private_redis):
    settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": private_redis.url}}
    settings.REDIS_URL = private_redis.url
    private_redis.kill()
    return private_redis


def test_a_waiter_falls_back_to_polling_when_redis_is_down(dead_redis):
    changes = events.turn_changes(turn_id=uuid.uuid4(), timeout=0.6, poll_if_down=True)
    ticks = list(changes)
    assert ticks[0] is False  # "subscribed": the caller may read the turn now
    assert ticks[1:] and all(ticks[1:])  # then a re-read on every poll until the timeout


def test_the_event_stream_is_told_when_redis_is_down(dead_redis):
    changes = events.turn_changes(turn_id=uuid.uuid4(), timeout=0.6)
    with pytest.raises(redis.exceptions.ConnectionError):
        next(changes)
