"""One call to Claude ends by its timeout, however slowly Claude answers.

The SDK's timeout bounds each network read, so a server that trickles its answer (each
byte within the read timeout) would hold a call, and the turn or request waiting on it,
for as long as it liked. Through the real SDK against the fake Claude, sync (the worker
and WSGI) and on an event loop (the ASGI stateless endpoint).
"""

import asyncio
import contextlib
import datetime
import gc
import ipaddress
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpcore2
import httpx2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sessions_app import call_deadline, llm
from sessions_app.isolation import HistoryMessage, bound

from ..fakes.claude import FakeClaude
from ..support import wait_until

TIMEOUT = 1.0
# What a call may run past its timeout: closing the connection and raising, on a busy
# machine. Each slow answer below would take 3 s if nothing cut it.
SLACK = 0.5
USER, SESSION = 1, uuid.uuid4()

Outcome = tuple[str | llm.LLMError, float]


def _slow_body(fake: FakeClaude) -> None:
    fake.drip(every=0.1, count=30)


def _slow_headers(fake: FakeClaude) -> None:
    fake.drip(every=0.1, count=30, headers=True)


def _stall(fake: FakeClaude) -> None:
    fake.stall()


SLOW = pytest.mark.parametrize(
    "slow", [_slow_body, _slow_headers, _stall], ids=["drip-body", "drip-headers", "stall"]
)
WAYS = pytest.mark.parametrize("way", ["sync", "async"])


@pytest.fixture
def claude(fake_claude: FakeClaude, settings) -> FakeClaude:
    settings.CLAUDE_TIMEOUT_SECONDS = TIMEOUT
    settings.CLAUDE_MAX_RETRIES = 0
    return fake_claude


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """Write a certificate for 127.0.0.1 and its key; return their paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake claude")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert, key_file = folder / "cert.pem", folder / "key.pem"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key_file


@pytest.fixture
def claude_over_tls(claude: FakeClaude, settings, tmp_path, monkeypatch) -> Iterator[FakeClaude]:
    """The fake over TLS, as the real API is: the connection the call's bound wraps is then
    upgraded, and its reads are TLS records'."""
    cert, key = _self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trusted by a client built after this
    with FakeClaude(tls=context) as fake:
        settings.ANTHROPIC_BASE_URL = fake.url
        yield fake


def _history() -> list[HistoryMessage]:
    return [HistoryMessage(user_id=USER, session_id=SESSION, role="user", content="hi")]


def _ask(deadline: float | None) -> Outcome:
    started = time.monotonic()
    try:
        with bound(user_id=USER, session_id=SESSION):
            reply: str | llm.LLMError = llm.send(_history(), deadline=deadline)
    except llm.LLMError as exc:
        reply = exc
    return reply, time.monotonic() - started


async def _ask_async(deadline: float | None) -> Outcome:
    started = time.monotonic()
    try:
        with bound(user_id=USER, session_id=SESSION):
            reply: str | llm.LLMError = await llm.send_async(_history(), deadline=deadline)
    except llm.LLMError as exc:
        reply = exc
    return reply, time.monotonic() - started


def calls(way: str, count: int, deadline: Callable[[], float | None] = lambda: None):
    """Make ``count`` calls one after another with the same client (``async``: on one event
    loop, whose client it is) and return each one's reply or error, and how long it took."""
    if way == "sync":
        return [_ask(deadline()) for _ in range(count)]

    async def on_one_loop() -> list[Outcome]:
        return [await _ask_async(deadline()) for _ in range(count)]

    return asyncio.run(on_one_loop())


def assert_timed_out(error: object) -> None:
    # The error a read timeout gives: transient, so the retries and the task's attempts
    # treat it as they treat any timeout.
    assert isinstance(error, llm.LLMError), error
    assert error.code == "claude_unreachable" and error.transient


def cut_then_answered(way: str) -> None:
    """Make two calls: the first ends by its timeout with the error a timeout gives, the
    second (the same client, the slow answer spent) is answered."""
    (error, took), (reply, _) = calls(way, 2)
    assert_timed_out(error)
    assert TIMEOUT - 0.05 <= took < TIMEOUT + SLACK
    assert reply == "Echo: hi"


def proxy_for_everything(monkeypatch, name: str, url: str) -> None:
    """Name ``url`` as the proxy (``HTTP_PROXY`` or ``HTTPS_PROXY``), with no exception."""
    for bypass in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(bypass, raising=False)
    monkeypatch.setenv(name, url)


@WAYS
@SLOW
def test_a_slow_answer_ends_the_call_by_its_timeout(claude: FakeClaude, way, slow):
    slow(claude)
    (error, took), (reply, _) = calls(way, 2)
    assert_timed_out(error)
    assert TIMEOUT - 0.05 <= took < TIMEOUT + SLACK
    # The slow connection was closed, not left open in the pool, and the pooled client
    # answers the next call.
    assert wait_until(lambda: claude.hangups == 1, 2)
    assert reply == "Echo: hi"
    assert claude.request_count() == 2


@WAYS
@SLOW
def test_a_slow_answer_is_cut_at_the_deadline(claude: FakeClaude, settings, way, slow):
    settings.CLAUDE_TIMEOUT_SECONDS = 30  # the deadline, not this, must end the call
    settings.CLAUDE_MAX_RETRIES = 3
    slow(claude)
    [(error, took)] = calls(way, 1, deadline=lambda: time.time() + 1.5)
    assert_timed_out(error)
    assert 1.4 <= took < 1.5 + SLACK
    # No time left for a retry: it is not sent.
    assert claude.request_count() == 1


@WAYS
def test_a_hung_dns_lookup_ends_the_call_by_its_timeout(
    claude: FakeClaude, settings, way, monkeypatch
):
    """The system resolver has no timeout of the call's: a lookup that hangs (a resolver
    gone quiet) held a sync call for as long as it did. The next lookup answers."""
    real = socket.getaddrinfo
    hung: list[str] = []

    def lookup(host, *args, **kwargs):
        if host in ("claude.invalid", b"claude.invalid"):  # bytes from the event loop's
            if not hung:
                hung.append(host)
                time.sleep(TIMEOUT + 2)
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    settings.ANTHROPIC_BASE_URL = claude.url.replace("127.0.0.1", "claude.invalid")
    cut_then_answered(way)
    assert hung and claude.request_count() == 1


@WAYS
def test_a_slow_answer_is_retried_while_time_remains(claude: FakeClaude, settings, way):
    settings.CLAUDE_MAX_RETRIES = 3
    claude.drip(every=0.1, count=30)
    [(reply, took)] = calls(way, 1, deadline=lambda: time.time() + 10)
    assert reply == "Echo: hi"
    # The timeout, then the first backoff (at most 0.5 s), then the answer.
    assert took < TIMEOUT + 0.5 + SLACK
    counts = [headers["x-stainless-retry-count"] for headers in claude.request_headers]
    assert counts == ["0", "1"]


@WAYS
@pytest.mark.parametrize("headers", [False, True], ids=["drip-body", "drip-headers"])
def test_over_tls_a_slow_answer_ends_the_call_by_its_timeout(claude_over_tls, way, headers):
    claude_over_tls.drip(every=0.1, count=30, headers=headers)
    cut_then_answered(way)
    assert claude_over_tls.request_count() == 2


@pytest.fixture
def connect_proxy(monkeypatch) -> Iterator[list[str]]:
    """An HTTPS proxy as deployments have them (``CONNECT`` tunnels), named by
    ``HTTPS_PROXY``; yields the targets it tunnelled to."""
    listener = socket.create_server(("127.0.0.1", 0))
    tunnelled: list[str] = []

    def pipe(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError), a, b:
            while chunk := a.recv(65536):
                b.sendall(chunk)
            b.shutdown(socket.SHUT_WR)

    def serve() -> None:
        with contextlib.suppress(OSError):  # the listener closed: the test is over
            while True:
                client, _ = listener.accept()
                head = b""
                while b"\r\n\r\n" not in head:
                    head += client.recv(4096)
                target = head.split()[1].decode()
                host, port = target.rsplit(":", 1)
                upstream = socket.create_connection((host, int(port)), timeout=5)
                upstream.settimeout(None)
                tunnelled.append(target)
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
                threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    proxy_for_everything(
        monkeypatch, "HTTPS_PROXY", f"http://127.0.0.1:{listener.getsockname()[1]}"
    )
    try:
        yield tunnelled
    finally:
        listener.close()


@WAYS
def test_through_an_https_proxy_a_slow_answer_ends_the_call_by_its_timeout(
    claude_over_tls: FakeClaude, connect_proxy: list[str], way
):
    """The production path: TLS to Claude inside a proxy's tunnel, bounded as a whole."""
    claude_over_tls.drip(every=0.1, count=30)
    cut_then_answered(way)
    assert connect_proxy and set(connect_proxy) == {claude_over_tls.url.split("//")[1]}


def test_a_connection_out_of_time_before_its_tls_upgrade_is_closed(claude_over_tls):
    """Time up between the TCP connect and the TLS handshake: the connection is closed
    there, as httpcore2 closes one whose upgrade fails, not left to the garbage collector."""
    host, port = claude_over_tls.url.split("//")[1].rsplit(":", 1)
    backend = call_deadline.bound(httpx2.Client())._transport._pool._network_backend
    with call_deadline.within(5):
        stream = backend.connect_tcp(host, int(port))
    raw = stream.get_extra_info("socket")
    with call_deadline.within(-1), pytest.raises(httpcore2.ConnectTimeout):
        stream.start_tls(ssl.create_default_context(), host)
    assert raw.fileno() == -1


@WAYS
def test_a_proxy_the_environment_names_carries_the_call_and_bounds_it(
    claude: FakeClaude, settings, monkeypatch, way
):
    """As the SDK's own client does, a plain-HTTP call goes through ``HTTP_PROXY`` (here
    the fake, which answers a proxied request itself), and still ends by its timeout."""
    proxy_for_everything(monkeypatch, "HTTP_PROXY", claude.url)
    # A host no one resolves: only the proxy can answer. Each test its own: a new client.
    settings.ANTHROPIC_BASE_URL = f"http://claude-{uuid.uuid4().hex}.invalid"
    claude.drip(every=0.1, count=30)
    cut_then_answered(way)
    assert claude.request_count() == 2


@pytest.fixture
def no_tls_answer() -> Iterator[tuple[str, Callable[[], int]]]:
    """A server that takes TCP connections and never answers their TLS handshake; yields
    its URL and a count of the connections whose client has not closed them."""
    listener = socket.create_server(("127.0.0.1", 0))
    taken: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):  # the listener closed: the test is over
            while True:
                taken.append(listener.accept()[0])

    def still_open() -> int:
        count = 0
        for peer in taken:
            peer.setblocking(False)
            try:
                while peer.recv(65536):
                    pass
            except BlockingIOError:
                count += 1  # nothing to read, no end of stream: the client holds it open
        return count

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}", still_open
    finally:
        listener.close()
        for peer in taken:
            peer.close()


@WAYS
def test_a_connection_cut_in_its_tls_handshake_is_closed_at_once(
    claude: FakeClaude, settings, no_tls_answer, way
):
    """The call ends by its timeout in the handshake, and its connection is closed then,
    not left to the garbage collector (off here, so that it cannot do it for us)."""
    url, still_open = no_tls_answer
    settings.ANTHROPIC_BASE_URL = url
    gc.disable()
    try:
        [(error, took)] = calls(way, 1)
        assert_timed_out(error)
        assert TIMEOUT - 0.05 <= took < TIMEOUT + SLACK
        assert wait_until(lambda: still_open() == 0, 2)
    finally:
        gc.enable()
