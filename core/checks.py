"""System checks for settings that are valid alone but wrong together."""

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.checks import CheckMessage, Error, Tags, Warning, register


@register(Tags.security, deploy=True)
def proxy_without_num_proxies(**kwargs: object) -> list[CheckMessage]:
    """Behind a TLS proxy every request comes from the proxy's address; with
    ``NUM_PROXIES`` at 0 the failed-sign-in limit counts all clients as that one address,
    and one client's wrong passwords lock everyone out of signing in."""
    if not getattr(settings, "PROXY_SSL_HEADER", "") or settings.REST_FRAMEWORK.get("NUM_PROXIES"):
        return []
    return [
        Warning(
            "PROXY_SSL_HEADER is set but NUM_PROXIES is 0: every sign-in is counted under "
            "the proxy's address, so one client's failed sign-ins lock out all clients.",
            hint="Set NUM_PROXIES to the number of proxies that append to X-Forwarded-For.",
            id="isolation.W001",
        )
    ]


@register(deploy=True)
def sweep_before_runs_end(**kwargs: object) -> list[CheckMessage]:
    """A turn the sweep finds in flight past ``STALE_TURN_SECONDS`` is taken for lost and
    run again: a bound within the task's time limit mistakes a live run for a lost one."""
    if settings.STALE_TURN_SECONDS > settings.CELERY_TASK_TIME_LIMIT:
        return []
    return [
        Warning(
            f"STALE_TURN_SECONDS ({settings.STALE_TURN_SECONDS}) is not past the turn task's "
            f"time limit ({settings.CELERY_TASK_TIME_LIMIT} s, TURN_DEADLINE_SECONDS + 10): "
            "the sweep can run a turn again while its first run is still calling Claude.",
            hint="Set STALE_TURN_SECONDS above TURN_DEADLINE_SECONDS + 10.",
            id="isolation.W002",
        )
    ]


# The int types whose values fit the fingerprint index's 4-byte user id (``RedisIndex``).
_FITS_FOUR_BYTES = frozenset(
    {
        "AutoField",
        "SmallAutoField",
        "IntegerField",
        "SmallIntegerField",
        "PositiveIntegerField",
        "PositiveSmallIntegerField",
    }
)


@register()
def user_ids_fit_the_fingerprint_index(**kwargs: object) -> list[CheckMessage]:
    """The Redis fingerprint index keeps a user id in 4 bytes (a record is 20 bytes: the
    postings' memory). ``auth.User``'s ids fit; a swapped-in user model whose ids can pass
    2^32 would fail every registration, scan and erasure of such a user, after years of
    running: refused at ``migrate`` and ``check`` instead."""
    if not (getattr(settings, "FINGERPRINT_REDIS_URL", "") or settings.REDIS_URL):
        return []  # the database table keeps user ids as bigint
    pk = get_user_model()._meta.pk
    if pk.get_internal_type() in _FITS_FOUR_BYTES:
        return []
    return [
        Error(
            f"AUTH_USER_MODEL ({settings.AUTH_USER_MODEL}) has a {pk.get_internal_type()} "
            "primary key, but the Redis fingerprint index keeps a user id in 4 bytes.",
            hint="Give the user model an AutoField or IntegerField primary key, or leave "
            "REDIS_URL and FINGERPRINT_REDIS_URL unset to keep the index in the database.",
            id="isolation.E001",
        )
    ]
