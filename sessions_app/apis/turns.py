"""A turn, and its event stream."""

import functools
import json
from collections.abc import AsyncIterator, Callable, Iterator

from django.http import HttpRequest, HttpResponseBase, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api import (
    RETRY_AFTER,
    ErrorSerializer,
    FirstRendererNegotiation,
    LoggedUserMixin,
    errors,
    streamable,
)
from core.middleware import response_hold

from .. import events, selectors
from ..models import Turn
from ..serializers import (
    TurnSerializer,
    turn_data,
)
from .common import (
    KEEPALIVE_SECONDS,
    STREAM_MAX_SECONDS,
    TURN_ID,
)
from .serving import AsyncDispatch, ServerModeView, request_thread_release, to_its_end
from .waiting import (
    client_gone,
    stream_slots_take,
    turn_reread,
)


def _turn_events() -> dict:
    """The stream's body as OpenAPI 3.0 says it: text, read event by event as it comes."""
    return {
        "type": "string",
        "description": "Server-sent events: `event: turn` lines, each followed by a `data:` "
        "line holding the whole turn (`Turn`) as JSON and a blank line; `:` comment lines "
        "keep the connection alive.",
        "example": 'event: turn\ndata: {"id": "...", "status": "completed", ...}\n\n',
    }


class TurnDetailApi(LoggedUserMixin, APIView):
    @extend_schema(
        parameters=[TURN_ID], responses={200: TurnSerializer, **errors(400, 401, 404, 503)}
    )
    def get(self, request: Request, turn_id: str) -> Response:
        """Read a turn of the caller's: its status, message, reply or error."""
        turn = selectors.turn_get_for_owner(user=request.user, turn_id=turn_id)
        return Response(turn_data(turn))


class _Releasing:
    """The stream's chunks, giving its wait slot back and closing its watch (the listener's
    subscription) when the server closes the stream.

    A generator not yet started runs no ``finally`` when closed; this ``close`` always runs.
    """

    def __init__(self, chunks: Iterator[str], release, watch: Iterator[Turn | None]) -> None:
        self.chunks = chunks
        self.release = release
        self.watch = watch

    def __iter__(self) -> "_Releasing":
        return self

    def __next__(self) -> str:
        return next(self.chunks)

    def close(self) -> None:
        try:
            self.chunks.close()
            self.watch.close()  # closed by the chunks once they started; by no one before
        finally:
            self.release()


def _sse(turn: Turn) -> str:
    return f"event: turn\ndata: {json.dumps(turn_data(turn), default=str)}\n\n"


class _AsyncStream:
    """The stream's chunks on the event loop, its first one already read.

    Django calls ``close`` when the response ends, after a hang-up too (an async
    generator's ``finally`` would run only when it is collected): it ends the subscription
    and gives the slots back. A response the server never gets (a hang-up while the
    middleware handle it) is closed by ``UnsentResponseMiddleware``; once is enough.
    """

    def __init__(self, first: str, watch: events.AsyncTurnWatch, release) -> None:
        self.first = first
        self.watch = watch
        self.release = release
        self.closed = False

    def __aiter__(self) -> AsyncIterator[str]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[str]:
        request_thread_release()  # the middleware are done: nothing for it until the end
        yield self.first
        try:
            async for turn in self.watch:
                yield ": keep-alive\n\n" if turn is None else await events.in_thread(_sse, turn)
        except NotFound:
            return  # the session was deleted or expired mid-stream: end it, say nothing more

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.watch.close()
        finally:
            self.release()


# A stream refused because the process holds as many as it may (WSGI: threads).
RETRY_AFTER_BUSY = OpenApiParameter(
    "Retry-After",
    OpenApiTypes.INT,
    OpenApiParameter.HEADER,
    response=[503],
    description="With 503: seconds to wait before trying again.",
)


async def _no_body() -> AsyncIterator[bytes]:
    # A HEAD's body under ASGI: asynchronous, so Django need not consume it in a thread.
    for chunk in ():
        yield chunk


class TurnEventsApi(AsyncDispatch, LoggedUserMixin, APIView):
    content_negotiation_class = FirstRendererNegotiation

    @classmethod
    def as_view(cls, **initkwargs):
        """Under ASGI the stream runs on the event loop (``aget``); see ``ServerModeView``."""
        return ServerModeView(
            cls, initkwargs, super().as_view(**initkwargs), {"GET": "aget", "HEAD": "ahead"}
        )

    @extend_schema(
        parameters=[TURN_ID, RETRY_AFTER, RETRY_AFTER_BUSY],
        responses={
            (200, "text/event-stream"): OpenApiResponse(
                _turn_events(),
                description="`event: turn` with the turn as JSON, at once and on every change; "
                "ends after the terminal one.",
            ),
            **errors(400, 401, 404),
            429: OpenApiResponse(
                ErrorSerializer,
                description="Too many waits and streams of the caller's open at once; "
                "see Retry-After.",
            ),
            503: OpenApiResponse(
                ErrorSerializer,
                description="A backing service is down, or the server holds as many streams "
                "as it may (then with Retry-After).",
            ),
        },
    )
    def get(self, request: Request, turn_id: str) -> StreamingHttpResponse:
        """Follow a turn as server-sent events (`text/event-stream`) until it ends.

        One `event: turn` at once with the whole turn as JSON `data`, another at every change;
        the stream ends after the terminal one. A `:` comment line every 15 s keeps it alive.
        """
        turn, release = self._open(request, turn_id)
        try:
            return self._response(request, turn, release)
        except BaseException:
            release()
            raise

    def head(self, request: Request, turn_id: str) -> StreamingHttpResponse:
        """GET's status and headers, and no stream: nothing held for a body no one reads.

        Served as GET, a HEAD would hold a thread and the caller's slots until the turn
        ended (servers drop a HEAD's body, but read it all), on the thread pool under ASGI
        too. Its slots are taken and given back at once, and it subscribes and lets go, so it
        answers as GET would then (503 with the notifications down).
        """
        turn, release = self._open(request, turn_id)
        try:
            changes = events.turn_changes(turn_id=turn.pk, timeout=0)
            next(changes)
            changes.close()
        finally:
            release()
        return self._headers(StreamingHttpResponse(()))

    async def ahead(self, request: HttpRequest, turn_id: str) -> HttpResponseBase:
        """HEAD on the event loop: it subscribes and lets go as ``head`` does, awaiting the
        subscription as GET's stream does. In a thread, a Redis that hangs held that thread
        for the subscription's whole timeout."""

        async def serve(drf_request: Request) -> HttpResponseBase:
            watch, release = await self._watch_opened(drf_request, turn_id)
            try:
                await watch.start()  # with Redis down, a 503 as GET's
            finally:
                watch.close()
                await events.in_thread(release)
            return self._headers(StreamingHttpResponse(_no_body()))

        return await self.dispatch_async(request, serve, turn_id=turn_id)

    async def aget(self, request: HttpRequest, turn_id: str) -> HttpResponseBase:
        """GET on the event loop: the stream awaits changes holding no thread."""

        async def serve(drf_request: Request) -> HttpResponseBase:
            watch, release = await self._watch_opened(drf_request, turn_id)
            try:
                # Subscribed and read before the 200 goes out: with Redis down, a 503.
                first = await events.in_thread(_sse, await watch.start())
            except BaseException:
                watch.close()
                await events.in_thread(release)
                raise
            stream = _AsyncStream(first, watch, release)
            response = self._headers(StreamingHttpResponse(stream))
            # Django closes only the response the server sends: a hang-up while the
            # middleware handle this one (before its first byte) would leave it held.
            response_hold(request, response, stream.close)
            return response

        return await self.dispatch_async(request, serve, turn_id=turn_id)

    async def _watch_opened(
        self, request: Request, turn_id: str
    ) -> tuple[events.AsyncTurnWatch, Callable[[], None]]:
        """Open the turn in a thread (``_open_checked``) and make its watch, not started yet;
        the watch and the function giving the slots back."""
        # The slots the open takes are given back if the client hangs up meanwhile.
        turn, release = await to_its_end(
            events.in_thread(self._open_checked, request, turn_id),
            undo=lambda opened: events.in_thread(opened[1]),
        )
        watch = events.AsyncTurnWatch(
            turn=turn,
            refresh=functools.partial(turn_reread, request.user),
            timeout=STREAM_MAX_SECONDS,
            tick=KEEPALIVE_SECONDS,
        )
        return watch, release

    def _open_checked(self, request: Request, turn_id: str) -> tuple[Turn, Callable[[], None]]:
        """DRF's own checks (authentication, throttles), then ``_open``."""
        self.initial(request, turn_id=turn_id)
        return self._open(request, turn_id)

    def _open(self, request: Request, turn_id: str) -> tuple[Turn, Callable[[], None]]:
        turn = selectors.turn_get_for_owner(user=request.user, turn_id=turn_id)
        return turn, stream_slots_take(user_id=request.user.pk)

    def _response(self, request: Request, turn: Turn, release) -> StreamingHttpResponse:
        watch = events.turn_watch(
            turn=turn,
            refresh=functools.partial(turn_reread, request.user),
            timeout=STREAM_MAX_SECONDS,
            tick=KEEPALIVE_SECONDS,
            gone=client_gone(request),
        )
        # Subscribe and read before the 200 goes out: with Redis down this is a 503, not a
        # broken stream. CPython closes the generator (and its subscription) with the
        # response.
        first = next(watch)
        chunks = _Releasing(self._stream(first, watch), release, watch)
        response = self._headers(StreamingHttpResponse(streamable(request, chunks)))
        response_hold(request._request, response, chunks.close)  # replaced by an error below
        return response

    @staticmethod
    def _headers(response: StreamingHttpResponse) -> StreamingHttpResponse:
        response["Content-Type"] = "text/event-stream"
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
