"""Errors shared by the apps, and the one DRF exception handler that shapes them.

Every error body is ``{"detail": <a sentence a person can act on>, "code": <stable word>}``.
"""

import logging
import re
from collections.abc import Callable
from typing import Any, TypeVar

import kombu.exceptions
import redis.exceptions
from django.db import (
    DatabaseError,
    InterfaceError,
    OperationalError,
    close_old_connections,
    connection,
)
from django.http import Http404
from django_redis.exceptions import ConnectionInterrupted
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

logger = logging.getLogger(__name__)

T = TypeVar("T")


class BackendUnavailable(Exception):
    """A backing service (a history store, an index) cannot answer: raised instead of its
    own driver's errors, so callers handle one neutral kind of outage."""


# Errors meaning "a service this request needs is down", never the request's fault.
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    BackendUnavailable,
    OperationalError,
    InterfaceError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    # Up but refusing: a failover's old primary or a replica refuses writes (READONLY), a
    # replica cut off from its primary may refuse everything (MASTERDOWN), a Redis at its
    # memory limit refuses writes (OOM). Transient for the request as a connection lost is.
    redis.exceptions.ReadOnlyError,
    redis.exceptions.MasterDownError,
    redis.exceptions.OutOfMemoryError,
    ConnectionInterrupted,
    kombu.exceptions.OperationalError,
    ConnectionError,
    TimeoutError,
)


class RequestTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."
    default_code = "request_too_large"


class ServiceUnavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "A service this request needs is unavailable; try again shortly."
    default_code = "unavailable"


# Redis's error reply for "up but refusing writes" that redis-py has no class of its own
# for: MISCONF, a Redis whose last snapshot failed (a full or read-only disk), refusing
# writes until one succeeds. Its code begins the reply, or follows a colon where the reply
# comes wrapped: in a pipeline's error ("Command # 2 (...) of pipeline caused error:
# MISCONF ...") or, before Redis 7, a script's ("ERR Error running script ...: MISCONF").
_REDIS_REFUSAL = re.compile(r"(?:^|: )MISCONF ")


def is_outage(exc: BaseException) -> bool:
    """Tell whether ``exc`` means a backing service is unreachable."""
    return (
        isinstance(exc, OUTAGE_ERRORS)
        or (
            isinstance(exc, redis.exceptions.ResponseError)
            and _REDIS_REFUSAL.search(str(exc)) is not None
        )
        or (isinstance(exc, DatabaseError) and "connection" in str(exc).lower())
    )


def once_more_on_fresh_connection(fn: Callable[..., T], /, **kwargs: object) -> T:
    """Run ``fn``; if the database connection was lost, reconnect and run it once more.

    A connection killed by a restart or failover is transient. Inside a transaction the
    first error stands: the transaction is broken and the caller must decide.
    """
    try:
        return fn(**kwargs)
    except Exception as exc:
        if not is_outage(exc) or connection.in_atomic_block:
            raise
        logger.warning("%s lost its database connection; retrying", fn.__name__)
    close_old_connections()
    return fn(**kwargs)


def error_body(detail: str, code: str, **extra: Any) -> dict[str, Any]:
    return {"detail": detail, "code": code, **extra}


def _flatten(detail: Any) -> str:
    if isinstance(detail, dict):
        field, value = next(iter(detail.items()))
        text = _flatten(value)
        return text if field in ("non_field_errors", "detail") else f"{field}: {text}"
    if isinstance(detail, list) and detail:
        return _flatten(detail[0])
    return str(detail)


def _first_code(codes: Any) -> str:
    if isinstance(codes, dict):
        return _first_code(next(iter(codes.values()))) if codes else "invalid"
    if isinstance(codes, list):
        return _first_code(codes[0]) if codes else "invalid"
    return str(codes)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Turn any API exception into the contract's JSON body; outages become 503."""
    if callable(audit := getattr(exc, "audit", None)):
        # An error that must leave a trace (another user's id tried, a store handing back
        # another user's value) records it here, after the request's transaction has
        # rolled back, so the trail keeps it.
        audit()
    if is_outage(exc):
        logger.warning("service unavailable: %s", exc.__class__.__name__)
        exc = ServiceUnavailable()
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        response.data = error_body(
            _flatten(exc.detail), _first_code(exc.get_codes()), errors=exc.detail
        )
    else:
        detail = getattr(exc, "detail", str(exc))
        code = _first_code(exc.get_codes()) if hasattr(exc, "get_codes") else "error"
        response.data = error_body(_flatten(detail), code)
    return response
