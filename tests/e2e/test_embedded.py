"""The embedded default as ``make run`` serves it: SQLite, the in-process cache, eager tasks
and the offline responder, under ``runserver``, driven over HTTP.

The rest of the suite runs on Postgres and Redis, where the service writes some statements
out by hand; on other databases it takes the ORM's path or a portable statement. This holds
that path to a real SQLite database, as a newcomer's first ``make run`` meets it.
"""

import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ..support import free_port
from .conftest import ROOT, Service

# Only what ``make run`` sets: the suite's own settings (Postgres, Redis, secrets) stay out.
PASSED_THROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV")


def _embedded_env(tmp_path: Path) -> dict[str, str]:
    env = {name: os.environ[name] for name in PASSED_THROUGH if name in os.environ}
    return {**env, "DEBUG": "1", "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}


def _manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[str]:
    """Migrate, seed the demo users and serve as ``make run`` does; yield the base URL."""
    env = _embedded_env(tmp_path)
    _manage(env, "migrate", "--noinput")
    assert "alice" in _manage(env, "seed_demo_users")
    port = free_port()
    argv = [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"]
    server = Service("runserver", argv, env, tmp_path / "runserver.log").start()
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        server.wait_ready(answers, timeout=60)
        yield url
    finally:
        server.stop()
        print(f"----- runserver -----\n{server.log()[-20000:]}")


def _signed_in(url: str, username: str) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=30)
    answer = client.post(
        "/api/v1/auth/token/", json={"username": username, "password": f"{username}-demo-pass"}
    )
    assert answer.status_code == 200, answer.text
    client.headers["Authorization"] = f"Bearer {answer.json()['token']}"
    return client


def test_a_conversation_on_the_embedded_default(embedded: str):
    alice, bob = _signed_in(embedded, "alice"), _signed_in(embedded, "bob")
    created = alice.post("/api/v1/sessions/", json={"title": "Orders of Bartholomew Quince"})
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    assert created.json()["title"] == "Orders of Bartholomew Quince"
    said = ["Write to alice.one@example.org", "Or to alice.two@example.org, CANARY-alice"]
    for content in said:
        turn = alice.post(f"/api/v1/sessions/{sid}/messages/?wait=10", json={"content": content})
        assert turn.status_code == 200, turn.text
        assert turn.json()["status"] == "completed", turn.json()
        assert turn.json()["user_message"]["content"] == content
        assert alice.get(f"/api/v1/turns/{turn.json()['id']}/").json() == turn.json()
    history = alice.get(f"/api/v1/sessions/{sid}/messages/").json()
    assert history["count"] == 4
    assert [m["content"] for m in history["results"] if m["role"] == "user"] == said
    # Another user: the same 404 as for an id that never existed, and nothing of Alice's.
    for path in (f"/api/v1/sessions/{sid}/", f"/api/v1/sessions/{sid}/messages/"):
        refused = bob.get(path)
        assert refused.status_code == 404 and "CANARY" not in refused.text
    assert alice.delete(f"/api/v1/sessions/{sid}/").status_code == 204
    assert alice.get(f"/api/v1/sessions/{sid}/").status_code == 404


def test_only_a_turn_in_flight_is_a_409_on_the_embedded_default(embedded: str, tmp_path: Path):
    """SQLite names a violated unique index by its columns only: the partial index "one turn
    in flight per session" must still be told from the others, which are faults (500)."""
    alice = _signed_in(embedded, "alice")
    sid = alice.post("/api/v1/sessions/", json={}).json()["id"]
    messages = f"/api/v1/sessions/{sid}/messages/"
    assert alice.post(f"{messages}?wait=10", json={"content": "first"}).status_code == 200
    database = sqlite3.connect(tmp_path / "db.sqlite3")
    row = {"sid": uuid.UUID(sid).hex}  # how Django keeps a UUID in SQLite

    def run(statement: str) -> tuple | None:
        with database:
            return database.execute(statement, row).fetchone()

    # The counter set behind the rows: the next message's seq is the reply's.
    run("UPDATE sessions_app_chatsession SET next_seq = 2 WHERE id = :sid")
    assert alice.post(messages, json={"content": "second"}).status_code == 500
    assert run("SELECT count(*) FROM sessions_app_turn WHERE session_id = :sid") == (1,)
    assert run("SELECT count(*) FROM sessions_app_message WHERE session_id = :sid") == (2,)
    run("UPDATE sessions_app_chatsession SET next_seq = 3 WHERE id = :sid")
    run("UPDATE sessions_app_turn SET status = 'running' WHERE session_id = :sid")
    database.close()
    busy = alice.post(messages, json={"content": "third"})
    assert busy.status_code == 409 and busy.json()["code"] == "turn_in_flight", busy.text
