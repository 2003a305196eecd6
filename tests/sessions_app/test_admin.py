"""The sessions' admin pages: read only, and nothing there erases or invents conversation."""

import pytest

from audit_app.services import ScanResult
from sessions_app import services
from sessions_app.models import ChatSession, Turn
from sessions_app.stores import history_store

from ..factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client):
    admin = UserFactory(is_staff=True, is_superuser=True)
    client.force_login(admin)
    return admin


@pytest.fixture
def withheld(user) -> Turn:
    session = services.chat_session_create(owner=user)
    turn = services.message_accept(user=user, session_id=session.pk, content="hello")
    assert services.turn_complete(
        turn_id=turn.pk, reply="CANARY-held", scan=ScanResult(leaked=True, score=1.0)
    )
    turn.refresh_from_db()
    assert turn.withheld
    return turn


@pytest.mark.parametrize("model", ["chatsession", "turn"])
def test_no_session_or_turn_is_added_or_deleted_here(client, staff, withheld, model):
    obj = withheld.session if model == "chatsession" else withheld
    assert client.get(f"/admin/sessions_app/{model}/add/").status_code == 403
    assert client.post(f"/admin/sessions_app/{model}/add/", {}).status_code == 403
    assert (
        client.post(f"/admin/sessions_app/{model}/{obj.pk}/delete/", {"post": "yes"}).status_code
        == 403
    )
    assert ChatSession.objects.filter(pk=withheld.session_id).exists()
    assert Turn.objects.filter(pk=withheld.pk).exists()


def test_a_sessions_page_offers_no_new_message(client, staff, withheld):
    page = client.get(f"/admin/sessions_app/chatsession/{withheld.session_id}/change/")
    assert page.status_code == 200
    # The inline's formset allows no form beyond the stored messages.
    assert 'name="messages-MAX_NUM_FORMS" value="0"' in page.content.decode()


def test_a_turns_page_says_a_reply_is_withheld_without_its_ciphertext(client, staff, withheld):
    page = client.get(f"/admin/sessions_app/turn/{withheld.pk}/change/").content.decode()
    assert "reply withheld for review" in page.lower()
    assert bytes(withheld.withheld)[:20].decode(errors="replace") not in page
    assert "gAAAA" not in page and "CANARY" not in page


@pytest.mark.parametrize("model", ["chatsession", "turn"])
def test_a_session_or_turn_page_is_read_only_and_saves_nothing(client, staff, withheld, model):
    """A Save would write back the whole row as the page read it: a message accepted
    meanwhile would have its counter set back, a turn ended meanwhile its status."""
    obj = withheld.session if model == "chatsession" else withheld
    page = f"/admin/sessions_app/{model}/{obj.pk}/change/"
    assert client.get(page).status_code == 200  # viewing stays
    before = type(obj).objects.filter(pk=obj.pk).values().get()
    assert client.post(page, {"_save": "Save"}).status_code == 403
    assert type(obj).objects.filter(pk=obj.pk).values().get() == before


@pytest.mark.parametrize("store", ["db", "redis", "cached_db"])
def test_deleting_a_user_here_erases_their_conversations_everywhere(
    client, staff, user, other_user, settings, store
):
    """Staff erase an account from its delete page: its sessions go from the database and
    from Redis, as the owner's own DELETE takes them; another user's stay."""
    from django_redis import get_redis_connection

    settings.HISTORY_STORE = store
    sessions = {}
    for owner, canary in ((user, "CANARY-erased"), (other_user, "CANARY-kept")):
        sessions[owner.pk] = services.chat_session_create(owner=owner)
        turn = services.message_accept(user=owner, session_id=sessions[owner.pk].pk, content=canary)
        assert services.turn_complete(turn_id=turn.pk, reply="reply")
    redis = get_redis_connection("default")
    gone, kept = sessions[user.pk], sessions[other_user.pk]
    page = client.get(f"/admin/auth/user/{user.pk}/delete/")
    assert page.status_code == 200 and b"CANARY" not in page.content
    assert client.post(f"/admin/auth/user/{user.pk}/delete/", {"post": "yes"}).status_code == 302
    assert not ChatSession.objects.filter(pk=gone.pk).exists()
    assert list(redis.scan_iter(match=f"*{gone.pk}*")) == []
    kept.refresh_from_db()
    stored = history_store().page(session=kept, offset=0, limit=9)
    assert [m.content for m in stored] == ["CANARY-kept", "reply"]


def test_staff_without_the_delete_user_permission_still_cannot(client, user):
    from django.contrib.auth.models import Permission

    clerk = UserFactory(is_staff=True)
    clerk.user_permissions.add(Permission.objects.get(codename="view_user"))
    client.force_login(clerk)
    services.chat_session_create(owner=user)
    assert client.post(f"/admin/auth/user/{user.pk}/delete/", {"post": "yes"}).status_code == 403
    assert ChatSession.objects.filter(owner=user).exists()
