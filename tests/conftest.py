import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission
from django.core.cache import cache
from django.db import connections
from django.test.client import Client
from django.test.utils import CaptureQueriesContext
from redis import Redis
from rest_framework.test import APIClient
from schemathesis.pytest.plugin import SchemathesisFunction

from . import contract
from .factories import UserFactory, token_for
from .fakes.claude import FakeClaude
from .support import broker_at, private_redis  # noqa: F401  (a fixture for every suite)

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give each of schemathesis's tests (one per API operation) a node id of its own.

    Under pytest 9 they all get the test function's bare id: schemathesis names each by its
    operation but passes pytest no parameters to build the id from. pytest-xdist's
    ``--dist loadfile`` keys its work by node id, and so ran one operation of the thirteen.
    """
    for item in items:
        named = isinstance(item, SchemathesisFunction) and item.operation_label
        if named and item._id.params is None:
            item._id = item._id.with_params(item.operation_label)


@pytest.fixture
def queued(settings) -> Iterator[Redis]:
    """Tasks go to the broker (this test's Redis database) instead of running in the
    request: a posted turn stays pending. Yields that Redis, its queue emptied."""
    broker = Redis.from_url(settings.REDIS_URL)
    broker.delete("celery")
    try:
        with broker_at(settings, settings.REDIS_URL):
            yield broker
    finally:
        broker.delete("celery")
        broker.close()


@pytest.fixture(autouse=True)
def _clean_cache() -> Iterator[None]:
    cache.clear()
    yield


@pytest.fixture(autouse=True)
def _api_keeps_to_its_schema(monkeypatch) -> None:
    """Check every call the test clients make under /api/v1/ against the live schema.

    DRF's ``APIClient`` sends through Django's ``Client.request`` too; see ``contract``.
    """
    send = Client.request

    def checked(self: Client, **request):
        if not contract.is_api_call(request):
            return send(self, **request)
        body = contract.take_body(request)
        environ = self._base_environ(**request)  # what is sent: defaults and cookies too
        response = send(self, **request)
        contract.exchange(environ, body, response)
        return response

    monkeypatch.setattr(Client, "request", checked)


def client_for(user) -> APIClient:
    """Return an API client signed in as ``user`` with a token of its own."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token_for(user)}")
    return client


@pytest.fixture(params=["postgresql", "other"])
def vendor(request, monkeypatch) -> str:
    """Run the test both ways the code takes: Postgres's statements written out
    (``sessions_app.rows``), and the ORM's steps that other databases (SQLite) take."""
    if request.param == "other":  # every thread's connection: the class's attribute
        monkeypatch.setattr(type(connections["default"]), "vendor", "other")
    return request.param


def as_written(captured: CaptureQueriesContext, *statements: str) -> list[str]:
    """Return the SQL ``captured`` ran, each statement that is one of ``statements`` (a
    module's SQL, written out) given back as that constant: Django records a statement with
    the values in place of its ``%s``."""
    shapes = {sql: re.escape(sql).replace("%s", ".+?") for sql in statements}

    def written(ran: str) -> str:
        return next((sql for sql, shape in shapes.items() if re.fullmatch(shape, ran)), ran)

    return [written(query["sql"]) for query in captured]


@pytest.fixture
def user(db):
    return UserFactory()


@pytest.fixture
def other_user(db):
    return UserFactory()


@pytest.fixture
def api(user) -> APIClient:
    return client_for(user)


@pytest.fixture
def other_api(other_user) -> APIClient:
    return client_for(other_user)


@pytest.fixture
def fake_claude(settings) -> Iterator[FakeClaude]:
    """A fake Messages API on 127.0.0.1, used through the real SDK."""
    with FakeClaude() as fake:
        settings.LLM_PROVIDER = "anthropic"
        settings.ANTHROPIC_API_KEY = "test-key"
        settings.ANTHROPIC_BASE_URL = fake.url
        settings.CLAUDE_TIMEOUT_SECONDS = 5
        settings.CLAUDE_MAX_RETRIES = 3
        yield fake


def random_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def reviewer(client):
    """A staff member who may read and decide flagged entries, signed in on ``client``."""
    user = UserFactory(is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_auditentry", "change_auditentry"])
    )
    client.force_login(user)
    return user
