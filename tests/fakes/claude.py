"""A fake of the Anthropic Messages API, served over real HTTP for use through the real SDK.

Point the SDK at it with ``base_url=fake.url`` (or ``ANTHROPIC_BASE_URL``)::

    with FakeClaude() as fake:
        client = anthropic.Anthropic(api_key="test", base_url=fake.url, max_retries=0)
        client.messages.create(model="m", max_tokens=10, messages=[...])

Only ``POST /v1/messages`` exists. Bodies, headers and SSE events mirror what the real
API sends, so the SDK's own parsing, retry and error mapping run unmodified.

Standard library only, so it can be imported without Django or the SDK.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import select
import socket
import ssl
import string
import sys
import threading
import time
import traceback
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FakeClaude", "canaries_in", "error_type_for_status"]

Responder = Callable[[dict], str]

# The `error.type` the real API puts in the body for each status.
_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

_ERROR_MESSAGES: dict[str, str] = {
    "invalid_request_error": "There was an issue with the format or content of your request.",
    "authentication_error": "invalid x-api-key",
    "billing_error": "Your credit balance is too low to access the Anthropic API.",
    "permission_error": "Your API key does not have permission to use the specified resource.",
    "not_found_error": "The requested resource could not be found.",
    "request_too_large": "Request exceeds the maximum allowed number of bytes.",
    "rate_limit_error": "Number of request tokens has exceeded your per-minute rate limit.",
    "api_error": "Internal server error",
    "timeout_error": "Request timed out.",
    "overloaded_error": "Overloaded",
}

_ALNUM = string.ascii_letters + string.digits


def error_type_for_status(status: int) -> str:
    """The `error.type` the real API uses for `status`."""
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def _new_id(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_ALNUM) for _ in range(24))


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        # 529 is Anthropic-specific, so http.server has no phrase for it.
        return "Overloaded" if status == 529 else ""


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            block.get("text", "")
            for block in content
            if isinstance(block, dict) and block.get("type") == "text"
        )
    return ""


def _estimate_tokens(text: str) -> int:
    # The real API never reports 0 tokens, even for empty text.
    return max(1, math.ceil(len(text) / 4))


def _input_tokens(body: dict) -> int:
    parts = [_text_of(body.get("system", ""))]
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            parts.append(_text_of(message.get("content", "")))
    return _estimate_tokens("".join(parts))


def echo_last_user_message(body: dict) -> str:
    """Default responder: ``"Echo: "`` + the text of the last user message."""
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return "Echo: " + _text_of(message.get("content", ""))
    return "Echo: "


def _stream_chunks(text: str) -> list[str]:
    # Word-sized pieces whose concatenation is exactly `text`, so stream consumers
    # really have to accumulate several deltas.
    return re.findall(r"\s*\S+\s*|\s+", text)


@dataclass(frozen=True)
class _Fault:
    kind: str  # "fail" | "delay" | "hang" | "malformed" | "drop" | "drip" | "stall"
    status: int = 0
    retry_after_ms: int | None = None
    retry_after: float | str | None = None
    should_retry: bool | None = None
    seconds: float = 0.0
    body: bytes = b""
    count: int = 0
    headers: bool = False


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # A port freed by a previous test may still be in TIME_WAIT.
    allow_reuse_address = True
    # socketserver's default listen backlog of 5 makes a burst of concurrent
    # connects stall for a SYN retransmit (~1s) or fail outright.
    request_queue_size = 128
    fake: FakeClaude

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that time out or hang up mid-response are expected in fault tests.
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 so streamed answers can use chunked encoding like the real API;
    # every response still says `Connection: close` so that no idle keep-alive
    # connection outlives stop(), unless the fake keeps connections alive as the real
    # API does (benchmarks: a new connection per call is a cost production does not pay).
    protocol_version = "HTTP/1.1"
    # Headers and body go out as two writes: without TCP_NODELAY a kept-alive connection
    # waits out the client's delayed ACK (40 ms) between them, as no real server does.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # ---- routing ----

    def do_POST(self) -> None:
        raw = self._read_body()
        # The path alone, or the whole URL as a client sends it through a proxy.
        if urllib.parse.urlsplit(self.path).path.rstrip("/") != "/v1/messages":
            self._send_error(404, "Not Found")
            return
        self.server.fake._handle_messages(self, raw)

    def _not_found(self) -> None:
        self._read_body()
        self._send_error(404, "Not Found")

    do_GET = do_PUT = do_PATCH = do_DELETE = _not_found

    # ---- helpers used by FakeClaude ----

    def _read_body(self) -> bytes:
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send_bytes(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: Iterable[tuple[str, str]] = (),
        request_id: str | None = None,
    ) -> None:
        self.send_response(status, _reason(status))
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.send_header("request-id", request_id or _new_id("req_"))
        for name, value in headers:
            self.send_header(name, value)
        if not self.server.fake.keep_alive:
            self.send_header("connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _send_error(
        self,
        status: int,
        message: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        request_id = _new_id("req_")
        err_type = error_type_for_status(status)
        payload = {
            "type": "error",
            "error": {"type": err_type, "message": message or _ERROR_MESSAGES[err_type]},
            "request_id": request_id,
        }
        self._send_bytes(
            status,
            json.dumps(payload).encode(),
            "application/json",
            headers,
            request_id=request_id,
        )

    def _drop(self) -> None:
        # Returning without writing anything makes socketserver close the socket,
        # which the client sees as "server disconnected without a response".
        self.close_connection = True

    def _trickle(self, data: bytes, *, count: int, every: float, release: threading.Event) -> bool:
        """Write ``data``, its first ``count`` bytes one at a time ``every`` seconds apart;
        return False if the client hung up or the fake was released before the end."""
        self.close_connection = True
        try:
            for i in range(min(count, len(data))):
                self.wfile.write(data[i : i + 1])
                if release.wait(every):
                    return False
            self.wfile.write(data[count:])
        except OSError:  # the client closed its end: a write after that fails
            return False
        return True

    def _idle(self, release: threading.Event) -> bool:
        """Send nothing until the fake is released (return False) or the client hangs up
        (return True)."""
        self.close_connection = True
        while not release.wait(0.05):
            readable, _, _ = select.select([self.connection], [], [], 0)
            try:
                if readable and not self.connection.recv(1, socket.MSG_PEEK):
                    return True  # the client's end is closed: it reads as end of file
            except OSError:
                return True
        return False


class FakeClaude:
    """In-process HTTP fake of ``POST /v1/messages`` with scriptable faults.

    Faults queued by fail/delay/hang/malformed/drop/drip/stall are consumed one per request,
    in order, before any validation; with the queue empty a request is validated
    and answered normally after ``default_delay`` seconds.
    """

    def __init__(
        self,
        responder: Responder | None = None,
        *,
        keep_alive: bool = False,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._responder: Responder = responder or echo_last_user_message
        self.keep_alive = keep_alive
        # Served over TLS with this (server) context, as the real API is, if given.
        self._tls = tls
        self.default_delay: float = 0.0
        self.requests: list[dict] = []
        # Parallel to `requests`: the headers of each, lower-cased names.
        self.request_headers: list[dict[str, str]] = []
        # Parallel to `requests`: when each arrived, in `time.monotonic()` seconds.
        self.request_times: list[float] = []
        # Drips and stalls whose client closed the connection before they ended.
        self.hangups = 0
        # Exceptions raised by the responder; they are also answered as a
        # non-retryable 500 so the test that caused them fails loudly.
        self.responder_errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._faults: deque[_Fault] = deque()
        # Set to let hung and delayed requests go; replaced on reset() so a later
        # hang() is not released by an earlier reset.
        self._release = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._url = ""

    # ---- lifecycle ----

    @property
    def url(self) -> str:
        if not self._url:
            raise RuntimeError("FakeClaude.url is only valid after start()")
        return self._url

    def start(self) -> FakeClaude:
        if self._server is not None:
            return self
        self._release = threading.Event()
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self
        if self._tls is not None:
            server.socket = self._tls.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"FakeClaude:{server.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        scheme = "http" if self._tls is None else "https"
        self._url = f"{scheme}://127.0.0.1:{server.server_address[1]}"
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        self._release.set()
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> FakeClaude:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ---- inspection ----

    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.request_headers.clear()
            self.request_times.clear()
            self.responder_errors.clear()
            self.hangups = 0
            self._faults.clear()
            self._release.set()
            self._release = threading.Event()
        self._responder = echo_last_user_message
        self.default_delay = 0.0

    # ---- scripting ----

    def set_responder(self, fn: Responder | None) -> None:
        self._responder = fn or echo_last_user_message

    def fail(
        self,
        status: int,
        times: int = 1,
        *,
        retry_after_ms: int | None = 1,
        retry_after: float | str | None = None,
        should_retry: bool | None = None,
    ) -> None:
        """Answer the next `times` requests with `status` and the real error body.

        `retry_after_ms` is sent as `retry-after-ms`, which the SDK obeys instead of its
        0.5s+ exponential backoff (a value of 0 is ignored by the SDK). `retry_after` is
        sent as `retry-after`: seconds, or a string sent as is (an HTTP date); clients
        read it only without a usable `retry-after-ms`, so pass `retry_after_ms=None`
        with it. `should_retry`,
        if given, is sent as `x-should-retry`, which overrides the SDK's status-based
        retry decision.
        """
        if not 400 <= status <= 599:
            raise ValueError(f"fail() needs a 4xx/5xx status, got {status}")
        self._enqueue(
            _Fault(
                "fail",
                status=status,
                retry_after_ms=retry_after_ms,
                retry_after=retry_after,
                should_retry=should_retry,
            ),
            times,
        )

    def delay(self, seconds: float, times: int = 1) -> None:
        self._enqueue(_Fault("delay", seconds=seconds), times)

    def hang(self, times: int = 1) -> None:
        """Never answer the next `times` requests; stop()/reset() closes them unanswered."""
        self._enqueue(_Fault("hang"), times)

    def malformed(self, times: int = 1, *, body: bytes = b'{"id": "msg_trunc') -> None:
        """Answer 200 with ``body``: by default JSON cut short; it may be JSON of the wrong
        shape (``b"{}"``), which the SDK turns into a message without validating it."""
        self._enqueue(_Fault("malformed", body=body), times)

    def drop(self, times: int = 1) -> None:
        self._enqueue(_Fault("drop"), times)

    def drip(
        self, times: int = 1, *, every: float = 0.1, count: int = 30, headers: bool = False
    ) -> None:
        """Answer the next `times` requests with a good message (never streamed), but send
        the first `count` bytes of its body (of its status line, if `headers`) one at a
        time, `every` seconds apart, then the rest at once: each read the client makes
        ends within a read timeout longer than `every`, so only a bound on the whole call
        stops it short of the answer. A client that hangs up mid-drip is counted in
        `hangups`."""
        self._enqueue(_Fault("drip", seconds=every, count=count, headers=headers), times)

    def stall(self, times: int = 1) -> None:
        """Send the next `times` requests a 200's headers and then nothing, until
        stop()/reset() closes them; a client that hangs up first is counted in `hangups`."""
        self._enqueue(_Fault("stall"), times)

    def _enqueue(self, fault: _Fault, times: int) -> None:
        if times < 0:
            raise ValueError("times must be >= 0")
        with self._lock:
            self._faults.extend([fault] * times)

    # ---- request handling (runs on server threads) ----

    def _handle_messages(self, h: _Handler, raw: bytes) -> None:
        try:
            body: Any = json.loads(raw) if raw else None
        except (ValueError, UnicodeDecodeError):
            body = None
        record = (
            body if isinstance(body, dict) else {"_invalid_body": raw.decode("utf-8", "replace")}
        )
        with self._lock:
            self.requests.append(record)
            self.request_headers.append({k.lower(): v for k, v in h.headers.items()})
            self.request_times.append(time.monotonic())
            fault = self._faults.popleft() if self._faults else None
            release = self._release

        if fault is None:
            if self.default_delay > 0 and release.wait(self.default_delay):
                h._drop()
                return
        elif fault.kind == "fail":
            headers = []
            if fault.retry_after_ms is not None:
                headers.append(("retry-after-ms", str(fault.retry_after_ms)))
            if fault.retry_after is not None:
                headers.append(("retry-after", str(fault.retry_after)))
            if fault.should_retry is not None:
                headers.append(("x-should-retry", "true" if fault.should_retry else "false"))
            h._send_error(fault.status, headers=headers)
            return
        elif fault.kind == "delay":
            if release.wait(fault.seconds):
                h._drop()
                return
        elif fault.kind == "hang":
            release.wait()
            h._drop()
            return
        elif fault.kind == "malformed":
            h._send_bytes(200, fault.body, "application/json")
            return
        elif fault.kind == "drop":
            h._drop()
            return

        problem = self._validate(h, body)
        if problem is not None:
            status, message = problem
            h._send_error(status, message)
            return

        try:
            reply = self._responder(body)
            if not isinstance(reply, str):
                raise TypeError(f"responder must return str, got {type(reply).__name__}")
        except Exception as exc:
            with self._lock:
                self.responder_errors.append(exc)
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            h._send_error(
                500,
                f"FakeClaude responder raised: {detail}",
                headers=[("x-should-retry", "false")],
            )
            return

        if fault is not None and fault.kind in ("drip", "stall"):
            self._send_slowly(h, self._message(body, reply), fault, release)
        elif body.get("stream") is True:
            self._send_stream(h, body, reply)
        else:
            self._send_message(h, body, reply)

    @staticmethod
    def _validate(h: _Handler, body: Any) -> tuple[int, str] | None:
        # The SDK authenticates api_key with `Authorization: Bearer`, while curl-style
        # callers use `x-api-key`; the real API accepts both.
        authorization = h.headers.get("authorization", "")
        has_bearer = authorization.lower().startswith("bearer ") and authorization[7:].strip()
        if not h.headers.get("x-api-key") and not has_bearer:
            return 401, "x-api-key header is required"
        if not h.headers.get("anthropic-version"):
            return 400, "anthropic-version: header is required"
        if not isinstance(body, dict):
            return 400, "There was an error parsing the body of your request as JSON."
        for field in ("model", "max_tokens", "messages"):
            if field not in body:
                return 400, f"{field}: Field required"
        if not isinstance(body["model"], str) or not body["model"]:
            return 400, "model: Input should be a valid string"
        max_tokens = body["max_tokens"]
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            return 400, "max_tokens: Input should be a valid integer greater than 0"
        messages = body["messages"]
        if not isinstance(messages, list) or not messages:
            return 400, "messages: at least one message is required"
        return None

    @staticmethod
    def _usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
        return {
            "input_tokens": input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }

    def _message(self, body: dict, reply: str) -> bytes:
        message = {
            "id": _new_id("msg_"),
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [{"type": "text", "text": reply}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": self._usage(_input_tokens(body), _estimate_tokens(reply)),
        }
        return json.dumps(message).encode()

    def _send_message(self, h: _Handler, body: dict, reply: str) -> None:
        h._send_bytes(200, self._message(body, reply), "application/json")

    def _send_slowly(
        self, h: _Handler, message: bytes, fault: _Fault, release: threading.Event
    ) -> None:
        head = (
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            f"content-length: {len(message)}\r\nrequest-id: {_new_id('req_')}\r\n"
            "connection: close\r\n\r\n"
        ).encode()
        at_once = {"count": 0, "every": 0.0, "release": release}
        slowly = {"count": fault.count, "every": fault.seconds, "release": release}
        if fault.kind == "stall":
            hung_up = not h._trickle(head, **at_once) or h._idle(release)
        elif fault.headers:
            hung_up = not h._trickle(head + message, **slowly)
        else:
            hung_up = not (h._trickle(head, **at_once) and h._trickle(message, **slowly))
        if hung_up and not release.is_set():
            with self._lock:
                self.hangups += 1

    def _send_stream(self, h: _Handler, body: dict, reply: str) -> None:
        start_message = {
            "id": _new_id("msg_"),
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": self._usage(_input_tokens(body), 1),
        }
        events: list[tuple[str, dict[str, Any]]] = [
            ("message_start", {"type": "message_start", "message": start_message}),
            (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            ),
            ("ping", {"type": "ping"}),
        ]
        events += [
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": chunk},
                },
            )
            for chunk in _stream_chunks(reply)
        ]
        events += [
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": _estimate_tokens(reply)},
                },
            ),
            ("message_stop", {"type": "message_stop"}),
        ]

        h.send_response(200, _reason(200))
        h.send_header("content-type", "text/event-stream; charset=utf-8")
        h.send_header("cache-control", "no-cache")
        h.send_header("transfer-encoding", "chunked")
        h.send_header("request-id", _new_id("req_"))
        h.send_header("connection", "close")
        h.end_headers()
        # One HTTP chunk per SSE event, so the client sees them arrive incrementally.
        for name, data in events:
            payload = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
            h.wfile.write(b"%x\r\n%s\r\n" % (len(payload), payload))
        h.wfile.write(b"0\r\n\r\n")


_CANARY_TAIL = r"[A-Za-z0-9-]+"


def canaries_in(text: str, prefix: str = "CANARY-") -> set[str]:
    """All tokens of the form `prefix` + [A-Za-z0-9-]+ found in `text`."""
    return set(re.findall(re.escape(prefix) + _CANARY_TAIL, text))
