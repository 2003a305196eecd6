"""A session's title under PII_MODE, as its messages are: stored redacted or with placeholders
of the session's own vault, restored only in what its owner reads, never before staff."""

import json
import re

import pytest
from cryptography.fernet import InvalidToken
from django.db import connection, reset_queries
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from sessions_app import crypto, services
from sessions_app.models import ChatSession, SessionVault
from sessions_app.pii import PLACEHOLDER

from ..factories import UserFactory
from ..fakes.claude import FakeClaude
from ..support import post_and_wait

pytestmark = pytest.mark.django_db

TITLE = "Order for Dana Whitfield, 221B Baker Street"
RAW = ("Dana", "Whitfield", "221B", "Baker")
STORED = {
    "off": TITLE,
    "redact": "Order for [PERSON], [LOCATION]",
    "pseudonymize": "Order for <PERSON_1>, <LOCATION_1>",
}
# What the owner reads: originals only where they were kept; redaction is for good.
SHOWN = {"off": TITLE, "redact": STORED["redact"], "pseudonymize": TITLE}
SESSIONS = "/api/v1/sessions/"


def _create(api, title: str) -> dict:
    response = api.post(SESSIONS, {"title": title}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def _stored_title(session_id: str) -> str:
    return ChatSession.objects.values("title").get(pk=session_id)["title"]


def _owner_reads(api, session_id: str) -> list[str]:
    """The title in each of the owner's reads: the list and the session itself."""
    listed = [s["title"] for s in api.get(SESSIONS).json()["results"] if s["id"] == session_id]
    return [*listed, api.get(f"{SESSIONS}{session_id}/").json()["title"]]


@pytest.mark.parametrize("mode", ["off", "redact", "pseudonymize"])
def test_the_title_is_stored_protected_and_its_owner_reads_it_as_messages_are_read(
    mode, settings, api
):
    settings.PII_MODE = mode
    created = _create(api, TITLE)
    stored = _stored_title(created["id"])
    assert stored == STORED[mode]
    if mode != "off":
        assert not any(raw in stored for raw in RAW)
    assert [created["title"], *_owner_reads(api, created["id"])] == [SHOWN[mode]] * 3
    # A vault only where there are originals to keep.
    vaults = SessionVault.objects.filter(session_id=created["id"])
    assert vaults.exists() is (mode == "pseudonymize")


def test_the_title_starts_the_vault_the_session_s_messages_extend(
    settings, api, fake_claude: FakeClaude
):
    """A name from the title keeps its placeholder in the messages; a new one gets the next."""
    sid = _create(api, TITLE)["id"]
    _, turn = post_and_wait(api, "Dana Whitfield here, and Marcus Ellery too.", sid)
    sent = json.dumps([body.get("messages") for body in fake_claude.requests])
    assert "<PERSON_1> here, and <PERSON_2> too." in sent and "Whitfield" not in sent
    assert turn["user_message"]["content"] == "Dana Whitfield here, and Marcus Ellery too."
    assert _stored_title(sid) == STORED["pseudonymize"]
    assert _owner_reads(api, sid) == [TITLE, TITLE]


def test_each_owner_reads_their_own_title_and_nobody_else_reads_it(api, other_api):
    """Two sessions, the same placeholder: each restored from its own session's vault only."""
    mine = _create(api, TITLE)["id"]
    theirs = _create(other_api, "Call Marcus Ellery")["id"]
    assert _stored_title(mine) == STORED["pseudonymize"]
    assert _stored_title(theirs) == "Call <PERSON_1>"
    assert _owner_reads(api, mine) == [TITLE, TITLE]
    assert _owner_reads(other_api, theirs) == ["Call Marcus Ellery"] * 2
    # The other user cannot see my session at all: 404, as for an id that never existed.
    foreign = other_api.get(f"{SESSIONS}{mine}/")
    unknown = other_api.get(f"{SESSIONS}00000000-0000-4000-8000-000000000000/")
    assert foreign.status_code == 404 and foreign.json() == unknown.json()
    listed = other_api.get(SESSIONS).content.decode()
    assert mine not in listed and not any(raw in listed for raw in RAW)


@pytest.mark.parametrize("mode", ["redact", "pseudonymize"])
def test_staff_see_the_title_as_stored_in_the_admin(mode, settings, api, client):
    settings.PII_MODE = mode
    sid = _create(api, TITLE)["id"]
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    changelist = client.get("/admin/sessions_app/chatsession/")
    change = client.get(f"/admin/sessions_app/chatsession/{sid}/change/")
    for page in (changelist, change):
        assert page.status_code == 200
        text = page.content.decode()
        assert sid in text and not any(raw in text for raw in RAW)
    # The search is over what is stored: an original finds nothing.
    searched = client.get("/admin/sessions_app/chatsession/", {"q": "Whitfield"})
    assert searched.status_code == 200 and sid not in searched.content.decode()


def test_the_owner_s_reads_restore_titles_without_a_query_per_session(
    user, api, django_assert_num_queries
):
    def listed() -> list[str]:
        response = api.get(SESSIONS)
        assert response.status_code == 200
        return [s["title"] for s in response.json()["results"]]

    _create(api, TITLE)
    # A request empties the query log as it starts: counting starts from an empty one too.
    reset_queries()
    with CaptureQueriesContext(connection) as one_session:
        assert listed() == [TITLE]
    queries = len(one_session)  # now: the log is a window that the next request empties
    services.chat_session_create(owner=user, title="no personal data here")
    for number in range(2, 6):
        _create(api, f"{number}: {TITLE}")
    titles = [f"{n}: {TITLE}" for n in range(5, 1, -1)] + ["no personal data here", TITLE]
    reset_queries()
    with django_assert_num_queries(queries):
        assert listed() == titles
    stored = ChatSession.objects.values_list("title", flat=True)
    assert not any(raw in title for title in stored for raw in RAW)
    # One session's read as well: its vault comes along, no read of its own for the title.
    plain, titled = (_create(api, title)["id"] for title in ("groceries", TITLE))
    reset_queries()
    with CaptureQueriesContext(connection) as without_pii:
        assert api.get(f"{SESSIONS}{plain}/").json()["title"] == "groceries"
    queries = len(without_pii)
    reset_queries()
    with django_assert_num_queries(queries):
        assert api.get(f"{SESSIONS}{titled}/").json()["title"] == TITLE


@pytest.mark.parametrize("erase", ["delete", "expire"])
def test_an_erased_session_s_title_is_unreadable_in_any_copy(erase, api):
    sid = _create(api, TITLE)["id"]
    # What a backup or a replica holds: the stored title and the sealed vault.
    copy_of_title = _stored_title(sid)
    copy_of_entries = bytes(SessionVault.objects.get(session_id=sid).entries)
    assert not any(raw in copy_of_title or raw in copy_of_entries.decode() for raw in RAW)
    if erase == "delete":
        assert api.delete(f"{SESSIONS}{sid}/").status_code == 204
    else:
        ChatSession.objects.filter(pk=sid).update(expires_at=timezone.now())
        assert services.chat_session_purge_expired() == 1
    assert not ChatSession.objects.filter(pk=sid).exists()
    assert not SessionVault.objects.filter(session_id=sid).exists()
    assert api.get(f"{SESSIONS}{sid}/").status_code == 404
    # Without the session's data key, the site's keys alone cannot open the copy.
    with pytest.raises(InvalidToken):
        crypto.unseal(copy_of_entries)


# 199 characters of e-mail addresses and a full stop: 200, the most a title may be.
LONG = " ".join(f"a{n:02d}@ex.io" for n in range(20)) + "."


@pytest.mark.parametrize("mode", ["redact", "pseudonymize"])
def test_the_limit_is_on_the_title_as_sent_and_a_longer_protected_form_is_cut_to_fit(
    mode, settings, api
):
    """A placeholder is longer than the value it replaces: the stored form is cut, whole
    placeholders only, and keeps only the originals it still holds."""
    settings.PII_MODE = mode
    assert len(LONG) == 200
    too_long = api.post(SESSIONS, {"title": LONG + "x"}, format="json")
    assert too_long.status_code == 400 and not ChatSession.objects.exists()
    created = _create(api, LONG)
    stored = _stored_title(created["id"])
    assert len(stored) <= 200 and stored.endswith("\N{HORIZONTAL ELLIPSIS}")
    assert "@" not in stored
    words = stored.removesuffix("\N{HORIZONTAL ELLIPSIS}").split()
    marker = PLACEHOLDER if mode == "pseudonymize" else re.compile(r"\[EMAIL_ADDRESS\]")
    assert words and all(marker.fullmatch(word) for word in words)
    shown = created["title"]
    assert _owner_reads(api, created["id"]) == [shown, shown]
    if mode == "pseudonymize":
        # The owner reads the start of what they sent, as far as the stored form goes.
        assert shown == " ".join(LONG.split()[: len(words)]) + "\N{HORIZONTAL ELLIPSIS}"
        vault = SessionVault.objects.get(session_id=created["id"])
        entries = json.loads(crypto.open_with(bytes(vault.wrapped_key), bytes(vault.entries)))
        assert sorted(entries) == sorted(words)
    else:
        assert shown == stored
