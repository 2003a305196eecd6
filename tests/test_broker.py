"""The Redis broker transport builds one Redis client per channel, not one per command.

Against the real Redis (this test's database): messages published, delivered, recorded as
unacknowledged and acknowledged through ``core.broker.Transport`` arrive intact and leave
nothing behind, while the channel builds a single ``redis.Redis``; kombu's own transport,
measured the same way, builds one per command, which is what the subclass exists to stop.
"""

import uuid
from collections.abc import Iterator

import pytest
from celery.utils.collections import ConfigurationView
from kombu import Connection
from kombu.transport import redis as kombu_redis
from redis import Redis

from bench.broker_clients import QUEUE, round_trip
from core import broker
from isolation_site.celery import app as celery_app
from isolation_site.settings import broker_transport
from sessions_app.tasks import run_turn

from .support import broker_at

MESSAGES = 5


@pytest.fixture
def redis_url(settings) -> Iterator[str]:
    yield settings.REDIS_URL
    client = Redis.from_url(settings.REDIS_URL)
    client.delete(QUEUE, "unacked", "unacked_index", f"_kombu.binding.{QUEUE}")
    client.close()


def test_one_client_per_channel_and_nothing_left_unacknowledged(redis_url):
    trip = round_trip(redis_url, broker.Transport, MESSAGES)
    assert sorted(body["n"] for body in trip.received) == list(range(MESSAGES))
    # The delivery's record in the unacknowledged index is gone with its ack.
    redis = Redis.from_url(redis_url)
    assert redis.hlen("unacked") == 0 and redis.zcard("unacked_index") == 0
    assert redis.llen(QUEUE) == 0
    assert trip.built <= 1
    redis.close()


def test_kombus_own_transport_builds_a_client_per_command(redis_url):
    # The cost the subclass removes: a publish, a delivery and an ack each build one. If a
    # kombu release stops doing so, this fails, and core/broker.py has had its day.
    trip = round_trip(redis_url, kombu_redis.Transport, MESSAGES)
    assert len(trip.received) == MESSAGES
    assert trip.built >= 3 * MESSAGES


def test_a_closed_channels_next_client_is_on_its_new_pool(redis_url):
    with Connection(redis_url, transport=broker.Transport) as conn:
        channel = conn.channel()
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as again:
            assert first is again and first.ping()
        old_pool = channel.pool
        channel._disconnect_pools()  # what closing the channel does to its pools
        with channel.conn_or_acquire() as after:
            assert after.connection_pool is channel.pool is not old_pool
            assert after.ping()
        given = Redis.from_url(redis_url)
        with channel.conn_or_acquire(given) as client:
            assert client is given
        given.close()
        channel.close()


def test_the_settings_choose_it_for_plain_redis_urls_only():
    assert broker_transport("redis://127.0.0.1:6379/0") == "core.broker:Transport"
    assert broker_transport("redis://a:6379/0", "", "redis://b:6379/0") == "core.broker:Transport"
    # kombu turns TLS on for a rediss:// URL by its transport's name: that stays kombu's.
    assert broker_transport("rediss://cache.example:6380/0") is None
    assert broker_transport("amqp://guest:guest@127.0.0.1:5672//") is None
    assert broker_transport("memory://") is None
    # One transport serves the read and write URLs too (Celery reads them from the
    # environment): a write URL of another kind keeps every URL on its scheme's transport.
    assert broker_transport("redis://127.0.0.1:6379/0", "", "amqp://127.0.0.1//") is None
    assert broker_transport() is None


def test_celery_publishes_and_consumes_through_it_on_redis(settings):
    # The suite's settings load with a redis:// broker, as production's do by default.
    assert settings.CELERY_BROKER_TRANSPORT == "core.broker:Transport"
    assert celery_app.conf.broker_transport == "core.broker:Transport"
    with broker_at(settings, settings.REDIS_URL):
        for connect in (celery_app.connection_for_write, celery_app.connection_for_read):
            with connect() as conn:
                assert isinstance(conn.transport, broker.Transport)
    amqp = "amqp://guest:guest@127.0.0.1:5672//"
    with broker_at(settings, amqp), celery_app.connection_for_write() as conn:
        assert not isinstance(conn.transport, kombu_redis.Transport)


def test_a_publish_reads_only_celery_settings_that_django_has(settings, monkeypatch):
    # Celery looks its settings up through Django's on every publish; one Django lacks costs
    # a handful of raised exceptions (several times a present one's lookup), once per turn.
    read: list[str] = []
    lookup = ConfigurationView.__getitem__

    def recorded(self, key):
        read.append(key)
        return lookup(self, key)

    redis = Redis.from_url(settings.REDIS_URL)
    with broker_at(settings, settings.REDIS_URL):
        run_turn.delay(str(uuid.uuid4()), 1, str(uuid.uuid4()))  # the pools, built once
        monkeypatch.setattr(ConfigurationView, "__getitem__", recorded)
        run_turn.delay(str(uuid.uuid4()), 1, str(uuid.uuid4()))
        monkeypatch.undo()
    redis.delete("celery")
    redis.close()
    assert read, "the publish read no setting: the recording missed it"
    absent = sorted({key for key in read if not hasattr(settings, f"CELERY_{key.upper()}")})
    assert absent == []
