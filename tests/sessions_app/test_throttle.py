"""The chat throttle: DRF's sliding window, on Redis in one atomic script."""

import threading

import pytest
from django.core.cache import caches
from django_redis.cache import RedisCache
from redis import Redis
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from sessions_app.apis.common import ChatRateThrottle

from ..factories import UserFactory


def _request(user) -> Request:
    request = Request(APIRequestFactory().post("/"))
    request.user = user
    return request


def _check(user, now: float) -> tuple[bool, float | None]:
    throttle = ChatRateThrottle()
    throttle.timer = lambda: now
    allowed = throttle.allow_request(_request(user), None)
    return allowed, None if allowed else throttle.wait()


# Two a minute. At 1060 the first post is exactly a period old: DRF drops a time that old,
# so a third post is admitted there. A minute of the timeline is not a real minute, but the
# key lives a real minute: nothing fades under the test.
TIMELINE = (1000.0, 1006.0, 1012.0, 1030.0, 1060.0, 1069.0, 1078.0, 1180.0, 1180.0, 1180.0)


@pytest.mark.django_db
def test_on_redis_it_admits_and_refuses_as_drf_does(settings):
    """The same posts at the same moments: the same answers and the same Retry-After as
    DRF's own throttle (the embedded default's, on the in-process cache)."""
    settings.CHAT_THROTTLE_RATE = "2/min"
    assert isinstance(caches["default"], RedisCache)
    on_redis = [_check(user, now) for user in [UserFactory()] for now in TIMELINE]

    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    import rest_framework.throttling as drf

    drf.SimpleRateThrottle.cache = caches["default"]  # DRF binds its cache at import
    try:
        drf_own = [_check(user, now) for user in [UserFactory()] for now in TIMELINE]
    finally:
        drf.SimpleRateThrottle.cache = drf.default_cache

    assert on_redis == drf_own
    assert [allowed for allowed, _ in on_redis] == [
        True, True, False, False, True, True, False, True, True, False
    ]  # fmt: skip


@pytest.mark.django_db
def test_the_times_are_kept_under_the_cache_s_prefix_for_one_period(settings):
    from django.core.cache import cache
    from django_redis import get_redis_connection

    settings.CHAT_THROTTLE_RATE = "3/min"
    user = UserFactory()
    assert ChatRateThrottle().allow_request(_request(user), None)
    key = cache.make_key(f"throttle_chat_{user.pk}:times")
    assert key.startswith(cache.make_key(""))  # the prefix and version of the cache's keys
    redis = get_redis_connection("default")
    assert redis.llen(key) == 1 and 0 < redis.ttl(key) <= 60


@pytest.mark.django_db
def test_posts_of_one_user_at_once_never_pass_the_rate(settings):
    """DRF's own reads the times and writes them back: two posts at once could both take
    the last free place. The script admits exactly the rate, however many race for it."""
    settings.CHAT_THROTTLE_RATE = "5/min"
    user = UserFactory()
    start, admitted = threading.Barrier(24), []

    def post() -> None:
        start.wait()
        admitted.append(ChatRateThrottle().allow_request(_request(user), None))

    threads = [threading.Thread(target=post) for _ in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(admitted) == [False] * 19 + [True] * 5


@pytest.mark.django_db
def test_a_check_is_one_round_trip_to_redis(settings, monkeypatch):
    settings.CHAT_THROTTLE_RATE = "100/min"
    user = UserFactory()
    ChatRateThrottle().allow_request(_request(user), None)  # the script is loaded now
    sent = []
    execute = Redis.execute_command

    def counted(self, *args, **options):
        sent.append(args[0])
        return execute(self, *args, **options)

    monkeypatch.setattr(Redis, "execute_command", counted)
    assert ChatRateThrottle().allow_request(_request(user), None)
    assert sent == ["EVALSHA"]
