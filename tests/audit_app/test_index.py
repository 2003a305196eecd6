"""The index backends' contract: postings per user, shared features, generations, erasure."""

import time
import uuid
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.conf import settings
from django.utils import timezone

from audit_app.index import GENERATIONS, LISTED_SINCE, MAX_RECORDS, DbIndex, Layout, RedisIndex
from audit_app.index import redis as redis_index
from audit_app.models import FingerprintPosting

RARE = b"\x12\x34\x56\x78\x9a\xbc\xde\xf0"
SHARED = b"\xfe\xdc\xba\x98\x76\x54\x32\x10"
UNKNOWN = b"\x00\x11\x22\x33\x44\x55\x66\x77"


class LookupContract:
    """Every index backend must pass these; subclasses only build the backend."""

    index: RedisIndex | DbIndex

    def test_unknown_digests_have_no_postings(self):
        assert self.index.lookup([]) == {}
        assert self.index.lookup([UNKNOWN]) == {UNKNOWN: []}

    def test_postings_name_each_user_once_with_their_session(self):
        first, second, other = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        self.index.add([RARE, SHARED], user_id=1, session_id=first)
        self.index.add([RARE], user_id=1, session_id=second)
        self.index.add([RARE], user_id=2, session_id=other)
        found = self.index.lookup([UNKNOWN, RARE, SHARED])
        assert found[UNKNOWN] == []
        assert {(p.user_id, p.session_id) for p in found[RARE]} in (
            {(1, str(first)), (2, str(other))},
            {(1, str(second)), (2, str(other))},
        )
        assert [(p.user_id, p.session_id) for p in found[SHARED]] == [(1, str(first))]

    def test_erasing_one_session_keeps_the_users_other_sessions(self):
        first, second, other = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        self.index.add([RARE], user_id=1, session_id=first)
        self.index.add([RARE], user_id=1, session_id=second)
        self.index.add([RARE], user_id=2, session_id=other)
        self.index.erase_session([RARE], session_id=first)
        found = {(p.user_id, p.session_id) for p in self.index.lookup([RARE])[RARE]}
        assert found == {(1, str(second)), (2, str(other))}
        self.index.erase_session([RARE], session_id=second)
        assert [(p.user_id, p.session_id) for p in self.index.lookup([RARE])[RARE]] == [
            (2, str(other))
        ]

    def test_a_user_in_many_sessions_counts_once_and_outlives_erasing_some(self):
        sessions = [uuid.uuid4() for _ in range(MAX_RECORDS + 2)]
        for session in sessions:
            self.index.add([RARE], user_id=1, session_id=session)
        others = {user_id: uuid.uuid4() for user_id in range(2, MAX_RECORDS + 1)}
        for user_id, session in others.items():
            self.index.add([RARE], user_id=user_id, session_id=session)
        for session in sessions[:-1]:
            self.index.erase_session([RARE], session_id=session)
            self.index.add([RARE], user_id=1, session_id=session)  # again: nothing new
            self.index.erase_session([RARE], session_id=session)
        postings = self.index.lookup([RARE])[RARE]
        assert postings is not None  # MAX_RECORDS users: not shared
        assert {p.user_id for p in postings} == {1, *others}
        assert {(p.user_id, p.session_id) for p in postings if p.user_id != 1} == {
            (user_id, str(session)) for user_id, session in others.items()
        }
        mine = next(p for p in postings if p.user_id == 1)
        assert mine.session_id in (None, str(sessions[-1]))  # None: several of the user's

    def test_a_users_sessions_past_the_cap_leave_a_posting_no_erasure_removes(self):
        """A user's sessions past what a feature keeps share one posting with no session:
        erasing every session named leaves it (it ages out); other users keep theirs."""
        mine = [uuid.uuid4() for _ in range(MAX_RECORDS + 1)]
        self.index.add([RARE], user_id=2, session_id=(theirs := uuid.uuid4()))
        for session in mine:
            self.index.add([RARE], user_id=1, session_id=session)
        for session in mine:
            self.index.erase_session([RARE], session_id=session)
        found = {(p.user_id, p.session_id) for p in self.index.lookup([RARE])[RARE]}
        assert found == {(2, str(theirs)), (1, None)}
        self.index.erase_session([RARE], session_id=theirs)
        assert [(p.user_id, p.session_id) for p in self.index.lookup([RARE])[RARE]] == [(1, None)]
        for user_id in range(3, MAX_RECORDS + 3):  # more users than a feature keeps: shared
            self.index.add([RARE], user_id=user_id, session_id=uuid.uuid4())
        assert self.index.lookup([RARE]) == {RARE: None}

    def test_erasing_a_user_removes_their_posting_of_several_sessions_and_no_others(self):
        """An account deleted: its posting that stands for several sessions, which no
        session's erasure removes, goes; another user's, of several sessions or of one, on
        the same feature stays."""
        self.index.add([RARE], user_id=2, session_id=(theirs := uuid.uuid4()))
        for user_id in (1, 3):
            sessions = [uuid.uuid4() for _ in range(MAX_RECORDS + 1)]
            for session in sessions:
                self.index.add([RARE], user_id=user_id, session_id=session)
            for session in sessions:
                self.index.erase_session([RARE], session_id=session)
        found = {(p.user_id, p.session_id) for p in self.index.lookup([RARE])[RARE]}
        assert found == {(1, None), (2, str(theirs)), (3, None)}
        self.index.erase_user(user_id=1)
        found = {(p.user_id, p.session_id) for p in self.index.lookup([RARE])[RARE]}
        assert found == {(2, str(theirs)), (3, None)}
        self.index.erase_user(user_id=1)  # erased twice: no harm
        self.index.erase_user(user_id=3)
        assert [(p.user_id, p.session_id) for p in self.index.lookup([RARE])[RARE]] == [
            (2, str(theirs))
        ]

    def test_a_shared_feature_stays_shared_whatever_is_erased(self):
        """Once shared, a feature is never judged on the users still named: erasing the
        session of the one named user must not leave the others' as evidence against them."""
        first = {user_id: uuid.uuid4() for user_id in range(1, MAX_RECORDS + 2)}
        for user_id, session in first.items():
            self.index.add([RARE], user_id=user_id, session_id=session)
        self.index.add([RARE], user_id=1, session_id=uuid.uuid4())
        self.index.erase_session([RARE], session_id=first[1])
        self.index.erase_session([RARE], session_id=first[MAX_RECORDS + 1])
        assert self.index.lookup([RARE]) == {RARE: None}

    def test_erasing_a_session_with_no_text_left_removes_every_posting_naming_it(self):
        """What a session registered may no longer be stored (an accept undone, a turn
        discarded, a history expired): its erasure, given no digests, still removes every
        posting that names it, and none of another session's or user's of the same
        features."""
        gone, mine, theirs = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        self.index.add([RARE, SHARED], user_id=1, session_id=gone)
        self.index.add([RARE], user_id=1, session_id=mine)
        self.index.add([RARE, SHARED], user_id=2, session_id=theirs)
        self.index.add([UNKNOWN], user_id=1, session_id=gone)  # a later message of it
        self.index.erase_session([], session_id=gone)
        found = self.index.lookup([RARE, SHARED, UNKNOWN])
        assert {(p.user_id, p.session_id) for p in found[RARE]} == {
            (1, str(mine)),
            (2, str(theirs)),
        }
        assert [(p.user_id, p.session_id) for p in found[SHARED]] == [(2, str(theirs))]
        assert found[UNKNOWN] == []
        self.index.add([RARE], user_id=1, session_id=gone)  # erased twice: no harm
        self.index.erase_session([], session_id=gone)
        assert {p.session_id for p in self.index.lookup([RARE])[RARE]} == {str(mine), str(theirs)}

    def test_a_feature_of_too_many_users_is_shared(self):
        for user_id in range(1, MAX_RECORDS + 3):
            self.index.add([SHARED], user_id=user_id, session_id=uuid.uuid4())
        self.index.add([RARE], user_id=1, session_id=uuid.uuid4())
        found = self.index.lookup([SHARED, RARE])
        assert found[SHARED] is None
        assert [p.user_id for p in found[RARE]] == [1]


@pytest.mark.django_db
class TestRedisLookup(LookupContract):
    @pytest.fixture(autouse=True)
    def _index(self):
        self.index = RedisIndex(url=settings.REDIS_URL, layout=Layout(3600, 12))

    def test_postings_of_every_live_generation_are_merged(self):
        # One-second generations: what was added a generation ago is still found.
        index = RedisIndex(url=settings.REDIS_URL, layout=Layout(4, 12))
        old = uuid.uuid4()
        index.add([RARE], user_id=1, session_id=old)
        generation = index.layout.generation(time.time())
        while index.layout.generation(time.time()) == generation:
            time.sleep(0.05)
        index.add([RARE], user_id=1, session_id=uuid.uuid4())
        index.add([RARE], user_id=2, session_id=uuid.uuid4())
        postings = index.lookup([RARE])[RARE]
        assert [p.user_id for p in postings] == [1, 2]
        assert postings[0].session_id == str(old)  # the first generation's session comes first

    def test_shared_in_one_generation_is_shared_in_all(self):
        index = RedisIndex(url=settings.REDIS_URL, layout=Layout(4, 12))
        index.add([SHARED], user_id=1, session_id=uuid.uuid4())
        generation = index.layout.generation(time.time())
        while index.layout.generation(time.time()) == generation:
            time.sleep(0.05)
        for user_id in range(2, MAX_RECORDS + 3):
            index.add([SHARED], user_id=user_id, session_id=uuid.uuid4())
        assert index.lookup([SHARED]) == {SHARED: None}

    def test_a_full_value_folds_a_users_sessions_into_one_record(self):
        """Three records fit a value: with another user's there, a user's third session
        folds theirs into one record with no session."""
        self.index.add([RARE], user_id=2, session_id=(theirs := uuid.uuid4()))
        for _ in range(MAX_RECORDS - 1):
            self.index.add([RARE], user_id=1, session_id=uuid.uuid4())
        postings = self.index.lookup([RARE])[RARE]
        assert [(p.user_id, p.session_id) for p in postings][0] == (2, str(theirs))
        assert [p.session_id for p in postings][1] is not None
        self.index.add([RARE], user_id=1, session_id=uuid.uuid4())
        postings = self.index.lookup([RARE])[RARE]
        assert [(p.user_id, p.session_id) for p in postings] == [(2, str(theirs)), (1, None)]

    def test_a_sessions_postings_of_every_live_generation_are_erased_without_digests(self):
        index = RedisIndex(url=settings.REDIS_URL, layout=Layout(4, 12))
        gone, theirs = uuid.uuid4(), uuid.uuid4()
        index.add([RARE], user_id=1, session_id=gone)
        generation = index.layout.generation(time.time())
        while index.layout.generation(time.time()) == generation:
            time.sleep(0.05)
        index.add([SHARED], user_id=1, session_id=gone)
        index.add([RARE, SHARED], user_id=2, session_id=theirs)
        index.erase_session([], session_id=gone)
        found = index.lookup([RARE, SHARED])
        assert [(p.user_id, p.session_id) for p in found[RARE]] == [(2, str(theirs))]
        assert [(p.user_id, p.session_id) for p in found[SHARED]] == [(2, str(theirs))]
        assert self._lists(gone) == {}

    def test_a_session_lists_each_posting_it_added_once_with_its_generations_expiry(self):
        """8 bytes a posting: what is already there, folded or shared adds nothing."""
        session = uuid.uuid4()
        for _ in range(5):
            self.index.add([RARE, SHARED], user_id=1, session_id=session)
        for user_id in range(2, MAX_RECORDS + 3):  # SHARED goes shared
            self.index.add([SHARED], user_id=user_id, session_id=uuid.uuid4())
        self.index.add([UNKNOWN, SHARED], user_id=1, session_id=session)
        [(key, listed)] = self._lists(session).items()
        assert sorted(listed[i : i + 8] for i in range(0, len(listed), 8)) == sorted(
            [RARE, SHARED, UNKNOWN]
        )
        more = [uuid.uuid4() for _ in range(MAX_RECORDS)]
        for other in more:
            self.index.add([RARE], user_id=1, session_id=other)
        assert self._lists(more[-1]) == {}  # folded into the user's record of several
        client = self.index.client
        hash_key = self.index.layout.key(RARE, self.index.layout.generation(time.time()))
        assert client.expiretime(key) == client.expiretime(hash_key) > time.time()

    def test_a_session_nothing_erases_is_indexed_without_a_list(self):
        """A stateless conversation: its postings serve the scan, a list would serve none."""
        kept = uuid.uuid4()
        self.index.add([RARE], user_id=1, session_id=kept, erasable=False)
        assert [(p.user_id, p.session_id) for p in self.index.lookup([RARE])[RARE]] == [
            (1, str(kept))
        ]
        assert self._lists(kept) == {}

    def test_until_every_generation_is_listed_erasing_asks_for_the_texts_digests(self):
        """Postings written before sessions kept lists (the code before) are named by the
        texts' digests only. While a live generation may hold them (from the first erasure
        on, for the index's TTL and one generation more) an erasure without digests erases
        nothing and asks for them; with them, it erases both kinds."""
        client, layout = self.index.client, self.index.layout
        now = layout.generation(time.time())
        gone, theirs = uuid.uuid4(), uuid.uuid4()
        self.index.add([RARE], user_id=1, session_id=gone)
        client.delete(*self._lists(gone))  # as the code before wrote it: no list
        self.index.add([SHARED], user_id=1, session_id=gone)
        self.index.add([RARE, SHARED], user_id=2, session_id=theirs)
        assert self.index.erase_session(session_id=gone) is True  # the first: sets the mark
        assert layout.generation(int(client.get(LISTED_SINCE))) == now
        assert {p.user_id for p in self.index.lookup([SHARED])[SHARED]} == {1, 2}
        assert self.index.erase_session([RARE], session_id=gone) is False
        found = self.index.lookup([RARE, SHARED])
        assert [(p.user_id, p.session_id) for p in found[RARE]] == [(2, str(theirs))]
        assert [(p.user_id, p.session_id) for p in found[SHARED]] == [(2, str(theirs))]
        since = now - GENERATIONS - 1  # expired, but the generation after it is live
        client.set(LISTED_SINCE, since * layout.generation_seconds)
        assert self.index.erase_session(session_id=theirs) is True
        client.set(LISTED_SINCE, (since - 1) * layout.generation_seconds)  # both expired
        assert self.index.erase_session(session_id=theirs) is False
        assert self.index.lookup([RARE, SHARED]) == {RARE: [], SHARED: []}

    @pytest.mark.parametrize(
        ("chunk", "taken"),
        [
            (redis_index.ERASE_SESSION_CHUNK, [6]),
            (1, [0] * 10 + [1] * 6),
            (3, [0, 0, 0, 1, 1, 1, 1, 1, 1]),
            (7, [0, 1, 2, 2, 1]),
            (15, [1, 3, 2]),
        ],
    )
    def test_a_sessions_lists_and_texts_longer_than_a_call_reads_are_erased_in_several_calls(
        self, chunk, taken, monkeypatch
    ):
        """Redis serves no one else while a script runs: each call reads a bounded part of
        the session's lists, then of its texts' digests (each looked up in every live
        generation, so it counts as many), and is sent no more of those than it may take.
        Together they erase every posting of the session, no other session's."""
        monkeypatch.setattr(redis_index, "ERASE_SESSION_CHUNK", chunk)
        listed = [bytes([n]) * 8 for n in range(1, 11)]
        unlisted = [bytes([n]) * 8 for n in range(11, 17)]
        gone, mine, theirs = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        self.index.add(unlisted, user_id=1, session_id=gone)
        self.index.client.delete(*self._lists(gone))  # as the code before wrote it: no list
        self.index.add(listed, user_id=1, session_id=gone)
        self.index.add(listed + unlisted, user_id=1, session_id=mine)
        self.index.add(listed + unlisted, user_id=2, session_id=theirs)
        sent = self._erase_calls()
        assert self.index.erase_session(unlisted, session_id=gone) is False
        # Texts' digests taken a call. 1: ten listed a call, then six texts'; 3: nine listed
        # in three calls, the last listed and one text's in the fourth, a text's a call
        # after; 7: seven listed, then three listed and one text's (the four digests left,
        # rounded up to one text's five generations), then two texts' a call; 15: ten
        # listed and one text's (five left: one text's five lookups), then three, then two.
        assert [reply[2] // 8 for _, reply in sent] == taken
        per_call = -(-chunk // (GENERATIONS + 1))
        assert all(len(texts) <= 8 * per_call for texts, _ in sent)
        for postings in self.index.lookup(listed + unlisted).values():
            assert {(p.user_id, p.session_id) for p in postings} == {
                (1, str(mine)),
                (2, str(theirs)),
            }
        assert self._lists(gone) == {}

    @pytest.mark.parametrize(("erased_meanwhile", "calls"), [(False, 3), (True, 2)])
    def test_a_digest_registered_between_two_calls_of_a_sessions_erasure_is_erased(
        self, erased_meanwhile, calls, monkeypatch
    ):
        """The session may register again while its erasure runs (nothing locks the
        index): what its list gains between two calls is read before the call that deletes
        the list (3 + 3 + (1 + the late one)). Another erasure of the same session (a
        redelivered task) may meanwhile have deleted the list, and the registration begun
        it again shorter than where this one stopped (byte 24 of 8): this one reads the new
        list from its start."""
        monkeypatch.setattr(redis_index, "ERASE_SESSION_CHUNK", 3)
        digests, late = [bytes([n]) * 8 for n in range(1, 8)], b"\x42" * 8
        gone, theirs = uuid.uuid4(), uuid.uuid4()
        self.index.add(digests, user_id=1, session_id=gone)
        self.index.add([*digests, late], user_id=2, session_id=theirs)
        self.index.client.set(LISTED_SINCE, 0)  # every live generation listed
        other = RedisIndex(url=settings.REDIS_URL, layout=self.index.layout)

        def between():
            if erased_meanwhile:
                assert other.erase_session(session_id=gone) is False
            self.index.add([late], user_id=1, session_id=gone)

        sent = self._erase_calls(between=between)
        assert self.index.erase_session(session_id=gone) is False
        assert len(sent) == calls
        for postings in self.index.lookup([*digests, late]).values():
            assert [(p.user_id, p.session_id) for p in postings] == [(2, str(theirs))]
        assert self._lists(gone) == {}

    def test_a_texts_posting_of_the_oldest_live_generation_is_erased(self, monkeypatch):
        """A posting written before the lists, in the oldest generation still live, is
        named by the text's digest only: the erasure looks it up there too."""
        layout = self.index.layout
        oldest = (layout.generation(time.time()) - GENERATIONS) * layout.generation_seconds
        gone, theirs = uuid.uuid4(), uuid.uuid4()
        monkeypatch.setattr(redis_index, "time", SimpleNamespace(time=lambda: oldest + 1))
        self.index.add([RARE], user_id=1, session_id=gone)
        self.index.add([RARE], user_id=2, session_id=theirs)
        self.index.client.delete(*self._lists(gone))  # as the code before wrote it: no list
        monkeypatch.undo()
        assert [p.user_id for p in self.index.lookup([RARE])[RARE]] == [1, 2]
        assert self.index.erase_session([RARE], session_id=gone) is False
        assert [(p.user_id, p.session_id) for p in self.index.lookup([RARE])[RARE]] == [
            (2, str(theirs))
        ]

    def test_an_erasure_is_refused_before_its_first_call_erases_and_never_after(self, monkeypatch):
        """However many calls the session's lists take, an erasure without the texts'
        digests, while postings from before the lists may live, is refused by its first
        call with nothing erased; and one that has begun goes to its end, refused by no
        later call whatever becomes of the mark (here: lost, as an eviction would)."""
        monkeypatch.setattr(redis_index, "ERASE_SESSION_CHUNK", 1)
        client, digests = self.index.client, [bytes([n]) * 8 for n in range(1, 6)]
        gone, theirs = uuid.uuid4(), uuid.uuid4()
        self.index.add(digests, user_id=1, session_id=gone)
        self.index.add(digests, user_id=2, session_id=theirs)
        lists, found = self._lists(gone), self.index.lookup(digests)
        client.set(LISTED_SINCE, int(time.time()))  # the first erasure, now: older ones live
        sent = self._erase_calls()
        assert self.index.erase_session(session_id=gone) is True
        assert len(sent) == 1
        assert self._lists(gone) == lists and self.index.lookup(digests) == found
        client.set(LISTED_SINCE, 0)
        sent = self._erase_calls(between=lambda: client.delete(LISTED_SINCE))
        assert self.index.erase_session(session_id=gone) is False
        assert len(sent) == 5
        for postings in self.index.lookup(digests).values():
            assert [(p.user_id, p.session_id) for p in postings] == [(2, str(theirs))]
        assert self._lists(gone) == {}

    def test_a_users_records_folded_by_another_users_registration_are_listed_for_them(self):
        """A fold folds every user with several sessions in the value, not only the one
        registering: each folded user's list names the digest, with the generation's
        expiry, and erasing that user takes its record only."""
        for _ in range(2):
            self.index.add([RARE], user_id=2, session_id=uuid.uuid4())
        self.index.add([RARE], user_id=1, session_id=uuid.uuid4())
        assert self._user_lists(1) == self._user_lists(2) == {}  # nothing folded yet
        self.index.add([RARE], user_id=1, session_id=uuid.uuid4())  # full: folds 1 and 2
        found = {(p.user_id, p.session_id) for p in self.index.lookup([RARE])[RARE]}
        assert found == {(1, None), (2, None)}
        [(key, listed)] = self._user_lists(2).items()
        assert listed == RARE and list(self._user_lists(1).values()) == [RARE]
        client = self.index.client
        hash_key = self.index.layout.key(RARE, self.index.layout.generation(time.time()))
        assert client.expiretime(key) == client.expiretime(hash_key) > time.time()
        self.index.erase_user(user_id=2)
        assert [(p.user_id, p.session_id) for p in self.index.lookup([RARE])[RARE]] == [(1, None)]
        assert self._user_lists(2) == {} and list(self._user_lists(1).values()) == [RARE]

    @pytest.mark.parametrize(("chunk", "calls"), [(redis_index.ERASE_USER_CHUNK, 1), (1, 2)])
    def test_a_users_records_of_several_sessions_of_every_live_generation_are_erased(
        self, chunk, calls, monkeypatch
    ):
        """Also a digest a call: the budget spans generations, so a call that has read all
        it may stops at the next generation's list, and the next call resumes there."""
        monkeypatch.setattr(redis_index, "ERASE_USER_CHUNK", chunk)
        index = RedisIndex(url=settings.REDIS_URL, layout=Layout(4, 12))
        index.add([RARE], user_id=2, session_id=(theirs := uuid.uuid4()))
        for _ in range(MAX_RECORDS):
            index.add([RARE], user_id=1, session_id=uuid.uuid4())
        generation = index.layout.generation(time.time())
        while index.layout.generation(time.time()) == generation:
            time.sleep(0.05)
        for _ in range(MAX_RECORDS + 1):  # alone in the value: folds once it is full
            index.add([SHARED], user_id=1, session_id=uuid.uuid4())
        index.add([RARE], user_id=1, session_id=(kept := uuid.uuid4()))  # of one session
        assert len(self._user_lists(1)) == 2
        self.index = index
        sent = self._erase_user_calls()
        index.erase_user(user_id=1)
        assert len(sent) == calls
        found = index.lookup([RARE, SHARED])
        assert {(p.user_id, p.session_id) for p in found[RARE]} == {
            (2, str(theirs)),
            (1, str(kept)),  # a session's own: erase_session's, not the user's
        }
        assert found[SHARED] == [] and self._user_lists(1) == {}

    def test_a_users_list_longer_than_a_call_reads_is_erased_in_several_calls(self, monkeypatch):
        """Redis serves no one else while a script runs: each call reads a bounded part of
        the user's list, and together they erase every record it names, no other user's."""
        monkeypatch.setattr(redis_index, "ERASE_USER_CHUNK", 3)
        digests = [bytes([n]) * 8 for n in range(1, 11)]
        self._fold(digests, user_id=1, others=(mine := uuid.uuid4(), theirs := uuid.uuid4()))
        assert len(self._user_lists(1)[f"fp:{self._now()}:u:00000001".encode()]) == 80
        calls = self._erase_user_calls()
        self.index.erase_user(user_id=1)
        assert len(calls) == 4  # 3 + 3 + 3 + 1 digests
        for postings in self.index.lookup(digests).values():
            assert {(p.user_id, p.session_id) for p in postings} == {
                (3, str(mine)),
                (2, str(theirs)),
            }
        assert self._user_lists(1) == {}

    def test_a_digest_folded_between_two_calls_of_a_users_erasure_is_erased(self, monkeypatch):
        """A registration may fold the user's records again while the erasure runs (the
        account is locked, not the index): what its list gains between two calls is read
        before the call that deletes the list."""
        monkeypatch.setattr(redis_index, "ERASE_USER_CHUNK", 3)
        digests = [bytes([n]) * 8 for n in range(1, 8)]
        late = b"\x42" * 8
        self._fold(digests, user_id=1, others=(uuid.uuid4(), uuid.uuid4()))
        calls = self._erase_user_calls(
            between=lambda: self._fold([late], user_id=1, others=(uuid.uuid4(), uuid.uuid4()))
        )
        self.index.erase_user(user_id=1)
        assert len(calls) == 3  # 3 + 3 + (1 + the late one)
        found = self.index.lookup([*digests, late])
        assert all(1 not in {p.user_id for p in postings} for postings in found.values())
        assert {p.user_id for p in found[late]} == {2, 3}
        assert self._user_lists(1) == {}

    def _fold(self, digests: list[bytes], *, user_id: int, others: tuple[uuid.UUID, ...]):
        """Give each of ``digests`` the user's record of several sessions, between one
        session of user 3 and one of user 2, so that the user's list names them."""
        self.index.add(digests, user_id=3, session_id=others[0])
        for _ in range(MAX_RECORDS):  # the third fills the value: the user's two fold
            self.index.add(digests, user_id=user_id, session_id=uuid.uuid4())
        self.index.add(digests, user_id=2, session_id=others[1])

    def _erase_user_calls(self, between=None) -> list:
        """Record each ERASE_USER call's reply; run ``between`` after the first that
        leaves work for another."""
        calls, script = [], self.index._erase_user

        def call(**kwargs):
            calls.append(reply := script(**kwargs))
            if reply is not None and len(calls) == 1 and between:
                between()
            return reply

        self.index._erase_user = call
        return calls

    def _erase_calls(self, between=None) -> list:
        """Record each ERASE call's texts' digests and reply; run ``between`` after the
        first."""
        calls, script = [], self.index._erase

        def call(**kwargs):
            calls.append((kwargs["args"][4], reply := script(**kwargs)))
            if len(calls) == 1 and between:
                between()
            return reply

        self.index._erase = call
        return calls

    def _now(self) -> int:
        return self.index.layout.generation(time.time())

    def _lists(self, session: uuid.UUID) -> dict[bytes, bytes]:
        client = self.index.client
        return {key: client.get(key) for key in client.scan_iter(f"fp:*:s:{session.hex}")}

    def _user_lists(self, user_id: int) -> dict[bytes, bytes]:
        client = self.index.client
        return {key: client.get(key) for key in client.scan_iter(f"fp:*:u:{user_id:08x}")}


@pytest.mark.django_db
class TestDbLookup(LookupContract):
    @pytest.fixture(autouse=True)
    def _index(self):
        self.index = DbIndex(ttl_seconds=3600)

    def test_a_feature_keeps_a_bounded_number_of_rows_whatever_one_user_repeats(self):
        for _ in range(50):
            self.index.add([RARE], user_id=1, session_id=uuid.uuid4())
        rows = FingerprintPosting.objects.filter(digest=int.from_bytes(RARE, "big", signed=True))
        assert rows.count() == MAX_RECORDS + 1
        assert [(p.user_id, p.session_id is None) for p in self.index.lookup([RARE])[RARE]] == [
            (1, False)
        ]

    def test_erasing_never_asks_for_the_texts_digests(self):
        self.index.add([RARE], user_id=1, session_id=(gone := uuid.uuid4()))
        assert self.index.erase_session(session_id=gone) is False
        assert self.index.lookup([RARE]) == {RARE: []}

    def _age(self, **lookup) -> None:
        """Put the matching postings past the index's retention."""
        past = timezone.now() - self.index.ttl - timedelta(seconds=1)
        FingerprintPosting.objects.filter(**lookup).update(created_at=past)

    def test_a_posting_past_its_retention_introduced_again_is_found_again(self):
        self.index.add([RARE], user_id=1, session_id=(session := uuid.uuid4()))
        self._age(session_id=session)
        assert self.index.lookup([RARE]) == {RARE: []}
        self.index.add([RARE], user_id=1, session_id=session)
        assert [(p.user_id, p.session_id) for p in self.index.lookup([RARE])[RARE]] == [
            (1, str(session))
        ]

    def test_the_purge_deletes_the_postings_past_their_retention_only(self):
        self.index.add([RARE, SHARED], user_id=1, session_id=(old := uuid.uuid4()))
        self.index.add([RARE], user_id=2, session_id=(live := uuid.uuid4()))
        self._age(session_id=old)
        assert self.index.purge_expired() == 2
        assert list(FingerprintPosting.objects.values_list("session_id", flat=True)) == [live]
