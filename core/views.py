"""Django's own error pages, answered in JSON like the API's errors."""

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import resolve

from .errors import error_body


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return JsonResponse(
        error_body("The request could not be understood.", "bad_request"), status=400
    )


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    detail = "You do not have permission to do this."
    return JsonResponse(error_body(detail, "permission_denied"), status=403)


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return JsonResponse(error_body("Nothing is at this address.", "not_found"), status=404)


def api_not_found(request: HttpRequest, path: str = "") -> HttpResponse:
    """Answer an unknown API address with the JSON 404, whatever ``DEBUG`` says.

    Routed last under the API prefix: with ``DEBUG`` on Django would answer a 404 of its
    resolver with its HTML page instead of ``handler404``.
    """
    if not request.path.endswith("/") and _routed(f"{request.path_info}/"):
        detail = f"Nothing is at this address; API addresses end with a slash: {request.path}/"
        return JsonResponse(error_body(detail, "not_found"), status=404)
    return not_found(request)


def _routed(path: str) -> bool:
    """Tell whether ``path`` reaches a view other than ``api_not_found``."""
    match = resolve(path)
    return match.func is not api_not_found


def server_error(request: HttpRequest) -> HttpResponse:
    detail = "Something went wrong on our side; nothing was stored. Try again."
    return JsonResponse(error_body(detail, "server_error"), status=500)
