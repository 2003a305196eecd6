"""GET /api/v1/audit/entries/: staff only, newest first, filtered, never cached."""

import uuid

import pytest

from audit_app.models import AuditEntry
from audit_app.services import audit_message, audit_security_event
from tests.conftest import client_for
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db
URL = "/api/v1/audit/entries/"
FIELDS = {
    "id",
    "created_at",
    "kind",
    "user",
    "session",
    "role",
    "content_hash",
    "token_count",
    "flagged",
    "reason",
    "review_state",
}


@pytest.fixture
def staff(db):
    user = UserFactory(is_staff=True)
    return client_for(user)


def test_staff_read_entries_newest_first_without_caching(staff, user):
    session = uuid.uuid4()
    first = audit_message(user_id=user.pk, session_id=session, role="user", content="hello")
    second = audit_message(user_id=user.pk, session_id=session, role="assistant", content="hi")
    response = staff.get(URL)
    assert response.status_code == 200
    assert "no-store" in [d.strip() for d in response["Cache-Control"].split(",")]
    body = response.json()
    assert set(body) == {"count", "next", "previous", "results"}
    assert [e["id"] for e in body["results"]] == [second.pk, first.pk]
    entry = body["results"][0]
    assert set(entry) == FIELDS
    assert entry["user"] == user.username and entry["session"] == str(session)
    assert "hi" not in entry.values()


def test_filters(staff, user, other_user):
    session = uuid.uuid4()
    audit_message(user_id=user.pk, session_id=session, role="user", content="a")
    audit_message(user_id=other_user.pk, session_id=uuid.uuid4(), role="user", content="b")
    audit_security_event(user_id=other_user.pk, session_id=session, reason="access to session")
    AuditEntry.objects.create(kind="reply", user=user, session_id=session, flagged=True)

    def ids(query: str) -> list[str]:
        response = staff.get(URL + query)
        assert response.status_code == 200, response.json()
        return [(e["kind"], e["user"]) for e in response.json()["results"]]

    assert ids("?flagged=true") == [("reply", user.username)]
    assert ids("?kind=security") == [("security", other_user.username)]
    assert len(ids(f"?user={other_user.username}")) == 2
    assert len(ids(f"?session={session}")) == 3
    assert staff.get(URL + "?session=nope").status_code == 400
    assert staff.get(URL + "?kind=nope").status_code == 400


def test_others_get_403_and_anonymous_401(api, client):
    response = api.get(URL)
    assert response.status_code == 403
    assert set(response.json()) >= {"detail", "code"}
    response = client.get(URL)
    assert response.status_code == 401
    assert "WWW-Authenticate" in response
