"""A DRF view served on the event loop under ASGI and in its thread under WSGI."""

import asyncio
import contextlib
import contextvars
import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from asgiref.sync import SyncToAsync, sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.db import connections
from django.http import HttpRequest, HttpResponseBase

from core.logcontext import request_bound

from .. import events

T = TypeVar("T")


def request_thread_release() -> None:
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


class ServerModeView:
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


class AsyncDispatch:
    """DRF's dispatch for a method served on the event loop (see ``ServerModeView``).

    Authentication, permissions, throttles, parsing and the error answer are DRF's own,
    run on the database pool (they read the database and the cache); ``serve`` gets the
    DRF request and awaits what it must.
    """

    async def dispatch_async(self, request: HttpRequest, serve, **kwargs) -> HttpResponseBase:
        # As ``LoggedUserMixin.dispatch``: the user named by ``initial`` (in a thread, whose
        # context comes back here) must not outlive the request in a context that serves
        # the next one (a test client's, a server's that awaits its app in place).
        with request_bound():
            drf_request = self.initialize_request(request, **kwargs)
            self.args, self.kwargs = (), kwargs
            self.request, self.headers = drf_request, self.default_response_headers
            try:
                response = await serve(drf_request)
            except Exception as exc:
                response = await events.in_thread(self.handle_exception, exc)
            return self.finalize_response(drf_request, response, **kwargs)


async def despite_cancels(awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` to its end however many times the caller is cancelled meanwhile.

    Then return its result; or, if the caller was cancelled, go on with the cancel (one
    ``CancelledError``, the result dropped, an error ``awaitable`` ended with its cause).
    """
    task = asyncio.ensure_future(awaitable)
    cancel = None
    while not task.done():
        try:
            await asyncio.wait((task,))  # which, cancelled, leaves ``task`` running
        except asyncio.CancelledError as cancelled:
            cancel = cancel or cancelled
    if cancel is None:
        return task.result()
    raise cancel from (None if task.cancelled() else task.exception())


async def to_its_end(work: Coroutine[Any, Any, T], *, undo: Callable[[T], Awaitable[object]]) -> T:
    """Await ``work`` to its end even if the view is cancelled meanwhile.

    Django cancels a view whose client hung up, while what ``work`` runs in a thread goes
    on all the same: what it took (``undo`` of its result) is let go of before the cancel
    goes on. A cancel more (the server shutting down, say) interrupts neither. The context
    variables it sets (the user named in log lines) are kept, as if it had been awaited in
    place.
    """
    context = contextvars.copy_context()
    task = asyncio.get_running_loop().create_task(work, context=context)
    try:
        return await despite_cancels(task)
    except asyncio.CancelledError:
        if not task.cancelled() and task.exception() is None:  # failed work let go itself
            with contextlib.suppress(Exception):
                await despite_cancels(undo(task.result()))
        raise
    finally:
        for variable, value in context.items():  # as asgiref's sync_to_async keeps them
            if variable.get(_UNSET) is not value:
                variable.set(value)


_UNSET = object()
