"""The ASGI process of API.md (uvicorn): the event stream sends each event as it happens."""

import json
import socket
import time

import pytest

from sessions_app import services
from sessions_app.models import Turn

from ..factories import UserFactory, token_for

pytestmark = pytest.mark.worker


class EventReader:
    """Reads a raw HTTP event stream; each yielded event is its own chunk, so lines are whole."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def events(self) -> list[dict]:
        return [
            json.loads(line.removeprefix("data: "))
            for line in self.buffer.decode().splitlines()
            if line.startswith("data: ")
        ]

    def until(self, count: int, timeout: float) -> list[dict]:
        """Read until ``count`` events have arrived in all; return them."""
        self.sock.settimeout(timeout)
        while len(self.events()) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.buffer += chunk
        return self.events()


def test_event_stream_under_asgi_sends_each_change_as_it_happens(asgi_server):
    server = asgi_server()
    user = UserFactory()
    session = services.chat_session_create(owner=user)
    turn = services.message_accept(user=user, session_id=session.pk, content="CANARY-asgi")
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"GET /api/v1/turns/{turn.pk}/events/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Token {token_for(user)}\r\n\r\n".encode()
        )
        reader = EventReader(sock)
        # No worker runs: the turn stays pending, and its first event must still arrive.
        first = reader.until(1, timeout=10)
        assert [event["status"] for event in first] == ["pending"]
        services.turn_claim(turn_id=turn.pk)
        assert reader.until(2, timeout=10)[-1]["status"] == "running"
        services.turn_complete(turn_id=turn.pk, reply="done")
        events = reader.until(3, timeout=10)
    assert [event["status"] for event in events] == ["pending", "running", "completed"]
    assert events[-1]["reply"]["content"] == "done"
    assert Turn.objects.get(pk=turn.pk).status == "completed"
    time.sleep(0.5)
    assert "Traceback" not in server.log(), server.log()
