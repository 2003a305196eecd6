"""MAX_WAITS_PER_USER: one user cannot hold every web thread with waits and streams."""

import pytest
from django.core.signals import request_finished
from django.db import close_old_connections

from sessions_app.models import Turn

pytestmark = pytest.mark.django_db


def hang_up(response) -> None:
    """Close a stream as the server does when its client hangs up.

    The end of a request closes the database connection; the test client keeps the test's
    own open (its transaction holds the test's data) the way it does for its requests.
    """
    request_finished.disconnect(close_old_connections)
    try:
        response.close()
    finally:
        request_finished.connect(close_old_connections)


@pytest.fixture
def pending(api, user):
    """A turn that stays pending (not queued), so its stream and waits stay open."""
    from sessions_app import services

    sid = services.chat_session_create(owner=user).pk
    return services.message_accept(user=user, session_id=sid, content="hold on")


def test_one_stream_more_than_the_cap_is_429_and_closing_one_frees_a_slot(
    api, other_api, pending, settings
):
    settings.MAX_WAITS_PER_USER = 2
    path = f"/api/v1/turns/{pending.pk}/events/"
    held = [api.get(path), api.get(path)]
    assert [r.status_code for r in held] == [200, 200]
    refused = api.get(path)
    assert refused.status_code == 429 and refused.json()["code"] == "too_many_waits"
    assert int(refused["Retry-After"]) > 0
    hang_up(held.pop())
    again = api.get(path)
    assert again.status_code == 200
    hang_up(again)
    for response in held:
        hang_up(response)


def test_the_cap_is_per_user(api, other_api, pending, settings):
    settings.MAX_WAITS_PER_USER = 1
    held = api.get(f"/api/v1/turns/{pending.pk}/events/")
    assert held.status_code == 200
    sid = other_api.post("/api/v1/sessions/", {}, format="json").json()["id"]
    theirs = other_api.post(
        f"/api/v1/sessions/{sid}/messages/?wait=5", {"content": "hi"}, format="json"
    )
    assert theirs.status_code == 200
    hang_up(held)


def test_a_wait_past_the_cap_is_429_and_stores_nothing(api, user, pending, settings):
    settings.MAX_WAITS_PER_USER = 1
    held = api.get(f"/api/v1/turns/{pending.pk}/events/")
    sid = api.post("/api/v1/sessions/", {}, format="json").json()["id"]
    refused = api.post(f"/api/v1/sessions/{sid}/messages/?wait=5", {"content": "hi"}, format="json")
    assert refused.status_code == 429 and "Retry-After" in refused
    assert not Turn.objects.filter(session_id=sid).exists()
    # Without ?wait nothing is held open: accepted as usual.
    assert (
        api.post(f"/api/v1/sessions/{sid}/messages/", {"content": "hi"}, format="json").status_code
        == 202
    )
    hang_up(held)


def test_a_finished_wait_gives_its_slot_back(api, settings):
    settings.MAX_WAITS_PER_USER = 1
    sid = api.post("/api/v1/sessions/", {}, format="json").json()["id"]
    for n in range(3):
        response = api.post(
            f"/api/v1/sessions/{sid}/messages/?wait=5", {"content": f"m{n}"}, format="json"
        )
        assert response.status_code == 200, response.content


def test_a_wait_answered_with_an_error_gives_its_slot_back(api, settings):
    settings.MAX_WAITS_PER_USER = 1
    unknown = "00000000-0000-4000-8000-000000000000"
    for _ in range(3):  # 404s: each took a slot, and must have given it back
        response = api.post(
            f"/api/v1/sessions/{unknown}/messages/?wait=1", {"content": "hi"}, format="json"
        )
        assert response.status_code == 404
    sid = api.post("/api/v1/sessions/", {}, format="json").json()["id"]
    response = api.post(
        f"/api/v1/sessions/{sid}/messages/?wait=5", {"content": "hi"}, format="json"
    )
    assert response.status_code == 200, response.content
