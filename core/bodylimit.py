"""``MAX_REQUEST_BYTES`` enforced at the server's door, under WSGI and under ASGI.

Django's middleware sees a request only once the server handler has built it: under ASGI,
Django spools the whole body to disk first, and under WSGI a chunked body without a
``Content-Length`` reads as empty. These wrappers go around the Django application and
answer 413 having read at most the limit (plus one chunk), whether or not the body
declares its length.
"""

import io
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from django.conf import settings

from .errors import error_body

WsgiApp = Callable[[dict, Callable], Iterable[bytes]]
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


def _too_large() -> bytes:
    detail = f"The request body is larger than {settings.MAX_REQUEST_BYTES} bytes."
    return json.dumps(error_body(detail, "request_too_large")).encode()


class WsgiBodyLimit:
    """Answer 413 to a body over the limit; give Django a chunked body it can read."""

    def __init__(self, app: WsgiApp) -> None:
        self.app = app

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        limit = settings.MAX_REQUEST_BYTES
        declared = environ.get("CONTENT_LENGTH")
        if declared and declared.isdigit() and int(declared) > limit:
            return self._reject(start_response)
        if not declared and "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            body = environ["wsgi.input"].read(limit + 1)  # the server de-chunks it
            if len(body) > limit:
                return self._reject(start_response)
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
        return self.app(environ, start_response)

    def _reject(self, start_response: Callable) -> Iterable[bytes]:
        body = _too_large()
        start_response(
            "413 Request Entity Too Large",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ],
        )
        return [body]


class AsgiBodyLimit:
    """Read the body up to the limit before Django does; past it, answer 413 and stop."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = settings.MAX_REQUEST_BYTES
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await self._reject(send)
            return
        messages, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # http.disconnect: nothing to answer
                messages.append(message)
                break
            size += len(message.get("body", b""))
            if size > limit:
                await self._reject(send)
                return
            messages.append(message)
            if not message.get("more_body", False):
                break
        if not declared:
            # A chunked body, now read whole: say its length, as DRF reads none without it.
            length = (b"content-length", str(size).encode())
            scope = {**scope, "headers": [*scope.get("headers", []), length]}
        await self.app(scope, _replay(messages, receive), send)

    async def _reject(self, send: Send) -> None:
        body = _too_large()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _replay(messages: list[dict], receive: Receive) -> Receive:
    """Hand the app the body already read, then whatever the server says next."""
    pending = list(messages)

    async def replayed() -> dict:
        return pending.pop(0) if pending else await receive()

    return replayed
