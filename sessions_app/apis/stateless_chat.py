"""One turn of a stateless conversation."""

import contextlib
from collections.abc import Iterator
from types import MappingProxyType

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponseBase
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api import (
    RETRY_AFTER,
    ErrorSerializer,
    LoggedUserMixin,
    errors,
)
from core.errors import ServiceUnavailable
from core.logcontext import request_bound

from .. import stateless
from ..llm import LLMError
from ..serializers import (
    StatelessChatRequestSerializer,
    StatelessChatSerializer,
)
from .common import (
    ChatRateThrottle,
)

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
        with request_bound():  # as the sync dispatch (``LoggedUserMixin``) binds it
            drf_request = self.initialize_request(request, *args, **kwargs)
            self.request, self.headers = drf_request, self.default_response_headers
            try:
                data = await sync_to_async(self._accept)(drf_request, *args, **kwargs)
                with _stateless_errors():
                    result = await stateless.stateless_chat_async(
                        user_id=drf_request.user.pk, **data
                    )
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
