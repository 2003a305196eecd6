"""The history stores that keep data in Redis (``cached_db``'s cache, the ``redis`` store)
when that Redis does not answer for a while and comes back with its data: what the cache
kept from before must never be served, nor outlive an erasure, and an erasure the store
cannot finish is refused before anything is erased.

Redis is pointed at a port nobody listens on and back (``cache_at``), its data intact; the
fingerprint index stays on the suite's Redis (``FINGERPRINT_REDIS_URL``), so that only the
store's Redis goes out.
"""

import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.utils import timezone
from django_redis import get_redis_connection

from audit_app.index import LISTED_SINCE
from audit_app.services import ScanResult, reply_scan
from sessions_app import services
from sessions_app.models import ChatSession, Message
from sessions_app.queries import turn_history
from sessions_app.stores import StoreUnavailable

from ..conftest import client_for
from ..support import free_port
from ..test_outages import cache_at

CANARY = "CANARY-cached Vexmoria Quintaplex ledger 4417"


class CacheSwitch:
    def __init__(self, settings) -> None:
        self.settings, self.url = settings, settings.REDIS_URL

    def unreachable(self) -> None:
        cache_at(self.settings, f"redis://127.0.0.1:{free_port()}/0")

    def back(self) -> None:
        cache_at(self.settings, self.url)


@pytest.fixture
def cache_switch(settings) -> Iterator[CacheSwitch]:
    settings.HISTORY_STORE = "cached_db"
    settings.FINGERPRINT_REDIS_URL = settings.REDIS_URL
    switch = CacheSwitch(settings)
    yield switch
    switch.back()


def _keys_of(session_id) -> list[bytes]:
    return list(get_redis_connection("default").scan_iter(match=f"*{session_id}*"))


def _shown(user, session) -> list[tuple[str, str]]:
    page = client_for(user).get(f"/api/v1/sessions/{session.pk}/messages/").json()["results"]
    return [(m["content"], m["status"]) for m in page]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("how", ["delete", "purge", "account"])
def test_an_erasure_the_cache_cannot_take_part_in_is_refused_whole(cache_switch, user, how):
    """Erased with its rows while the cache is out, the cached conversation would outlive
    them in Redis, out of reach of every later erasure (which starts from the rows): the
    erasure is refused (503 for DELETE), the session whole, and done once the cache is
    back."""
    session = services.chat_session_create(owner=user)
    turn = services.message_accept(user=user, session_id=session.pk, content=CANARY)
    assert services.turn_complete(turn_id=turn.pk, reply="Noted.")
    assert _shown(user, session) == [(CANARY, "ok"), ("Noted.", "ok")]  # cached
    assert cache.get(f"session:{{{session.pk}}}:messages") is not None
    if how == "purge":
        past = timezone.now() - timedelta(seconds=1)
        ChatSession.objects.filter(pk=session.pk).update(expires_at=past)

    def erase():
        if how == "delete":
            return client_for(user).delete(f"/api/v1/sessions/{session.pk}/").status_code
        if how == "purge":
            return services.chat_session_purge_expired()
        user.delete()
        return None

    cache_switch.unreachable()
    try:
        if how == "delete":
            assert erase() == 503
        else:
            with pytest.raises(StoreUnavailable):
                erase()
    finally:
        cache_switch.back()
    assert ChatSession.objects.filter(pk=session.pk).exists()
    assert Message.objects.filter(session_id=session.pk).count() == 2
    assert _keys_of(session.pk) != []

    assert erase() in (204, 1, None)
    assert not ChatSession.objects.filter(pk=session.pk).exists()
    assert _keys_of(session.pk) == []


@pytest.mark.django_db(transaction=True)
def test_an_entry_from_before_a_discard_is_not_served_after_the_next_accept(cache_switch, user):
    """A discard takes its seq back: an entry cached while the discarded turn was pending
    has the count the session has again once the next message takes that seq. With both
    invalidations lost (the cache out), that entry must not be served: the next accept
    moved the session's expiry on."""
    session = services.chat_session_create(owner=user)
    first = services.message_accept(user=user, session_id=session.pk, content="DISCARDED")
    assert _shown(user, session) == [("DISCARDED", "ok")]  # cached
    cache_switch.unreachable()
    try:
        assert services.turn_discard(turn_id=first.pk)  # its accept was answered 503, say
        second = services.message_accept(user=user, session_id=session.pk, content="KEPT")
    finally:
        cache_switch.back()
    assert cache.get(f"session:{{{session.pk}}}:messages")["count"] == 1  # still there
    assert _shown(user, session) == [("KEPT", "ok")]
    claimed = services.turn_claim(turn_id=second.pk)
    assert [m.content for m in turn_history(turn=claimed)] == ["KEPT"]


@pytest.mark.django_db(transaction=True)
def test_a_release_the_cache_cannot_take_part_in_is_refused(cache_switch, user):
    """A rewrite keeps the count and the expiry: with its invalidation lost, the entry from
    before it (the withheld notice) would be served until it expired. The release is
    refused, the reply still withheld, and goes through once the cache is back."""
    session = services.chat_session_create(owner=user)
    turn = services.message_accept(user=user, session_id=session.pk, content="Anything new?")
    flagged = ScanResult(leaked=True, score=1.0)
    assert services.turn_complete(turn_id=turn.pk, reply="Your parcel is ready.", scan=flagged)
    notice = _shown(user, session)[1]
    assert notice[1] == "suppressed"  # cached
    cache_switch.unreachable()
    try:
        with pytest.raises(StoreUnavailable):
            services.turn_release_withheld(turn_id=turn.pk)
    finally:
        cache_switch.back()
    assert _shown(user, session)[1] == notice
    assert services.turn_release_withheld(turn_id=turn.pk)
    assert _shown(user, session) == [("Anything new?", "ok"), ("Your parcel is ready.", "ok")]


@pytest.mark.django_db(transaction=True)
def test_a_run_reading_its_deleted_session_leaves_no_key_of_it(settings, user):
    """The run claimed its turn, then the session's DELETE erased every key: the run's read
    of the history (it then ends as abandoned) must not start the session's version again."""
    settings.HISTORY_STORE = "cached_db"
    session = services.chat_session_create(owner=user)
    turn = services.message_accept(user=user, session_id=session.pk, content=CANARY)
    claimed = services.turn_claim(turn_id=turn.pk)
    assert claimed is not None
    assert client_for(user).delete(f"/api/v1/sessions/{session.pk}/").status_code == 204
    assert _keys_of(session.pk) == []
    assert turn_history(turn=claimed) == []
    assert _keys_of(session.pk) == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("store", ["cached_db", "redis"])
@pytest.mark.parametrize("how", ["delete", "purge"])
def test_an_erasure_the_store_refuses_leaves_the_fingerprint_postings(
    cache_switch, settings, user, other_user, store, how
):
    """The postings (in an index that answers) were erased first, then the store refused:
    the session lived on, its data no longer found in another user's reply. The store now
    refuses before anything is erased."""
    settings.HISTORY_STORE = store
    session = services.chat_session_create(owner=user)
    secret = "My order ORD-583920 for Bartholomew Quince ships to 42 Wisteria Lane."
    turn = services.message_accept(user=user, session_id=session.pk, content=secret)
    assert services.turn_complete(turn_id=turn.pk, reply="Noted.")
    leaked = "Your order ORD-583920 is on its way to Bartholomew Quince."
    assert reply_scan(user_id=other_user.pk, session_id=uuid.uuid4(), text=leaked).leaked
    if how == "purge":
        past = timezone.now() - timedelta(seconds=1)
        ChatSession.objects.filter(pk=session.pk).update(expires_at=past)
    # Every live generation listed: the index erases without asking for the texts (which
    # the store, out, could not give: that refusal came first by chance).
    get_redis_connection("default").set(LISTED_SINCE, 0)
    cache_switch.unreachable()
    try:
        if how == "delete":
            assert client_for(user).delete(f"/api/v1/sessions/{session.pk}/").status_code == 503
        else:
            with pytest.raises(StoreUnavailable):
                services.chat_session_purge_expired()
    finally:
        cache_switch.back()
    assert ChatSession.objects.filter(pk=session.pk).exists()
    assert reply_scan(user_id=other_user.pk, session_id=uuid.uuid4(), text=leaked).leaked
