"""The history stores' one contract, run against every backend on the real Postgres and Redis.

``StoreContract`` holds the tests; each backend is a one-line subclass. What only one backend
can show (Redis keys and their TTL, a poisoned cache entry) follows in its own class.
"""

import json
import uuid
from datetime import timedelta

import pytest
from django.db import IntegrityError, OperationalError, transaction
from django.utils import timezone
from django_redis import get_redis_connection

from audit_app.holds import HELD_NOTICE, HELD_REASON
from audit_app.models import AuditEntry
from audit_app.services import ScanResult, content_hash, reply_scan
from sessions_app import crypto, services
from sessions_app.models import ChatSession, Message, Turn
from sessions_app.queries import turn_withheld_text
from sessions_app.stores import (
    DuplicateReply,
    ForeignData,
    MessageMissing,
    ReplyOvertaken,
    SeqTaken,
    StoreUnavailable,
    history_store,
)

from ..conftest import client_for
from ..support import PrivateRedis, lock_waiter

pytestmark = pytest.mark.django_db
# A second run's reply that its user was never shown (distinctive enough to be indexed).
UNSHOWN = "Your Zorblatt Quexington ticket is QX-99812."


def _scan(pattern: str) -> list[bytes]:
    return list(get_redis_connection("default").scan_iter(match=pattern, count=1000))


class StoreContract:
    store_name = ""

    @pytest.fixture(autouse=True)
    def _store(self, settings):
        settings.HISTORY_STORE = self.store_name

    @pytest.fixture
    def session(self, user) -> ChatSession:
        return services.chat_session_create(owner=user)

    def accept(self, user, session: ChatSession, content: str) -> Turn:
        turn = services.message_accept(user=user, session_id=session.pk, content=content)
        session.refresh_from_db()
        return turn

    def test_a_turn_reads_back_its_message_and_its_one_reply(self, user, session):
        turn = self.accept(user, session, "CANARY-1 hello")
        assert services.turn_complete(turn_id=turn.pk, reply="hi there")
        session.refresh_from_db()
        messages = history_store().turn_messages(session=session, turn_id=turn.pk)
        assert [(m.seq, m.role, m.content, m.status) for m in messages] == [
            (1, "user", "CANARY-1 hello", "ok"),
            (2, "assistant", "hi there", "ok"),
        ]
        assert {(m.user_id, m.session_id, m.turn_id) for m in messages} == {
            (user.pk, session.pk, turn.pk)
        }

    def test_rewriting_a_reply_the_turn_does_not_have_writes_nothing(self, user, session):
        turn = self.accept(user, session, "hello")
        with pytest.raises(MessageMissing):
            history_store().reply_rewrite(
                session=session, turn_id=turn.pk, content="out of nowhere", status="ok", fence=1
            )
        assert [m.content for m in history_store().page(session=session, offset=0, limit=9)] == [
            "hello"
        ]

    @pytest.mark.usefixtures("vendor")  # the database stores' written-out read and the ORM's
    def test_the_backends_own_read_of_a_turn_holds_that_turn_only(self, user, session):
        # Below the public read, which drops other turns' messages once more: the backend's
        # own read (on Postgres the written-out ``_OF_TURN``) must filter by the turn itself.
        turns = []
        for n in range(3):
            turns.append(self.accept(user, session, f"q{n}"))
            assert services.turn_complete(turn_id=turns[-1].pk, reply=f"a{n}")
        session.refresh_from_db()
        found = history_store()._turn_messages(session, turns[1].pk)
        assert [(m.seq, m.content, m.turn_id) for m in found] == [
            (3, "q1", turns[1].pk),
            (4, "a1", turns[1].pk),
        ]

    def test_a_second_reply_to_a_turn_is_refused(self, user, session):
        turn = self.accept(user, session, "hello")
        assert services.turn_complete(turn_id=turn.pk, reply="first")
        session.refresh_from_db()
        with pytest.raises(DuplicateReply), transaction.atomic():
            history_store().append_reply(
                session=session, turn_id=turn.pk, seq=session.next_seq, content="second"
            )
        # And through the service, as a redelivered run would try it:
        assert not services.turn_complete(turn_id=turn.pk, reply="second")
        session.refresh_from_db()
        contents = [m.content for m in history_store().page(session=session, offset=0, limit=10)]
        assert contents == ["hello", "first"]

    @pytest.mark.usefixtures("vendor")  # the database stores' INSERT written out, and the ORM's
    def test_a_message_at_a_seq_already_taken_is_refused_and_nothing_is_written(
        self, user, session
    ):
        """The session's counter behind its messages is a fault, neither a duplicate nor an
        outage: the message holding the seq stays, and nothing of the new one is kept."""
        first = self.accept(user, session, "first")
        assert services.turn_complete(turn_id=first.pk, reply="reply")
        ChatSession.objects.filter(pk=session.pk).update(next_seq=1)  # seq 1 and 2 are held
        with pytest.raises(SeqTaken):
            services.message_accept(user=user, session_id=session.pk, content="second")
        assert list(Turn.objects.filter(session=session).values_list("pk", flat=True)) == [first.pk]
        session.next_seq = 3  # read as the counter stood
        kept = history_store().page(session=session, offset=0, limit=9)
        assert [(m.seq, m.turn_id, m.content) for m in kept] == [
            (1, first.pk, "first"),
            (2, first.pk, "reply"),
        ]

    @pytest.mark.usefixtures("vendor")
    def test_a_reply_at_its_turns_own_seq_is_refused_not_taken_for_a_stored_reply(
        self, user, session
    ):
        turn = self.accept(user, session, "hello")
        ChatSession.objects.filter(pk=session.pk).update(next_seq=1)  # the reply's seq is 1
        with pytest.raises(SeqTaken):
            services.turn_complete(turn_id=turn.pk, reply="hi")  # the task then fails the turn
        assert Turn.objects.get(pk=turn.pk).status == Turn.Status.PENDING  # rolled back
        with pytest.raises(SeqTaken), transaction.atomic():
            history_store().append_reply(session=session, turn_id=turn.pk, seq=1, content="x")
        stored = history_store().turn_messages(session=session, turn_id=turn.pk)
        assert [(m.seq, m.role, m.content) for m in stored] == [(1, "user", "hello")]

    def test_history_is_the_delivered_messages_up_to_the_turn(self, user, session):
        first = self.accept(user, session, "one")
        leak = ScanResult(leaked=True, score=1.0, evidence=[])
        services.turn_complete(turn_id=first.pk, reply="withheld", scan=leak)
        second = self.accept(user, session, "two")
        services.turn_fail(turn_id=second.pk, code="x", detail="y")
        third = self.accept(user, session, "three")
        history = history_store().history(session=session, turn_id=third.pk)
        assert [(m.role, m.content) for m in history] == [
            ("user", "one"),
            ("user", "two"),
            ("user", "three"),
        ]
        # An earlier turn's history stops at that turn.
        earlier = history_store().history(session=session, turn_id=first.pk)
        assert [m.content for m in earlier] == ["one"]

    def test_pages_are_slices_by_seq(self, user, session):
        for n in range(5):
            turn = self.accept(user, session, f"q{n}")
            services.turn_complete(turn_id=turn.pk, reply=f"a{n}")
        session.refresh_from_db()
        page = history_store().page(session=session, offset=3, limit=4)
        assert [(m.seq, m.content) for m in page] == [(4, "a1"), (5, "q2"), (6, "a2"), (7, "q3")]
        assert history_store().page(session=session, offset=10, limit=5) == []

    def test_another_owner_gets_nothing_of_the_session(self, user, other_user, session):
        turn = self.accept(user, session, "CANARY-mine")
        session.owner_id = other_user.pk  # a caller asking as someone else
        try:
            leaked = history_store().history(session=session, turn_id=turn.pk)
        except ForeignData:
            leaked = []
        assert leaked == []

    def test_a_discarded_turn_leaves_nothing(self, user, session):
        turn = self.accept(user, session, "never queued")
        services.turn_discard(turn_id=turn.pk)
        session.refresh_from_db()
        assert session.next_seq == 1
        assert history_store().turn_messages(session=session, turn_id=turn.pk) == []
        assert history_store().page(session=session, offset=0, limit=10) == []

    def test_delete_erases_everything_kept_for_the_session(self, user, session, other_user):
        theirs = services.chat_session_create(owner=other_user)
        kept = self.accept(other_user, theirs, "CANARY-theirs")
        turn = self.accept(user, session, "CANARY-gone")
        services.turn_complete(turn_id=turn.pk, reply="reply")
        client_for(user).get(f"/api/v1/sessions/{session.pk}/messages/")  # fill any cache
        assert client_for(user).delete(f"/api/v1/sessions/{session.pk}/").status_code == 204
        assert not Message.objects.filter(session_id=session.pk).exists()
        assert not ChatSession.objects.filter(pk=session.pk).exists()
        assert _scan(f"*{session.pk}*") == []
        theirs.refresh_from_db()
        [message] = history_store().turn_messages(session=theirs, turn_id=kept.pk)
        assert message.content == "CANARY-theirs"

    def test_a_delete_the_database_fails_is_503_and_keeps_the_whole_conversation(
        self, user, session, monkeypatch
    ):
        """The rows go before the store's copy: a database failing the rows' DELETE leaves
        the history with its session, so that deleting again erases both."""
        turn = self.accept(user, session, "CANARY-kept")
        services.turn_complete(turn_id=turn.pk, reply="reply")

        def lost(*args, **kwargs):
            raise OperationalError("server closed the connection unexpectedly")

        path = f"/api/v1/sessions/{session.pk}/"
        with monkeypatch.context() as patched:
            patched.setattr(ChatSession, "delete", lost)
            response = client_for(user).delete(path)
        assert response.status_code == 503 and response.json()["code"] == "unavailable"
        session.refresh_from_db()
        kept = history_store().page(session=session, offset=0, limit=9)
        assert [m.content for m in kept] == ["CANARY-kept", "reply"]
        assert client_for(user).delete(path).status_code == 204
        assert _scan(f"*{session.pk}*") == []
        assert not Message.objects.filter(session_id=session.pk).exists()

    def test_a_delete_the_store_cannot_erase_is_503_and_keeps_the_session(
        self, user, session, monkeypatch
    ):
        """The store's erase runs inside the rows' transaction: its failure rolls them back,
        for a session's delete, the expiry purge and an account's delete alike."""
        turn = self.accept(user, session, "CANARY-kept")
        services.turn_complete(turn_id=turn.pk, reply="reply")

        def refused(self, session_ids):
            raise StoreUnavailable("the store is down")

        with monkeypatch.context() as patched:
            patched.setattr(type(history_store()), "_erase", refused)
            response = client_for(user).delete(f"/api/v1/sessions/{session.pk}/")
            ChatSession.objects.filter(pk=session.pk).update(
                expires_at=timezone.now() - timedelta(seconds=1)
            )
            with pytest.raises(StoreUnavailable):
                services.chat_session_purge_expired()
            # Deleting the account, in a transaction of its own (as the admin would): undone.
            with pytest.raises(StoreUnavailable), transaction.atomic():
                user.delete()
        assert response.status_code == 503 and response.json()["code"] == "unavailable"
        session.refresh_from_db()
        assert Turn.objects.filter(session=session).count() == 1
        kept = history_store().page(session=session, offset=0, limit=9)
        assert [m.content for m in kept] == ["CANARY-kept", "reply"]
        assert services.chat_session_purge_expired() == 1
        assert _scan(f"*{session.pk}*") == []

    def test_deleting_the_account_erases_its_sessions_everywhere(self, user, session, other_user):
        """The database's cascade would take an account's rows only: the store's copy, its
        cache and the fingerprint postings go with the account too, no other account's."""
        theirs = services.chat_session_create(owner=other_user)
        kept = self.accept(other_user, theirs, "CANARY-theirs Quillofax")
        second = services.chat_session_create(owner=user)
        for owned, canary in ((session, "CANARY-gone Vorthingale"), (second, "CANARY-2 Zembrik")):
            turn = self.accept(user, owned, canary)
            services.turn_complete(turn_id=turn.pk, reply="reply")
            client_for(user).get(f"/api/v1/sessions/{owned.pk}/messages/")  # fill any cache
        user.delete()
        for gone in (session, second):
            assert not ChatSession.objects.filter(pk=gone.pk).exists()
            assert _scan(f"*{gone.pk}*") == [] and _scan(f"*{gone.pk.hex}*") == []
        assert reply_scan(user_id=0, session_id=uuid.uuid4(), text="Vorthingale").evidence == []
        theirs.refresh_from_db()
        [message] = history_store().turn_messages(session=theirs, turn_id=kept.pk)
        assert message.content == "CANARY-theirs Quillofax"
        [evidence] = reply_scan(user_id=0, session_id=uuid.uuid4(), text="Quillofax").evidence
        assert {p.user_id for p in evidence.introduced_by} == {other_user.pk}

    def test_the_expiry_purge_erases_expired_sessions_everywhere(self, user, session):
        turn = self.accept(user, session, "CANARY-expired")
        services.turn_complete(turn_id=turn.pk, reply="reply")
        live = services.chat_session_create(owner=user)
        self.accept(user, live, "CANARY-live")
        ChatSession.objects.filter(pk=session.pk).update(
            expires_at=timezone.now() - timedelta(seconds=1)
        )
        assert services.chat_session_purge_expired() == 1
        assert not Message.objects.filter(session_id=session.pk).exists()
        assert _scan(f"*{session.pk}*") == []
        live.refresh_from_db()
        assert len(history_store().page(session=live, offset=0, limit=10)) == 1

    def test_through_the_api_the_owner_reads_and_others_get_404(self, api, other_api):
        sid = api.post("/api/v1/sessions/", {}, format="json").json()["id"]
        turn = api.post(
            f"/api/v1/sessions/{sid}/messages/?wait=5", {"content": "CANARY-api"}, format="json"
        ).json()
        assert turn["status"] == "completed" and turn["reply"]["content"]
        listing = api.get(f"/api/v1/sessions/{sid}/messages/").json()
        assert [m["seq"] for m in listing["results"]] == [1, 2]
        assert listing["count"] == 2
        assert api.get(f"/api/v1/turns/{turn['id']}/").json() == turn
        for path in (f"/api/v1/sessions/{sid}/messages/", f"/api/v1/turns/{turn['id']}/"):
            response = other_api.get(path)
            assert response.status_code == 404 and "CANARY" not in response.content.decode()

    def test_a_redis_outage_mid_post_is_503_and_leaves_nothing(
        self, settings, private_redis: PrivateRedis, user, session
    ):
        api = client_for(user)
        default = settings.CACHES["default"]
        settings.CACHES = {"default": {**default, "LOCATION": private_redis.url}}
        settings.REDIS_URL = private_redis.url
        settings.CHAT_THROTTLE_RATE = None  # throttling off: only the store needs Redis here
        private_redis.kill()
        response = api.post(
            f"/api/v1/sessions/{session.pk}/messages/", {"content": "lost?"}, format="json"
        )
        if self.store_name == "redis":
            assert response.status_code == 503 and response.json()["code"] == "unavailable"
            assert not Turn.objects.filter(session=session).exists()
            session.refresh_from_db()
            assert session.next_seq == 1
        else:
            # The database is the truth: the cache is read past and the message is kept.
            assert response.status_code == 202, response.content
            assert Message.objects.filter(session=session, role="user").count() == 1


class RowStoreContract:
    """What the stores that keep rows (``db``, ``cached_db``) add to the contract: of the
    database's constraints, only the turn's one message of each role means a duplicate,
    and only the session's one message of each seq a seq taken."""

    @pytest.mark.usefixtures("vendor")  # the INSERT written out, and the ORM's
    def test_only_the_turns_message_of_that_role_is_a_duplicate(self, user, session):
        turn = self.accept(user, session, "hello")
        with pytest.raises(DuplicateReply), transaction.atomic():
            history_store().append_user_message(
                session=session, turn_id=turn.pk, seq=session.next_seq, content="again"
            )
        with pytest.raises(IntegrityError), transaction.atomic():  # NOT NULL
            history_store().append_reply(
                session=session, turn_id=turn.pk, seq=session.next_seq, content=None
            )
        assert Message.objects.filter(turn=turn).count() == 1


class TestDbStore(StoreContract, RowStoreContract):
    store_name = "db"


class TestRedisStore(StoreContract):
    store_name = "redis"

    def test_content_lives_only_in_namespaced_keys_that_expire_with_the_session(
        self, user, session
    ):
        turn = self.accept(user, session, "CANARY-redis")
        services.turn_complete(turn_id=turn.pk, reply="reply")
        assert not Message.objects.filter(session=session).exists()
        keys = sorted(k.decode() for k in _scan(f"session:{{{session.pk}}}:*"))
        tag = f"session:{{{session.pk}}}"
        assert keys == [f"{tag}:messages", f"{tag}:owner", f"{tag}:turns"]
        client = get_redis_connection("default")
        session.refresh_from_db()
        left = (session.expires_at - timezone.now()).total_seconds()
        for key in keys:
            assert left - 5 <= client.ttl(key) <= left + 5, key
        assert client.get(f"{tag}:owner") == str(user.pk).encode()

    def test_a_discard_whose_commit_fails_keeps_the_turns_message(self, user, session):
        """The turn's removal rolled back (its COMMIT failed): the turn is still pending,
        and its message must still be there for its run, not gone from Redis alone."""
        turn = self.accept(user, session, "still wanted")
        with pytest.raises(OperationalError), transaction.atomic():
            assert services.turn_discard(turn_id=turn.pk)
            raise OperationalError("the COMMIT failed")
        session.refresh_from_db()
        assert Turn.objects.get(pk=turn.pk).status == "pending"
        assert self.contents(session) == ["still wanted"]
        assert [m.content for m in history_store().history(session=session, turn_id=turn.pk)] == [
            "still wanted"
        ]

    def test_a_discard_removes_the_message_from_redis_once_committed(
        self, user, session, django_capture_on_commit_callbacks
    ):
        turn = self.accept(user, session, "never queued")
        client = get_redis_connection("default")
        tag = f"session:{{{session.pk}}}"
        with django_capture_on_commit_callbacks(execute=True):
            assert services.turn_discard(turn_id=turn.pk)
        assert client.hgetall(f"{tag}:messages") == {} and client.hgetall(f"{tag}:turns") == {}

    @staticmethod
    def redis_down_for(monkeypatch, callbacks) -> None:
        """Run ``callbacks`` (a commit's) with the history store's Redis down."""

        def down(**kwargs) -> None:
            raise StoreUnavailable("Redis is down")

        monkeypatch.setattr(history_store(), "discard_turn", down)
        for callback in callbacks:
            callback()
        monkeypatch.undo()

    def test_a_discard_redis_cannot_finish_still_removes_the_turn(
        self, user, session, django_capture_on_commit_callbacks, monkeypatch, caplog
    ):
        """Redis down after the removal committed: the turn is gone all the same, and the
        message it leaves lies past the session's counter, read by no one."""
        turn = self.accept(user, session, "removed")
        with django_capture_on_commit_callbacks() as after_commit:
            assert services.turn_discard(turn_id=turn.pk)
        self.redis_down_for(monkeypatch, after_commit)
        assert not Turn.objects.filter(pk=turn.pk).exists()
        assert "its message stays in the history store" in caplog.text
        session.refresh_from_db()
        assert self.contents(session) == []

    def test_a_late_discard_leaves_the_next_turns_message_at_its_seq(
        self, user, session, django_capture_on_commit_callbacks
    ):
        """The removal committed and the session's next message took the seq before the
        Redis part ran: that message stays, and only the removed turn's field goes."""
        gone = self.accept(user, session, "removed")
        with django_capture_on_commit_callbacks(execute=False) as late:
            assert services.turn_discard(turn_id=gone.pk)
        following = self.accept(user, session, "the next message")
        [discard] = late
        discard()  # runs late
        session.refresh_from_db()
        assert self.contents(session) == ["the next message"]
        assert [m.turn_id for m in history_store().page(session=session, offset=0, limit=9)] == [
            following.pk
        ]
        fields = get_redis_connection("default").hkeys(f"session:{{{session.pk}}}:turns")
        assert sorted(fields) == [f"{following.pk}:user".encode()]

    def test_a_discarded_turns_unshown_reply_does_not_block_the_next_message(
        self, user, session, monkeypatch, django_capture_on_commit_callbacks
    ):
        """A pending turn can hold a reply its run wrote before losing its commit, at the
        seq after its message. Removed, with the Redis part after the commit failing, the
        next message must still take the turn's seq (not find the one after it taken)."""
        gone = self.accept(user, session, "removed")
        Turn.objects.filter(pk=gone.pk).update(attempts=1)  # claimed by the run that wrote
        history_store().append_reply(
            session=session, turn_id=gone.pk, seq=session.next_seq, content="never shown"
        )
        with django_capture_on_commit_callbacks() as after_commit:
            assert services.turn_discard(turn_id=gone.pk)
        self.redis_down_for(monkeypatch, after_commit)
        following = self.accept(user, session, "the next message")
        session.refresh_from_db()
        assert self.contents(session) == ["the next message"]
        assert following.exchange[0].seq == 1

    def test_a_value_naming_another_owner_is_refused_and_audited(self, user, other_user, session):
        """The March 2023 failure: a reader handed another user's value must not use it."""
        self.accept(user, session, "mine")
        theirs = services.chat_session_create(owner=other_user)
        their_turn = self.accept(other_user, theirs, "CANARY-theirs")
        client = get_redis_connection("default")
        stolen = client.hget(f"session:{{{theirs.pk}}}:messages", 1)
        client.hset(f"session:{{{session.pk}}}:messages", 1, stolen)  # the wrong value
        session.refresh_from_db()
        with pytest.raises(ForeignData):
            history_store().page(session=session, offset=0, limit=10)
        with pytest.raises(ForeignData):
            history_store().history(session=session, turn_id=their_turn.pk)
        response = client_for(user).get(f"/api/v1/sessions/{session.pk}/messages/")
        assert response.status_code == 503 and "CANARY" not in response.content.decode()
        # Audited when answered, after the request's transaction: the trail keeps it.
        assert AuditEntry.objects.filter(kind="security", session_id=session.pk).exists()

    def test_keys_naming_another_owner_refuse_a_write_and_audit_it(self, user, session):
        get_redis_connection("default").set(f"session:{{{session.pk}}}:owner", "999999")
        response = client_for(user).post(
            f"/api/v1/sessions/{session.pk}/messages/", {"content": "hello"}, format="json"
        )
        assert response.status_code == 503
        assert not Turn.objects.filter(session=session).exists()
        assert AuditEntry.objects.filter(kind="security", session_id=session.pk).exists()

    def test_a_reply_stored_before_a_lost_commit_is_written_over_not_doubled(self, user, session):
        """A first run wrote its reply to Redis, then lost its database commit: past the
        session's counter, no reader sees it; the second run's reply takes its place."""
        turn = self.accept(user, session, "hello")
        history_store().append_reply(
            session=session, turn_id=turn.pk, seq=session.next_seq, content="from run one"
        )
        assert self.contents(session) == ["hello"]
        assert services.turn_complete(turn_id=turn.pk, reply="from run two")
        assert self.contents(session) == ["hello", "from run two"]
        assert session.next_seq == 3
        entry = AuditEntry.objects.get(turn_id=turn.pk, kind="reply")
        assert entry.content_hash == content_hash("from run two")

    def test_a_kept_withheld_reply_gives_way_to_a_delivered_one(self, user, session):
        """The first run withheld its reply, then lost its commit; the second run delivers:
        its reply is what the turn shows, as it ended, and what is audited and indexed."""
        turn = self.accept(user, session, "hello")
        history_store().append_reply(
            session=session,
            turn_id=turn.pk,
            seq=session.next_seq,
            content=services.SUPPRESSED_NOTICE,
            status="suppressed",
        )
        assert services.turn_complete(turn_id=turn.pk, reply=UNSHOWN) == "completed"
        turn.refresh_from_db()
        assert (turn.status, turn.withheld) == ("completed", None)
        assert self.shown(session) == (UNSHOWN, "ok")
        entry = AuditEntry.objects.get(turn_id=turn.pk, kind="reply")
        assert (entry.flagged, entry.reason) == (False, "")
        assert entry.content_hash == content_hash(UNSHOWN)
        # Indexed as the session's: another user's reply carrying it is a leak.
        assert reply_scan(user_id=user.pk + 1, session_id=uuid.uuid4(), text=UNSHOWN).leaked

    def test_a_kept_delivered_reply_gives_way_to_a_held_one(self, user, session):
        """The first run delivered its reply, then lost its commit; the second run finds its
        user held: a held user's turn shows the hold's notice, as every one of theirs, never
        the reply no reader saw."""
        turn = self.accept(user, session, "hello")
        history_store().append_reply(
            session=session, turn_id=turn.pk, seq=session.next_seq, content=UNSHOWN
        )
        ended = services.turn_complete(turn_id=turn.pk, reply=UNSHOWN, held=True)
        assert ended == "suppressed"
        turn.refresh_from_db()
        assert turn.status == "suppressed" and turn_withheld_text(turn_id=turn.pk) == UNSHOWN
        assert self.shown(session) == (HELD_NOTICE, "suppressed")
        entry = AuditEntry.objects.get(turn_id=turn.pk, kind="reply")
        assert (entry.flagged, entry.reason) == (False, HELD_REASON)
        assert not reply_scan(user_id=user.pk + 1, session_id=uuid.uuid4(), text=UNSHOWN).leaked

    @staticmethod
    def locked_then_stalled(turn: Turn) -> Turn:
        """The turn as a run that locked it to end it holds it, its fence taken; the run
        then stalls and its connection dies (its transaction, and its locks, go)."""
        from sessions_app.services import reply as reply_module

        with transaction.atomic():
            stale = reply_module._turn_end(turn.pk, status="completed", withheld=None)
            transaction.set_rollback(True)
        assert stale is not None and stale.reply_fence > 0
        return stale

    def resume(self, monkeypatch, stale: Turn, reply: str) -> str | None:
        """The stalled run resumes where it locked the turn: with the turn it read then."""
        from sessions_app.services import reply as reply_module

        monkeypatch.setattr(reply_module, "_turn_end", lambda *args, **kwargs: stale)
        try:
            return services.turn_complete(turn_id=stale.pk, reply=reply)
        finally:
            monkeypatch.undo()

    def test_a_stalled_run_writes_nothing_over_a_reply_shown_since(
        self, user, session, monkeypatch
    ):
        """Run two locked the turn first and stalled; run one locked it after, ended it and
        its reply was shown. Run two, resuming, finds that reply (a duplicate) and must not
        write its own over it, whatever the order in which they claimed the turn."""
        turn = self.accept(user, session, "hello")
        services.turn_claim(turn_id=turn.pk)  # run one: attempt 1
        services.turn_claim(turn_id=turn.pk)  # run two: attempt 2, yet it locks first
        run_two = self.locked_then_stalled(turn)
        assert services.turn_complete(turn_id=turn.pk, reply="shown by run one") == "completed"
        assert self.resume(monkeypatch, run_two, "from stalled run two") is None
        session.refresh_from_db()
        assert self.contents(session) == ["hello", "shown by run one"]
        assert Turn.objects.get(pk=turn.pk).status == "completed"

    def test_a_run_that_keeps_the_kept_reply_still_fences_it(self, user, session, monkeypatch):
        """Run zero left its reply and lost its commit. Run two locked the turn, found it,
        and stalled; run one locked it after, decided as the kept reply reads (so wrote
        nothing over it) and committed. Run two's write must still be refused."""
        from sessions_app.services import reply as reply_module

        turn = self.accept(user, session, "hello")
        kept = "the same reply"
        history_store().append_reply(
            session=session,
            turn_id=turn.pk,
            seq=session.next_seq,
            content=kept,
            fence=reply_module.fence_next(),
        )
        run_two = self.locked_then_stalled(turn)
        with pytest.raises(DuplicateReply):  # run two's append finds it, raising its fence
            history_store().append_reply(
                session=session,
                turn_id=turn.pk,
                seq=session.next_seq,
                content="run two's",
                fence=run_two.reply_fence,
            )
        assert services.turn_complete(turn_id=turn.pk, reply=kept) == "completed"
        assert self.resume(monkeypatch, run_two, "run two's") is None
        session.refresh_from_db()
        assert self.contents(session) == ["hello", kept]

    def test_a_run_that_locks_last_writes_over_a_stalled_runs_reply(
        self, user, session, monkeypatch
    ):
        """The other way round: the stalled run wrote first, lost its commit, and the run
        that locked after it decides what is shown (its fence is higher)."""
        turn = self.accept(user, session, "hello")
        stalled = self.locked_then_stalled(turn)
        history_store().append_reply(
            session=session,
            turn_id=turn.pk,
            seq=session.next_seq,
            content="never shown",
            fence=stalled.reply_fence,
        )
        assert services.turn_complete(turn_id=turn.pk, reply="shown") == "completed"
        session.refresh_from_db()
        assert self.contents(session) == ["hello", "shown"]

    def test_a_stalled_run_does_not_take_over_the_next_message_its_reader_saw(
        self, user, session, monkeypatch
    ):
        """Run S locked the turn and stalled; the turn failed without it and the user sent
        again, the new message at the seq S was to write its reply at. S, resuming, finds
        that seq another turn's newest message (as a lost commit would leave one): its
        fence, lower than the accept's, says it is not one to take over."""
        turn = self.accept(user, session, "hello")
        stalled = self.locked_then_stalled(turn)
        assert services.turn_fail(turn_id=turn.pk, code="stalled", detail="x")
        self.accept(user, session, "my next message")
        with pytest.raises(SeqTaken):
            self.resume(monkeypatch, stalled, "stale reply")
        session.refresh_from_db()
        assert self.contents(session) == ["hello", "my next message"]

    def test_a_stalled_accept_does_not_take_over_a_later_accepts_message(self, user, session):
        from sessions_app.services.common import fence_next

        stalled_fence = fence_next()  # an accept that locked the session, then stalled
        self.accept(user, session, "seen")
        with pytest.raises(SeqTaken):
            history_store().append_user_message(
                session=session,
                turn_id=uuid.uuid4(),
                seq=session.next_seq - 1,
                content="stale",
                fence=stalled_fence,
            )
        assert self.contents(session) == ["seen"]

    def test_a_stalled_discard_does_not_take_a_reply_shown_since(self, user, session):
        """A pending turn's removal locked it and stalled past its lock; a run claimed the
        turn, ended it and showed its reply. The removal's Redis part, resuming, must leave
        that reply (and its field) as they are."""
        from sessions_app.services.common import fence_next

        turn = self.accept(user, session, "hello")
        remover = fence_next()  # as the removal locked the turn
        assert services.turn_complete(turn_id=turn.pk, reply="shown reply") == "completed"
        history_store().discard_turn(
            session=session, turn_id=turn.pk, roles=("assistant",), fence=remover
        )
        session.refresh_from_db()
        assert self.contents(session) == ["hello", "shown reply"]
        [_, reply] = history_store().turn_messages(session=session, turn_id=turn.pk)
        assert reply.content == "shown reply"

    def test_a_release_the_leak_index_refuses_shows_nothing_released(
        self, user, session, monkeypatch
    ):
        """The release registered the reply's fingerprints after rewriting it in Redis,
        which the database's rollback does not undo: the index refusing left the text shown
        while the turn stayed withheld."""
        from audit_app.index.base import IndexUnavailable
        from sessions_app.services import reply as reply_module

        turn = self.accept(user, session, "hello")
        leak = ScanResult(leaked=True, score=1.0, evidence=[])
        assert services.turn_complete(turn_id=turn.pk, reply="the withheld text", scan=leak)
        session.refresh_from_db()
        notice = self.contents(session)

        def refused(**kwargs):
            raise IndexUnavailable("the leak index did not answer")

        monkeypatch.setattr(reply_module, "fingerprints_register", refused)
        with pytest.raises(IndexUnavailable):
            services.turn_release_withheld(turn_id=turn.pk)
        session.refresh_from_db()
        assert self.contents(session) == notice and "the withheld text" not in notice
        assert Turn.objects.get(pk=turn.pk).status == "suppressed"

    def test_a_release_fences_out_every_run_before_it(self, user, session):
        from sessions_app.services import reply as reply_module

        turn = self.accept(user, session, "hello")
        before = self.locked_then_stalled(turn)
        leak = ScanResult(leaked=True, score=1.0, evidence=[])
        assert services.turn_complete(turn_id=turn.pk, reply="withheld", scan=leak)
        ended_at = reply_module.fence_next() - 1  # the fence its end took, or below
        assert services.turn_release_withheld(turn_id=turn.pk)
        session.refresh_from_db()
        for fence in (before.reply_fence, ended_at):
            with pytest.raises(ReplyOvertaken):
                history_store().reply_rewrite(
                    session=session, turn_id=turn.pk, content="stale", status="ok", fence=fence
                )
        assert self.contents(session) == ["hello", "withheld"]

    def test_a_reply_stored_before_fences_is_fenced_from_its_first_rewrite(self, user, session):
        turn = self.accept(user, session, "hello")
        assert services.turn_complete(turn_id=turn.pk, reply="old")
        session.refresh_from_db()
        client = get_redis_connection("default")
        key, seq = f"session:{{{session.pk}}}:messages", session.next_seq - 1
        message = json.loads(client.hget(key, seq))
        del message["a"]  # as written before replies kept a fence
        client.hset(key, seq, json.dumps(message))
        history_store().reply_rewrite(
            session=session, turn_id=turn.pk, content="new", status="ok", fence=5
        )
        with pytest.raises(ReplyOvertaken):
            history_store().reply_rewrite(
                session=session, turn_id=turn.pk, content="stale", status="ok", fence=4
            )
        assert self.contents(session) == ["hello", "new"]

    def test_a_rewrite_leaves_another_turns_message_at_the_seq_its_field_names(self, user, session):
        """A run left a reply at seq 2, lost its commit, and its turn failed; the next
        message took seq 2. The failed turn's field still names seq 2: a rewrite through it
        (a release, a re-run) must not touch the other turn's message."""
        turn = self.accept(user, session, "hello")
        history_store().append_reply(
            session=session, turn_id=turn.pk, seq=session.next_seq, content="never shown"
        )
        assert services.turn_fail(turn_id=turn.pk, code="x", detail="y")
        self.accept(user, session, "the next message")
        with pytest.raises(MessageMissing):
            history_store().reply_rewrite(
                session=session, turn_id=turn.pk, content="over it", status="ok", fence=1
            )
        assert self.contents(session) == ["hello", "the next message"]

    def test_a_rewrite_of_keys_naming_another_owner_is_refused(self, user, session):
        turn = self.accept(user, session, "hello")
        assert services.turn_complete(turn_id=turn.pk, reply="hi")
        get_redis_connection("default").set(f"session:{{{session.pk}}}:owner", "999999")
        with pytest.raises(ForeignData):
            history_store().reply_rewrite(
                session=session, turn_id=turn.pk, content="over it", status="ok", fence=1
            )

    def test_a_withheld_reply_with_no_stored_message_is_left_withheld(self, user, session):
        """Its history lost (Redis keeps it only so long): the release finds no message to
        show it in, and the turn stays as it was, withheld."""
        turn = self.accept(user, session, "hello")
        Turn.objects.filter(pk=turn.pk).update(status="suppressed", withheld=crypto.seal(b"x"))
        assert services.turn_release_withheld(turn_id=turn.pk) is False
        turn.refresh_from_db()
        assert turn.status == "suppressed" and turn.withheld

    @staticmethod
    def contents(session) -> list[str]:
        session.refresh_from_db()
        return [m.content for m in history_store().page(session=session, offset=0, limit=9)]

    @staticmethod
    def shown(session) -> tuple[str, str]:
        session.refresh_from_db()
        last = history_store().page(session=session, offset=0, limit=9)[-1]
        return last.content, last.status

    def test_a_reply_left_by_a_lost_commit_gives_its_seq_to_the_next_message(self, user, session):
        """No reader sees the newest message past the session's counter, and the next
        message takes its seq: unlike a seq taken, it is written over."""
        turn = self.accept(user, session, "hello")
        # A run wrote the reply, then lost its database commit; the turn then failed.
        history_store().append_reply(
            session=session, turn_id=turn.pk, seq=session.next_seq, content="never delivered"
        )
        assert services.turn_fail(turn_id=turn.pk, code="x", detail="y")
        following = self.accept(user, session, "again")
        assert services.turn_complete(turn_id=following.pk, reply="answer")
        session.refresh_from_db()
        kept = history_store().page(session=session, offset=0, limit=9)
        assert [(m.seq, m.content) for m in kept] == [(1, "hello"), (2, "again"), (3, "answer")]
        failed = history_store().turn_messages(session=session, turn_id=turn.pk)
        assert [m.content for m in failed] == ["hello"]

    def test_store_errors_are_neutral(self, settings, private_redis: PrivateRedis, session):
        settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": private_redis.url}}
        private_redis.kill()
        with pytest.raises(StoreUnavailable):
            history_store().turn_messages(session=session, turn_id=uuid.uuid4())
        with pytest.raises(StoreUnavailable):
            history_store().erase(session_ids=[session.pk])


class TestCachedDbStore(StoreContract, RowStoreContract):
    store_name = "cached_db"

    @pytest.mark.django_db(transaction=True)
    def test_a_reader_racing_a_release_whose_new_version_is_lost_caches_nothing(
        self, user, session, monkeypatch
    ):
        """A reader between a release's rewrite and its commit read the withheld notice and
        cached it under the version it took; the new version the commit gives was lost (the
        cache blinking then), so the notice was served while the turn said completed."""
        import threading

        from django.db import connections

        from sessions_app.stores import cached_db

        def shown() -> list[tuple[str, str]]:
            page = client_for(user).get(f"/api/v1/sessions/{session.pk}/messages/").json()
            return [(m["content"], m["status"]) for m in page["results"]]

        turn = self.accept(user, session, "Anything new?")
        flagged = ScanResult(leaked=True, score=1.0)
        services.turn_complete(turn_id=turn.pk, reply="Your parcel is ready.", scan=flagged)
        assert shown()[1][1] == "suppressed"
        rewrite = cached_db.HistoryStore._rewrite

        def rewrite_then_a_reader(self, *args, **kwargs):
            rewrite(self, *args, **kwargs)

            def read() -> None:
                try:
                    shown()  # another request: reads the database before the commit
                finally:
                    connections.close_all()

            reader = threading.Thread(target=read)
            reader.start()
            reader.join()

        monkeypatch.setattr(cached_db.HistoryStore, "_rewrite", rewrite_then_a_reader)
        monkeypatch.setattr(cached_db.HistoryStore, "_renew", lambda self, ids: None)  # lost
        assert services.turn_release_withheld(turn_id=turn.pk)
        monkeypatch.undo()
        assert Turn.objects.get(pk=turn.pk).status == "completed"
        assert shown()[1] == ("Your parcel is ready.", "ok")
        assert shown()[1] == ("Your parcel is ready.", "ok")  # and once cached again

    @pytest.mark.django_db(transaction=True)
    def test_a_write_committed_after_an_erasure_leaves_no_key_behind(self, user, session):
        """A reply's renewal runs once its write commits; a DELETE waiting on its row lock
        commits next and deletes the keys, and a renewal that runs after it must not start
        the session's version again."""
        self.accept(user, session, "question")
        client_for(user).get(f"/api/v1/sessions/{session.pk}/messages/")  # cached: a version
        assert client_for(user).delete(f"/api/v1/sessions/{session.pk}/").status_code == 204
        assert _scan(f"*{session.pk}*") == []
        history_store()._renew([session.pk])  # the reply's, late
        assert _scan(f"*{session.pk}*") == []

    @pytest.fixture
    def in_process(self, settings):
        """The embedded setup's cache: in-process, no Redis behind it."""
        from django.core.cache import cache

        settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
        cache.clear()
        return cache

    @pytest.mark.django_db(transaction=True)
    def test_a_write_committed_after_an_erasure_leaves_no_version_in_process(
        self, user, session, in_process
    ):
        """The same late renewal on the in-process cache: it must not start the erased
        session's version again either."""
        version = f"session:{{{session.pk}}}:version"
        self.accept(user, session, "question")
        client_for(user).get(f"/api/v1/sessions/{session.pk}/messages/")  # cached: a version
        assert in_process.get(version) is not None
        assert client_for(user).delete(f"/api/v1/sessions/{session.pk}/").status_code == 204
        assert in_process.get(version) is None
        history_store()._renew([session.pk])  # the reply's, late
        assert in_process.get(version) is None

    @pytest.mark.django_db(transaction=True)
    def test_an_erasure_between_a_renewals_check_and_its_set_leaves_no_version_in_process(
        self, user, session, in_process, monkeypatch
    ):
        """Another thread's erasure deletes the keys just after the renewal found the
        session's version: the renewal must not set it again once it is gone."""
        import threading

        from django.core.cache.backends.locmem import LocMemCache
        from django.db import connections

        version = f"session:{{{session.pk}}}:version"
        self.accept(user, session, "question")
        client_for(user).get(f"/api/v1/sessions/{session.pk}/messages/")  # cached: a version
        found = LocMemCache.get_many

        def erase() -> None:
            try:
                services.chat_session_delete(user=user, session_id=session.pk)
            finally:
                connections.close_all()

        def found_then_erased(self, keys, **kwargs):
            present = found(self, keys, **kwargs)
            monkeypatch.setattr(LocMemCache, "get_many", found)  # once
            eraser = threading.Thread(target=erase)
            eraser.start()
            eraser.join(timeout=1)  # done, unless it waits for the renewal to finish
            racing.append(eraser)
            return present

        racing: list[threading.Thread] = []
        monkeypatch.setattr(LocMemCache, "get_many", found_then_erased)
        history_store()._renew([session.pk])
        [eraser] = racing
        eraser.join()
        assert not ChatSession.objects.filter(pk=session.pk).exists()
        assert in_process.get(version) is None

    @pytest.mark.django_db(transaction=True)
    def test_a_reader_that_read_before_an_erasure_leaves_nothing_in_process(
        self, user, session, in_process
    ):
        """A reader took the session's version and read the database; the session is erased
        before it caches what it read: on the in-process cache too, nothing of the erased
        session is written (it would never be served, but it stayed in memory until its TTL)."""
        self.accept(user, session, "my secret question")
        store = history_store()
        version = store._version_start(session.pk)
        read = store._all(session)
        assert client_for(user).delete(f"/api/v1/sessions/{session.pk}/").status_code == 204
        store._cache_set(session, read, version)
        assert in_process.get(f"session:{{{session.pk}}}:messages") is None

    @pytest.mark.django_db(transaction=True)
    def test_a_reader_racing_a_rewrite_never_caches_the_text_before_it(
        self, user, session, monkeypatch
    ):
        """A reader reads the database, a withheld reply's release commits (a rewrite: the
        count stays), then the reader caches what it read: that entry must not be served."""
        from sessions_app.stores import db

        turn = self.accept(user, session, "question")
        assert services.turn_complete(turn_id=turn.pk, reply="the notice")
        session.refresh_from_db()
        store = history_store()
        database_read = db.HistoryStore._all

        def read_then_rewritten(self, session):
            before = database_read(self, session)
            monkeypatch.setattr(db.HistoryStore, "_all", database_read)  # once
            with transaction.atomic():  # committed, its invalidation run, before the caching
                store.reply_rewrite(
                    session=session,
                    turn_id=turn.pk,
                    content="the released reply",
                    status="ok",
                    fence=1,
                )
            return before

        monkeypatch.setattr(db.HistoryStore, "_all", read_then_rewritten)
        raced = store.page(session=session, offset=0, limit=9)
        assert [m.content for m in raced] == ["question", "the notice"]  # read before it
        for _ in range(2):  # the next reads, the first from the database, then cached
            after = store.page(session=session, offset=0, limit=9)
            assert [m.content for m in after] == ["question", "the released reply"]
        from django.core.cache import cache

        entry = cache.get(f"session:{{{session.pk}}}:messages")
        assert entry["version"] == cache.get(f"session:{{{session.pk}}}:version")
        assert [m.content for m in entry["messages"]] == ["question", "the released reply"]

    @pytest.mark.django_db(transaction=True)
    def test_a_reader_racing_a_delete_leaves_nothing_in_redis(self, user, session, monkeypatch):
        """A reader reads the database, the session's DELETE commits (its keys erased), then
        the reader would cache what it read: nothing of the session may be left behind."""
        from sessions_app.stores import db

        turn = self.accept(user, session, "CANARY-erase question")
        assert services.turn_complete(turn_id=turn.pk, reply="CANARY-erase reply")
        session.refresh_from_db()
        database_read = db.HistoryStore._all

        def read_then_deleted(self, session):
            before = database_read(self, session)
            monkeypatch.setattr(db.HistoryStore, "_all", database_read)  # once
            services.chat_session_delete(user=user, session_id=session.pk)
            return before

        monkeypatch.setattr(db.HistoryStore, "_all", read_then_deleted)
        raced = history_store().page(session=session, offset=0, limit=9)
        assert [m.content for m in raced] == ["CANARY-erase question", "CANARY-erase reply"]
        assert _scan(f"*{session.pk}*") == []

    def test_an_entry_is_never_served_stale_or_to_another_owner(self, user, other_user, session):
        from django.core.cache import cache

        first = self.accept(user, session, "one")
        services.turn_complete(turn_id=first.pk, reply="reply one")
        session.refresh_from_db()
        assert len(history_store().page(session=session, offset=0, limit=9)) == 2  # cached
        key = f"session:{{{session.pk}}}:messages"
        entry = cache.get(key)
        assert entry["count"] == 2
        # A later append whose invalidation was lost: the old entry must not be served.
        second = self.accept(user, session, "two")
        cache.set(key, entry)
        session.refresh_from_db()
        history = history_store().history(session=session, turn_id=second.pk)
        assert [m.content for m in history] == ["one", "reply one", "two"]
        # An entry holding another owner's messages is refused and audited.
        theirs = services.chat_session_create(owner=other_user)
        self.accept(other_user, theirs, "CANARY-theirs")
        theirs.refresh_from_db()
        history_store().page(session=theirs, offset=0, limit=9)  # cached for them
        poisoned = cache.get(f"session:{{{theirs.pk}}}:messages")
        version = cache.get(f"session:{{{session.pk}}}:version")
        poisoned = {
            **poisoned,
            "user_id": user.pk,
            "session_id": session.pk,
            "count": 1,
            "expires_at": session.expires_at,
            "version": version,  # all the entry's own labels say it is this session's
        }
        session.next_seq = 2  # matches the poisoned count
        cache.set(key, poisoned)
        with pytest.raises(ForeignData) as refused:
            history_store().page(session=session, offset=0, limit=9)
        refused.value.audit()  # what the API's exception handler and the task do
        assert AuditEntry.objects.filter(kind="security", session_id=session.pk).exists()


def test_the_store_is_chosen_by_the_setting(settings):
    from sessions_app.stores import cached_db, db, redis

    for name, module in (("db", db), ("redis", redis), ("cached_db", cached_db)):
        settings.HISTORY_STORE = name
        assert type(history_store()) is module.HistoryStore


def test_an_unknown_turn_has_no_history(user):
    session = services.chat_session_create(owner=user)
    assert history_store().history(session=session, turn_id=uuid.uuid4()) == []


def test_a_post_answered_with_an_error_leaves_nothing_in_the_redis_store(
    settings, user, private_redis
):
    """Redis does not roll back with the database: a post that fails after its append
    (here the fingerprint index is down) takes its message back out."""
    from sessions_app.models import ChatSession

    settings.HISTORY_STORE = "redis"
    settings.FINGERPRINT_REDIS_URL = private_redis.url
    private_redis.kill()
    session = services.chat_session_create(owner=user)
    response = client_for(user).post(
        f"/api/v1/sessions/{session.pk}/messages/",
        {"content": "my secret Zorblaxian plan"},
        format="json",
    )
    assert response.status_code == 503
    assert not Turn.objects.filter(session=session).exists()
    assert ChatSession.objects.get(pk=session.pk).next_seq == 1
    held = get_redis_connection("default").hvals(f"session:{{{session.pk}}}:messages")
    assert not any(b"Zorblaxian" in value for value in held)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("writer", ["accept", "end"])
def test_a_writer_takes_its_fence_once_it_holds_the_session_lock(settings, user, writer):
    """The fences follow the order of the locks: a writer that waited for the session's lock
    carries a fence above one taken while it waited (taken before its lock, it would not)."""
    from sessions_app.services.common import fence_next

    settings.HISTORY_STORE = "redis"
    session = services.chat_session_create(owner=user)
    turn = services.message_accept(user=user, session_id=session.pk, content="hello")
    if writer == "accept":
        services.turn_complete(turn_id=turn.pk, reply="first reply")

        def write() -> object:
            return services.message_accept(user=user, session_id=session.pk, content="again")

    else:

        def write() -> object:
            return services.turn_complete(turn_id=turn.pk, reply="the reply")

    with transaction.atomic():
        list(ChatSession.objects.select_for_update().filter(pk=session.pk))
        thread, results = lock_waiter(write, on_this_connection=True)
        meanwhile = fence_next()
    thread.join(10)
    assert results and not isinstance(results[0], BaseException), results
    stored = get_redis_connection("default").hvals(f"session:{{{session.pk}}}:messages")
    newest = max((json.loads(raw) for raw in stored), key=lambda message: message["q"])
    assert newest["a"] > meanwhile
