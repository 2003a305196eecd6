"""DRF views, one per operation: parse input, call one service or selector, serialize."""

import functools
import json
import re
from collections.abc import Iterator

from django.conf import settings
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.generics import GenericAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import UserRateThrottle
from rest_framework.views import APIView

from core.api import (
    ErrorSerializer,
    FirstRendererNegotiation,
    LoggedUserMixin,
    PagePagination,
    errors,
    streamable,
)

from . import events, selectors, services, tasks
from .models import Turn
from .serializers import (
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
        responses={200: TokenSerializer, **errors(400, 413, 503)},
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
            **errors(401, 503),
            404: OpenApiResponse(ErrorSerializer, description="No such page."),
        }
    )
    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(SessionSerializer(page, many=True).data)

    @extend_schema(
        request=SessionCreateSerializer,
        responses={201: SessionSerializer, **errors(400, 401, 413, 503)},
    )
    def post(self, request: Request) -> Response:
        data = SessionCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        tasks.beat_jobs_if_due()
        session = services.chat_session_create(owner=request.user, **data.validated_data)
        return Response(SessionSerializer(session).data, status=status.HTTP_201_CREATED)


class SessionDetailApi(LoggedUserMixin, APIView):
    @extend_schema(
        parameters=[SESSION_ID], responses={200: SessionSerializer, **errors(401, 404, 503)}
    )
    def get(self, request: Request, session_id: str) -> Response:
        session = selectors.chat_session_get_for_owner(user=request.user, session_id=session_id)
        return Response(SessionSerializer(session).data)

    @extend_schema(parameters=[SESSION_ID], responses={204: None, **errors(401, 404, 503)})
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


def _turn_wait(*, user, turn: Turn, timeout: float) -> Turn:
    """Return the just-accepted turn once it has ended, or as it is after ``timeout``.

    Every read goes through ``turn_refresh_for_owner``: the message is stored, so a
    connection lost now must not turn into an error that makes the client send it again.
    """
    refresh = functools.partial(_refresh, user)
    if timeout <= 0:
        return refresh(turn)
    for seen in events.turn_watch(turn=turn, refresh=refresh, timeout=timeout, poll_if_down=True):
        turn = seen or turn
    return turn


def _refresh(user, turn: Turn) -> Turn:
    return selectors.turn_refresh_for_owner(user=user, turn=turn)


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
            **errors(401, 503),
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
            **errors(400, 401, 404, 409, 413, 429, 503),
        },
    )
    def post(self, request: Request, session_id: str) -> Response:
        wait = _wait_seconds(request)
        data = MessageCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        tasks.beat_jobs_if_due()  # before anything is stored: an error here leaves nothing
        turn = services.message_accept(
            user=request.user, session_id=session_id, content=data.validated_data["content"]
        )
        tasks.turn_enqueue(turn=turn)
        turn = _turn_wait(user=request.user, turn=turn, timeout=wait or 0)
        ended = wait is not None and turn.is_finished
        return Response(
            TurnSerializer(turn).data,
            status=status.HTTP_200_OK if ended else status.HTTP_202_ACCEPTED,
        )


class TurnDetailApi(LoggedUserMixin, APIView):
    @extend_schema(parameters=[TURN_ID], responses={200: TurnSerializer, **errors(401, 404, 503)})
    def get(self, request: Request, turn_id: str) -> Response:
        turn = selectors.turn_get_for_owner(user=request.user, turn_id=turn_id)
        return Response(TurnSerializer(turn).data)


def _sse(turn: Turn) -> str:
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
            **errors(401, 404, 503),
        },
    )
    def get(self, request: Request, turn_id: str) -> StreamingHttpResponse:
        turn = selectors.turn_get_for_owner(user=request.user, turn_id=turn_id)
        watch = events.turn_watch(
            turn=turn,
            refresh=functools.partial(_refresh, request.user),
            timeout=STREAM_MAX_SECONDS,
            tick=KEEPALIVE_SECONDS,
        )
        # Subscribe and read before the 200 goes out: with Redis down this is a 503, not a
        # broken stream. CPython closes the generator (and its subscription) with the
        # response.
        first = next(watch)
        response = StreamingHttpResponse(
            streamable(request, self._stream(first, watch)), content_type="text/event-stream"
        )
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        return response

    def _stream(self, first: Turn, watch: Iterator[Turn | None]) -> Iterator[str]:
        try:
            yield _sse(first)
            for turn in watch:
                yield ": keep-alive\n\n" if turn is None else _sse(turn)
        except NotFound:
            return  # the session was deleted or expired mid-stream: end it, say nothing more
        finally:
            watch.close()
