"""A bound on a whole HTTP call through httpx2, which its own timeouts are not.

httpx2's timeouts (and so the ``timeout`` the anthropic SDK passes on) bound each network
operation: a connect, one read, one write. A server that sends its answer a byte at a
time, each byte within the read timeout, keeps a call going for as long as it likes. The
transport built here cuts every one of those operations to the time the current call has
left, and fails the operation whose time is already up with httpcore2's own timeout
error: the connection is closed on httpcore2's ordinary error path, and the caller sees
the ``httpx2`` timeout it would see for a single slow read.

The sync client needs this: without threads or an event loop nothing else can interrupt a
blocking read. (On an event loop, ``asyncio.timeout`` bounds the awaited call as a whole.)
A new connection's DNS lookup, which no socket timeout bounds, is made in a thread of its
own and waited for only as long as the call has left.
"""

import contextlib
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from typing import Any

import anyio
import httpcore2
import httpx2

# When the current call must end, in ``time.monotonic()`` seconds: one per thread (and
# per task), since the network I/O of a sync call runs in the thread that makes it.
_call_ends: ContextVar[float | None] = ContextVar("call_ends", default=None)


@contextlib.contextmanager
def within(seconds: float) -> Iterator[None]:
    """Bound the network I/O of the calls made in this block to end ``seconds`` from now."""
    token = _call_ends.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _call_ends.reset(token)


def _cut(timeout: float | None, expired: type[httpcore2.TimeoutException]) -> float | None:
    """Return ``timeout`` cut to the time the current call has left; raise ``expired``
    if it has none left."""
    ends = _call_ends.get()
    if ends is None:
        return timeout
    left = ends - time.monotonic()
    if left <= 0:
        # Not a timeout of 0, which makes a socket non-blocking: its read would fail as a
        # ReadError, not as the timeout it is.
        raise expired("The call ran out of time.")
    return left if timeout is None else min(timeout, left)


class _Stream(httpcore2.NetworkStream):
    """A connection whose every wait ends by the deadline of the call using it."""

    def __init__(self, stream: httpcore2.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _cut(timeout, httpcore2.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _cut(timeout, httpcore2.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore2.NetworkStream:
        try:
            cut = _cut(timeout, httpcore2.ConnectTimeout)
        except httpcore2.ConnectTimeout:
            # As httpcore2 closes a connection whose upgrade fails: the caller drops it.
            self._stream.close()
            raise
        return _Stream(self._stream.start_tls(ssl_context, server_hostname, cut))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _Backend(httpcore2.NetworkBackend):
    """httpcore2's sync backend, its connections bounded by their calls' deadlines."""

    def __init__(self, backend: httpcore2.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.NetworkStream:
        cut = _cut(timeout, httpcore2.ConnectTimeout)
        addresses = [host] if _is_address(host) else _lookup(host, port, cut)
        # As socket.create_connection does: each address in turn, the last error raised.
        failed: httpcore2.ConnectError | None = None
        for address in addresses:
            cut = _cut(timeout, httpcore2.ConnectTimeout)
            try:
                stream = self._backend.connect_tcp(
                    address, port, cut, local_address, socket_options
                )
            except httpcore2.ConnectError as exc:
                failed = exc
                continue
            return _Stream(stream)
        raise failed or httpcore2.ConnectError(f"{host} has no address")

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _lookup(host: str, port: int, timeout: float | None) -> list[str]:
    """Return the addresses of ``host``, or raise ``ConnectTimeout`` past ``timeout``.

    The system resolver has no timeout of ours: it is asked in a thread of its own (not a
    pool's, which a forked worker would inherit without its threads), and one that hangs
    is left to end by itself. Connections are pooled: a lookup is rare on the hot path.
    """
    found: list[str] = []
    error: list[OSError] = []

    def ask() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            found.extend(dict.fromkeys(str(info[4][0]) for info in infos))
        except OSError as exc:
            error.append(exc)

    asking = threading.Thread(target=ask, name=f"lookup {host}", daemon=True)
    asking.start()
    asking.join(timeout)
    if asking.is_alive():
        raise httpcore2.ConnectTimeout(f"The lookup of {host} ran out of time.")
    if error:
        raise httpcore2.ConnectError(str(error[0])) from error[0]
    return found


class _AsyncStream(httpcore2.AsyncNetworkStream):
    """An event loop's connection, closed at once when its TLS handshake is cancelled."""

    def __init__(self, stream: httpcore2.AsyncNetworkStream) -> None:
        self._stream = stream

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._stream.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._stream.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        try:
            return await self._stream.start_tls(ssl_context, server_hostname, timeout)
        except BaseException:
            # httpcore2 closes a connection whose handshake fails, not one whose handshake
            # is cancelled (``asyncio.timeout`` ending the call): that socket would wait
            # for the garbage collector. The close must finish, cancelled or not.
            with anyio.CancelScope(shield=True):
                await self._stream.aclose()
            raise

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _AsyncBackend(httpcore2.AsyncNetworkBackend):
    """httpcore2's event-loop backend, its connections closed when a handshake is cut."""

    def __init__(self, backend: httpcore2.AsyncNetworkBackend) -> None:
        self._backend = backend

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        stream = await self._backend.connect_tcp(host, port, timeout, local_address, socket_options)
        return _AsyncStream(stream)

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


def _wrap_backends(client: httpx2.Client | httpx2.AsyncClient, wrapper: type) -> None:
    # httpx2 takes no network backend, though the httpcore2 pools it builds do: wrapping
    # each pool's own keeps everything httpx2 set up (TLS, limits, proxies). A renamed
    # attribute fails here, at startup, not silently.
    for transport in (client._transport, *client._mounts.values()):
        if transport is not None:
            pool = transport._pool
            pool._network_backend = wrapper(pool._network_backend)


def bound(client: httpx2.Client) -> httpx2.Client:
    """Return ``client`` with its calls ending by the deadline ``within`` sets: through
    its own transport and through the proxies the environment names (``HTTPS_PROXY``)."""
    _wrap_backends(client, _Backend)
    return client


def closing(client: httpx2.AsyncClient) -> httpx2.AsyncClient:
    """Return ``client`` with a connection whose TLS handshake is cancelled closed at once.

    On an event loop ``asyncio.timeout`` bounds a call as a whole; cancelled during the
    handshake, httpcore2 would leave the socket to the garbage collector.
    """
    _wrap_backends(client, _AsyncBackend)
    return client
