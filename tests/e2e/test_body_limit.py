"""MAX_REQUEST_BYTES at the real servers' door: gunicorn and uvicorn, declared or chunked."""

import json
import select
import socket

import pytest

from ..factories import UserFactory, token_for

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

LIMIT = 1024 * 1024
CHUNK = 64 * 1024


def _request_head(token: str, path: str, extra: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Token {token}\r\n"
        f"Content-Type: application/json\r\n{extra}\r\n"
    ).encode()


def _response(sock: socket.socket, timeout: float = 10) -> tuple[int, dict, bytes]:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    length = int(headers.get("content-length", headers.get("Content-Length", "0")))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def _stream_chunked_until_answered(port: int, token: str, total: int) -> tuple[int, int, bytes]:
    """Send a chunked body of ``total`` bytes; stop at the first answer or refusal.

    Return the status, the bytes sent by then, and the body of the answer.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CHUNK)
    sock.sendall(_request_head(token, "/api/v1/sessions/", "Transfer-Encoding: chunked\r\n"))
    frame = f"{CHUNK:x}\r\n".encode() + b"x" * CHUNK + b"\r\n"
    sent = 0
    sock.settimeout(2)  # a server that stopped reading leaves sendall blocked: that is a stop
    try:
        while sent < total and not select.select([sock], [], [], 0)[0]:
            try:
                sock.sendall(frame)
            except (TimeoutError, BrokenPipeError, ConnectionResetError):
                break
            sent += CHUNK
        status, _, body = _response(sock)
        return status, sent, body
    finally:
        sock.close()


def _chunked_small(port: int, token: str) -> tuple[int, bytes]:
    payload = json.dumps({"title": "chunked"}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(_request_head(token, "/api/v1/sessions/", "Transfer-Encoding: chunked\r\n"))
        sock.sendall(f"{len(payload):x}\r\n".encode() + payload + b"\r\n0\r\n\r\n")
        status, _, body = _response(sock)
    return status, body


@pytest.fixture(params=["gunicorn", "uvicorn"])
def server(request, web_server, asgi_server):
    started = web_server() if request.param == "gunicorn" else asgi_server()
    return int(started.url.rsplit(":", 1)[1])


@pytest.fixture
def token() -> str:
    return token_for(UserFactory())


def test_a_chunked_body_under_the_limit_is_read(server, token):
    status, body = _chunked_small(server, token)
    assert status == 201, body
    assert json.loads(body)["title"] == "chunked"


def test_a_chunked_body_over_the_limit_is_413_before_it_is_read_whole(server, token):
    status, sent, body = _stream_chunked_until_answered(server, token, total=50 * LIMIT)
    assert status == 413, body
    assert json.loads(body)["code"] == "request_too_large"
    # The server answered near the limit and stopped reading, never taking the 50 MiB
    # offered. What the client got out also counts both kernels' socket buffers, which a
    # loaded machine fills; how much the application itself reads is measured exactly in
    # tests/test_bodylimit.py.
    assert sent < 8 * LIMIT, sent


def test_a_declared_length_over_the_limit_is_413_at_once(server, token):
    with socket.create_connection(("127.0.0.1", server), timeout=10) as sock:
        sock.sendall(_request_head(token, "/api/v1/sessions/", f"Content-Length: {50 * LIMIT}\r\n"))
        status, _, body = _response(sock)
    assert status == 413 and json.loads(body)["code"] == "request_too_large"
