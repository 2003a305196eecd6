"""A RabbitMQ (amqp) broker: ``/healthz`` answers for it, and posting while it is down is 503.

The broker up is the real RabbitMQ on 127.0.0.1 (its default virtual host; nothing is
published there). Down is a port nobody listens on (refused) and a socket that accepts but
never answers (a hung broker): both must read ``"broker": "down"`` within the deadline.
(The Redis broker's outages are in ``test_outages.py``.)
"""

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from core.errors import is_outage
from sessions_app.tasks import run_turn

from .support import broker_at, free_port

pytestmark = pytest.mark.django_db(transaction=True)

RABBITMQ = "amqp://guest:guest@127.0.0.1:5672"
ALL_OK = {"status": "ok", "database": "ok", "cache": "ok", "broker": "ok"}
BROKER_DOWN = {**ALL_OK, "status": "unavailable", "broker": "down"}


@contextmanager
def amqp_broker_at(settings, url: str) -> Iterator[None]:
    """Publish to ``url`` with the amqp settings, instead of running tasks eagerly."""
    with broker_at(
        settings,
        url,
        broker_write_url=url,
        broker_transport_options=settings.AMQP_BROKER_TRANSPORT_OPTIONS,
    ):
        yield


@contextmanager
def silent_listener() -> Iterator[int]:
    """A port that accepts connections and never says a word, as a hung broker does."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        for sock in accepted:
            sock.close()
        server.close()


def healthz(client) -> tuple[int, dict]:
    response = client.get("/healthz")
    assert response["Content-Type"] == "application/json"
    return response.status_code, response.json()


def test_healthz_with_rabbitmq_up(settings, client):
    with amqp_broker_at(settings, f"{RABBITMQ}/%2F"):
        assert healthz(client) == (200, ALL_OK)


def test_healthz_with_rabbitmq_refusing(settings, client):
    with amqp_broker_at(settings, f"amqp://guest:guest@127.0.0.1:{free_port()}//"):
        assert healthz(client) == (503, BROKER_DOWN)


def test_healthz_with_rabbitmq_hung(settings, client):
    with (
        silent_listener() as port,
        amqp_broker_at(settings, f"amqp://guest:guest@127.0.0.1:{port}//"),
    ):
        assert healthz(client) == (503, BROKER_DOWN)


def test_healthz_with_an_unknown_virtual_host(settings, client):
    """RabbitMQ answers, but not for us: the broker is down for this service."""
    with amqp_broker_at(settings, f"{RABBITMQ}/no-such-vhost-{free_port()}"):
        assert healthz(client) == (503, BROKER_DOWN)


def test_publishing_to_a_down_rabbitmq_is_an_outage(settings):
    nil = "00000000-0000-0000-0000-000000000000"
    down = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    # Whichever outage error it is; checked below.
    with amqp_broker_at(settings, down), pytest.raises(Exception) as raised:
        run_turn.delay(nil, 1, nil)
    assert is_outage(raised.value), repr(raised.value)


def test_posting_while_rabbitmq_is_down_is_503_and_leaves_nothing(settings, api):
    sid = api.post("/api/v1/sessions/", {}, format="json").json()["id"]
    with amqp_broker_at(settings, f"amqp://guest:guest@127.0.0.1:{free_port()}//"):
        response = api.post(f"/api/v1/sessions/{sid}/messages/", {"content": "hi"}, format="json")
    assert response.status_code == 503, response.content
    assert response.json()["code"] == "unavailable"
    assert api.get(f"/api/v1/sessions/{sid}/").json()["message_count"] == 0
