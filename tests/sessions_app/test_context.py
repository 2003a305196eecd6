"""The isolation context and the logs, tested where they could really go wrong: threads
that are reused, coroutines sharing one event loop, and what a real turn writes to logs."""

import asyncio
import copy
import logging
import logging.config
import random
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from sessions_app.isolation import bound, current_scope

from ..fakes.claude import FakeClaude


def test_a_reused_pool_thread_does_not_keep_the_previous_scope():
    """Pool threads (gunicorn's gthread, Celery's threads) run one job after another."""
    first = uuid.uuid4()

    def job_one() -> object:
        with bound(user_id=1, session_id=first):
            return current_scope()

    with ThreadPoolExecutor(max_workers=1) as pool:
        assert pool.submit(job_one).result().session_id == first
        assert pool.submit(current_scope).result() is None  # the same thread, the next job


@pytest.mark.django_db
def test_an_eager_task_inside_a_request_leaves_no_scope_behind(api):
    """Tasks run eagerly in the web thread under the embedded default."""
    sid = api.post("/api/v1/sessions/", {}, format="json").json()["id"]
    response = api.post(
        f"/api/v1/sessions/{sid}/messages/?wait=5", {"content": "hi"}, format="json"
    )
    assert response.json()["status"] == "completed"
    assert current_scope() is None


def test_fifty_coroutines_in_one_loop_each_see_only_their_own_scope():
    """The scope follows each coroutine across awaits that interleave with the others'."""

    async def conversation(user_id: int) -> list[int]:
        seen = []
        with bound(user_id=user_id, session_id=uuid.uuid4()):
            for _ in range(5):
                await asyncio.sleep(random.random() / 200)
                seen.append(current_scope().user_id)
        return seen

    async def everyone() -> list[list[int]]:
        return await asyncio.gather(*(conversation(n) for n in range(50)))

    results = asyncio.run(everyone())
    assert results == [[n] * 5 for n in range(50)]
    assert current_scope() is None


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.getMessage()}")


@pytest.mark.django_db
def test_a_real_turn_logs_no_conversation_content_even_at_debug(
    api, fake_claude: FakeClaude, settings
):
    """The service's own logging configuration with LOG_LEVEL=DEBUG, a turn through the real
    SDK: the SDK's and the database's DEBUG output (request bodies, SQL parameters) must not
    reach any handler."""
    canary = f"CANARY-{uuid.uuid4().hex}"
    config = copy.deepcopy(settings.LOGGING)
    config["root"]["level"] = "DEBUG"
    collect = _Collect()
    logging.config.dictConfig(config)
    logging.getLogger().addHandler(collect)
    try:
        sid = api.post("/api/v1/sessions/", {}, format="json").json()["id"]
        turn = api.post(
            f"/api/v1/sessions/{sid}/messages/?wait=5", {"content": canary}, format="json"
        ).json()
    finally:
        logging.getLogger().removeHandler(collect)
        logging.config.dictConfig(settings.LOGGING)
    assert turn["status"] == "completed" and fake_claude.request_count() == 1
    assert collect.lines, "the turn logged nothing at all: the capture is broken"
    assert [line for line in collect.lines if canary in line] == []
