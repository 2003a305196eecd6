"""Middleware: every error answer JSON (oversize bodies, outages), the API never cached, and
nothing a view holds for its response kept when the server never gets that response."""

import asyncio
import logging
import sys
from collections.abc import Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core.signals import got_request_exception
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.utils.cache import patch_cache_control
from whitenoise.middleware import WhiteNoiseMiddleware

from .errors import error_body, is_outage

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1/"


class _EitherMode:
    """A middleware that runs in the request's thread under WSGI and on the event loop
    under ASGI: a coroutine view (``?wait``, the event stream) then awaits without a thread
    blocked in the middleware chain for as long as it waits.

    ``before`` may answer the request itself; ``after`` finishes the response. Both only
    read headers: nothing here does I/O.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if iscoroutinefunction(self):
            return self.__acall__(request)
        if (early := self.before(request)) is not None:
            return early
        return self.after(request, self.get_response(request))

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        if (early := self.before(request)) is not None:
            return early
        return self.after(request, await self.get_response(request))

    def before(self, request: HttpRequest) -> HttpResponse | None:
        return None

    def after(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        return response


class StaticFilesMiddleware(_EitherMode):
    """WhiteNoise's static files (the admin's, the chat page's, /api/docs/'s), and every
    other request passed straight on.

    WhiteNoise's own middleware is synchronous only: under ASGI, Django would run it, and
    every request below it, ``?wait`` included, in a thread held until the answer is
    complete. Here only a request for a static file reaches it.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        super().__init__(get_response)
        # No file at the path: None, and the request goes on down the chain.
        self.files = WhiteNoiseMiddleware(get_response=lambda request: None)

    def before(self, request: HttpRequest) -> HttpResponse | None:
        return self.files(request)


def response_hold(
    request: HttpRequest, response: HttpResponseBase, close: Callable[[], None]
) -> None:
    """Have ``close`` called if ``response`` never reaches the server.

    For what a view holds until the server closes its response (a stream's wait slots and
    subscription): the server closes only the response it is handed. ``close`` must be
    idempotent (the server may close the response too) and may run in any thread.
    """
    holds = request.__dict__.setdefault(_HOLDS, [])
    holds.append((response, close))


_HOLDS = "_response_holds"


class UnsentResponseMiddleware(_EitherMode):
    """Close what a view holds for a response that is not the one the server gets.

    Outermost, so that it sees every step after the view. Under ASGI, when the client hangs
    up while the middleware handle the response (each sync hook a hop to a thread), Django
    cancels the request and sends ``request_finished``, but never closes the response it
    did not get back; and a middleware failing after the view replaces the view's
    response with an error one, under either server. Either way what the view's response
    holds would be held for good.
    """

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if iscoroutinefunction(self):
            return self.__acall__(request)
        try:
            response = self.get_response(request)
        except BaseException:
            for close in _unsent(request, None):
                _logged(close)
            raise
        for close in _unsent(request, response):
            _logged(close)
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        try:
            response = await self.get_response(request)
        except BaseException:  # a cancel above all: nothing may be awaited any more
            _close_in_thread(_unsent(request, None))
            raise
        _close_in_thread(_unsent(request, response))
        return response


def _unsent(request: HttpRequest, sent: HttpResponseBase | None) -> list[Callable[[], None]]:
    return [close for response, close in request.__dict__.pop(_HOLDS, ()) if response is not sent]


def _close_in_thread(closes: list[Callable[[], None]]) -> None:
    # Off the event loop (a close may wait on Redis), and not awaited: after a cancel the
    # request's task must end at once, and the close needs nothing from it.
    if closes:
        loop = asyncio.get_running_loop()
        for close in closes:
            loop.run_in_executor(None, _logged, close)


def _logged(close: Callable[[], None]) -> None:
    try:
        close()
    except Exception:
        logger.exception("closing an unsent response failed")


class NoStoreApiMiddleware(_EitherMode):
    """Say ``Cache-Control: no-store`` on every answer under ``/api/v1/``.

    Every one of them may carry conversation or account data: no browser, proxy or CDN
    cache may keep one user's answer and hand it to another.
    """

    def after(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        if request.path_info.startswith(API_PREFIX):  # behind a SCRIPT_NAME too
            patch_cache_control(response, no_store=True, private=True)
        return response


class RequestSizeLimitMiddleware(_EitherMode):
    """Answer 413 before reading a body larger than ``MAX_REQUEST_BYTES``."""

    def before(self, request: HttpRequest) -> HttpResponse | None:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return JsonResponse(
                error_body("The Content-Length header is not a number.", "invalid"), status=400
            )
        if length > settings.MAX_REQUEST_BYTES:
            detail = f"The request body is larger than {settings.MAX_REQUEST_BYTES} bytes."
            return JsonResponse(error_body(detail, "request_too_large"), status=413)
        return None


class ServiceUnavailableMiddleware(_EitherMode):
    """Answer 503 JSON when a backing service fails outside the DRF views (sessions, admin).

    A view's exception reaches ``process_exception``. One raised by a middleware below this
    one (say, the session middleware saving to a dead cache) never reaches us as an
    exception: Django turns it into a 500 (an HTML page under ``DEBUG``) where it is raised.
    ``got_request_exception`` is sent while that exception is handled, so it marks the
    request, and the 500 is replaced here.
    """

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if iscoroutinefunction(self):
            return self.__acall__(request)
        try:
            return self.after(request, self.get_response(request))
        except Exception as exc:
            return self._outage(exc)

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        try:
            return self.after(request, await self.get_response(request))
        except Exception as exc:
            return self._outage(exc)

    def after(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        if response.status_code == 500 and getattr(request, OUTAGE_MARK, False):
            return unavailable_response()
        return response

    def _outage(self, exc: Exception) -> HttpResponse:
        if not is_outage(exc):
            raise exc
        logger.warning("service unavailable: %s", exc.__class__.__name__)
        return unavailable_response()

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
