"""The ASGI process of API.md (uvicorn): the event stream sends each event as it happens."""

import concurrent.futures
import http.client
import json
import re
import socket
import sys
import time
from pathlib import Path

import pytest

from sessions_app import services
from sessions_app.models import Turn

from ..factories import UserFactory, token_for
from ..fakes.claude import canaries_in
from ..support import free_port, wait_until
from .conftest import _answers_health

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

    def until_status(self, status: str, timeout: float) -> list[dict]:
        """Read until an event with ``status`` has arrived; return all events so far."""
        self.sock.settimeout(timeout)
        while status not in [event["status"] for event in self.events()]:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.buffer += chunk
        return self.events()

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


def _threads(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1))


def _post_and_wait(port: int, token: str, session: object, content: str) -> tuple[int, dict]:
    """``POST .../messages/?wait=60`` on a connection of its own; the status and the turn."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.request(
            "POST",
            f"/api/v1/sessions/{session}/messages/?wait=60",
            body=json.dumps({"content": content}),
            headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
        )
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def _open_stream(port: int, token: str, turn: object) -> EventReader:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(
        f"GET /api/v1/turns/{turn}/events/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Token {token}\r\n\r\n".encode()
    )
    return EventReader(sock)


def test_under_asgi_waits_and_streams_outnumber_the_thread_pool_and_each_gets_its_own(
    asgi_server, workers
):
    # Four threads for the database work of 20 streams and 20 waits open at once: a waiter
    # that held a thread while it waits would leave the others stuck behind it.
    server = asgi_server(env={"ASGI_THREADS": "4", "MAX_WAITS_PER_USER": "10"})
    port = int(server.url.rsplit(":", 1)[1])
    users = [UserFactory() for _ in range(4)]
    tokens = {user.pk: token_for(user) for user in users}
    streamed = []
    for n in range(20):
        user = users[n % 4]
        session = services.chat_session_create(owner=user)
        turn = services.message_accept(
            user=user, session_id=session.pk, content=f"CANARY-stream-{n}"
        )
        streamed.append((user, turn, _open_stream(port, tokens[user.pk], turn.pk)))
    for _, _, reader in streamed:  # every stream is open: its first event came
        assert [e["status"] for e in reader.until(1, timeout=30)] == ["pending"]
    # No thread per stream: the event loop, the pool of four and a few of the server's.
    assert wait_until(lambda: _threads(server.proc.pid) < len(streamed), timeout=30), _threads(
        server.proc.pid
    )

    waits = []
    for n in range(20):
        user = users[n % 4]
        session = services.chat_session_create(owner=user)
        waits.append((user, session, f"CANARY-wait-{n}"))
    with concurrent.futures.ThreadPoolExecutor(len(waits)) as pool:
        answers = [
            pool.submit(_post_and_wait, port, tokens[user.pk], session.pk, content)
            for user, session, content in waits
        ]
        # All twenty are accepted and waiting (nothing runs the turns yet) ...
        sessions = [session.pk for _, session, _ in waits]
        assert wait_until(
            lambda: Turn.objects.filter(session_id__in=sessions).count() == 20, timeout=60
        )
        # No thread per wait either (none held in the middleware around the view).
        assert wait_until(lambda: _threads(server.proc.pid) < len(waits), timeout=30), _threads(
            server.proc.pid
        )
        # ... and the streams still get every change while they wait.
        for _, turn, _ in streamed:
            services.turn_claim(turn_id=turn.pk)
            services.turn_complete(turn_id=turn.pk, reply=f"done {turn.pk}")
        for _, turn, reader in streamed:
            events = reader.until_status("completed", timeout=30)
            # Two changes close together may reach the stream as one re-read: no "running".
            assert [e["status"] for e in events] in (
                ["pending", "running", "completed"],
                ["pending", "completed"],
            )
            assert {e["id"] for e in events} == {str(turn.pk)}
            assert events[-1]["reply"]["content"] == f"done {turn.pk}"
            reader.sock.close()
        workers(pool="threads", concurrency=4).wait_ready()  # now the turns run
        results = [answer.result(timeout=120) for answer in answers]

    for (_, session, content), (status, turn) in zip(waits, results, strict=True):
        assert status == 200, turn
        assert turn["session"] == str(session.pk)
        assert turn["user_message"]["content"] == content
        assert turn["status"] == "completed"
        assert canaries_in(turn["reply"]["content"]) == {content}
    time.sleep(0.5)
    assert "Traceback" not in server.log(), server.log()


def test_under_gunicorn_s_uvicorn_worker_a_stream_is_served(services, queued_tasks):
    """The ASGI app run by gunicorn (``-k uvicorn_worker.UvicornWorker``, from the repo
    root, so gunicorn.conf.py applies): a wait holds no thread there, as under uvicorn, so
    no thread count may size a wait budget (1 thread: a budget of none, every stream 503
    and every ?wait 202 at once on an idle server)."""
    from sessions_app import services as chat  # ``services`` is the fixture here

    port = free_port()
    argv = [sys.executable, "-m", "gunicorn", "isolation_site.asgi:application"]
    argv += ["-b", f"127.0.0.1:{port}", "-w", "1", "-k", "uvicorn_worker.UvicornWorker"]
    argv += ["--no-control-socket", "--graceful-timeout", "3"]
    server = services("gunicorn-uvicorn", argv, env={"WEB_THREADS": "1"})  # not taken either
    server.wait_ready(lambda: _answers_health(port))
    user = UserFactory()
    session = chat.chat_session_create(owner=user)
    turn = chat.message_accept(user=user, session_id=session.pk, content="hi")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"GET /api/v1/turns/{turn.pk}/events/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Token {token_for(user)}\r\n\r\n".encode()
        )
        head = sock.recv(4096).decode(errors="replace")
    assert head.startswith("HTTP/1.1 200"), head
