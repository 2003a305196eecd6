"""Turns that always end, on real services: the broker lost, database connections killed,
clients hanging up.

Only Claude is faked (``FakeClaude``, at its HTTP protocol). Workers, beat and the web server
are real subprocesses; the broker that is killed is a ``redis-server`` of the test's own, and
the database connections that are killed are those of the test's own database.
"""

import contextlib
import http.client
import json
import random
import re
import socket
import struct
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
from django.db import connection
from rest_framework.test import APIClient
from werkzeug.test import Client

from isolation_site.wsgi import application
from sessions_app.models import Message, Turn

from ..conftest import client_for
from ..factories import UserFactory, token_for
from ..fakes.claude import FakeClaude, canaries_in
from ..support import PrivateRedis, wait_until

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

# Small bounds so a lost turn is swept back within seconds, not minutes.
SWEEP_FAST = {"STALE_TURN_SECONDS": "6", "SWEEP_INTERVAL_SECONDS": "2"}
BROKER_RETURN_PROMISE = 180  # API.md: each accepted turn ends within 180 s of the broker's return


def _canary() -> str:
    return f"CANARY-{uuid.uuid4().hex}"


def _session_rows(sid: str) -> dict[str, list]:
    """The messages and turns of one session, to show a failed request left nothing."""
    return {
        "messages": list(Message.objects.filter(session_id=sid).values_list("seq", "content")),
        "turns": sorted(str(pk) for pk in Turn.objects.filter(session_id=sid).values_list("pk")),
    }


def _assert_turns_answered_once(turns: dict[str, str]) -> None:
    """Each turn (id -> the user's content) completed with exactly its own echo as reply."""
    for turn_id, content in turns.items():
        turn = Turn.objects.get(pk=turn_id)
        assert turn.status == Turn.Status.COMPLETED, (turn_id, turn.status, turn.error_code)
        replies = list(
            Message.objects.filter(turn_id=turn_id, role=Message.Role.ASSISTANT).values_list(
                "content", flat=True
            )
        )
        assert replies == [f"Echo: {content}"], (turn_id, replies)


def _assert_claude_saw_one_user_per_request(fake_claude: FakeClaude) -> None:
    for body in fake_claude.requests:
        text = " ".join(str(m.get("content", "")) for m in body.get("messages", []))
        assert len(canaries_in(text)) == 1, f"a request to Claude mixed users: {text[:500]}"


def _assert_listing_is_own(api: APIClient, sid: str, canary: str, count: int) -> None:
    listing = api.get(f"/api/v1/sessions/{sid}/messages/")
    assert listing.status_code == 200, listing.content
    assert listing.json()["count"] == count, listing.json()
    assert canaries_in(listing.content.decode()) == {canary}


# 1. The broker is lost with tasks queued ----------------------------------------------------


def _queued(server: PrivateRedis, task: str) -> int:
    """How many messages for ``task`` wait in the broker's default queue."""
    with server.client() as client:
        messages = [json.loads(raw) for raw in client.lrange("celery", 0, -1)]
    return sum(1 for message in messages if message["headers"]["task"] == task)


def _post_and_wait(api: APIClient, sid: str, content: str) -> tuple[int, dict]:
    try:
        response = api.post(
            f"/api/v1/sessions/{sid}/messages/?wait=30", {"content": content}, "json"
        )
        return response.status_code, response.json()
    finally:
        connection.close()


def test_broker_lost_with_tasks_queued_every_turn_still_ends(
    redis_everywhere: dict[str, str],
    private_redis: PrivateRedis,
    workers,
    beat,
    fake_claude: FakeClaude,
):
    env = {**redis_everywhere, **SWEEP_FAST}
    worker = workers(pool="threads", concurrency=2, env=env).wait_ready()
    beat(env=env)
    users = [UserFactory() for _ in range(8)]
    canaries = [_canary() for _ in users]
    apis = [client_for(user) for user in users]
    sids = [api.post("/api/v1/sessions/", {}, format="json").json()["id"] for api in apis]
    spare = apis[0].post("/api/v1/sessions/", {}, format="json").json()["id"]
    assert APIClient().get("/healthz").status_code == 200

    # Two turns keep the worker's two threads inside Claude; the other six wait in Redis.
    # The first user waits for the reply (?wait) across the outage.
    fake_claude.delay(4, times=2)
    turns: dict[str, str] = {}
    waiting = ThreadPoolExecutor(max_workers=1)
    waited = waiting.submit(_post_and_wait, apis[0], sids[0], f"My order is {canaries[0]}")
    assert wait_until(lambda: fake_claude.request_count() == 1, 10), worker.log()
    for api, sid, canary in zip(apis[1:], sids[1:], canaries[1:], strict=True):
        content = f"My order is {canary}"
        response = api.post(f"/api/v1/sessions/{sid}/messages/", {"content": content}, "json")
        assert response.status_code == 202, response.content
        turns[response.json()["id"]] = content
    assert wait_until(lambda: fake_claude.request_count() == 2, 10), worker.log()
    assert _queued(private_redis, "sessions_app.tasks.run_turn") == len(users) - 2
    lost = set(Turn.objects.filter(status=Turn.Status.PENDING).values_list("pk", flat=True))
    assert len(lost) == len(users) - 2
    old_run_id = private_redis.run_id()

    private_redis.kill()
    down_since = time.monotonic()
    health = APIClient().get("/healthz")
    assert health.status_code == 503, health.content
    assert health.json() == {
        "status": "unavailable",
        "database": "ok",
        "cache": "down",
        "broker": "down",
    }
    answer = apis[0].post(f"/api/v1/sessions/{spare}/messages/", {"content": "lost?"}, "json")
    assert answer.status_code == 503, answer.content
    assert answer.json()["code"] == "unavailable" and answer.json()["detail"]
    assert _session_rows(spare) == {"messages": [], "turns": []}, "a 503 left something behind"
    # Nothing else answers 500 either; reads that need only the database still work.
    for path in ("/api/v1/sessions/", f"/api/v1/sessions/{sids[0]}/messages/"):
        assert apis[0].get(path).status_code == 200, path
    for turn_id in turns:  # all of them other users' turns: during an outage too, 404
        foreign = apis[0].get(f"/api/v1/turns/{turn_id}/")
        assert foreign.status_code == 404, foreign.content
        assert "CANARY-" not in foreign.content.decode()
    # The outage lasts past a few sweep periods and the worker's first reconnect attempts.
    time.sleep(max(0.0, 5 - (time.monotonic() - down_since)))

    private_redis.start()
    back_at = time.monotonic()
    # The waiting client's message was accepted before the outage and its turn ended during
    # it: the answer says so, not an error that would make the client send it again.
    status, waited_turn = waited.result(timeout=40)
    waiting.shutdown()
    assert status == 200 and waited_turn["status"] == "completed", (status, waited_turn)
    assert waited_turn["user_message"]["content"] == f"My order is {canaries[0]}"
    turns[waited_turn["id"]] = waited_turn["user_message"]["content"]
    assert private_redis.run_id() != old_run_id  # a new server: the queue is gone

    def all_ended() -> bool:
        return not Turn.objects.filter(pk__in=turns, status__in=Turn.IN_FLIGHT).exists()

    assert wait_until(all_ended, BROKER_RETURN_PROMISE), worker.log()[-5000:]
    took = time.monotonic() - back_at
    assert took < BROKER_RETURN_PROMISE
    _assert_turns_answered_once(turns)
    # The lost tasks came back through the stale-turn sweep, not by chance.
    for turn_id in lost:
        assert f"re-queueing stale turn {turn_id}" in worker.log(), turn_id
    _assert_claude_saw_one_user_per_request(fake_claude)
    assert wait_until(lambda: APIClient().get("/healthz").status_code == 200, 10)
    assert APIClient().get("/healthz").json()["status"] == "ok"

    # New messages complete on the restarted broker.
    for api, sid, canary in zip(apis, sids, canaries, strict=True):
        response = api.post(
            f"/api/v1/sessions/{sid}/messages/?wait=30", {"content": f"Again {canary}"}, "json"
        )
        assert response.status_code == 200, response.content
        assert response.json()["status"] == "completed", response.json()
        _assert_listing_is_own(api, sid, canary, 4)
    print(f"lost turns ended {took:.1f}s after the broker came back")


# 2. Every database connection killed, twice, while turns run ------------------------------


class WsgiClient:
    """The production WSGI application called as a server calls it, in this process.

    Unlike Django's test client, this runs the whole request lifecycle, including the
    ``close_old_connections`` that replaces a persistent connection killed under it.
    """

    def __init__(self, token: str) -> None:
        self.client = Client(application)
        self.headers = {"Authorization": f"Token {token}"}

    def __call__(self, method: str, path: str, payload: dict | None = None) -> tuple[int, bytes]:
        response = self.client.open(path, method=method, json=payload, headers=self.headers)
        return response.status_code, response.get_data()


def _chat_through_kills(user, canary: str, messages: int, log: list) -> dict:
    """One user's conversation while connections die: 503s are retried, nothing else is."""
    web = WsgiClient(token_for(user))
    turns: dict[str, str] = {}
    try:
        status, body = _until_not_503(lambda: web("POST", "/api/v1/sessions/", {}), log)
        assert status == 201, body
        sid = json.loads(body)["id"]
        for n in range(1, messages + 1):
            content = f"Message {n} of {canary}"
            status, body = _until_not_503(
                lambda c=content: web(
                    "POST", f"/api/v1/sessions/{sid}/messages/?wait=30", {"content": c}
                ),
                log,
            )
            # A 503 left nothing behind, so the retry is never a 409 (a turn in flight).
            assert status in (200, 202), (status, body)
            assert canaries_in(body.decode()) == {canary}, body
            turn = json.loads(body)
            turns[turn["id"]] = content
            _until_ended(web, turn["id"], log)
        return {"session": sid, "turns": turns}
    finally:
        connection.close()


def _until_not_503(call, log: list, attempts: int = 20) -> tuple[int, bytes]:
    for _ in range(attempts):
        status, body = call()
        if status != 503:
            return status, body
        assert json.loads(body)["code"] == "unavailable", body
        log.append(body)
        time.sleep(0.2)
    raise AssertionError(f"still 503 after {attempts} attempts: {body!r}")


def _until_ended(web: WsgiClient, turn_id: str, log: list, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = _until_not_503(lambda: web("GET", f"/api/v1/turns/{turn_id}/"), log)
        assert status == 200, body
        turn = json.loads(body)
        if turn["status"] not in ("pending", "running"):
            return turn
        time.sleep(0.2)
    raise AssertionError(f"turn {turn_id} did not end in {timeout}s")


def test_database_connections_killed_twice_while_turns_run(
    workers, database_killer, fake_claude: FakeClaude
):
    pair = [workers(pool="threads", concurrency=3) for _ in range(2)]
    for worker in pair:
        worker.wait_ready()
    fake_claude.default_delay = 1.5  # turns spend their time inside Claude, connections idle
    users = [UserFactory() for _ in range(6)]
    canaries = [_canary() for _ in users]
    retried_503s: list[bytes] = []
    messages = 4
    first_token = token_for(users[0])  # issued now: issuing writes, and writes heal later

    with ThreadPoolExecutor(max_workers=len(users)) as pool:
        futures = [
            pool.submit(_chat_through_kills, user, canary, messages, retried_503s)
            for user, canary in zip(users, canaries, strict=True)
        ]
        killed = []
        for _ in range(2):
            assert wait_until(lambda: Turn.objects.filter(status="running").count() >= 3, 20)
            # Workers reconnect lazily after a kill: kill again once they hold connections.
            assert wait_until(lambda: database_killer.connections() >= 3, 20)
            killed.append(database_killer.terminate_all())
            # This thread's own connection was among them: its next request heals it.
            status, body = WsgiClient(first_token)("GET", "/api/v1/sessions/")
            assert status == 200, body
            time.sleep(3)
        results = [future.result(timeout=120) for future in futures]
    # Workers, web threads and this test all had connections, and all were killed.
    assert all(count >= 3 for count in killed), killed

    turns = {tid: content for result in results for tid, content in result["turns"].items()}
    assert len(turns) == len(users) * messages
    # No request answered with an error had accepted a message after all.
    assert Turn.objects.count() == len(turns)
    assert Message.objects.filter(role=Message.Role.USER).count() == len(turns)
    _assert_turns_answered_once(turns)
    _assert_claude_saw_one_user_per_request(fake_claude)

    # New messages complete, on the connections that replaced the killed ones.
    for user, canary, result in zip(users, canaries, results, strict=True):
        web = WsgiClient(token_for(user))
        status, body = web(
            "POST", f"/api/v1/sessions/{result['session']}/messages/?wait=30", {"content": canary}
        )
        assert status == 200 and json.loads(body)["status"] == "completed", body
        status, body = web("GET", f"/api/v1/sessions/{result['session']}/messages/")
        assert status == 200 and json.loads(body)["count"] == 2 * (messages + 1), body
        assert canaries_in(body.decode()) == {canary}
    print(f"connections killed: {killed}; 503s retried: {len(retried_503s)}")


# 3. Clients hanging up mid-wait, mid-stream and mid-page, under concurrent traffic ----------


class Reader:
    """One user's HTTP clients against the real server; keeps every byte any of them read."""

    # gunicorn closes a kept-alive connection idle for 2 s; reconnect before it would.
    IDLE_SECONDS = 1.0

    def __init__(self, base_url: str, token: str) -> None:
        parsed = urlsplit(base_url)
        self.address = (parsed.hostname, parsed.port)
        self.token = token
        self.received: list[bytes] = []  # what was read, per response or raw connection
        self.refused = 0  # streams refused for the process's wait budget, then retried
        self.keep_alive = http.client.HTTPConnection(*self.address, timeout=40)
        self.last_used = time.monotonic()

    def close(self) -> None:
        self.keep_alive.close()

    def call(self, method: str, path: str, payload: dict | None = None) -> tuple[int, dict]:
        """A whole request on the kept-alive connection; the answer is read to its end."""
        if time.monotonic() - self.last_used > self.IDLE_SECONDS:
            self.keep_alive.close()  # the next request opens a new connection
        body = json.dumps(payload) if payload is not None else None
        headers = {"Authorization": f"Token {self.token}", "Content-Type": "application/json"}
        self.keep_alive.request(method, path, body=body, headers=headers)
        response = self.keep_alive.getresponse()
        data = response.read()
        self.last_used = time.monotonic()
        self.received.append(data)
        assert response.status < 500, (method, path, response.status, data)
        return response.status, json.loads(data) if data else {}

    def post_and_wait(self, sid: str, content: str) -> tuple[int, dict]:
        """``POST ...?wait=30``; a 202 (no wait slot free in the server) is polled to the end,
        as API.md says a client does. Returns 200 and the ended turn, as a wait would."""
        status, turn = self.call(
            "POST", f"/api/v1/sessions/{sid}/messages/?wait=30", {"content": content}
        )
        deadline = time.monotonic() + 60
        while status in (200, 202) and turn["status"] in ("pending", "running"):
            assert time.monotonic() < deadline, turn
            time.sleep(0.2)
            status, turn = self.call("GET", f"/api/v1/turns/{turn['id']}/")
        return 200 if status in (200, 202) else status, turn

    def _raw(
        self, method: str, path: str, payload: dict | None = None, *, reset: bool, tiny=False
    ) -> socket.socket:
        """Open a new connection and send one request on it, without reading the answer."""
        sock = socket.socket()
        sock.settimeout(40)
        if tiny:
            # A tiny receive window: the server is still writing the page when we hang up.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        if reset:
            # Close with RST instead of FIN, as a crashed client or a dropped network does.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.connect(self.address)
        body = json.dumps(payload).encode() if payload is not None else b""
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.address[0]}:{self.address[1]}\r\n"
            f"Authorization: Token {self.token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        sock.sendall(head.encode() + body)
        return sock

    @staticmethod
    def _read(sock: socket.socket, *, until: bytes | None = None, limit: int = 65536) -> bytes:
        """Read until ``until`` has come, ``limit`` bytes have, or the server closed."""
        data = b""
        while len(data) < limit and (until is None or until not in data):
            chunk = sock.recv(limit - len(data))
            if not chunk:
                break
            data += chunk
        return data

    def hang_up_waiting(self, sid: str, content: str, *, after: float, reset: bool) -> None:
        """Post with ?wait=30 and close the connection before the answer comes."""
        path = f"/api/v1/sessions/{sid}/messages/?wait=30"
        sock = self._raw("POST", path, {"content": content}, reset=reset)
        time.sleep(after)
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            self.received.append(sock.recv(65536))  # normally nothing has come yet
        sock.close()

    def hang_up_streaming(self, turn_id: str, *, reset: bool) -> bytes:
        """Read the event stream's first event, then close the connection.

        A 503 for the process's wait budget (every wait slot taken, some by waits and
        streams whose clients hung up and that the server has not noticed yet) is retried
        after its ``Retry-After``, as a client does, and counted; any other answer is
        returned as it is.
        """
        for _ in range(30):
            data = self._hang_up_streaming(turn_id, reset=reset)
            budget = b" 503 " in data.split(b"\r\n", 1)[0] and BUSY in data
            retry_after = re.search(rb"(?im)^retry-after: *(\d+)", data)
            if not (budget and retry_after):
                return data
            self.refused += 1
            time.sleep(int(retry_after.group(1)))
        return data

    def _hang_up_streaming(self, turn_id: str, *, reset: bool) -> bytes:
        sock = self._raw("GET", f"/api/v1/turns/{turn_id}/events/", reset=reset)
        data = b""
        try:
            data = self._read(sock, until=b"\r\n\r\n")
            head, _, rest = data.partition(b"\r\n\r\n")
            if b"\n\n" not in rest:
                rest += self._read(sock, until=b"\n\n")
            data = head + b"\r\n\r\n" + rest
        finally:
            self.received.append(data)
            sock.close()
        return data

    def hang_up_paging(self, sid: str, *, reset: bool) -> bytes:
        """Read the first bytes of a page of messages, then close the connection."""
        sock = self._raw("GET", f"/api/v1/sessions/{sid}/messages/", reset=reset, tiny=True)
        data = b""
        try:
            data = self._read(sock, limit=300)
        finally:
            self.received.append(data)
            sock.close()
        return data

    def wait_for_count(self, sid: str, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.call("GET", f"/api/v1/sessions/{sid}/")[1]["message_count"] < count:
            assert time.monotonic() < deadline, f"session {sid} did not reach {count} messages"
            time.sleep(0.1)

    def canaries(self) -> set[str]:
        return set().union(
            *(canaries_in(data.decode("utf-8", "replace")) for data in self.received)
        )


# Long messages make a page of history bigger than the socket buffers.
PADDING = "lorem ipsum " * 300
ROUNDS = 2
BUSY = b"busy with other streams"  # the wait budget's 503, not an outage's
STREAM_REFUSED = re.compile(r'"GET /api/v1/turns/[^/ ]+/events/ [^"]*" 503 ')


def _chats_normally(reader: Reader, sid: str, canary: str) -> None:
    for n in range(2 * ROUNDS):
        content = f"Normal {n} {canary} {PADDING}"
        status, turn = reader.post_and_wait(sid, content)
        assert status == 200 and turn["status"] == "completed", (status, turn)
        assert turn["reply"]["content"] == f"Echo: {content}"
        status, page = reader.call("GET", f"/api/v1/sessions/{sid}/messages/")
        assert status == 200 and page["count"] == 2 * (n + 1), page


def _hangs_up(reader: Reader, sid: str, canary: str, seed: int) -> None:
    rng = random.Random(seed)
    count = 0
    for n in range(ROUNDS):
        reader.hang_up_waiting(
            sid, f"Waited {n} {canary} {PADDING}", after=rng.uniform(0.05, 0.5), reset=n % 2 == 0
        )
        count += 2
        reader.wait_for_count(sid, count)  # the turn ran to its end without its client

        status, turn = reader.call(
            "POST", f"/api/v1/sessions/{sid}/messages/", {"content": f"Streamed {n} {canary}"}
        )
        assert status == 202, (status, turn)
        first = reader.hang_up_streaming(turn["id"], reset=n % 2 == 1)
        assert b" 200 " in first.split(b"\r\n", 1)[0] and b"event: turn" in first, first
        count += 2
        reader.wait_for_count(sid, count)

        first = reader.hang_up_paging(sid, reset=n % 2 == 0)
        assert first.startswith(b"HTTP/1.1 200"), first


def _user_traffic(base_url: str, user, canary: str, seed: int) -> tuple[set[str], dict]:
    """Both of one user's clients: one chats normally, one hangs up; both on their own thread."""
    normal, hanging = Reader(base_url, token_for(user)), Reader(base_url, token_for(user))
    try:
        sids = [normal.call("POST", "/api/v1/sessions/", {})[1]["id"] for _ in range(2)]
        with ThreadPoolExecutor(max_workers=2) as pool:
            running = [
                pool.submit(_chats_normally, normal, sids[0], canary),
                pool.submit(_hangs_up, hanging, sids[1], canary, seed),
            ]
            for future in running:
                future.result(timeout=120)
        info = {"sessions": sids, "refused": normal.refused + hanging.refused}
        return normal.canaries() | hanging.canaries(), info
    finally:
        normal.close()
        hanging.close()


def test_hang_ups_cancel_nothing_and_leak_nothing(workers, web_server, fake_claude: FakeClaude):
    pair = [workers(pool="threads", concurrency=4) for _ in range(2)]
    for worker in pair:
        worker.wait_ready()
    server = web_server(workers=2, threads=8)
    base_url = server.url
    fake_claude.default_delay = 0.7  # long enough that ?wait is cut while the turn runs
    users = [UserFactory() for _ in range(6)]
    canaries = [_canary() for _ in users]

    with ThreadPoolExecutor(max_workers=len(users)) as pool:
        futures = [
            pool.submit(_user_traffic, base_url, user, canary, seed)
            for seed, (user, canary) in enumerate(zip(users, canaries, strict=True))
        ]
        results = [future.result(timeout=150) for future in futures]

    # No byte any client of any user read held another user's canary.
    for canary, (seen, _) in zip(canaries, results, strict=True):
        assert seen == {canary}, sorted(seen)
    # Every turn ran to its end, once, hang-up or not.
    turns = Turn.objects.all()
    assert turns.count() == len(users) * 4 * ROUNDS
    for turn in turns:
        assert turn.status == Turn.Status.COMPLETED, (turn.pk, turn.status, turn.error_code)
        roles = list(turn.messages.order_by("seq").values_list("role", "content"))
        assert [role for role, _ in roles] == ["user", "assistant"], roles
        assert roles[1][1] == f"Echo: {roles[0][1]}"
    _assert_claude_saw_one_user_per_request(fake_claude)

    # Afterwards each owner sees every turn and all its history, and only its own.
    for user, canary, (_, info) in zip(users, canaries, results, strict=True):
        reader = Reader(base_url, token_for(user))
        try:
            listing = reader.call("GET", "/api/v1/sessions/")[1]
            assert sorted(s["id"] for s in listing["results"]) == sorted(info["sessions"])
            for sid in info["sessions"]:
                status, page = reader.call("GET", f"/api/v1/sessions/{sid}/messages/")
                assert status == 200 and page["count"] == 4 * ROUNDS, page
            for turn_id in Turn.objects.filter(session__owner=user).values_list("pk", flat=True):
                status, turn = reader.call("GET", f"/api/v1/turns/{turn_id}/")
                assert status == 200 and turn["status"] == "completed", turn
            status, turn = reader.post_and_wait(info["sessions"][1], f"Still there? {canary}")
            assert status == 200 and turn["status"] == "completed", turn
            assert reader.canaries() == {canary}
        finally:
            reader.close()
    assert _http_status(base_url, "/healthz") == 200
    # The server answered every request, hung up on or not, without an error of its own.
    statuses = re.findall(r'" (\d{3}) ', server.log())
    assert len(statuses) > len(users) * 10 * ROUNDS, "the access log is there"
    # The one 5xx allowed is API.md's: a stream refused with 503 + Retry-After while the
    # process's wait slots were all taken, each seen and retried by its client.
    server_errors = [line for line in server.log().splitlines() if re.search(r'" 5\d\d ', line)]
    refused = [line for line in server_errors if STREAM_REFUSED.search(line)]
    assert server_errors == refused, server_errors
    assert len(refused) == sum(info["refused"] for _, info in results), server_errors
    assert "Traceback" not in server.log() and server.alive


def _http_status(base_url: str, path: str) -> int:
    parsed = urlsplit(base_url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()
