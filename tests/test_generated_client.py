"""The API as a client generated from its schema meets it: ``openapi-python-client``, unchanged.

The client is generated from the live server's ``/api/schema/?format=json`` (no other network:
the generator's ruff runs locally), every one of its modules is imported, and a whole
conversation is held through it alone against the live server with the fake Claude behind.
"""

import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from http import HTTPStatus
from pathlib import Path
from types import ModuleType
from uuid import UUID

import pytest

from .contract import check_turn_events
from .factories import UserFactory

PACKAGE = "isolation_client"
PASSWORD = "pw-for-tests"  # the factories' password
GENERATE_TIMEOUT_SECONDS = 120


def _generate(url: str, out: Path) -> None:
    """Run ``openapi-python-client`` on the schema at ``url``; its ruff from this venv."""
    bin_dir = Path(sys.executable).parent
    command = [str(bin_dir / "openapi-python-client"), "generate", "--url", url]
    command += ["--meta", "none", "--output-path", str(out)]
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(
        command,
        cwd=out.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=GENERATE_TIMEOUT_SECONDS,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # Skipped operations or models, or a post-hook (ruff) that failed, are warned about.
    assert "Warning" not in output and "Error" not in output, output


def _import_all(root: Path) -> list[str]:
    """Import every module of the generated package; return their names."""
    names = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        importlib.import_module(name)
        names.append(name)
    return names


@pytest.fixture
def generated(live_server, tmp_path, monkeypatch) -> Iterator[ModuleType]:
    """The client package, generated from the live schema and importable."""
    out = tmp_path / PACKAGE
    _generate(f"{live_server.url}/api/schema/?format=json", out)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        names = _import_all(out)
        assert f"{PACKAGE}.api.sessions.sessions_messages_create" in names, names
        yield importlib.import_module(PACKAGE)
    finally:
        for name in [name for name in sys.modules if name.partition(".")[0] == PACKAGE]:
            del sys.modules[name]


def _operation(name: str) -> ModuleType:
    tag = name.partition("_")[0]
    return importlib.import_module(f"{PACKAGE}.api.{tag}.{name}")


def _model(name: str):
    return getattr(importlib.import_module(f"{PACKAGE}.models"), name)


def _sign_in(generated: ModuleType, url: str, username: str, clients: ExitStack):
    """Sign in through the generated client; return a client carrying the new token.

    Each client is closed with ``clients``: a kept-alive connection would hold the live
    server's thread, and its database connection, past the test.
    """
    with generated.Client(base_url=url) as anonymous:
        token = _operation("auth_token_create").sync(
            client=anonymous,
            body=_model("TokenRequestRequest")(username=username, password=PASSWORD),
        )
    assert isinstance(token, _model("Token")), token
    # The client's default: `Authorization: Bearer <token>`.
    return clients.enter_context(generated.AuthenticatedClient(base_url=url, token=token.token))


@pytest.fixture
def clients() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def test_a_whole_conversation_through_the_generated_client(
    generated, live_server, fake_claude, clients
):
    alice, bob = UserFactory(), UserFactory()
    api = _sign_in(generated, live_server.url, alice.username, clients)
    other = _sign_in(generated, live_server.url, bob.username, clients)

    session = _operation("sessions_create").sync(
        client=api, body=_model("SessionCreateRequest")(title="orders")
    )
    assert isinstance(session, _model("Session")) and session.title == "orders"
    assert isinstance(session.id, UUID) and session.message_count == 0

    posted = _operation("sessions_messages_create").sync_detailed(
        session_id=session.id,
        client=api,
        body=_model("MessageCreateRequest")(content="My order is 48291."),
        wait=30,
    )
    assert posted.status_code == HTTPStatus.OK, posted.content
    turn = posted.parsed
    assert isinstance(turn, _model("Turn")) and turn.status.value == "completed"
    assert turn.user_message.content == "My order is 48291."
    assert turn.reply.content == "Echo: My order is 48291."
    assert turn.error is None

    history = _operation("sessions_messages_list").sync(session_id=session.id, client=api)
    assert history.count == 2
    assert [(m.seq, m.role.value) for m in history.results] == [(1, "user"), (2, "assistant")]
    assert history.results[1].content == turn.reply.content

    assert _operation("turns_retrieve").sync(turn_id=turn.id, client=api).status.value == (
        "completed"
    )
    # The stream comes back as its raw text/event-stream body: one event, the ended turn.
    stream = _operation("turns_events_retrieve").sync(turn_id=turn.id, client=api)
    assert isinstance(stream, str), stream
    (event,) = check_turn_events(stream)
    assert event["id"] == str(turn.id) and event["status"] == "completed"
    assert event["reply"]["content"] == turn.reply.content

    # Another user's ids are 404, as unknown ones, with the typed error body.
    for result in (
        _operation("sessions_retrieve").sync_detailed(session_id=session.id, client=other),
        _operation("turns_retrieve").sync_detailed(turn_id=turn.id, client=other),
    ):
        assert result.status_code == HTTPStatus.NOT_FOUND
        assert isinstance(result.parsed, _model("Error")) and result.parsed.code == "not_found"

    deleted = _operation("sessions_destroy").sync_detailed(session_id=session.id, client=api)
    assert deleted.status_code == HTTPStatus.NO_CONTENT
    gone = _operation("sessions_retrieve").sync_detailed(session_id=session.id, client=api)
    assert gone.status_code == HTTPStatus.NOT_FOUND

    signed_out = _operation("auth_token_destroy").sync_detailed(client=api)
    assert signed_out.status_code == HTTPStatus.NO_CONTENT
    refused = _operation("sessions_list").sync_detailed(client=api)
    assert refused.status_code == HTTPStatus.UNAUTHORIZED
    assert isinstance(refused.parsed, _model("Error"))
