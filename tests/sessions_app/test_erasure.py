"""Deleting or expiring a session erases its fingerprint postings too, with each history
store and each fingerprint index, those of texts no longer stored (a post answered 503, an
expired ``redis`` history) too; with the index unreachable nothing is half-erased.
Deleting an account also erases its postings that stand for several of its sessions.

Postings are looked up as the leak scan reads them: ``reply_scan`` for a stranger, whose
evidence names every (user, session) that introduced a token of the text.
"""

import logging
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone
from django_redis import get_redis_connection

from audit_app.index import MAX_RECORDS, DbIndex, RedisIndex
from audit_app.index.base import SEVERAL_SESSION
from audit_app.models import AuditEntry, FingerprintPosting
from audit_app.services import ScanResult, fingerprint_index, reply_scan
from sessions_app import services
from sessions_app.models import ChatSession, Turn
from sessions_app.stores import history_store

from ..conftest import client_for
from ..fakes.claude import FakeClaude
from ..support import broker_at, free_port, post_and_wait, postings_locked_elsewhere

pytestmark = pytest.mark.django_db

STORES = ["db", "redis", "cached_db"]
STRANGER = 0  # no user has this id: every posting is someone else's to the scan

# Made-up words: no dictionary and no PII detector knows them, so each is distinctive.
GONE_ASKED = "Keep the Vexmoria Quintaplex ledger for me."
GONE_REPLY = "The Zanthorpe parcel waits at the Kelvadore depot."
GONE_RELEASED = "Brimwaldt signed the Ostrevane lease."
KEPT_MINE = "My other project is called Glimmerdax Torvane."
KEPT_THEIRS = "My badge says Pellucidar Wexford-Quoll."


def introducers(text: str) -> set[tuple[int, str]]:
    """Return who the index says introduced the tokens of ``text``, as the scan reads it."""
    result = reply_scan(user_id=STRANGER, session_id=uuid.uuid4(), text=text)
    return {(p.user_id, p.session_id) for e in result.evidence for p in e.introduced_by}


@pytest.fixture(params=["redis", "db"])
def index(request, settings) -> str:
    """The Redis index (``REDIS_URL`` set, as in the suite), or the database table."""
    if request.param == "db":
        settings.REDIS_URL = ""
    kind = {"redis": RedisIndex, "db": DbIndex}[request.param]
    assert type(fingerprint_index()) is kind
    return request.param


@pytest.fixture(params=STORES)
def store(request, settings) -> str:
    settings.HISTORY_STORE = request.param
    return request.param


def exchange(user, session: ChatSession, asked: str, reply: str) -> Turn:
    """A turn of ``session``: ``asked`` accepted, ``reply`` delivered (both registered)."""
    turn = services.message_accept(user=user, session_id=session.pk, content=asked)
    assert services.turn_complete(turn_id=turn.pk, reply=reply)
    return turn


def released(user, session: ChatSession, reply: str) -> Turn:
    """A turn whose reply was withheld, then released on review (registered only then)."""
    turn = services.message_accept(user=user, session_id=session.pk, content="Anything new?")
    flagged = ScanResult(leaked=True, score=1.0)
    assert services.turn_complete(turn_id=turn.pk, reply=reply, scan=flagged)
    assert introducers(reply) == set()
    assert services.turn_release_withheld(turn_id=turn.pk)
    return turn


@pytest.fixture
def sessions(user, other_user) -> dict[str, ChatSession]:
    """The session to erase, another of the same user's, and another user's."""
    gone = services.chat_session_create(owner=user)
    exchange(user, gone, GONE_ASKED, GONE_REPLY)
    released(user, gone, GONE_RELEASED)
    mine = services.chat_session_create(owner=user)
    exchange(user, mine, KEPT_MINE, "Noted.")
    theirs = services.chat_session_create(owner=other_user)
    exchange(other_user, theirs, KEPT_THEIRS, "Noted.")
    for text in (GONE_ASKED, GONE_REPLY, GONE_RELEASED):
        assert introducers(text) == {(user.pk, str(gone.pk))}, text
    return {"gone": gone, "mine": mine, "theirs": theirs}


def assert_only_the_erased_sessions_postings_went(sessions, user, other_user) -> None:
    for text in (GONE_ASKED, GONE_REPLY, GONE_RELEASED):
        assert introducers(text) == set(), text
    assert introducers(KEPT_MINE) == {(user.pk, str(sessions["mine"].pk))}
    assert introducers(KEPT_THEIRS) == {(other_user.pk, str(sessions["theirs"].pk))}


def messages_of(session: ChatSession) -> list[str]:
    session.refresh_from_db()
    stored = history_store().page(session=session, offset=0, limit=100)
    return [message.content for message in stored]


def postings_naming(session_id: uuid.UUID) -> list:
    """Return what the index holds that names the session, read from the store itself."""
    if isinstance(fingerprint_index(), DbIndex):
        return list(FingerprintPosting.objects.filter(session_id=session_id))
    client = get_redis_connection("default")
    found = []
    for key in client.scan_iter("fp:*"):
        if session_id.hex.encode() in key:
            found.append(key)  # a list the session keeps of its postings
        elif client.type(key) == b"hash":
            found += [key for value in client.hvals(key) if session_id.bytes in value]
    return found


def post_with_the_broker_down(settings, api, sid: str, content: str) -> None:
    """Post ``content``: accepted, then not queued (nothing listens at the broker's port),
    so answered 503 and undone: no message, no turn."""
    with broker_at(settings, f"redis://127.0.0.1:{free_port()}/0"):
        response = api.post(
            f"/api/v1/sessions/{sid}/messages/", {"content": content}, format="json"
        )
    assert response.status_code == 503 and response.json()["code"] == "unavailable"
    assert api.get(f"/api/v1/sessions/{sid}/").json()["message_count"] == 0
    assert not Turn.objects.filter(session_id=sid).exists()


def test_delete_erases_the_sessions_postings_and_no_others(
    index, store, sessions, user, other_user
):
    gone = sessions["gone"]
    assert client_for(user).delete(f"/api/v1/sessions/{gone.pk}/").status_code == 204
    assert not ChatSession.objects.filter(pk=gone.pk).exists()
    assert_only_the_erased_sessions_postings_went(sessions, user, other_user)


def test_the_expiry_purge_erases_the_expired_sessions_postings_and_no_others(
    index, store, sessions, user, other_user
):
    gone = sessions["gone"]
    ChatSession.objects.filter(pk=gone.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert services.chat_session_purge_expired() == 1
    assert not ChatSession.objects.filter(pk=gone.pk).exists()
    assert_only_the_erased_sessions_postings_went(sessions, user, other_user)


@pytest.mark.parametrize("answer", [200, 503])
def test_a_later_reply_with_a_deleted_sessions_token_is_not_laid_to_that_session(
    index, answer, settings, api, other_api, fake_claude: FakeClaude
):
    """Also when the message that brought the token was answered 503: never stored, yet
    its postings stay with its session while that lives (see ``post_with_the_broker_down``)."""
    if answer == 200:
        fake_claude.set_responder(lambda body: "Noted.")
        sid, _ = post_and_wait(api, GONE_ASKED)
    else:
        sid = api.post("/api/v1/sessions/", {}, format="json").json()["id"]
        post_with_the_broker_down(settings, api, sid, GONE_ASKED)
    fake_claude.set_responder(lambda body: f"You said: {GONE_ASKED}")
    _, before = post_and_wait(other_api, "What did I say?")
    assert before["status"] == "suppressed"  # laid to the session while it exists
    [flag] = AuditEntry.objects.filter(flagged=True)
    assert sid in str(flag.evidence)
    assert api.delete(f"/api/v1/sessions/{sid}/").status_code == 204
    _, after = post_and_wait(other_api, "And now?")
    assert after["status"] == "completed"
    assert after["reply"]["content"] == f"You said: {GONE_ASKED}"
    assert AuditEntry.objects.filter(flagged=True).count() == 1


# The index unreachable ----------------------------------------------------------------------


def index_unreachable(settings) -> None:
    """Point the fingerprint index at a port nobody listens on: every call is refused."""
    settings.FINGERPRINT_REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"


def index_back(settings) -> None:
    settings.FINGERPRINT_REDIS_URL = ""  # the suite's Redis again, postings and all


def test_with_the_index_unreachable_delete_answers_503_and_keeps_the_session_whole(
    store, settings, sessions, user, other_user
):
    gone = sessions["gone"]
    before = messages_of(gone)
    assert before[0] == GONE_ASKED and len(before) == 4
    index_unreachable(settings)
    response = client_for(user).delete(f"/api/v1/sessions/{gone.pk}/")
    assert response.status_code == 503 and response.json()["code"] == "unavailable"
    assert ChatSession.objects.filter(pk=gone.pk).exists()
    assert Turn.objects.filter(session_id=gone.pk).count() == 2
    assert messages_of(gone) == before
    listed = client_for(user).get(f"/api/v1/sessions/{gone.pk}/messages/").json()["results"]
    assert [m["content"] for m in listed] == before
    index_back(settings)
    assert introducers(GONE_ASKED) == {(user.pk, str(gone.pk))}  # nothing of it erased
    # The client deletes again once the index answers: everything goes.
    assert client_for(user).delete(f"/api/v1/sessions/{gone.pk}/").status_code == 204
    assert not ChatSession.objects.filter(pk=gone.pk).exists()
    assert history_store().page(session=gone, offset=0, limit=100) == []
    assert_only_the_erased_sessions_postings_went(sessions, user, other_user)


def test_with_the_index_unreachable_the_purge_still_erases_the_conversation(
    store, settings, sessions, user, other_user, caplog
):
    """Content must not outlive its expiry for want of the index: the postings (no content)
    are left to age out of it."""
    gone = sessions["gone"]
    assert len(messages_of(gone)) == 4  # read with its counter as it stands now
    ChatSession.objects.filter(pk=gone.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    index_unreachable(settings)
    with caplog.at_level(logging.WARNING, logger="sessions_app.services"):
        assert services.chat_session_purge_expired() == 1
    assert "fingerprint index unavailable" in caplog.text
    assert not ChatSession.objects.filter(pk=gone.pk).exists()
    assert not Turn.objects.filter(session_id=gone.pk).exists()
    assert history_store().page(session=gone, offset=0, limit=100) == []
    index_back(settings)
    assert introducers(GONE_ASKED) == {(user.pk, str(gone.pk))}  # left to age out


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("index", ["db"], indirect=True)
def test_with_the_database_index_failing_delete_answers_503_and_the_purge_still_erases(
    index, sessions, user, caplog
):
    """The database index fails as the Redis one does when it cannot be reached (here a
    writer holds the session's postings past the lock timeout): the same 503, and the same
    purge, which erases the conversation and leaves the postings to age out."""
    gone = sessions["gone"]
    before = messages_of(gone)
    with postings_locked_elsewhere(gone.pk):
        response = client_for(user).delete(f"/api/v1/sessions/{gone.pk}/")
        assert response.status_code == 503 and response.json()["code"] == "unavailable"
        assert messages_of(gone) == before
        expired = timezone.now() - timedelta(seconds=1)
        ChatSession.objects.filter(pk=gone.pk).update(expires_at=expired)
        with caplog.at_level(logging.WARNING, logger="sessions_app.services"):
            assert services.chat_session_purge_expired() == 1
    assert "fingerprint index unavailable" in caplog.text
    assert not ChatSession.objects.filter(pk=gone.pk).exists()
    assert history_store().page(session=gone, offset=0, limit=100) == []
    assert introducers(GONE_ASKED) == {(user.pk, str(gone.pk))}  # left to age out


def test_a_stored_value_of_another_session_does_not_stop_a_delete(settings, user, other_user):
    """The store refuses to hand the value over (and it is audited); the user's session is
    erased all the same, instead of answering 503 for good."""
    settings.HISTORY_STORE = "redis"
    mine = services.chat_session_create(owner=user)
    exchange(user, mine, GONE_ASKED, GONE_REPLY)
    theirs = services.chat_session_create(owner=other_user)
    exchange(other_user, theirs, KEPT_THEIRS, "Noted.")
    client = get_redis_connection("default")
    stolen = client.hget(f"session:{{{theirs.pk}}}:messages", 1)
    client.hset(f"session:{{{mine.pk}}}:messages", 1, stolen)
    assert client_for(user).delete(f"/api/v1/sessions/{mine.pk}/").status_code == 204
    assert AuditEntry.objects.filter(kind="security", session_id=mine.pk).exists()
    assert not ChatSession.objects.filter(pk=mine.pk).exists()
    assert list(client.scan_iter(match=f"session:{{{mine.pk}}}:*")) == []
    assert introducers(KEPT_THEIRS) == {(other_user.pk, str(theirs.pk))}


def test_the_reply_written_over_an_earlier_runs_is_what_gets_registered(user, settings):
    """An earlier run stored its reply and lost its database commit (past the session's
    counter, no reader saw it): the later run's reply is written over it, and its tokens,
    not the earlier one's, are registered (so erasure finds them)."""
    settings.HISTORY_STORE = "redis"
    session = services.chat_session_create(owner=user)
    turn = services.message_accept(user=user, session_id=session.pk, content="Where is it?")
    history_store().append_reply(
        session=session, turn_id=turn.pk, seq=2, content=GONE_REPLY, status="ok"
    )
    assert services.turn_complete(turn_id=turn.pk, reply=GONE_RELEASED)
    session.refresh_from_db()  # the turn's end moved its counter past the reply
    stored = history_store().turn_messages(session=session, turn_id=turn.pk)
    assert [m.content for m in stored] == ["Where is it?", GONE_RELEASED]
    assert introducers(GONE_RELEASED) == {(user.pk, str(session.pk))}
    assert introducers(GONE_REPLY) == set()
    services.chat_session_delete(user=user, session_id=session.pk)
    assert introducers(GONE_RELEASED) == set()


# A post answered with an error -----------------------------------------------------------


def test_delete_erases_the_postings_of_a_post_answered_503(index, store, settings, user, api):
    """The accept registered the message's postings before the broker refused the turn;
    the undo left them (the session's other messages may need the same ones). The message
    is gone from the store, so its text cannot name them: the DELETE must still erase them."""
    sid = api.post("/api/v1/sessions/", {}, format="json").json()["id"]
    post_with_the_broker_down(settings, api, sid, GONE_ASKED)
    assert introducers(GONE_ASKED) == {(user.pk, sid)}
    assert postings_naming(uuid.UUID(sid))
    assert api.delete(f"/api/v1/sessions/{sid}/").status_code == 204
    assert postings_naming(uuid.UUID(sid)) == []
    assert introducers(GONE_ASKED) == set()


def test_that_erasure_keeps_other_sessions_postings_of_the_same_features(
    index, settings, user, other_user, api
):
    """The same features, introduced by the user's other session and by another user: the
    erased session's postings of them go, theirs stay."""
    mine = services.chat_session_create(owner=user)
    exchange(user, mine, GONE_ASKED, "Noted.")
    theirs = services.chat_session_create(owner=other_user)
    exchange(other_user, theirs, GONE_ASKED, "Noted.")
    sid = api.post("/api/v1/sessions/", {}, format="json").json()["id"]
    post_with_the_broker_down(settings, api, sid, GONE_ASKED)
    kept = {(user.pk, str(mine.pk)), (other_user.pk, str(theirs.pk))}
    assert introducers(GONE_ASKED) >= kept
    assert api.delete(f"/api/v1/sessions/{sid}/").status_code == 204
    assert postings_naming(uuid.UUID(sid)) == []
    assert postings_naming(mine.pk) and postings_naming(theirs.pk)
    assert introducers(GONE_ASKED) == kept


def test_the_purge_erases_the_postings_of_an_expired_redis_session_whose_keys_are_gone(
    index, settings, user
):
    """Under ``HISTORY_STORE=redis`` an expired session's keys expire before the purge
    comes: nothing is left to read, and its postings must go all the same."""
    settings.HISTORY_STORE = "redis"
    gone = services.chat_session_create(owner=user)
    exchange(user, gone, GONE_ASKED, GONE_REPLY)
    client = get_redis_connection("default")
    client.delete(*client.scan_iter(match=f"session:{{{gone.pk}}}:*"))  # as their TTL does
    ChatSession.objects.filter(pk=gone.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert services.chat_session_purge_expired() == 1
    assert postings_naming(gone.pk) == []
    assert introducers(GONE_ASKED) == introducers(GONE_REPLY) == set()


def test_the_periodic_purge_deletes_the_database_index_postings_past_their_retention(
    settings, user
):
    """The database index has no expiry of its own: beat's purge (or the embedded setup's
    in-line one) deletes its postings past ``FINGERPRINT_TTL_SECONDS``, and no live one."""
    from sessions_app import tasks

    settings.REDIS_URL = ""
    assert isinstance(fingerprint_index(), DbIndex)
    old, live = (services.chat_session_create(owner=user) for _ in range(2))
    exchange(user, old, GONE_ASKED, GONE_REPLY)
    exchange(user, live, KEPT_MINE, "Noted.")
    past = timezone.now() - timedelta(seconds=settings.FINGERPRINT_TTL_SECONDS + 1)
    FingerprintPosting.objects.filter(session_id=old.pk).update(created_at=past)
    tasks.purge_expired_sessions()
    assert not FingerprintPosting.objects.filter(session_id=old.pk).exists()
    assert introducers(KEPT_MINE) == {(user.pk, str(live.pk))}


# An account deleted ----------------------------------------------------------------------


def folded(user) -> list[ChatSession]:
    """Sessions of ``user`` past what a feature keeps, each with ``KEPT_MINE``: the index
    holds one posting of several of them, which no session's erasure removes."""
    owned = [services.chat_session_create(owner=user) for _ in range(MAX_RECORDS + 1)]
    for session in owned:
        exchange(user, session, KEPT_MINE, "Noted.")
    return owned


def test_deleting_the_account_erases_its_postings_of_several_sessions_and_no_others(
    index, user, other_user
):
    """Its sessions deleted one by one, then the account with the last: nothing of the
    account is left in the index; another user's posting of the same features stays."""
    *deleted, last = folded(user)
    theirs = services.chat_session_create(owner=other_user)
    exchange(other_user, theirs, KEPT_MINE, "Noted.")
    for session in deleted:
        assert client_for(user).delete(f"/api/v1/sessions/{session.pk}/").status_code == 204
    assert (user.pk, None) in introducers(KEPT_MINE)  # what a session's erasure leaves
    user.delete()
    assert not ChatSession.objects.filter(pk=last.pk).exists()
    assert introducers(KEPT_MINE) == {(other_user.pk, str(theirs.pk))}


def test_with_the_index_unreachable_deleting_the_account_still_erases_it(settings, user, caplog):
    """As the purge does: the account goes, its postings (no content) are left to age out."""
    owned, user_id = folded(user), user.pk  # delete() clears it
    index_unreachable(settings)
    with caplog.at_level(logging.WARNING, logger="sessions_app.services"):
        user.delete()
    assert "postings of several sessions will age out" in caplog.text
    assert not ChatSession.objects.filter(pk__in=[s.pk for s in owned]).exists()
    index_back(settings)
    assert (user_id, None) in introducers(KEPT_MINE)  # left to age out


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("index", ["db"], indirect=True)
def test_with_the_database_index_failing_the_account_is_still_deleted(index, user, caplog):
    """The user's erasure fails alone, in a savepoint (here a writer holds the rows of
    several sessions past the lock timeout): the account's deletion goes on."""
    owned, user_id = folded(user), user.pk  # delete() clears it
    logged = caplog.at_level(logging.WARNING, logger="sessions_app.services")
    with postings_locked_elsewhere(SEVERAL_SESSION), logged:
        user.delete()
    assert "postings of several sessions will age out" in caplog.text
    assert not type(user).objects.filter(pk=user_id).exists()
    assert not ChatSession.objects.filter(pk__in=[s.pk for s in owned]).exists()
    assert introducers(KEPT_MINE) == {(user_id, None)}  # left to age out
