"""The fingerprint index and the leak scan, the same contract on Redis and on the database."""

import uuid

import pytest
from django.db import transaction
from redis import Redis

from audit_app import fingerprint
from audit_app.index import LISTED_SINCE, DbIndex, IndexUnavailable, RedisIndex
from audit_app.models import FingerprintPosting
from audit_app.services import (
    fingerprint_index,
    fingerprints_erase_session,
    fingerprints_register,
    reply_scan,
)

from ..support import postings_locked_elsewhere

ALICE_DATA = (
    "My order ORD-583920 for Bartholomew Quince ships to 42 Wisteria Lane. Codename Bluefalcon."
)
LEAKED = "Your order ORD-583920 is on its way to Bartholomew Quince."


def _register(user_id: int, text: str, session: uuid.UUID | None = None) -> uuid.UUID:
    session = session or uuid.uuid4()
    fingerprints_register(user_id=user_id, session_id=session, text=text)
    return session


class IndexContract:
    """Every index backend must pass these; subclasses only choose the backend."""

    def every_posting_listed(self) -> None:
        """Make the index hold no posting that only a text names (the backend knows how)."""
        raise NotImplementedError

    def test_another_users_distinctive_data_is_a_leak(self):
        alice_session = _register(1, ALICE_DATA)
        bob_session = _register(2, "What is my order status?")
        result = reply_scan(user_id=2, session_id=bob_session, text=LEAKED)
        assert result.leaked and result.score >= 1
        matched = {LEAKED[e.start : e.end] for e in result.evidence}
        assert "ORD-583920" in matched or "order ORD-583920" in matched
        assert any("Quince" in m for m in matched)
        introducers = {(p.user_id, p.session_id) for e in result.evidence for p in e.introduced_by}
        assert introducers == {(1, str(alice_session))}

    def test_a_users_own_data_is_not_a_leak(self):
        alice_session = _register(1, ALICE_DATA)
        assert not reply_scan(user_id=1, session_id=alice_session, text=LEAKED).leaked
        # ...in any of the user's sessions
        assert not reply_scan(user_id=1, session_id=uuid.uuid4(), text=LEAKED).leaked

    def test_common_words_numbers_and_placeholders_are_no_evidence(self):
        _register(1, "Please check my order status and the delivery date 2024-03-15, 42 items.")
        _register(1, "My email is <EMAIL_ADDRESS_1> and my card [CREDIT_CARD]")
        reply = (
            "Your order status: 42 items ship on 2024-03-15. Email <EMAIL_ADDRESS_1> [CREDIT_CARD]"
        )
        result = reply_scan(user_id=2, session_id=uuid.uuid4(), text=reply)
        assert not result.leaked and result.evidence == []

    def test_a_token_many_users_introduced_is_no_evidence(self):
        for user_id in range(1, 6):
            _register(user_id, "We use the Bluefalcon framework")
        result = reply_scan(user_id=9, session_id=uuid.uuid4(), text="Try Bluefalcon.")
        assert not result.leaked and result.evidence == []

    def test_one_rare_word_alone_is_not_enough(self):
        _register(1, "I love quince jam")
        result = reply_scan(user_id=2, session_id=uuid.uuid4(), text="A quince is a fruit.")
        assert not result.leaked

    def test_a_text_registered_with_its_own_scan_is_indexed_as_without(self, monkeypatch):
        """Registering the text a scan just read reuses its digests, computing none; a scan
        of another text lends nothing."""
        from audit_app import leak_scan

        alice_session = uuid.uuid4()
        scan = reply_scan(user_id=1, session_id=alice_session, text=ALICE_DATA)
        assert "Bluefalcon" not in repr(scan)  # the text it carries stays out of logs
        computed = []
        digests = leak_scan._digests
        monkeypatch.setattr(leak_scan, "_digests", lambda t: computed.append(t) or digests(t))
        fingerprints_register(user_id=1, session_id=alice_session, text=ALICE_DATA, scan=scan)
        assert computed == []
        other = reply_scan(user_id=1, session_id=alice_session, text="Another text")
        fingerprints_register(user_id=1, session_id=uuid.uuid4(), text="Codename Zq", scan=other)
        assert computed == ["Another text", "Codename Zq"]
        # Indexed as a plain registration would: another user's reply carrying it is a leak.
        result = reply_scan(user_id=2, session_id=uuid.uuid4(), text=LEAKED)
        assert result.leaked
        introducers = {(p.user_id, p.session_id) for e in result.evidence for p in e.introduced_by}
        assert introducers == {(1, str(alice_session))}

    def test_erasing_a_session_removes_its_postings(self):
        alice_session = _register(1, ALICE_DATA)
        fingerprints_erase_session(session_id=alice_session, texts=lambda: [ALICE_DATA])
        assert not reply_scan(user_id=2, session_id=uuid.uuid4(), text=LEAKED).leaked

    def test_erasing_a_session_whose_postings_are_all_listed_reads_no_text(self):
        """The index finds a session's postings by the session: its texts (and the store
        that holds them) are not read, and what it registered goes whatever is stored."""
        gone = _register(1, ALICE_DATA)
        self.every_posting_listed()
        fingerprints_erase_session(session_id=gone, texts=lambda: pytest.fail("texts read"))
        assert not reply_scan(user_id=2, session_id=uuid.uuid4(), text=LEAKED).leaked

    def test_erasing_one_session_keeps_what_the_users_other_sessions_introduced(self):
        """Alice wrote her order in two sessions and deletes one: the other still holds it,
        so another user's reply carrying it is still a leak, and hers is still her own."""
        first, second = _register(1, ALICE_DATA), _register(1, ALICE_DATA)
        _register(3, "Ship it to Bartholomew Quince")  # a third user shares a part of it
        fingerprints_erase_session(session_id=first, texts=lambda: [ALICE_DATA])
        result = reply_scan(user_id=2, session_id=uuid.uuid4(), text=LEAKED)
        assert result.leaked
        introducers = {(p.user_id, p.session_id) for e in result.evidence for p in e.introduced_by}
        assert (1, str(second)) in introducers and (1, str(first)) not in introducers
        assert reply_scan(user_id=1, session_id=second, text=LEAKED).evidence == []
        fingerprints_erase_session(session_id=second, texts=lambda: [ALICE_DATA])
        result = reply_scan(user_id=2, session_id=uuid.uuid4(), text=LEAKED)
        assert {p.user_id for e in result.evidence for p in e.introduced_by} <= {3}


@pytest.mark.django_db
class TestRedisIndex(IndexContract):
    @pytest.fixture(autouse=True)
    def _redis(self, settings):
        assert settings.REDIS_URL
        assert isinstance(fingerprint_index(), RedisIndex)

    def every_posting_listed(self) -> None:
        """The first erasure long past: no posting from before the lists lives."""
        fingerprint_index().client.set(LISTED_SINCE, 0)

    def test_until_then_the_texts_are_read_once_and_name_older_postings(self):
        gone = _register(1, ALICE_DATA)
        index = fingerprint_index()
        index.client.delete(*index.client.scan_iter(f"fp:*:s:{gone.hex}"))  # as before lists
        read = []
        fingerprints_erase_session(session_id=gone, texts=lambda: read.append(1) or [ALICE_DATA])
        assert read == [1]
        assert not reply_scan(user_id=2, session_id=uuid.uuid4(), text=LEAKED).leaked

    def test_the_index_holds_no_plain_words(self, settings):
        _register(1, ALICE_DATA)
        client = Redis.from_url(settings.REDIS_URL)
        hashes = {key: client.type(key) == b"hash" for key in client.scan_iter("fp:*")}
        dump = b"".join(
            b"".join(b"".join(pair) for pair in client.hgetall(key).items())
            if is_hash
            else client.get(key)  # a session's list of the postings it added
            for key, is_hash in hashes.items()
        )
        assert dump
        for word in (b"bluefalcon", b"quince", b"583920", b"wisteria"):
            assert word not in dump.lower()

    def test_redis_down_is_a_neutral_error(self, settings, private_redis):
        settings.REDIS_URL = private_redis.url
        private_redis.kill()
        with pytest.raises(IndexUnavailable):
            reply_scan(user_id=1, session_id=uuid.uuid4(), text=LEAKED)
        with pytest.raises(IndexUnavailable):
            _register(1, ALICE_DATA)


@pytest.mark.django_db
class TestDbIndex(IndexContract):
    @pytest.fixture(autouse=True)
    def _no_redis(self, settings):
        settings.REDIS_URL = ""
        assert isinstance(fingerprint_index(), DbIndex)

    def every_posting_listed(self) -> None:
        """Always so: every row names its session."""

    @pytest.mark.django_db(transaction=True)
    def test_a_database_error_is_a_neutral_error_and_the_caller_goes_on(self):
        """As the Redis index is when Redis is down: here a writer holds the session's
        postings past the lock timeout. The erasure fails alone, so that its caller's
        transaction can go on (the expiry purge erases the conversation all the same)."""
        session = _register(1, ALICE_DATA)
        with postings_locked_elsewhere(session), transaction.atomic():
            with pytest.raises(IndexUnavailable):
                fingerprints_erase_session(session_id=session)
            assert FingerprintPosting.objects.filter(session_id=session).exists()
        assert reply_scan(user_id=2, session_id=uuid.uuid4(), text=LEAKED).leaked


def test_features_keep_offsets_into_the_text():
    text = "Ship to Bartholomew Quince, order ORD-583920."
    for feature in fingerprint.features(text):
        assert fingerprint._tokens(text[feature.start : feature.end])
    assert not fingerprint.features("the order status is fine, thanks for 12 items")
