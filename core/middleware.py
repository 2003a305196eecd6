"""Middleware that keeps every error answer JSON: oversize bodies and outages."""

import logging
import sys
from collections.abc import Callable

from django.conf import settings
from django.core.signals import got_request_exception
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.cache import patch_cache_control

from .errors import error_body, is_outage

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1/"


class NoStoreApiMiddleware:
    """Say ``Cache-Control: no-store`` on every answer under ``/api/v1/``.

    Every one of them may carry conversation or account data: no browser, proxy or CDN
    cache may keep one user's answer and hand it to another.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if request.path.startswith(API_PREFIX):
            patch_cache_control(response, no_store=True, private=True)
        return response


class RequestSizeLimitMiddleware:
    """Answer 413 before reading a body larger than ``MAX_REQUEST_BYTES``."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return JsonResponse(
                error_body("The Content-Length header is not a number.", "invalid"), status=400
            )
        if length > settings.MAX_REQUEST_BYTES:
            detail = f"The request body is larger than {settings.MAX_REQUEST_BYTES} bytes."
            return JsonResponse(error_body(detail, "request_too_large"), status=413)
        return self.get_response(request)


class ServiceUnavailableMiddleware:
    """Answer 503 JSON when a backing service fails outside the DRF views (sessions, admin).

    A view's exception reaches ``process_exception``. One raised by a middleware below this
    one (say, the session middleware saving to a dead cache) never reaches us as an
    exception: Django turns it into a 500 (an HTML page under ``DEBUG``) where it is raised.
    ``got_request_exception`` is sent while that exception is handled, so it marks the
    request, and the 500 is replaced here.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            response = self.get_response(request)
        except Exception as exc:
            if is_outage(exc):
                logger.warning("service unavailable: %s", exc.__class__.__name__)
                return unavailable_response()
            raise
        if response.status_code == 500 and getattr(request, OUTAGE_MARK, False):
            return unavailable_response()
        return response

    def process_exception(self, request: HttpRequest, exc: Exception) -> HttpResponse | None:
        if not is_outage(exc):
            return None
        logger.warning("service unavailable: %s", exc.__class__.__name__)
        return unavailable_response()


OUTAGE_MARK = "_backing_service_unavailable"


def _mark_outage(sender: object, request: HttpRequest | None = None, **kwargs: object) -> None:
    exc = sys.exc_info()[1]
    if request is not None and exc is not None and is_outage(exc):
        setattr(request, OUTAGE_MARK, True)


got_request_exception.connect(_mark_outage, dispatch_uid="core.middleware.mark_outage")


def unavailable_response() -> JsonResponse:
    detail = "A service this request needs is unavailable; try again shortly."
    return JsonResponse(error_body(detail, "unavailable"), status=503)
