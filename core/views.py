"""Django's own error pages, answered in JSON like the API's errors."""

from django.http import HttpRequest, HttpResponse, JsonResponse

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


def server_error(request: HttpRequest) -> HttpResponse:
    detail = "Something went wrong on our side; nothing was stored. Try again."
    return JsonResponse(error_body(detail, "server_error"), status=500)
