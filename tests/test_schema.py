"""The OpenAPI description: valid, complete against API.md, and true of the running app.

The last test lets Schemathesis generate requests from the schema and send them to the WSGI
application (embedded eager tasks, the offline responder), authenticated with a real token.
"""

import inspect
import json
import uuid
from collections.abc import Iterator

import pytest
import schemathesis
import yaml
from django.contrib.staticfiles import finders
from drf_spectacular.validation import validate_schema
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from openapi_spec_validator import validate as validate_spec
from rest_framework.test import APIClient
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from core.api import LoggedUserMixin
from isolation_site.wsgi import application

from .conftest import client_for
from .contract import check_turn_events
from .factories import UserFactory, token_for

pytestmark = pytest.mark.django_db(transaction=True)

ERROR_SCHEMA = "#/components/schemas/Error"
V1 = "/api/v1"

# Every endpoint of API.md, with the statuses its description must declare.
ENDPOINTS: dict[tuple[str, str], dict] = {
    ("post", f"{V1}/auth/token/"): {
        "success": {"200"},
        "errors": {"400", "413", "429", "503"},
        "body": ({"username", "password"}, {"username", "password"}),
    },
    ("delete", f"{V1}/auth/token/"): {"success": {"204"}, "errors": {"401", "503"}},
    ("get", f"{V1}/sessions/"): {"success": {"200"}, "errors": {"401", "404", "503"}},
    ("post", f"{V1}/sessions/"): {
        "success": {"201"},
        "errors": {"400", "401", "413", "503"},
        "body": ({"title"}, set()),
    },
    ("get", f"{V1}/sessions/{{session_id}}/"): {
        "success": {"200"},
        "errors": {"401", "404", "503"},
    },
    ("delete", f"{V1}/sessions/{{session_id}}/"): {
        "success": {"204"},
        "errors": {"401", "404", "503"},
    },
    ("get", f"{V1}/sessions/{{session_id}}/messages/"): {
        "success": {"200"},
        "errors": {"401", "404", "503"},
    },
    ("post", f"{V1}/sessions/{{session_id}}/messages/"): {
        "success": {"200", "202"},
        "errors": {"400", "401", "404", "409", "413", "429", "503"},
        "body": ({"content"}, {"content"}),
    },
    ("get", f"{V1}/turns/{{turn_id}}/"): {"success": {"200"}, "errors": {"401", "404", "503"}},
    ("get", f"{V1}/turns/{{turn_id}}/events/"): {
        "success": {"200"},
        "errors": {"401", "404", "429", "503"},
    },
    ("post", f"{V1}/stateless/chat/"): {
        "success": {"200"},
        "errors": {"400", "401", "403", "413", "429", "503"},
        "body": ({"token", "content"}, {"token", "content"}),
    },
    ("get", f"{V1}/audit/entries/"): {
        "success": {"200"},
        "errors": {"400", "401", "403", "404", "503"},
    },
    ("get", "/healthz"): {
        "success": {"200"},
        "errors": {"503"},
        "error_schema": "#/components/schemas/Health",
    },
}


def fetch(path: str):
    response = APIClient().get(path)
    assert response.status_code == 200, response.content
    return response


@pytest.fixture
def document() -> dict:
    return json.loads(fetch("/api/schema/?format=json").content)


def resolve(document: dict, node: dict) -> dict:
    while "$ref" in node:
        name = node["$ref"].removeprefix("#/components/schemas/")
        node = document["components"]["schemas"][name]
    return node


def test_yaml_and_json_are_the_same_valid_openapi_3_document(transactional_db):
    as_yaml = fetch("/api/schema/")
    as_json = fetch("/api/schema/?format=json")
    assert as_yaml["Content-Type"].startswith("application/vnd.oai.openapi")
    assert as_json["Content-Type"].startswith("application/vnd.oai.openapi+json")
    from_yaml = yaml.safe_load(as_yaml.content)
    from_json = json.loads(as_json.content)
    assert from_yaml == from_json
    assert from_json["openapi"].startswith("3.")
    validate_schema(from_json)  # the OpenAPI 3 meta-schema drf-spectacular ships


def test_the_schema_needs_no_authentication(transactional_db):
    response = client_for(UserFactory()).get("/api/schema/?format=json")
    assert response.status_code == 200
    assert APIClient().get("/api/docs/").status_code == 200


def test_every_endpoint_of_api_md_is_described(document):
    described = {
        (method, path)
        for path, operations in document["paths"].items()
        for method in operations
        if method in {"get", "post", "put", "patch", "delete"}
    }
    assert described == set(ENDPOINTS)


@pytest.mark.parametrize(("method", "path"), sorted(ENDPOINTS))
def test_each_operation_declares_its_responses_and_errors(document, method, path):
    expected = ENDPOINTS[method, path]
    operation = document["paths"][path][method]
    responses = operation["responses"]
    assert expected["success"] | expected["errors"] <= set(responses), sorted(responses)
    for code in set(responses) - {"204"}:
        assert responses[code].get("content"), (code, responses[code])
    for code in (c for c in responses if c >= "400"):
        schema = responses[code]["content"]["application/json"]["schema"]
        assert schema == {"$ref": expected.get("error_schema", ERROR_SCHEMA)}, (code, schema)
    if "body" in expected:
        fields, required = expected["body"]
        body = operation["requestBody"]
        assert body.get("required", False) == bool(required)
        schema = resolve(document, body["content"]["application/json"]["schema"])
        assert set(schema["properties"]) == fields
        assert set(schema.get("required", [])) == required
    else:
        assert "requestBody" not in operation


def test_the_token_endpoint_ignores_a_stale_token_and_documents_no_401(document):
    """Credentials are in the body: a stale ``Authorization`` header must not get in the way."""
    user = UserFactory()
    response = APIClient().post(
        f"{V1}/auth/token/",
        {"username": user.username, "password": "pw-for-tests"},
        format="json",
        HTTP_AUTHORIZATION="Token stale-or-revoked",
    )
    assert response.status_code == 200, response.content
    responses = document["paths"][f"{V1}/auth/token/"]["post"]["responses"]
    assert "200" in responses and "401" not in responses


def test_the_error_body_is_detail_and_code(document):
    error = document["components"]["schemas"]["Error"]
    assert set(error["required"]) >= {"detail", "code"}


def test_the_objects_are_those_of_api_md(document):
    schemas = document["components"]["schemas"]
    fields = {
        name: set(schemas[name]["properties"]) for name in ("Session", "Message", "Turn", "Health")
    }
    assert fields["Session"] == {"id", "title", "created_at", "expires_at", "message_count"}
    assert fields["Message"] == {"id", "seq", "role", "content", "created_at", "status"}
    assert fields["Turn"] == {
        "id",
        "session",
        "status",
        "user_message",
        "reply",
        "error",
        "created_at",
        "finished_at",
    }
    assert fields["Health"] == {"status", "database", "cache", "broker"}
    assert schemas["PaginatedSessionList"]["required"] == ["count", "results"]
    assert set(schemas["PaginatedSessionList"]["properties"]) == {
        "count",
        "next",
        "previous",
        "results",
    }
    enum = resolve(document, schemas["TurnStatusEnum"])["enum"]
    assert enum == ["pending", "running", "completed", "suppressed", "failed"]
    assert resolve(document, schemas["RoleEnum"])["enum"] == ["user", "assistant"]
    assert resolve(document, schemas["MessageStatusEnum"])["enum"] == ["ok", "suppressed"]


def test_the_message_input_limits_are_described(document, settings):
    post = document["paths"][f"{V1}/sessions/{{session_id}}/messages/"]["post"]
    wait = next(p for p in post["parameters"] if p["name"] == "wait")
    assert wait["in"] == "query" and not wait.get("required", False)
    assert wait["schema"] == {"type": "integer", "minimum": 0, "maximum": 60}
    content = document["components"]["schemas"]["MessageCreateRequest"]["properties"]["content"]
    assert content["maxLength"] == settings.MAX_MESSAGE_CHARS
    title = document["components"]["schemas"]["SessionCreateRequest"]["properties"]["title"]
    assert {"type": "string", "maxLength": 0} in title["oneOf"]  # blank is allowed
    assert max(option["maxLength"] for option in title["oneOf"]) == 200
    for path in (f"{V1}/sessions/", f"{V1}/sessions/{{session_id}}/messages/"):
        page = next(p for p in document["paths"][path]["get"]["parameters"] if p["name"] == "page")
        assert page["schema"] == {"type": "integer", "minimum": 1}


def test_strict_tools_accept_the_document(document):
    """openapi-spec-validator (what openapi-core and generators run first) finds nothing."""
    validate_spec(document)


def test_each_operation_is_described_in_its_own_words(document):
    descriptions = [
        operation.get("description", "")
        for operations in document["paths"].values()
        for operation in operations.values()
    ]
    assert all(descriptions), descriptions
    assert len(set(descriptions)) == len(descriptions), descriptions
    mixin_doc = inspect.getdoc(LoggedUserMixin)
    assert not any(mixin_doc in description for description in descriptions)


def test_a_token_is_declared_under_both_spellings_of_the_header(document):
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert {"type": "apiKey", "in": "header", "name": "Authorization"}.items() <= schemes[
        "tokenAuth"
    ].items()
    security = document["paths"][f"{V1}/sessions/"]["get"]["security"]
    assert {"bearerAuth": []} in security and {"tokenAuth": []} in security  # either one


def test_a_turn_may_have_no_reply_or_error_yet(document):
    """OpenAPI 3.0 ignores `nullable` without a `type` beside it: null has a branch of its own."""
    turn = document["components"]["schemas"]["Turn"]["properties"]
    for name, component in (("reply", "Message"), ("error", "TurnError")):
        assert "nullable" not in turn[name] and "allOf" not in turn[name]
        assert turn[name]["oneOf"] == [
            {"$ref": f"#/components/schemas/{component}"},
            {"type": "object", "nullable": True, "enum": [None]},
        ]


def test_the_event_stream_is_text(document):
    responses = document["paths"][f"{V1}/turns/{{turn_id}}/events/"]["get"]["responses"]
    assert list(responses["200"]["content"]) == ["text/event-stream"]
    assert responses["200"]["content"]["text/event-stream"]["schema"]["type"] == "string"


def test_each_request_body_is_json_only(document):
    for operations in document["paths"].values():
        for operation in operations.values():
            if "requestBody" in operation:
                assert list(operation["requestBody"]["content"]) == ["application/json"]


def test_a_429_says_when_to_try_again(document):
    for operations in document["paths"].values():
        for operation in operations.values():
            if "429" in operation["responses"]:
                assert operation["responses"]["429"]["headers"]["Retry-After"]["required"]


def test_the_docs_page_renders_offline(transactional_db):
    response = fetch("/api/docs/")
    assert response["Content-Type"].startswith("text/html")
    page = response.content.decode()
    assert "swagger-ui" in page
    assert "/api/schema/" in fetch("/api/docs/?script=").content.decode()  # its start-up script
    assert "drf_spectacular_sidecar/swagger-ui-dist/" in page
    assert "cdn.jsdelivr.net" not in page and "unpkg.com" not in page
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f"drf_spectacular_sidecar/swagger-ui-dist/{asset}" in page
        assert finders.find(f"drf_spectacular_sidecar/swagger-ui-dist/{asset}"), asset


# Schemathesis ------------------------------------------------------------------------------

CONFIG = schemathesis.Config.from_dict(
    {
        # Unknown query parameters are ignored, as by most HTTP APIs, not refused.
        "generation": {
            "max-examples": 25,
            "deterministic": True,
            "allow-extra-parameters": False,
        },
        # Stateful links are not declared; the ids are supplied by the hook below instead.
        "phases": {"stateful": {"enabled": False}},
    }
)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    ignored_auth,
]


# The ids that exist during the test below; filled by its fixture, read while generating.
EXISTING_IDS: dict[str, list[str]] = {}


@pytest.fixture
def owner(transactional_db):
    return UserFactory()


@pytest.fixture
def existing_ids(owner) -> Iterator[None]:
    """The owner's session and turn, and another user's (which must be 404 like unknown ids)."""
    ids: dict[str, list[str]] = {"session_id": [], "turn_id": []}
    for user in (owner, UserFactory()):
        api = client_for(user)
        session = api.post(f"{V1}/sessions/", {"title": "fuzz"}, format="json").json()
        turn = api.post(
            f"{V1}/sessions/{session['id']}/messages/?wait=5", {"content": "hi"}, format="json"
        ).json()
        assert turn["status"] == "completed", turn
        ids["session_id"].append(session["id"])
        ids["turn_id"].append(turn["id"])
    EXISTING_IDS.update(ids)
    yield
    EXISTING_IDS.clear()


# Loaded at import (pytest 9 breaks Schemathesis' lazy ``from_fixture``); this only renders
# the schema, it touches no database.
schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", application, config=CONFIG)


@schemathesis.check
def events_are_turns(ctx, response, case) -> None:
    """Each event of a 200 event stream is `event: turn` with a schema-valid Turn."""
    if case.method.upper() == "GET" and response.status_code == 200:
        check_turn_events(response.text)


def _is_uuid(value: object) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


@schema.hook
def flatmap_path_parameters(context, path_parameters):
    """Random ids only ever reach the 404 path: mix in ids that exist.

    Only a well-formed (schema-valid) id is swapped, so a case generated to break the schema
    stays broken.
    """
    choices = []
    for name, values in EXISTING_IDS.items():
        if _is_uuid((path_parameters or {}).get(name, "")):
            choices += [{**path_parameters, name: value} for value in values]
    return st.sampled_from([*choices, path_parameters])


@schema.parametrize()
@hypothesis_settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_the_api_keeps_to_its_schema(case, owner, existing_ids):
    checks = CHECKS
    if case.operation.path in (f"{V1}/auth/token/", f"{V1}/stateless/chat/"):
        # Well-formed but unknown credentials, or a token that is not an authentic one,
        # are rightly refused (400): no schema can say which are genuine.
        checks = [check for check in CHECKS if check is not positive_data_acceptance]
    if case.operation.path == f"{V1}/turns/{{turn_id}}/events/":
        # Schemathesis reads an event stream's schema before OpenAPI 3.2 as one event's; ours
        # is the whole body's (a string, as 3.0 says and generated clients read it). Each
        # event is checked against the Turn schema instead.
        checks = [c for c in CHECKS if c is not response_schema_conformance] + [events_are_turns]
    case.call_and_validate(headers={"Authorization": f"Token {token_for(owner)}"}, checks=checks)


def test_every_test_has_a_node_id_of_its_own(request):
    # pytest-xdist's --dist loadfile schedules by node id: tests sharing one run only once
    # (schemathesis's, one per API operation, did under pytest 9: tests/conftest.py).
    ids = [item.nodeid for item in request.session.items]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})
