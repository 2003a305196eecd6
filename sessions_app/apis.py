"""DRF views, one per operation: parse input, call one service or selector, serialize."""

import json
import re
from collections.abc import AsyncIterator, Iterator

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.generics import GenericAPIView
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import UserRateThrottle
from rest_framework.views import APIView

from . import events, isolation, selectors, services
from .serializers import (
    ErrorSerializer,
    MessageCreateSerializer,
    MessageSerializer,
    SessionCreateSerializer,
    SessionSerializer,
    TokenRequestSerializer,
    TokenSerializer,
    TurnSerializer,
)

MAX_WAIT_SECONDS = 60
STREAM_MAX_SECONDS = 600
KEEPALIVE_SECONDS = 15

ERRORS = {
    400: OpenApiResponse(ErrorSerializer, description="Invalid input."),
    401: OpenApiResponse(ErrorSerializer, description="Not authenticated."),
    404: OpenApiResponse(ErrorSerializer, description="No such object for this user."),
    409: OpenApiResponse(ErrorSerializer, description="A turn is already in flight."),
    413: OpenApiResponse(ErrorSerializer, description="Request body too large."),
    429: OpenApiResponse(ErrorSerializer, description="Too many messages."),
    503: OpenApiResponse(ErrorSerializer, description="A backing service is down."),
}


def _errors(*codes: int) -> dict[int, OpenApiResponse]:
    return {code: ERRORS[code] for code in codes}


# Ids are UUIDs; anything else is simply an id that does not exist (404).
SESSION_ID = OpenApiParameter("session_id", OpenApiTypes.UUID, OpenApiParameter.PATH)
TURN_ID = OpenApiParameter("turn_id", OpenApiTypes.UUID, OpenApiParameter.PATH)
# A page number past the last page (or not a number) is 404, as DRF's paginator answers.
PAGE_NOT_FOUND = OpenApiResponse(ErrorSerializer, description="No such object, or no such page.")
# Each event of the stream (the Open API 3.0 reading of an event-stream schema).
TURN_EVENT = {
    "type": "object",
    "properties": {
        "event": {"type": "string", "enum": ["turn"]},
        "data": {"type": "string", "description": "The whole turn object (`Turn`) as JSON."},
    },
    "required": ["event", "data"],
}


class LoggedUserMixin:
    """Log lines written while a view runs carry the id of the user it serves."""

    def dispatch(self, request, *args, **kwargs):
        with isolation.request_bound():
            return super().dispatch(request, *args, **kwargs)

    def initial(self, request: Request, *args, **kwargs) -> None:
        super().initial(request, *args, **kwargs)
        isolation.request_user_set(request.user.pk)


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


class ChatRateThrottle(UserRateThrottle):
    """Messages a user may post, over all sessions and the stateless endpoint."""

    scope = "chat"

    def get_rate(self) -> str:
        # Read at request time so the setting can change without re-importing DRF.
        return settings.CHAT_THROTTLE_RATE


class AuthTokenApi(LoggedUserMixin, ObtainAuthToken):
    # Credentials are in the body: a client holding a revoked token must still get a new one.
    authentication_classes: list = []

    @extend_schema(
        request=TokenRequestSerializer,
        responses={200: TokenSerializer, **_errors(400, 413, 503)},
        auth=[],
    )
    def post(self, request: Request, *args, **kwargs) -> Response:
        return super().post(request, *args, **kwargs)


class SessionListCreateApi(LoggedUserMixin, GenericAPIView):
    serializer_class = SessionSerializer
    pagination_class = PagePagination

    def get_queryset(self):
        return selectors.chat_session_list_for_owner(user=self.request.user)

    @extend_schema(
        responses={
            200: SessionSerializer(many=True),
            **_errors(401, 503),
            404: OpenApiResponse(ErrorSerializer, description="No such page."),
        }
    )
    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(SessionSerializer(page, many=True).data)

    @extend_schema(
        request=SessionCreateSerializer,
        responses={201: SessionSerializer, **_errors(400, 401, 413, 503)},
    )
    def post(self, request: Request) -> Response:
        data = SessionCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        session = services.chat_session_create(owner=request.user, **data.validated_data)
        return Response(SessionSerializer(session).data, status=status.HTTP_201_CREATED)


class SessionDetailApi(LoggedUserMixin, APIView):
    @extend_schema(
        parameters=[SESSION_ID], responses={200: SessionSerializer, **_errors(401, 404, 503)}
    )
    def get(self, request: Request, session_id: str) -> Response:
        session = selectors.chat_session_get_for_owner(user=request.user, session_id=session_id)
        return Response(SessionSerializer(session).data)

    @extend_schema(parameters=[SESSION_ID], responses={204: None, **_errors(401, 404, 503)})
    def delete(self, request: Request, session_id: str) -> Response:
        services.chat_session_delete(user=request.user, session_id=session_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


def _wait_seconds(request: Request) -> int | None:
    raw = request.query_params.get("wait")
    if raw is None:
        return None
    if not re.fullmatch(r"[0-9]{1,2}", raw) or int(raw) > MAX_WAIT_SECONDS:
        raise ValidationError(
            {"wait": [f"wait must be a whole number of seconds from 0 to {MAX_WAIT_SECONDS}."]}
        )
    return int(raw)


class MessageListCreateApi(LoggedUserMixin, GenericAPIView):
    serializer_class = MessageSerializer
    pagination_class = PagePagination

    def get_queryset(self):
        return selectors.message_list_for_owner(
            user=self.request.user, session_id=self.kwargs["session_id"]
        )

    def get_throttles(self):
        # Only posting is throttled; reading history is not a message.
        return [ChatRateThrottle()] if self.request.method == "POST" else []

    @extend_schema(
        parameters=[SESSION_ID],
        responses={
            200: MessageSerializer(many=True),
            **_errors(401, 503),
            404: PAGE_NOT_FOUND,
        },
    )
    def get(self, request: Request, session_id: str) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(MessageSerializer(page, many=True).data)

    @extend_schema(
        request=MessageCreateSerializer,
        parameters=[
            SESSION_ID,
            OpenApiParameter(
                "wait",
                {"type": "integer", "minimum": 0, "maximum": MAX_WAIT_SECONDS},
                description=f"Seconds (0-{MAX_WAIT_SECONDS}) to wait for the reply; "
                "anything else is 400.",
            ),
        ],
        responses={
            200: OpenApiResponse(TurnSerializer, description="The turn ended within ?wait."),
            202: OpenApiResponse(TurnSerializer, description="The turn is accepted."),
            **_errors(400, 401, 404, 409, 413, 429, 503),
        },
    )
    def post(self, request: Request, session_id: str) -> Response:
        wait = _wait_seconds(request)
        data = MessageCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        turn = services.message_accept(
            user=request.user, session_id=session_id, content=data.validated_data["content"]
        )
        services.turn_enqueue(turn_id=turn.pk)
        turn = selectors.turn_wait_for_owner(user=request.user, turn=turn, timeout=wait or 0)
        ended = wait is not None and turn.is_finished
        return Response(
            TurnSerializer(turn).data,
            status=status.HTTP_200_OK if ended else status.HTTP_202_ACCEPTED,
        )


class TurnDetailApi(LoggedUserMixin, APIView):
    @extend_schema(parameters=[TURN_ID], responses={200: TurnSerializer, **_errors(401, 404, 503)})
    def get(self, request: Request, turn_id: str) -> Response:
        turn = selectors.turn_get_for_owner(user=request.user, turn_id=turn_id)
        return Response(TurnSerializer(turn).data)


class FirstRendererNegotiation(BaseContentNegotiation):
    """Always answer errors in JSON, whatever Accept says (the stream bypasses renderers)."""

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


def _streamable(request: Request, chunks: Iterator[str]) -> Iterator[str] | AsyncIterator[str]:
    """Return ``chunks`` in the form the server can send as they come.

    Under ASGI, Django buffers a synchronous iterator whole before sending anything, which
    would hold every event back until the turn ends; it gets an asynchronous one that steps
    the synchronous iterator (database reads included) in the request's thread.
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


def _sse(turn) -> str:
    return f"event: turn\ndata: {json.dumps(TurnSerializer(turn).data, default=str)}\n\n"


class TurnEventsApi(LoggedUserMixin, APIView):
    content_negotiation_class = FirstRendererNegotiation

    @extend_schema(
        parameters=[TURN_ID],
        responses={
            (200, "text/event-stream"): OpenApiResponse(
                TURN_EVENT,
                description="`event: turn` with the turn as JSON, at once and on every change; "
                "ends after the terminal one.",
            ),
            **_errors(401, 404, 503),
        },
    )
    def get(self, request: Request, turn_id: str) -> StreamingHttpResponse:
        turn = selectors.turn_get_for_owner(user=request.user, turn_id=turn_id)
        changes = events.turn_changes(
            turn_id=turn.pk, timeout=STREAM_MAX_SECONDS, tick=KEEPALIVE_SECONDS
        )
        # Subscribe before the 200 goes out: with Redis down this is a 503, not a broken
        # stream. CPython closes the generator (and its subscription) with the response.
        next(changes)
        response = StreamingHttpResponse(
            _streamable(request, self._stream(request.user, turn, changes)),
            content_type="text/event-stream",
        )
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        return response

    def _stream(self, user, turn, changes: Iterator[bool]) -> Iterator[str]:
        try:
            yield from self._events(user, turn, changes)
        except NotFound:
            return  # the session was deleted or expired mid-stream: end it, say nothing more
        finally:
            changes.close()

    def _events(self, user, turn, changes: Iterator[bool]) -> Iterator[str]:
        turn = selectors.turn_refresh_for_owner(user=user, turn=turn)
        last = (turn.status, turn.updated_at)
        yield _sse(turn)
        while not turn.is_finished:
            changed = next(changes, None)
            if changed is None:
                return
            if not changed:
                yield ": keep-alive\n\n"
                continue
            turn = selectors.turn_refresh_for_owner(user=user, turn=turn)
            if (turn.status, turn.updated_at) != last:
                last = (turn.status, turn.updated_at)
                yield _sse(turn)
