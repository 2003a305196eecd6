"""MAX_REQUEST_BYTES at the door, measured exactly: how much of a body the wrappers around
the WSGI and the ASGI application read before answering 413 (the servers read on their
behalf, so what they read is this plus the servers' own small buffers)."""

import asyncio
import io
import json

from core.bodylimit import AsgiBodyLimit, WsgiBodyLimit

CHUNK = 64 * 1024


class CountingStream(io.RawIOBase):
    """An endless request body that counts what was read of it."""

    def __init__(self) -> None:
        self.taken = 0

    def read(self, size: int = -1) -> bytes:
        size = CHUNK if size is None or size < 0 else size
        self.taken += size
        return b"x" * size


def _never_called(environ, start_response):
    raise AssertionError("the application must not see a body over the limit")


def test_wsgi_a_chunked_body_is_read_no_further_than_the_limit_and_one_byte(settings):
    settings.MAX_REQUEST_BYTES = 1024 * 1024
    body = CountingStream()
    statuses: list[str] = []
    environ = {"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input": body}
    answer = WsgiBodyLimit(_never_called)(environ, lambda status, headers: statuses.append(status))
    assert statuses == ["413 Request Entity Too Large"]
    assert json.loads(b"".join(answer))["code"] == "request_too_large"
    assert body.taken == settings.MAX_REQUEST_BYTES + 1


def test_wsgi_a_declared_length_over_the_limit_reads_nothing(settings):
    settings.MAX_REQUEST_BYTES = 1024
    body = CountingStream()
    statuses: list[str] = []
    environ = {"CONTENT_LENGTH": str(50 * 1024 * 1024), "wsgi.input": body}
    WsgiBodyLimit(_never_called)(environ, lambda status, headers: statuses.append(status))
    assert statuses == ["413 Request Entity Too Large"] and body.taken == 0


def test_wsgi_a_chunked_body_under_the_limit_reaches_the_app_with_its_length(settings):
    settings.MAX_REQUEST_BYTES = 1024
    seen = {}

    def app(environ, start_response):
        seen["length"] = environ["CONTENT_LENGTH"]
        seen["body"] = environ["wsgi.input"].read()
        start_response("200 OK", [])
        return [b""]

    environ = {"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input": io.BytesIO(b'{"a": 1}')}
    WsgiBodyLimit(app)(environ, lambda status, headers: None)
    assert seen == {"length": "8", "body": b'{"a": 1}'}


def test_asgi_reads_no_further_than_the_limit_and_one_chunk(settings):
    settings.MAX_REQUEST_BYTES = 1024 * 1024
    received = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal received
        received += CHUNK
        return {"type": "http.request", "body": b"x" * CHUNK, "more_body": True}

    async def send(message: dict) -> None:
        sent.append(message)

    async def never_called(scope, receive, send):
        raise AssertionError("the application must not see a body over the limit")

    scope = {"type": "http", "headers": [(b"transfer-encoding", b"chunked")]}
    asyncio.run(AsgiBodyLimit(never_called)(scope, receive, send))
    assert sent[0]["status"] == 413
    assert received <= settings.MAX_REQUEST_BYTES + CHUNK
