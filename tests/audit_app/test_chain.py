"""The audit log is append-only and its hash chain finds a changed, inserted or missing row."""

import threading
import uuid
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from audit_app import chain
from audit_app.fingerprint import ScanResult
from audit_app.models import AppendOnlyError, AuditEntry
from audit_app.selectors import audit_chain_verify
from audit_app.services import (
    audit_chain_seal,
    audit_flagged_reply,
    audit_message,
    audit_review_decide,
    audit_security_event,
    audit_withheld_text_read,
)

TABLE = AuditEntry._meta.db_table


def _raw(sql: str, params: list) -> None:
    """Run ``sql`` with ``{table}`` standing for the audit table, past the ORM's guards."""
    with connection.cursor() as cursor:
        cursor.execute(sql.format(table=TABLE), params)


def _tamper(sql: str, params: list) -> None:
    """Run ``sql`` as a superuser who switched the append-only triggers off, which is what
    the hash chain is there to catch."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL session_replication_role = replica")
        _raw(sql, params)


def _write(user, n: int) -> list[AuditEntry]:
    session = uuid.uuid4()
    return [
        audit_message(user_id=user.pk, session_id=session, role="user", content=f"message {i}")
        for i in range(n)
    ]


def _verify_cli() -> tuple[int, str]:
    try:
        call_command("verify_audit_chain")
    except SystemExit as exc:
        return int(exc.code), ""
    return 0, ""


def _flag(user) -> AuditEntry:
    """A reply of ``user``'s withheld and flagged, open for review."""
    return audit_flagged_reply(
        user_id=user.pk,
        session_id=uuid.uuid4(),
        turn_id=uuid.uuid4(),
        content="Your order ORD-583920 is on its way.",
        result=ScanResult(leaked=True, score=1.0),
        delivered=False,
    )


def _verify_errors(capsys) -> tuple[int, str]:
    """The command's exit status and what it wrote to stderr."""
    capsys.readouterr()
    try:
        call_command("verify_audit_chain")
    except SystemExit as exc:
        return int(exc.code), capsys.readouterr().err
    return 0, capsys.readouterr().err


@pytest.mark.django_db
class TestAppendOnly:
    def test_the_orm_refuses_to_change_or_delete_an_entry(self, user):
        entry = _write(user, 1)[0]
        entry.reason = "rewritten"
        with pytest.raises(AppendOnlyError):
            entry.save()
        with pytest.raises(AppendOnlyError):
            entry.delete()
        with pytest.raises(AppendOnlyError):
            AuditEntry.objects.filter(pk=entry.pk).update(reason="rewritten")
        with pytest.raises(AppendOnlyError):
            AuditEntry.objects.all().delete()

    def test_review_fields_may_change(self, user):
        entry = _write(user, 1)[0]
        entry.review_state = AuditEntry.ReviewState.CONFIRMED
        entry.save(update_fields=["review_state"])
        assert AuditEntry.objects.get(pk=entry.pk).review_state == "confirmed"

    def test_the_database_refuses_update_and_delete_past_the_orm(self, user):
        entry = _write(user, 1)[0]
        for sql in (
            "UPDATE {table} SET reason = 'x' WHERE id = %s",
            "DELETE FROM {table} WHERE id = %s",
        ):
            with pytest.raises(DatabaseError, match="pgtrigger"), transaction.atomic():
                _raw(sql, [entry.pk])

    def test_a_sealed_entry_cannot_be_unsealed_or_recounted(self, user):
        entry = _write(user, 1)[0]
        audit_chain_seal()
        for sql in (
            "UPDATE {table} SET chain_seq = NULL WHERE id = %s",
            "UPDATE {table} SET count = 5 WHERE id = %s",
            "UPDATE {table} SET entry_hash = 'x' WHERE id = %s",
        ):
            with pytest.raises(DatabaseError, match="pgtrigger"), transaction.atomic():
                _raw(sql, [entry.pk])


@pytest.mark.django_db
class TestChain:
    def test_sealing_links_every_entry_in_order(self, user):
        entries = _write(user, 5)
        assert audit_chain_verify().unsealed == 5
        assert audit_chain_seal() == 5
        sealed = AuditEntry.objects.order_by("chain_seq")
        assert [e.pk for e in sealed] == [e.pk for e in entries]
        assert [e.chain_seq for e in sealed] == [1, 2, 3, 4, 5]
        report = audit_chain_verify()
        assert report.verdict.ok and report.verdict.sealed == 5 and report.unsealed == 0
        assert audit_chain_seal() == 0

    def test_the_command_reports_sealed_and_waiting_entries(self, user, capsys):
        _write(user, 3)
        audit_chain_seal()
        _write(user, 2)
        call_command("verify_audit_chain")
        out = capsys.readouterr().out
        assert out.startswith("ok, 3 entries sealed, 2 awaiting sealing, oldest unsealed age")

    def test_the_command_says_when_nothing_awaits_sealing(self, user, capsys):
        """No age of an oldest unsealed entry when there is none."""
        call_command("verify_audit_chain")
        assert capsys.readouterr().out == "ok, 0 entries sealed, nothing unsealed\n"
        _write(user, 1)
        call_command("verify_audit_chain", seal=True)
        assert capsys.readouterr().out == "ok, 1 entry sealed, nothing unsealed\n"

    def test_a_changed_row_is_found(self, user, capsys):
        entries = _write(user, 4)
        audit_chain_seal()
        _tamper("UPDATE {table} SET token_count = 99 WHERE id = %s", [entries[2].pk])
        with pytest.raises(SystemExit) as exc:
            call_command("verify_audit_chain")
        assert exc.value.code == 1
        err = capsys.readouterr().err
        assert f"chain_seq 3 (entry id {entries[2].pk})" in err and "altered" in err

    def test_a_forged_row_is_found(self, user):
        _write(user, 3)
        audit_chain_seal()
        last = AuditEntry.objects.get(chain_seq=3)
        forged = {
            "id": last.pk + 1000,
            "chain_seq": 4,
            "kind": "message",
            "user_id": user.pk,
            "token_count": 1,
            "count": 1,
            "flagged": False,
            "reason": "",
            "evidence": {},
        }
        fake_hash = chain.entry_hash(key=b"guessed", prev_hash=last.entry_hash, fields=forged)
        _raw(
            "INSERT INTO {table} (id, created_at, kind, user_id, role,"
            " content_hash, token_count, count, flagged, reason, evidence, review_state,"
            " chain_seq, prev_hash, entry_hash, sealed_at) VALUES (%s, now(), 'message', %s,"
            " 'user', '', 1, 1, false, '', %s, 'none', 4, %s, %s, now())",
            [forged["id"], user.pk, "{}", last.entry_hash, fake_hash],
        )
        verdict = audit_chain_verify().verdict
        assert not verdict.ok and verdict.broken.chain_seq == 4
        assert verdict.broken.entry_id == forged["id"]

    @pytest.mark.parametrize("position", [2, 5])
    def test_a_deleted_row_is_found(self, user, position):
        _write(user, 5)
        audit_chain_seal()
        victim = AuditEntry.objects.get(chain_seq=position)
        _tamper("DELETE FROM {table} WHERE id = %s", [victim.pk])
        verdict = audit_chain_verify().verdict
        assert not verdict.ok and verdict.broken.chain_seq == position
        assert "missing" in verdict.broken.problem
        assert _verify_cli()[0] == 1

    def test_review_decisions_do_not_break_the_chain(self, user, other_user):
        """Decisions taken before and after a seal, one taken twice, one entry undecided;
        the newest decision's review entry not sealed yet."""
        decided, redecided, undecided = _flag(user), _flag(user), _flag(user)
        audit_review_decide(entry_id=decided.pk, reviewer_id=other_user.pk, leak=True)
        audit_review_decide(entry_id=redecided.pk, reviewer_id=user.pk, leak=True)
        audit_withheld_text_read(entry_id=redecided.pk, reader_id=user.pk)  # no decision
        audit_chain_seal()
        audit_review_decide(
            entry_id=redecided.pk, reviewer_id=other_user.pk, leak=False, seen="confirmed"
        )
        report = audit_chain_verify()
        assert report.ok and report.unsealed == 1, report.review
        assert _verify_cli()[0] == 0
        audit_chain_seal()
        assert audit_chain_verify().ok
        undecided.refresh_from_db()
        assert undecided.review_state == "open"


@pytest.mark.django_db
class TestReviewDecisions:
    """Review columns are outside the hash; each decision's chained review entry is not."""

    def test_a_decision_changed_after_sealing_is_found(self, user, other_user, capsys):
        entry = _flag(user)
        _write(user, 2)
        audit_review_decide(entry_id=entry.pk, reviewer_id=other_user.pk, leak=True)
        audit_chain_seal()
        assert _verify_errors(capsys) == (0, "")
        # A confirmed leak passed off as a false positive, by someone with database access.
        AuditEntry.objects.filter(pk=entry.pk).update(review_state="false_positive")
        code, err = _verify_errors(capsys)
        assert code == 1
        assert f"entry id {entry.pk} (chain_seq 1)" in err
        assert "review_state 'false_positive' disagrees" in err and "'confirmed'" in err

    def test_a_reviewer_changed_after_sealing_is_found(self, user, other_user, capsys):
        entry = _flag(user)
        audit_review_decide(entry_id=entry.pk, reviewer_id=other_user.pk, leak=False)
        audit_chain_seal()
        AuditEntry.objects.filter(pk=entry.pk).update(reviewed_by=user)
        code, err = _verify_errors(capsys)
        assert code == 1
        assert f"entry id {entry.pk}" in err
        assert f"reviewed_by {user.pk} disagrees" in err and f"reviewer {other_user.pk}" in err

    def test_a_decision_no_review_entry_records_is_found(self, user, other_user, capsys):
        """An open flag closed with nothing in the chain to say who decided it, or a
        decision taken back to open."""
        closed, reopened = _flag(user), _flag(user)
        audit_review_decide(entry_id=reopened.pk, reviewer_id=other_user.pk, leak=True)
        audit_chain_seal()
        AuditEntry.objects.filter(pk=closed.pk).update(
            review_state="false_positive", reviewed_by=other_user
        )
        code, err = _verify_errors(capsys)
        assert code == 1 and f"entry id {closed.pk}" in err and "no review entry" in err
        AuditEntry.objects.filter(pk=closed.pk).update(review_state="open", reviewed_by=None)
        AuditEntry.objects.filter(pk=reopened.pk).update(review_state="open", reviewed_by=None)
        code, err = _verify_errors(capsys)
        assert code == 1 and f"entry id {reopened.pk}" in err and "last review entry" in err

    def test_the_last_decision_is_the_one_compared(self, user, other_user, capsys):
        entry = _flag(user)
        audit_review_decide(entry_id=entry.pk, reviewer_id=other_user.pk, leak=True)
        audit_review_decide(entry_id=entry.pk, reviewer_id=user.pk, leak=False, seen="confirmed")
        audit_chain_seal()
        AuditEntry.objects.filter(pk=entry.pk).update(
            review_state="confirmed", reviewed_by=other_user
        )
        code, err = _verify_errors(capsys)
        assert code == 1 and f"entry id {entry.pk}" in err and "'false_positive'" in err

    def test_an_entry_not_sealed_yet_is_checked_too(self, user, other_user, capsys):
        entry = _flag(user)
        audit_review_decide(entry_id=entry.pk, reviewer_id=other_user.pk, leak=True)
        AuditEntry.objects.filter(pk=entry.pk).update(review_state="false_positive")
        code, err = _verify_errors(capsys)
        assert code == 1 and f"entry id {entry.pk} (unsealed)" in err

    def test_a_review_entry_written_without_the_key_is_found(self, user, other_user, capsys):
        """Inserting is allowed to anyone who can write to the database: a forged review
        entry, in the entry's session as a decision's is and agreeing with forged columns,
        must not pass, before or after the sealer chains it."""
        entry = _flag(user)
        audit_review_decide(entry_id=entry.pk, reviewer_id=other_user.pk, leak=True)
        audit_chain_seal()
        AuditEntry.objects.create(
            kind="review",
            user_id=other_user.pk,
            session_id=entry.session_id,
            reason=f"entry {entry.pk} marked false_positive",
        )
        AuditEntry.objects.filter(pk=entry.pk).update(review_state="false_positive")
        for _ in range(2):
            code, err = _verify_errors(capsys)
            assert code == 1 and f"entry id {entry.pk}" in err
            assert "does not vouch for this decision (decision 2 of the entry)" in err
            audit_chain_seal()

    def test_an_earlier_decision_replayed_is_found(self, user, other_user, capsys):
        """A copy of the entry's first decision (a false positive, its MAC and all), then
        overturned: setting the entry back to it is still found."""
        entry = _flag(user)
        audit_review_decide(entry_id=entry.pk, reviewer_id=other_user.pk, leak=False)
        first = AuditEntry.objects.filter(kind="review").latest("id")
        entry.refresh_from_db()
        was = entry.reviewed_at
        audit_review_decide(
            entry_id=entry.pk, reviewer_id=user.pk, leak=True, seen="false_positive"
        )
        audit_chain_seal()
        assert _verify_errors(capsys) == (0, "")
        AuditEntry.objects.create(
            kind="review",
            user_id=first.user_id,
            session_id=first.session_id,
            reason=first.reason,
            content_hash=first.content_hash,
        )
        AuditEntry.objects.filter(pk=entry.pk).update(
            review_state="false_positive", reviewed_by=other_user, reviewed_at=was
        )
        code, err = _verify_errors(capsys)
        assert code == 1 and "does not vouch" in err and "(decision 3 of the entry)" in err

    def test_a_review_entry_from_another_session_is_found_not_the_genuine_one(
        self, user, other_user, capsys
    ):
        """A forged review entry the writer does not count (another session's) must not
        be counted by the verifier either, or the genuine decision after it looks forged."""
        entry = _flag(user)
        forged = AuditEntry.objects.create(
            kind="review",
            user_id=other_user.pk,
            session_id=uuid.uuid4(),
            reason=f"entry {entry.pk} marked false_positive",
        )
        audit_review_decide(entry_id=entry.pk, reviewer_id=other_user.pk, leak=True)
        genuine = AuditEntry.objects.filter(kind="review").latest("id")
        for where in ("unsealed", "chain_seq 2"):
            code, err = _verify_errors(capsys)
            assert code == 1 and f"BROKEN review at entry id {forged.pk} ({where})" in err
            assert f"deciding entry {entry.pk} is in session {forged.session_id}" in err
            assert f"(id {genuine.pk})" not in err and "does not vouch" not in err
            audit_chain_seal()

    def test_a_review_entry_the_writer_would_not_count_is_found_not_the_genuine_one(
        self, user, other_user, capsys
    ):
        """The writer counts a decision's review entries by their exact reason: one that
        names the entry in another spelling, in its own session, is counted by neither."""
        entry = _flag(user)
        forged = AuditEntry.objects.create(
            kind="review",
            user_id=other_user.pk,
            session_id=entry.session_id,
            reason=f"entry 0{entry.pk} marked false_positive",
        )
        audit_review_decide(entry_id=entry.pk, reviewer_id=other_user.pk, leak=True)
        genuine = AuditEntry.objects.filter(kind="review").latest("id")
        code, err = _verify_errors(capsys)
        assert code == 1 and f"BROKEN review at entry id {forged.pk} (unsealed)" in err
        assert f"not the reason a decision on entry {entry.pk} writes" in err
        assert f"(id {genuine.pk})" not in err and "does not vouch" not in err

    @pytest.mark.parametrize("target", ["unflagged", "unknown", "later"])
    def test_a_review_entry_deciding_no_earlier_flagged_entry_is_found(
        self, user, other_user, capsys, target
    ):
        """A decision is written only for a flagged entry, after it: a review entry
        naming anything else was inserted without one, even in the named entry's session."""
        message = _write(user, 1)[0]
        decided = _flag(user)
        audit_review_decide(entry_id=decided.pk, reviewer_id=other_user.pk, leak=True)
        next_id = AuditEntry.objects.latest("id").pk + 1
        named = {"unflagged": message.pk, "unknown": next_id + 1000, "later": next_id + 1}
        forged = AuditEntry.objects.create(
            kind="review",
            user_id=other_user.pk,
            session_id=message.session_id,
            reason=f"entry {named[target]} marked confirmed",
        )
        if target == "later":  # flagged, but written after the review entry deciding it
            assert _flag(user).pk == named[target]
        audit_chain_seal()
        forged.refresh_from_db()
        code, err = _verify_errors(capsys)
        assert code == 1 and f"entry id {forged.pk} (chain_seq {forged.chain_seq})" in err
        assert f"deciding entry {named[target]}, which is not a flagged entry" in err

    def test_problems_are_reported_in_id_order(self, user, other_user, capsys):
        """A forged review entry is not counted, so an earlier entry's changed columns are
        a problem of their own, and the first."""
        entry = _flag(user)
        audit_review_decide(entry_id=entry.pk, reviewer_id=other_user.pk, leak=True)
        AuditEntry.objects.create(
            kind="review", user_id=user.pk, reason=f"entry {entry.pk} marked false_positive"
        )
        AuditEntry.objects.filter(pk=entry.pk).update(review_state="false_positive")
        code, err = _verify_errors(capsys)
        assert code == 1 and f"BROKEN review at entry id {entry.pk} (unsealed)" in err
        assert "review_state 'false_positive' disagrees" in err and "'confirmed'" in err

    def test_a_review_time_on_an_undecided_entry_is_found(self, user, capsys):
        entry = _flag(user)
        audit_chain_seal()
        AuditEntry.objects.filter(pk=entry.pk).update(reviewed_at=timezone.now())
        code, err = _verify_errors(capsys)
        assert code == 1 and f"entry id {entry.pk}" in err and "undecided" in err

    def test_reviewed_at_moved_is_found(self, user, other_user, capsys):
        entry = _flag(user)
        audit_review_decide(entry_id=entry.pk, reviewer_id=other_user.pk, leak=True)
        audit_chain_seal()
        entry.refresh_from_db()
        moved = entry.reviewed_at - timedelta(days=300)
        AuditEntry.objects.filter(pk=entry.pk).update(reviewed_at=moved)
        code, err = _verify_errors(capsys)
        assert code == 1 and f"entry id {entry.pk}" in err and "reviewed_at changed" in err


@pytest.mark.django_db
class TestSecurityEvents:
    def test_a_flood_of_one_foreign_id_attempt_is_one_counted_entry(self, user):
        target, turn = uuid.uuid4(), uuid.uuid4()
        for _ in range(50):
            audit_security_event(user_id=user.pk, session_id=target, reason="access to session")
        for _ in range(3):
            audit_security_event(user_id=user.pk, session_id=None, turn_id=turn, reason="turn")
        audit_security_event(user_id=user.pk, session_id=None, reason="refused to send a payload")
        entries = AuditEntry.objects.filter(kind="security").order_by("id")
        assert [(e.reason, e.session_id, e.turn_id, e.count) for e in entries] == [
            ("access to session", target, None, 50),
            ("turn", None, turn, 3),
            ("refused to send a payload", None, None, 1),
        ]

    def test_each_foreign_session_and_turn_reached_keeps_an_entry_naming_it(self, user):
        sessions, turns = [uuid.uuid4() for _ in range(3)], [uuid.uuid4() for _ in range(2)]
        for session_id in sessions + sessions:
            audit_security_event(user_id=user.pk, session_id=session_id, reason="access")
        for turn_id in turns:
            audit_security_event(user_id=user.pk, session_id=None, turn_id=turn_id, reason="t")
        entries = AuditEntry.objects.filter(kind="security")
        assert sorted((e.session_id, e.count) for e in entries if e.reason == "access") == sorted(
            (session_id, 2) for session_id in sessions
        )
        assert {e.turn_id for e in entries if e.reason == "t"} == set(turns)

    def test_a_sealed_entry_is_not_recounted_a_new_one_starts(self, user):
        audit_security_event(user_id=user.pk, session_id=None, reason="access to turn")
        audit_chain_seal()
        audit_security_event(user_id=user.pk, session_id=None, reason="access to turn")
        assert list(AuditEntry.objects.order_by("id").values_list("count", flat=True)) == [1, 1]
        audit_chain_seal()
        assert audit_chain_verify().verdict.ok

    def test_auditing_never_breaks_the_caller(self, user, caplog):
        # An id that cannot be stored: the write fails, the caller goes on.
        audit_security_event(user_id=2**80, session_id=None, reason="access to session")
        assert "could not audit" in caplog.text
        with transaction.atomic():  # and the caller's transaction is still usable
            assert AuditEntry.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_concurrent_appends_and_sealing_keep_one_valid_chain(user):
    writers, per_writer, errors = 6, 25, []

    def write(n: int) -> None:
        try:
            session = uuid.uuid4()
            for i in range(per_writer):
                audit_message(user_id=user.pk, session_id=session, role="user", content=f"{n}{i}")
                if i % 5 == 0:
                    audit_security_event(user_id=user.pk, session_id=session, reason="access")
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connection.close()

    def seal() -> None:
        try:
            for _ in range(20):
                audit_chain_seal(batch_size=7)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    threads += [threading.Thread(target=seal) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    audit_chain_seal()
    report = audit_chain_verify()
    assert report.verdict.ok, report.verdict.broken
    assert report.unsealed == 0
    assert report.verdict.sealed == AuditEntry.objects.count()
    assert sum(AuditEntry.objects.filter(kind="security").values_list("count", flat=True)) == 30
