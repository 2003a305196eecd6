"""``/healthz``: database, cache and broker, each answered within the deadline."""

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.http import HttpRequest, JsonResponse

from isolation_site.celery import app as celery_app

DEADLINE_SECONDS = 1.5


def _database() -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        # This runs in a throwaway thread: its connection must not outlive it.
        connection.close()


def _cache() -> None:
    cache.set("healthz", "ok", 10)
    if cache.get("healthz") != "ok":
        raise RuntimeError("cache did not return what was stored")


def _broker() -> None:
    if settings.CELERY_TASK_ALWAYS_EAGER:
        return
    with celery_app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, timeout=DEADLINE_SECONDS)
        if conn.transport_cls in ("redis", "rediss"):
            conn.default_channel.client.ping()


CHECKS: dict[str, Callable[[], None]] = {"database": _database, "cache": _cache, "broker": _broker}


def healthz(request: HttpRequest) -> JsonResponse:
    """Report each part "ok" or "down"; 503 if any is down. Runs the checks in parallel."""
    pool = ThreadPoolExecutor(max_workers=len(CHECKS))
    futures = {name: pool.submit(check) for name, check in CHECKS.items()}
    wait(futures.values(), timeout=DEADLINE_SECONDS)
    pool.shutdown(wait=False, cancel_futures=True)
    parts = {
        name: "ok" if future.done() and future.exception() is None else "down"
        for name, future in futures.items()
    }
    healthy = all(state == "ok" for state in parts.values())
    body = {"status": "ok" if healthy else "unavailable", **parts}
    return JsonResponse(body, status=200 if healthy else 503)
