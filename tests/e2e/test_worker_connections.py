"""A real worker keeps its database connection from task to task, and drops a spoilt one.

Celery's Django fixup would otherwise close it around every task: a new Postgres backend
per turn, which cost Postgres more than the turn's own queries.
"""

import pytest
from django.db import connection

from ..conftest import client_for
from ..fakes.claude import FakeClaude

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


# The worker names its connections, so that no other connection to the test database (one
# left by an earlier test's threads, say) can pass for the worker's.
WORKER_APP = "isolation-test-worker"


def _backends() -> dict[int, object]:
    """The worker's connections to the test database: ``{pid: backend_start}``."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid, backend_start FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = %s",
            [WORKER_APP],
        )
        return dict(cursor.fetchall())


def _named(worker_env: dict[str, str], **env: str) -> dict[str, str]:
    return {"DATABASE_URL": f"{worker_env['DATABASE_URL']}?application_name={WORKER_APP}", **env}


def _turn(api, sid: str, n: int) -> dict:
    response = api.post(
        f"/api/v1/sessions/{sid}/messages/?wait=30", {"content": f"turn {n}"}, format="json"
    )
    assert response.status_code == 200, response.content
    return response.json()


def test_worker_reuses_its_connection_across_turns(
    workers, worker_env, fake_claude: FakeClaude, user
):
    workers(pool="solo", env=_named(worker_env)).wait_ready()
    api = client_for(user)
    sid = api.post("/api/v1/sessions/", {}, format="json").json()["id"]
    assert _turn(api, sid, 0)["status"] == "completed"
    kept = _backends()
    assert kept, "the worker closed its connection after its task"

    for n in range(1, 9):
        assert _turn(api, sid, n)["status"] == "completed"

    after = _backends()
    assert after.items() <= kept.items(), (kept, after)  # no new connection
    assert set(kept) & set(after), "the worker's connection did not outlive its tasks"


def test_worker_drops_its_connection_after_a_task_that_did_not_succeed(
    workers, worker_env, fake_claude: FakeClaude, user
):
    """A task cut short may leave a connection Django thinks usable: it is not reused."""
    env = _named(worker_env, TURN_MAX_ATTEMPTS="2", CLAUDE_MAX_RETRIES="0")
    workers(pool="solo", env=env).wait_ready()
    api = client_for(user)
    sid = api.post("/api/v1/sessions/", {}, format="json").json()["id"]
    assert _turn(api, sid, 0)["status"] == "completed"
    before = _backends()
    assert before

    fake_claude.fail(500)  # the first attempt raises Retry; the second one answers
    assert _turn(api, sid, 1)["status"] == "completed"

    assert not set(before) & set(_backends()), "a failed task's connection was reused"
