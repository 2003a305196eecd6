"""Every API call of the suite checked against the live OpenAPI document with ``openapi-core``.

``conftest.py`` routes each request the Django test clients (DRF's ``APIClient`` included)
send under ``/api/v1/`` through ``exchange``. The validator is strict: the document must pass
``openapi-spec-validator``, and an object may hold no property the document does not declare.
Every response is validated (but the HTTPS policy's redirect of plain HTTP, which no API code
answers); a request only when it was accepted (2xx), since tests send malformed requests on
purpose to see them refused. An address or method the document does not describe must be
answered with the JSON 404 or 405 error body. An event stream is not read (the test reads
it): its status, content type and headers are validated; ``check_turn_events`` checks the
events of a stream read.
"""

import functools
import json
import re
import threading
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from django.http import HttpResponseBase
from django.test.client import FakePayload
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from openapi_core import Config, OpenAPI
from openapi_core.templating.paths.exceptions import OperationNotFound, PathNotFound
from openapi_core.testing import MockRequest, MockResponse
from openapi_core.validation.response.exceptions import MissingData
from openapi_schema_validator import OAS30ReadValidator

API_PREFIX = "/api/v1/"
HOST = "http://testserver"


# drf-spectacular's generator is not thread-safe: tests with many client threads would
# build the document at once on first use and crash inside it. One builds, others wait.
_build_lock = threading.Lock()
_validator_lock = threading.Lock()


@functools.cache
def _live_document() -> dict:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return json.loads(OpenApiJsonRenderer().render(schema))


def live_document() -> dict:
    """Return the OpenAPI document as ``/api/schema/?format=json`` serves it (built once)."""
    with _build_lock:
        return _live_document()


@functools.cache
def _strict_openapi() -> OpenAPI:
    config = Config(additional_properties_default_policy="forbid")
    return OpenAPI.from_dict(live_document(), config=config)


def strict_openapi() -> OpenAPI:
    """Return the live document's validator: checked itself, no undeclared property allowed."""
    live_document()  # outside the lock below: it takes the same one
    with _validator_lock:
        return _strict_openapi()


@functools.cache
def error_validator() -> OAS30ReadValidator:
    """Validate an error body (``Error``) outside any operation: unknown addresses, 405."""
    error = dict(live_document()["components"]["schemas"]["Error"], additionalProperties=False)
    return OAS30ReadValidator(error)


def is_api_call(environ: dict[str, Any]) -> bool:
    return str(environ.get("PATH_INFO", "")).startswith(API_PREFIX)


def take_body(environ: dict[str, Any]) -> bytes:
    """Return the request body the test client is about to send, leaving it in place."""
    payload = environ.get("wsgi.input")
    if payload is None:
        return b""
    body = payload.read()
    environ["wsgi.input"] = FakePayload(body)
    return body


def openapi_request(environ: dict[str, Any], body: bytes) -> MockRequest:
    """Return the request as ``openapi-core`` reads it, from the WSGI environment sent."""
    headers = {
        key.removeprefix("HTTP_").replace("_", "-").title(): str(value)
        for key, value in environ.items()
        if key.startswith("HTTP_") and key != "HTTP_COOKIE"
    }
    cookies = SimpleCookie(str(environ.get("HTTP_COOKIE", "")))
    content_type = str(environ.get("CONTENT_TYPE", ""))
    if content_type:
        headers["Content-Type"] = content_type
    return MockRequest(
        HOST,
        str(environ.get("REQUEST_METHOD", "GET")),
        str(environ["PATH_INFO"]),
        args=parse_qsl(str(environ.get("QUERY_STRING", "")), keep_blank_values=True),
        headers=headers,
        cookies={name: morsel.value for name, morsel in cookies.items()},
        data=body,
        content_type=content_type.split(";")[0].strip(),
    )


def openapi_response(response: HttpResponseBase) -> MockResponse:
    content_type = response.get("Content-Type", "")
    # A stream is the test's to read: see ``_stream_errors``.
    data = b"" if response.streaming else response.content
    return MockResponse(
        data,
        status_code=response.status_code,
        headers=dict(response.headers),
        content_type=content_type.split(";")[0].strip(),
    )


def exchange(environ: dict[str, Any], body: bytes, response: HttpResponseBase) -> None:
    """Fail the test if this call under ``/api/v1/`` does not keep to the document.

    ``environ`` is the whole WSGI environment the test client sent (its defaults and
    cookies included), ``body`` the request body.
    """
    if _https_redirect(environ, response):
        return
    head = environ.get("REQUEST_METHOD") == "HEAD"
    if head:
        # HEAD is GET without the body (RFC 9110): GET's operation describes its status
        # and headers, as it does a stream's.
        environ = {**environ, "REQUEST_METHOD": "GET"}
    openapi = strict_openapi()
    request = openapi_request(environ, body)
    try:
        if response.streaming or head:
            _stream_check(openapi, request, response)
        else:
            openapi.validate_response(request, openapi_response(response))
    except (PathNotFound, OperationNotFound):
        _undescribed(request, response)
        return
    if 200 <= response.status_code < 300:
        openapi.validate_request(request)


def _https_redirect(environ: dict[str, Any], response: HttpResponseBase) -> bool:
    """Tell whether this is the HTTPS policy sending plain HTTP to the same address on HTTPS.

    ``SECURE_HTTPS`` answers so before any API code runs: the document describes the API on
    the HTTPS server, which this request never reached.
    """
    if environ.get("wsgi.url_scheme") != "http" or response.status_code != 301:
        return False
    location = urlsplit(response["Location"])
    return location.scheme == "https" and location.path == environ["PATH_INFO"]


def _stream_check(openapi: OpenAPI, request: MockRequest, response: HttpResponseBase) -> None:
    """A stream: its status and headers as validated, its content type one declared for it.

    Its body is left for the test to read (any text is a string, as the schema says).
    """
    errors = [
        error
        for error in openapi.iter_response_errors(request, openapi_response(response))
        if not isinstance(error, MissingData)
    ]
    if errors:
        raise errors[0]
    operation = _operation(request)
    declared = operation["responses"][str(response.status_code)].get("content", {})
    assert response["Content-Type"].split(";")[0] in declared, (request.path, declared)


def _operation(request: MockRequest) -> dict:
    for template, operations in live_document()["paths"].items():
        pattern = re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, request.path):
            return operations[request.method]
    raise PathNotFound(request.path)


def _undescribed(request: MockRequest, response: HttpResponseBase) -> None:
    """An address or method not in the document: the JSON 404 or 405, nothing else."""
    where = f"{request.method.upper()} {request.path}"
    assert response.status_code in (404, 405), (where, response.status_code)
    assert response.get("Content-Type") == "application/json", (where, response.headers)
    error_validator().validate(json.loads(response.content))


def sse_events(text: str) -> list[dict[str, str]]:
    """Parse a ``text/event-stream`` body into its events' fields (comments dropped)."""
    events, fields = [], {}
    for line in text.splitlines():
        if not line:
            if fields:
                events.append(fields)
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            fields[name] = f"{fields[name]}\n{value}" if name in fields else value
    if fields:
        events.append(fields)
    return events


def check_turn_events(text: str) -> list[dict]:
    """Check that each event of a turn's stream is ``event: turn`` with a ``Turn`` as its data,
    as strictly as ``GET /api/v1/turns/{id}/`` answers one; return the turns."""
    turns = []
    for event in sse_events(text):
        assert event.get("event") == "turn", event
        turn = json.loads(event["data"])
        request = MockRequest(HOST, "get", f"{API_PREFIX}turns/{turn['id']}/")
        strict_openapi().validate_response(request, MockResponse(event["data"].encode()))
        turns.append(turn)
    return turns
