"""``/healthz``: database, cache and broker, each answered within the deadline."""

from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from types import MappingProxyType

from celery import current_app as celery_app
from django.core.cache import cache
from django.db import connection
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from kombu.transport import redis as kombu_redis
from rest_framework import serializers
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .api import FirstRendererNegotiation

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
    """Open a new connection to the broker and make it answer: Redis or RabbitMQ.

    A new connection, not a pooled one (a pooled one may predate the outage). With RabbitMQ
    (amqp) connecting is the AMQP handshake, which the broker must answer and which opens
    the virtual host with our credentials; with Redis, a PING follows. Both are bounded by
    the deadline, so a hung broker costs no more than a refused one.
    """
    if celery_app.conf.task_always_eager:
        return  # tasks run in the web process: there is no broker to need
    with celery_app.connection_for_write(connect_timeout=DEADLINE_SECONDS) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, timeout=DEADLINE_SECONDS)
        if isinstance(conn.transport, kombu_redis.Transport):  # core.broker's too
            conn.default_channel.client.ping()


CHECKS: Mapping[str, Callable[[], None]] = MappingProxyType(
    {"database": _database, "cache": _cache, "broker": _broker}
)


def _check_all() -> dict[str, str]:
    """Run the checks in parallel; a check not done by the deadline counts as down."""
    pool = ThreadPoolExecutor(max_workers=len(CHECKS))
    futures = {name: pool.submit(check) for name, check in CHECKS.items()}
    wait(futures.values(), timeout=DEADLINE_SECONDS)
    pool.shutdown(wait=False, cancel_futures=True)
    return {
        name: "ok" if future.done() and future.exception() is None else "down"
        for name, future in futures.items()
    }


def _state() -> serializers.ChoiceField:
    return serializers.ChoiceField(choices=["ok", "down"])


HEALTH = inline_serializer(
    "Health",
    fields={
        "status": serializers.ChoiceField(choices=["ok", "unavailable"]),
        **{name: _state() for name in CHECKS},
    },
)


class HealthApi(APIView):
    """The load balancer's probe: no authentication, no throttle, always JSON."""

    authentication_classes: list = []
    permission_classes: list = []
    throttle_classes: list = []
    renderer_classes = [JSONRenderer]
    content_negotiation_class = FirstRendererNegotiation

    @extend_schema(
        auth=[],
        responses={
            200: OpenApiResponse(HEALTH, description="Every part is up."),
            503: OpenApiResponse(HEALTH, description="A part is down (or did not answer in time)."),
        },
    )
    def get(self, request: Request) -> Response:
        """Report each part "ok" or "down"; 503 if any is down, within the deadline."""
        parts = _check_all()
        healthy = all(state == "ok" for state in parts.values())
        body = {"status": "ok" if healthy else "unavailable", **parts}
        return Response(body, status=200 if healthy else 503)


healthz = HealthApi.as_view()
