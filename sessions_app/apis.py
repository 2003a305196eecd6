"""DRF views, one per operation: parse input, call one service or selector, serialize."""

import asyncio
import contextlib
import functools
import inspect
import json
import re
import select
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from types import MappingProxyType

from asgiref.sync import SyncToAsync, sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.db import connections
from django.http import HttpRequest, HttpResponseBase, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, status
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.generics import GenericAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import UserRateThrottle
from rest_framework.views import APIView

from core.api import (
    RETRY_AFTER,
    ErrorSerializer,
    FirstRendererNegotiation,
    LoggedUserMixin,
    PagePagination,
    errors,
    streamable,
)
from core.errors import ServiceUnavailable

from . import events, selectors, services, stateless, tasks, tokens
from .llm import LLMError
from .models import Turn
from .serializers import (
    MessageCreateSerializer,
    MessageSerializer,
    SessionCreateSerializer,
    SessionSerializer,
    StatelessChatRequestSerializer,
    StatelessChatSerializer,
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


def _turn_events() -> dict:
    """The stream's body as OpenAPI 3.0 says it: text, read event by event as it comes."""
    return {
        "type": "string",
        "description": "Server-sent events: `event: turn` lines, each followed by a `data:` "
        "line holding the whole turn (`Turn`) as JSON and a blank line; `:` comment lines "
        "keep the connection alive.",
        "example": 'event: turn\ndata: {"id": "...", "status": "completed", ...}\n\n',
    }


class ChatRateThrottle(UserRateThrottle):
    """Messages a user may post, over all sessions and the stateless endpoint."""

    scope = "chat"

    def get_rate(self) -> str:
        # Read at request time so the setting can change without re-importing DRF.
        return settings.CHAT_THROTTLE_RATE


class AuthTokenApi(LoggedUserMixin, APIView):
    def get_authenticators(self) -> list:
        # Signing in reads the credentials in the body: a client holding an expired or
        # revoked token must still get a new one. Signing out names the token itself.
        # (The schema generator asks before it has a request.)
        if getattr(self.request, "method", None) == "POST":
            return []
        return [tokens.TokenAuthentication()]

    def get_permissions(self) -> list:
        return [] if getattr(self.request, "method", None) == "POST" else super().get_permissions()

    @extend_schema(
        request=TokenRequestSerializer,
        parameters=[RETRY_AFTER],
        responses={
            200: TokenSerializer,
            **errors(400, 413, 503),
            429: OpenApiResponse(
                ErrorSerializer, description="Too many failed sign-ins; see Retry-After."
            ),
        },
        auth=[],
    )
    def post(self, request: Request) -> Response:
        """Sign in: a new API token for the username and password, and when it expires.

        Each sign-in issues a new token; earlier ones stay valid until they expire or are
        signed out. Past the failed-sign-in limit, 429 with `Retry-After`, right or wrong.
        """
        data = TokenRequestSerializer(data=request.data, context={"request": request})
        data.is_valid(raise_exception=True)
        key, expires_at = tokens.auth_token_issue(user=data.validated_data["user"])
        return Response(TokenSerializer({"token": key, "expires_at": expires_at}).data)

    @extend_schema(request=None, responses={204: None, **errors(400, 401, 503)})
    def delete(self, request: Request) -> Response:
        """Sign the calling token out: it gets 401 from then on; other tokens stay valid."""
        tokens.auth_token_revoke(token=request.auth)
        return Response(status=status.HTTP_204_NO_CONTENT)


class SessionListCreateApi(LoggedUserMixin, GenericAPIView):
    serializer_class = SessionSerializer
    pagination_class = PagePagination

    def get_queryset(self):
        return selectors.chat_session_list_for_owner(user=self.request.user)

    @extend_schema(
        responses={
            200: SessionSerializer(many=True),
            **errors(400, 401, 503),
            404: OpenApiResponse(ErrorSerializer, description="No such page."),
        }
    )
    def get(self, request: Request) -> Response:
        """List the caller's live sessions, a page at a time (`?page=N`)."""
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(SessionSerializer(page, many=True).data)

    @extend_schema(
        request=SessionCreateSerializer,
        responses={201: SessionSerializer, **errors(400, 401, 413, 503)},
    )
    def post(self, request: Request) -> Response:
        """Start a session (a conversation) owned by the caller, with an optional title."""
        data = SessionCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        tasks.beat_jobs_if_due()
        session = services.chat_session_create(owner=request.user, **data.validated_data)
        return Response(SessionSerializer(session).data, status=status.HTTP_201_CREATED)


class SessionDetailApi(LoggedUserMixin, APIView):
    @extend_schema(
        parameters=[SESSION_ID], responses={200: SessionSerializer, **errors(400, 401, 404, 503)}
    )
    def get(self, request: Request, session_id: str) -> Response:
        """Read one of the caller's sessions; anyone else's, or an expired one, is 404."""
        session = selectors.chat_session_get_for_owner(user=request.user, session_id=session_id)
        return Response(SessionSerializer(session).data)

    @extend_schema(parameters=[SESSION_ID], responses={204: None, **errors(400, 401, 404, 503)})
    def delete(self, request: Request, session_id: str) -> Response:
        """Delete the session: its content is erased everywhere it is kept, its turn stops."""
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


def _client_gone(request: Request) -> Callable[[], bool]:
    """Under gunicorn, tell whether the client hung up: its socket reads as closed.

    A wait or a stream the client left then gives its thread back at once, instead of at
    the turn's end (the turn itself goes on). Elsewhere (TLS sockets, other servers) never.
    """
    sock = request.META.get("gunicorn.socket")
    if sock is None or isinstance(sock, ssl.SSLSocket):
        return events.never

    def gone() -> bool:
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            return bool(readable) and not sock.recv(1, socket.MSG_PEEK)
        except (OSError, ValueError):
            return True

    return gone


def _turn_wait(*, user, turn: Turn, timeout: float, gone: Callable[[], bool] | None = None) -> Turn:
    """Return the just-accepted turn once it has ended, or as it is after ``timeout``.

    Every read goes through ``turn_refresh_for_owner``: the message is stored, so a
    connection lost now must not turn into an error that makes the client send it again.
    """
    refresh = functools.partial(_refresh, user)
    if timeout <= 0:
        return refresh(turn)
    watch = events.turn_watch(
        turn=turn,
        refresh=functools.partial(_refresh_when_ended, user),
        timeout=timeout,
        poll_if_down=True,
        gone=gone,
    )
    for seen in watch:
        turn = seen or turn
    return turn if turn.is_finished else refresh(turn)


async def _turn_wait_async(*, user, turn: Turn, timeout: float) -> Turn:
    """``_turn_wait`` on the event loop: no thread is held between the re-reads."""
    refresh = functools.partial(_refresh, user)
    if timeout <= 0:
        return await events.in_thread(refresh, turn)
    watch = events.AsyncTurnWatch(
        turn=turn,
        refresh=functools.partial(_refresh_when_ended, user),
        timeout=timeout,
        poll_if_down=True,
    )
    try:
        turn = await watch.start()
        async for seen in watch:
            turn = seen or turn
    finally:
        watch.close()
    return turn if turn.is_finished else await events.in_thread(refresh, turn)


def _refresh(user, turn: Turn) -> Turn:
    return selectors.turn_refresh_for_owner(user=user, turn=turn)


def _refresh_when_ended(user, turn: Turn) -> Turn:
    # A wait answers nothing before its turn ends: until then a notification ("running")
    # costs one small query, not the turn, its messages and the vault.
    return _refresh(user, turn) if selectors.turn_ended_for_owner(user=user, turn=turn) else turn


def _wait_slots(*, user_id: int, wait: int | None) -> tuple[int, Callable[[], None]]:
    """Take the slots a ``?wait`` holds; return how long it may wait and their release.

    The caller's own slot first: past ``MAX_WAITS_PER_USER`` that is 429, and nothing is
    stored. Then one of the process's: if none is free the message is still accepted and
    answered at once (202; the client polls), rather than queued behind other waits.
    """
    if not wait:
        return 0, _nothing
    release_user = events.wait_slot_acquire(user_id=user_id)
    release_budget = events.wait_budget_take()
    if release_budget is None:
        release_user()
        return 0, _nothing
    return wait, _both(release_budget, release_user)


def _stream_slots(*, user_id: int) -> Callable[[], None]:
    """Take the slots a stream holds (429 past the caller's own, 503 past the process's)."""
    release_user = events.wait_slot_acquire(user_id=user_id)
    release_budget = events.wait_budget_take()
    if release_budget is None:
        release_user()
        raise events.WaitBudgetSpent()
    return _both(release_budget, release_user)


def _both(first: Callable[[], None], second: Callable[[], None]) -> Callable[[], None]:
    def release() -> None:
        try:
            first()
        finally:
            second()

    return release


def _request_thread_release() -> None:
    """Let the request's own thread end while the request has nothing for it to do.

    Under ASGI Django runs a request's synchronous parts (middleware hooks, signals) on a
    thread of that request's own, kept until the response is sent and idle in between: a
    thousand open streams would be a thousand idle threads. This ends it now, after
    closing its database connections as the request's end would; a later synchronous step
    of the request (the response's close) gets a new one. It uses asgiref's per-request
    executors; where they are not as expected it does nothing.
    """
    context = getattr(SyncToAsync, "thread_sensitive_context", None)
    executors = getattr(SyncToAsync, "context_to_thread_executor", None)
    current = context.get(None) if context is not None else None
    if current is None or executors is None or getattr(current, "_executor", None) is not None:
        return
    executor = executors.pop(current, None)
    if executor is not None:
        executor.submit(connections.close_all)
        executor.shutdown(wait=False)


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class _ServerModeView:
    """A DRF view that is a coroutine view under ASGI and a plain one under WSGI.

    Django asks each request's handler whether a view is a coroutine function: the ASGI
    handler asks on the event loop, the WSGI one in the request's thread. So the answer
    follows the server: under WSGI the DRF view runs in the request's thread as before
    (no event loop made per request on the hot path), and under ASGI ``async_methods``
    run on the server's event loop while any other method runs in a thread as Django
    runs a plain view there.
    """

    def __init__(self, cls, initkwargs: dict, sync_view, async_methods: dict[str, str]) -> None:
        functools.update_wrapper(self, sync_view)  # name, csrf_exempt, cls, initkwargs
        self.view_class, self.view_initkwargs = cls, initkwargs
        self.sync_view = sync_view
        self.async_methods = async_methods
        self.in_thread = sync_to_async(sync_view)

    # How asgiref (and so Django) tells a coroutine function: Python 3.11, then 3.12+.
    @property
    def _is_coroutine(self):
        return asyncio.coroutines._is_coroutine if _in_event_loop() else None

    @property
    def _is_coroutine_marker(self):
        return getattr(inspect, "_is_coroutine_mark", None) if _in_event_loop() else None

    def __call__(self, request: HttpRequest, *args, **kwargs):
        if not _in_event_loop():
            return self.sync_view(request, *args, **kwargs)
        return self._serve(request, *args, **kwargs)

    async def _serve(self, request: HttpRequest, *args, **kwargs) -> HttpResponseBase:
        method = self.async_methods.get(request.method)
        if method is None or not isinstance(request, ASGIRequest):
            return await self.in_thread(request, *args, **kwargs)
        view = self.view_class(**self.view_initkwargs)
        view.setup(request, *args, **kwargs)
        return await getattr(view, method)(request, *args, **kwargs)


class _AsyncDispatch:
    """DRF's dispatch for a method served on the event loop (see ``_ServerModeView``).

    Authentication, permissions, throttles, parsing and the error answer are DRF's own,
    run on the database pool (they read the database and the cache); ``serve`` gets the
    DRF request and awaits what it must.
    """

    async def dispatch_async(self, request: HttpRequest, serve, **kwargs) -> HttpResponseBase:
        drf_request = self.initialize_request(request, **kwargs)
        self.args, self.kwargs = (), kwargs
        self.request, self.headers = drf_request, self.default_response_headers
        try:
            response = await serve(drf_request)
        except Exception as exc:
            response = await events.in_thread(self.handle_exception, exc)
        return self.finalize_response(drf_request, response, **kwargs)


class MessageListCreateApi(_AsyncDispatch, LoggedUserMixin, GenericAPIView):
    serializer_class = MessageSerializer
    pagination_class = PagePagination

    @classmethod
    def as_view(cls, **initkwargs):
        """Under ASGI a POST runs ``apost`` on the event loop; see ``_ServerModeView``."""
        return _ServerModeView(cls, initkwargs, super().as_view(**initkwargs), {"POST": "apost"})

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
            **errors(400, 401, 503),
            404: PAGE_NOT_FOUND,
        },
    )
    def get(self, request: Request, session_id: str) -> Response:
        """List the session's messages in `seq` order, 100 a page (`?page=N`)."""
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
            RETRY_AFTER,
        ],
        responses={
            200: OpenApiResponse(TurnSerializer, description="The turn ended within ?wait."),
            202: OpenApiResponse(TurnSerializer, description="The turn is accepted."),
            **errors(400, 401, 404, 409, 413, 503),
            429: OpenApiResponse(
                ErrorSerializer,
                description="Too many messages, or too many waits and streams of the caller's "
                "open at once (the message is not stored); see Retry-After.",
            ),
        },
    )
    def post(self, request: Request, session_id: str) -> Response:
        """Post a message: 202 with the new turn (`pending`), Claude answers in the background.

        With `?wait=N` (0-60), wait up to N seconds for the turn to end: 200 with the ended
        turn, or 202 if it has not ended by then. A second message while a turn of the session
        is in flight is 409; too many waits of the caller's open at once, 429.
        """
        wait = _wait_seconds(request)
        turn, timeout, release = self._accept(request, session_id, wait)
        try:  # every way out gives the slots back, an error answer's too
            turn = _turn_wait(
                user=request.user, turn=turn, timeout=timeout, gone=_client_gone(request)
            )
        finally:
            release()
        return self._answer(TurnSerializer(turn).data, ended=wait is not None and turn.is_finished)

    async def apost(self, request: HttpRequest, session_id: str) -> HttpResponseBase:
        """POST on the event loop: the accept and each re-read in a thread, the wait awaited."""

        async def serve(drf_request: Request) -> Response:
            turn, wait, timeout, release = await events.in_thread(
                self._accept_checked, drf_request, session_id
            )
            try:
                if timeout:
                    _request_thread_release()
                    turn = await _turn_wait_async(user=drf_request.user, turn=turn, timeout=timeout)
                data = await events.in_thread(lambda: TurnSerializer(turn).data)
            finally:
                await events.in_thread(release)
            return self._answer(data, ended=wait is not None and turn.is_finished)

        return await self.dispatch_async(request, serve, session_id=session_id)

    def _accept_checked(self, request: Request, session_id: str) -> tuple:
        """DRF's own checks (authentication, the throttle), then ``_accept``."""
        self.initial(request, session_id=session_id)
        wait = _wait_seconds(request)
        turn, timeout, release = self._accept(request, session_id, wait)
        return turn, wait, timeout, release

    def _accept(self, request: Request, session_id: str, wait: int | None) -> tuple:
        """Validate, take the wait's slots, store the message and queue its turn.

        Return the turn, how long to wait for it and the slots' release.
        """
        data = MessageCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        # Taken before anything is stored: a 429 for too many waits leaves no message.
        timeout, release = _wait_slots(user_id=request.user.pk, wait=wait)
        try:
            tasks.beat_jobs_if_due()  # before anything is stored: an error here leaves nothing
            turn = services.message_accept(
                user=request.user, session_id=session_id, content=data.validated_data["content"]
            )
            tasks.turn_enqueue(turn=turn)
        except BaseException:
            release()
            raise
        return turn, timeout, release

    @staticmethod
    def _answer(data: dict, *, ended: bool) -> Response:
        return Response(data, status=status.HTTP_200_OK if ended else status.HTTP_202_ACCEPTED)


class TurnDetailApi(LoggedUserMixin, APIView):
    @extend_schema(
        parameters=[TURN_ID], responses={200: TurnSerializer, **errors(400, 401, 404, 503)}
    )
    def get(self, request: Request, turn_id: str) -> Response:
        """Read a turn of the caller's: its status, message, reply or error."""
        turn = selectors.turn_get_for_owner(user=request.user, turn_id=turn_id)
        return Response(TurnSerializer(turn).data)


def _nothing() -> None:
    return None


class _Releasing:
    """The stream's chunks, giving its wait slot back when the server closes the stream.

    A generator not yet started runs no ``finally`` when closed; this ``close`` always runs.
    """

    def __init__(self, chunks: Iterator[str], release) -> None:
        self.chunks = chunks
        self.release = release

    def __iter__(self) -> "_Releasing":
        return self

    def __next__(self) -> str:
        return next(self.chunks)

    def close(self) -> None:
        try:
            self.chunks.close()
        finally:
            self.release()


def _sse(turn: Turn) -> str:
    return f"event: turn\ndata: {json.dumps(TurnSerializer(turn).data, default=str)}\n\n"


class _AsyncStream:
    """The stream's chunks on the event loop, its first one already read.

    Django calls ``close`` when the response ends, after a hang-up too (an async
    generator's ``finally`` would run only when it is collected): it ends the subscription
    and gives the slots back.
    """

    def __init__(self, first: str, watch: events.AsyncTurnWatch, release) -> None:
        self.first = first
        self.watch = watch
        self.release = release
        self.closed = False

    def __aiter__(self) -> AsyncIterator[str]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[str]:
        _request_thread_release()  # the middleware are done: nothing for it until the end
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


class TurnEventsApi(_AsyncDispatch, LoggedUserMixin, APIView):
    content_negotiation_class = FirstRendererNegotiation

    @classmethod
    def as_view(cls, **initkwargs):
        """Under ASGI the stream runs on the event loop (``aget``); see ``_ServerModeView``."""
        return _ServerModeView(cls, initkwargs, super().as_view(**initkwargs), {"GET": "aget"})

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

    async def aget(self, request: HttpRequest, turn_id: str) -> HttpResponseBase:
        """GET on the event loop: the stream awaits changes holding no thread."""

        async def serve(drf_request: Request) -> HttpResponseBase:
            turn, release = await events.in_thread(self._open_checked, drf_request, turn_id)
            watch = events.AsyncTurnWatch(
                turn=turn,
                refresh=functools.partial(_refresh, drf_request.user),
                timeout=STREAM_MAX_SECONDS,
                tick=KEEPALIVE_SECONDS,
            )
            try:
                # Subscribed and read before the 200 goes out: with Redis down, a 503.
                first = await events.in_thread(_sse, await watch.start())
            except BaseException:
                watch.close()
                await events.in_thread(release)
                raise
            return self._headers(StreamingHttpResponse(_AsyncStream(first, watch, release)))

        return await self.dispatch_async(request, serve, turn_id=turn_id)

    def _open_checked(self, request: Request, turn_id: str) -> tuple[Turn, Callable[[], None]]:
        """DRF's own checks (authentication, throttles), then ``_open``."""
        self.initial(request, turn_id=turn_id)
        return self._open(request, turn_id)

    def _open(self, request: Request, turn_id: str) -> tuple[Turn, Callable[[], None]]:
        turn = selectors.turn_get_for_owner(user=request.user, turn_id=turn_id)
        return turn, _stream_slots(user_id=request.user.pk)

    def _response(self, request: Request, turn: Turn, release) -> StreamingHttpResponse:
        watch = events.turn_watch(
            turn=turn,
            refresh=functools.partial(_refresh, request.user),
            timeout=STREAM_MAX_SECONDS,
            tick=KEEPALIVE_SECONDS,
            gone=_client_gone(request),
        )
        # Subscribe and read before the 200 goes out: with Redis down this is a 503, not a
        # broken stream. CPython closes the generator (and its subscription) with the
        # response.
        first = next(watch)
        chunks = _Releasing(self._stream(first, watch), release)
        return self._headers(StreamingHttpResponse(streamable(request, chunks)))

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


# Stateless sessions ------------------------------------------------------------------------

TOKEN_STATUSES = MappingProxyType(
    {
        stateless.TokenOtherUser: status.HTTP_403_FORBIDDEN,
        stateless.TokenTooLarge: status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    }
)
CLAUDE_UNAVAILABLE = (
    "The assistant could not answer in time; your token is unchanged: send it again "
    "with your message."
)


class StatelessTokenError(exceptions.APIException):
    """A stateless token that cannot be used: 400 (malformed, truncated, altered, expired),
    403 (another user's) or 413 (the next one would be too large)."""

    def __init__(self, error: stateless.TokenError) -> None:
        self.status_code = TOKEN_STATUSES.get(type(error), status.HTTP_400_BAD_REQUEST)
        super().__init__(error.detail, error.code)


@contextlib.contextmanager
def _stateless_errors() -> Iterator[None]:
    """Answer the stateless turn's neutral errors as the API's."""
    try:
        yield
    except stateless.TokenError as exc:
        raise StatelessTokenError(exc) from exc
    except LLMError as exc:
        raise ServiceUnavailable(CLAUDE_UNAVAILABLE) from exc


class StatelessChatApi(LoggedUserMixin, APIView):
    """One turn of a stateless conversation: its history comes and goes in the token.

    Under ASGI a turn awaits Claude on the event loop, holding no thread while it waits;
    under WSGI it runs in the request's thread (see ``as_view``).
    """

    throttle_classes = [ChatRateThrottle]

    @classmethod
    def as_view(cls, **initkwargs):
        """Return the endpoint: a coroutine view, as Django serves it under either server.

        Under ASGI a POST runs ``apost`` on the server's event loop. Anything else, and
        every request under WSGI (where Django runs a coroutine view in a one-off loop),
        goes to the plain DRF view in the request's own thread: synchronous, with the
        process's sync Claude client.
        """
        in_thread = sync_to_async(super().as_view(**initkwargs))

        async def view(request: HttpRequest, *args, **kwargs) -> HttpResponseBase:
            if isinstance(request, ASGIRequest) and request.method == "POST":
                self = cls(**initkwargs)
                self.setup(request, *args, **kwargs)
                return await self.apost(request, *args, **kwargs)
            return await in_thread(request, *args, **kwargs)

        # How drf-spectacular finds the DRF view behind a URL.
        view.cls, view.initkwargs = cls, initkwargs
        return csrf_exempt(view)  # as DRF's views: SessionAuthentication checks CSRF itself

    @extend_schema(
        request=StatelessChatRequestSerializer,
        parameters=[RETRY_AFTER],
        responses={
            200: StatelessChatSerializer,
            **errors(400, 401, 403),
            413: OpenApiResponse(
                ErrorSerializer, description="Request body too large, or the next token would be."
            ),
            **errors(429, 503),
        },
        description="One turn of a stateless conversation: the history travels in `token` "
        "(null on the first turn), encrypted, bound to the caller and expiring; nothing of it "
        "is kept on the server. A token may be sent again: that forks the conversation. "
        "On any error the last token stays good.",
    )
    def post(self, request: Request) -> Response:
        data = self._input(request)
        with _stateless_errors():
            result = stateless.stateless_chat(user_id=request.user.pk, **data)
        return Response(StatelessChatSerializer(result).data)

    async def apost(self, request: HttpRequest, *args, **kwargs) -> HttpResponseBase:
        """POST on the event loop: DRF's dispatch, with only Claude awaited.

        Authentication, permissions, the throttle, parsing and the error answer are DRF's
        own, run in a thread: they read the database and the cache.
        """
        drf_request = self.initialize_request(request, *args, **kwargs)
        self.request, self.headers = drf_request, self.default_response_headers
        try:
            data = await sync_to_async(self._accept)(drf_request, *args, **kwargs)
            with _stateless_errors():
                result = await stateless.stateless_chat_async(user_id=drf_request.user.pk, **data)
            response = Response(StatelessChatSerializer(result).data)
        except Exception as exc:
            response = await sync_to_async(self.handle_exception)(exc)
        return self.finalize_response(drf_request, response, *args, **kwargs)

    def _accept(self, request: Request, *args, **kwargs) -> dict:
        self.initial(request, *args, **kwargs)
        return self._input(request)

    def _input(self, request: Request) -> dict:
        data = StatelessChatRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return {"token": data.validated_data["token"], "content": data.validated_data["content"]}
