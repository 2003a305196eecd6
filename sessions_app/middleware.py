"""Middleware that keeps every error answer JSON: oversize bodies and outages."""

import logging
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

from .errors import error_body, is_outage

logger = logging.getLogger(__name__)


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
    """Answer 503 JSON when a backing service fails outside the DRF views (sessions, admin)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            return self.get_response(request)
        except Exception as exc:
            if is_outage(exc):
                logger.warning("service unavailable: %s", exc.__class__.__name__)
                return unavailable_response()
            raise

    def process_exception(self, request: HttpRequest, exc: Exception) -> HttpResponse | None:
        return unavailable_response() if is_outage(exc) else None


def unavailable_response() -> JsonResponse:
    detail = "A service this request needs is unavailable; try again shortly."
    return JsonResponse(error_body(detail, "unavailable"), status=503)
