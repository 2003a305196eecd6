"""What every API view of the site shares: pagination, logging, JSON-only answers, the
error table of the schema, and the adapter that streams under ASGI."""

import re
from collections.abc import AsyncIterator, Iterator
from types import MappingProxyType

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework import parsers, renderers, serializers
from rest_framework.exceptions import NotAcceptable, NotFound, ParseError
from rest_framework.negotiation import BaseContentNegotiation, DefaultContentNegotiation
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request

from .logcontext import request_bound, request_user_set


class ErrorSerializer(serializers.Serializer):
    """The body of every error response."""

    detail = serializers.CharField(help_text="A sentence a person can act on.")
    code = serializers.CharField(help_text="A stable machine word.")
    errors = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        required=False,
        help_text="Invalid input (400) only: each field's messages.",
    )


ERRORS = MappingProxyType(
    {
        # Any request may be refused so: a Host this site does not serve, a Content-Length
        # that is not a number.
        400: OpenApiResponse(
            ErrorSerializer,
            description="Invalid input, or a request that could not be understood.",
        ),
        401: OpenApiResponse(ErrorSerializer, description="Not authenticated."),
        403: OpenApiResponse(ErrorSerializer, description="Not allowed for this user."),
        404: OpenApiResponse(ErrorSerializer, description="No such object for this user."),
        409: OpenApiResponse(ErrorSerializer, description="A turn is already in flight."),
        413: OpenApiResponse(ErrorSerializer, description="Request body too large."),
        429: OpenApiResponse(ErrorSerializer, description="Throttled; see Retry-After."),
        503: OpenApiResponse(ErrorSerializer, description="A backing service is down."),
    }
)


def errors(*codes: int) -> dict[int, OpenApiResponse]:
    """Return the schema's error responses for the given status codes."""
    return {code: ERRORS[code] for code in codes}


# Every 429 says when to try again.
RETRY_AFTER = OpenApiParameter(
    "Retry-After",
    OpenApiTypes.INT,
    OpenApiParameter.HEADER,
    required=True,
    response=[429],
    description="Seconds to wait before trying again.",
)


class LoggedUserMixin:
    """Name the user a view serves in the log lines written while it runs."""

    def dispatch(self, request, *args, **kwargs):
        with request_bound():
            return super().dispatch(request, *args, **kwargs)

    def initial(self, request: Request, *args, **kwargs) -> None:
        super().initial(request, *args, **kwargs)
        request_user_set(request.user.pk)


class PagePagination(PageNumberPagination):
    """DRF's page numbers, read as strictly as the schema says: ``?page=`` is a number from 1.

    DRF would take an empty ``?page=`` as the first page and ``?page=last`` as the last one;
    here anything but digits is the same 404 as a page past the end.
    """

    last_page_strings = ()

    def get_page_number(self, request: Request, paginator) -> int:
        raw = request.query_params.get(self.page_query_param, "1")
        if not re.fullmatch(r"[0-9]{1,9}", raw):  # longer: past any last page
            raise NotFound(self.invalid_page_message)
        return int(raw)

    def get_schema_operation_parameters(self, view) -> list[dict]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_query_param:
                parameter["schema"]["minimum"] = 1
        return parameters


# What API clients send: no Accept header (DRF reads it as */*), */* or JSON itself.
_ANY_OR_JSON = frozenset({"*/*", "application/json"})


class BrowsableAPIRenderer(renderers.BrowsableAPIRenderer):
    """DRF's browsable page (``DEBUG`` only), left out of the site's Content Security
    Policy as the admin and ``/api/docs/`` are: it uses inline script and style and fonts
    of its own. The API's JSON answers keep the policy."""

    def render(self, data, accepted_media_type=None, renderer_context=None):
        response = (renderer_context or {}).get("response")
        if response is not None:
            # django-csp's own marks (its ``csp_exempt``), which ``core.csp`` reads too.
            response._csp_exempt = response._csp_exempt_ro = True
        return super().render(data, accepted_media_type, renderer_context)


class JSONParser(parsers.JSONParser):
    """DRF's, refusing JSON nested past the interpreter's recursion limit as malformed (400).

    ``json`` raises ``RecursionError`` on it, which DRF's parser lets through as a 500: a
    200 KB body of brackets, well under the body limit, sent by anyone to the sign-in.
    """

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError as exc:
            raise ParseError("JSON parse error - nested too deeply.") from exc


class JsonFirstNegotiation(DefaultContentNegotiation):
    """DRF's content negotiation, never 406, with the answer to what nearly every API call
    sends taken at once.

    The API answers JSON (the schema lists no 406): an Accept that no renderer satisfies
    gets the first renderer's answer, as RFC 9110 allows and as the turn views' own
    negotiation always does, instead of DRF's 406. No Accept, ``*/*`` or
    ``application/json`` with no format asked for gets the first renderer at once when it
    is JSON, DRF's own answer: DRF parses and ranks the Accept header on every request,
    0.17-0.20 ms of CPU per request in the running server on a slow machine against 0.007
    in a loop, as code run once per request runs cold. Anything else (DEBUG's browsable
    API, ``?format=``) goes through DRF's negotiation; a test holds both to DRF's answers.
    """

    def select_renderer(self, request, renderers, format_suffix=None):
        first = renderers[0] if renderers else None
        if (
            first is not None
            and first.media_type == "application/json"
            and not format_suffix
            and request.META.get("HTTP_ACCEPT", "*/*") in _ANY_OR_JSON
            and self.settings.URL_FORMAT_OVERRIDE not in request.query_params
        ):
            return first, first.media_type
        try:
            return super().select_renderer(request, renderers, format_suffix)
        except NotAcceptable:
            if first is None:
                raise
            return first, first.media_type


class FirstRendererNegotiation(BaseContentNegotiation):
    """Always answer errors in JSON, whatever Accept says (the stream bypasses renderers)."""

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


def streamable(request: Request, chunks: Iterator[str]) -> Iterator[str] | AsyncIterator[str]:
    """Return ``chunks`` in the form the server can send as they come.

    Under ASGI, Django buffers a synchronous iterator whole before sending anything, which
    would hold every event back until the stream ends; it gets an asynchronous one that
    steps the synchronous iterator (database reads included) in the request's thread.
    """
    if not isinstance(request._request, ASGIRequest):
        return chunks
    return _stepped_in_thread(chunks)


async def _stepped_in_thread(chunks: Iterator[str]) -> AsyncIterator[str]:
    step = sync_to_async(next)
    try:
        while (chunk := await step(chunks, None)) is not None:
            yield chunk
    finally:
        await sync_to_async(chunks.close)()  # ends the Redis subscription
