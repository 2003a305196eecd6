"""The review console, driven through the admin pages."""

import uuid

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from audit_app.fingerprint import Evidence, Posting, ScanResult
from audit_app.holds import HELD_REASON
from audit_app.models import AuditEntry
from audit_app.services import audit_flagged_reply, audit_message
from tests.support import csp_refusals

pytestmark = pytest.mark.django_db
REPLY = "Your order ORD-583920 is on its way to Bartholomew Quince."
CHANGELIST = "/admin/audit_app/auditentry/"
OPEN = {"seen": "open"}  # what a decision's form posts, from a page showing an open flag


def _flag(user, other_user, *, several: bool = False) -> AuditEntry:
    """``user``'s reply withheld, its order number introduced by ``other_user`` in a
    session (or, ``several``, in several of theirs)."""
    start = REPLY.index("ORD")
    introducer = Posting(other_user.pk, None if several else str(uuid.uuid4()))
    evidence = Evidence(start, start + 10, 1.0, (introducer,))
    return audit_flagged_reply(
        user_id=user.pk,
        session_id=uuid.uuid4(),
        turn_id=uuid.uuid4(),
        content=REPLY,
        result=ScanResult(leaked=True, score=1.0, evidence=[evidence]),
        delivered=False,
    )


@pytest.fixture
def flagged(user, other_user) -> AuditEntry:
    return _flag(user, other_user)


def test_flagged_entries_come_first_and_the_index_counts_open_flags(client, reviewer, flagged):
    AuditEntry.objects.create(kind="message", user=reviewer)  # newer, unflagged
    page = client.get(CHANGELIST)
    assert page.status_code == 200
    assert list(page.context["cl"].result_list)[0] == flagged
    assert "1 open flag" in page.content.decode()
    assert "(1 open flag)" in client.get("/admin/").content.decode()
    assert client.get(CHANGELIST + f"?q={flagged.session_id}").context["cl"].result_count == 1
    assert client.get(CHANGELIST + "?flagged__exact=0").context["cl"].result_count == 1


def test_an_entry_shows_its_evidence_with_links_and_no_text(client, reviewer, flagged, other_user):
    answer = client.get(f"{CHANGELIST}{flagged.pk}/change/")
    assert csp_refusals(answer) == []  # the review's buttons under the site's policy
    page = answer.content.decode()
    item = flagged.evidence["items"][0]
    assert f"{item['start']}-{item['end']}" in page
    assert f"?user={other_user.pk}&amp;session_id={item['introduced_by'][0]['session_id']}" in page
    assert "ORD-583920" not in page and "Quince" not in page
    assert "Confirm leak" in page and "Read withheld text" not in page


def test_evidence_from_several_sessions_of_a_user_links_to_the_user(
    client, reviewer, user, other_user
):
    entry = _flag(user, other_user, several=True)
    page = client.get(f"{CHANGELIST}{entry.pk}/change/").content.decode()
    assert (
        f'href="{CHANGELIST}?user={other_user.pk}">user {other_user.pk} / several sessions' in page
    )
    assert "session_id=None" not in page


def test_review_decisions_record_reviewer_and_time(client, reviewer, flagged):
    response = client.post(f"{CHANGELIST}{flagged.pk}/review/leak/", OPEN)
    assert response.status_code == 302
    flagged.refresh_from_db()
    assert flagged.review_state == "confirmed" and flagged.reviewed_by_id == reviewer.pk
    assert flagged.reviewed_at is not None
    review = AuditEntry.objects.get(kind="review")
    assert review.user_id == reviewer.pk and str(flagged.pk) in review.reason
    # A bulk action leaves a decided entry as it is; its own page can change it.
    client.post(CHANGELIST, {"action": "mark_false_positive", "_selected_action": [flagged.pk]})
    flagged.refresh_from_db()
    assert flagged.review_state == "confirmed"
    client.post(f"{CHANGELIST}{flagged.pk}/review/false_positive/", {"seen": "confirmed"})
    flagged.refresh_from_db()
    assert flagged.review_state == "false_positive"
    assert AuditEntry.objects.filter(kind="review").count() == 2


def test_a_page_opened_before_anothers_decision_does_not_overturn_it(client, reviewer, flagged):
    """Confirmed a leak by one reviewer, the entry was set back to a false positive by a
    "release" from a page another opened before, and the withheld reply delivered."""
    page = client.get(f"{CHANGELIST}{flagged.pk}/change/").content.decode()
    assert page.count('name="seen" value="open"') == 3  # each decision's form
    assert client.post(f"{CHANGELIST}{flagged.pk}/review/leak/", OPEN).status_code == 302
    stale = client.post(f"{CHANGELIST}{flagged.pk}/review/release/", OPEN, follow=True)
    assert f"Entry {flagged.pk} was decided meanwhile: nothing changed." in stale.content.decode()
    flagged.refresh_from_db()
    assert flagged.review_state == "confirmed"
    assert AuditEntry.objects.filter(kind="review").count() == 1
    # Without the state the page showed (not posted from it), nothing changes either.
    client.post(f"{CHANGELIST}{flagged.pk}/review/false_positive/")
    flagged.refresh_from_db()
    assert flagged.review_state == "confirmed"


def test_open_flags_come_before_decided_ones_whatever_their_age(
    client, reviewer, flagged, user, other_user
):
    decided = [_flag(user, other_user) for _ in range(4)]  # all newer than the open one
    for entry, decision in zip(decided, ["leak", "false_positive"] * 2, strict=True):
        client.post(f"{CHANGELIST}{entry.pk}/review/{decision}/", OPEN)
    AuditEntry.objects.create(kind="message", user=reviewer)  # newest of all, unflagged
    listed = list(client.get(CHANGELIST).context["cl"].result_list)
    assert listed[0] == flagged
    assert set(listed[1:5]) == set(decided)


def test_a_bulk_decision_takes_only_open_flags(client, reviewer, flagged, user, other_user):
    decided = _flag(user, other_user)
    client.post(f"{CHANGELIST}{decided.pk}/review/leak/", OPEN)
    page = client.post(
        CHANGELIST,
        {"action": "mark_false_positive", "_selected_action": [flagged.pk, decided.pk]},
        follow=True,
    ).content.decode()
    assert "1 open flags reviewed; 1 already decided, left as they were." in page
    flagged.refresh_from_db()
    decided.refresh_from_db()
    assert (flagged.review_state, decided.review_state) == ("false_positive", "confirmed")


def test_a_decision_is_confirmed_on_the_next_page_from_the_session(client, reviewer, flagged):
    response = client.post(f"{CHANGELIST}{flagged.pk}/review/leak/", OPEN)
    assert response.status_code == 302
    assert "messages" not in response.cookies  # kept server-side, in the admin's session
    notice = f"Entry {flagged.pk} reviewed."
    assert notice in client.get(response.url).content.decode()
    assert notice not in client.get(CHANGELIST).content.decode()  # shown once


def test_nothing_can_be_added_changed_or_deleted(client, reviewer, flagged):
    assert client.get(CHANGELIST + "add/").status_code == 403
    assert client.get(f"{CHANGELIST}{flagged.pk}/delete/").status_code == 403
    client.post(f"{CHANGELIST}{flagged.pk}/change/", {"reason": "nothing happened"})
    flagged.refresh_from_db()
    assert flagged.reason.startswith("reply suppressed")


def test_withheld_text_needs_its_permission_and_each_read_is_audited(
    client, reviewer, flagged, settings
):
    url = f"{CHANGELIST}{flagged.pk}/withheld/"
    assert client.get(url).status_code == 403
    assert client.post(url).status_code == 403
    reviewer.user_permissions.add(Permission.objects.get(codename="view_withheld_text"))
    settings.AUDIT_WITHHELD_TEXT_READER = "tests.audit_app.test_admin.fake_withheld_reader"
    answer = client.post(url)
    page = answer.content.decode()
    assert "<mark>ORD-583920</mark>" in page
    assert csp_refusals(answer) == []  # wrapped by a stylesheet, not a style attribute
    assert AuditEntry.objects.filter(kind="review", reason__contains="withheld").count() == 1
    client.post(url)
    assert AuditEntry.objects.filter(kind="review", reason__contains="withheld").count() == 2


def test_the_withheld_link_asks_first_and_a_get_records_nothing(
    client, reviewer, flagged, settings
):
    """A GET is safe (a prefetch, a crawler, a link sent on): it says the read will be
    recorded and offers it as a form; only its POST, CSRF-checked, reads and records."""
    reviewer.user_permissions.add(Permission.objects.get(codename="view_withheld_text"))
    settings.AUDIT_WITHHELD_TEXT_READER = "tests.audit_app.test_admin.fake_withheld_reader"
    url = f"{CHANGELIST}{flagged.pk}/withheld/"
    assert f'href="{url}"' in client.get(f"{CHANGELIST}{flagged.pk}/change/").content.decode()
    answer = client.get(url)
    page = answer.content.decode()
    assert answer.status_code == 200 and csp_refusals(answer) == []
    assert "recorded in the audit log" in page
    assert f'<form method="post" action="{url}">' in page and "csrfmiddlewaretoken" in page
    assert "ORD-583920" not in page and "Quince" not in page
    assert not AuditEntry.objects.filter(kind="review").exists()
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(reviewer)
    assert strict.post(url).status_code == 403  # no CSRF token: nothing read, nothing recorded
    assert not AuditEntry.objects.filter(kind="review").exists()
    assert client.put(url).status_code == 405


def test_without_a_reader_nothing_is_shown_and_nothing_audited(client, reviewer, flagged):
    reviewer.user_permissions.add(Permission.objects.get(codename="view_withheld_text"))
    page = client.post(f"{CHANGELIST}{flagged.pk}/withheld/").content.decode()
    assert "No withheld text" in page
    assert not AuditEntry.objects.filter(kind="review").exists()


def test_a_reply_withheld_by_the_leak_hold_alone_is_readable_as_a_flagged_one(
    client, reviewer, user, settings
):
    """No flag, nothing to decide: its text is withheld all the same, and staff with the
    permission read it the same way (a GET that asks, a POST that reads and records)."""
    held, plain = (
        audit_message(
            user_id=user.pk,
            session_id=uuid.uuid4(),
            turn_id=uuid.uuid4(),
            role="assistant",
            content=REPLY,
            kind="reply",
            reason=reason,
        )
        for reason in (HELD_REASON, "")
    )
    settings.AUDIT_WITHHELD_TEXT_READER = "tests.audit_app.test_admin.fake_withheld_reader"
    url = f"{CHANGELIST}{held.pk}/withheld/"
    assert client.post(url).status_code == 403  # the permission first, as for a flag
    reviewer.user_permissions.add(Permission.objects.get(codename="view_withheld_text"))
    page = client.get(f"{CHANGELIST}{held.pk}/change/").content.decode()
    assert f'href="{url}"' in page and "Confirm leak" not in page
    assert "ORD-583920" in client.post(url).content.decode()
    assert AuditEntry.objects.filter(
        kind="review", reason=f"withheld text of entry {held.pk} read"
    ).exists()
    # An entry of a delivered reply has nothing withheld behind it.
    assert "/withheld/" not in client.get(f"{CHANGELIST}{plain.pk}/change/").content.decode()
    assert client.post(f"{CHANGELIST}{plain.pk}/withheld/").status_code == 404


def fake_withheld_reader(*, turn_id: uuid.UUID) -> str:
    return REPLY


def test_a_decision_taken_meanwhile_is_not_overturned_by_a_bulk_action(client, reviewer, flagged):
    """The bulk action read the flag as open; another reviewer decided it before the action
    took its lock: the action leaves it."""
    from audit_app import services

    assert services.audit_review_decide(entry_id=flagged.pk, reviewer_id=reviewer.pk, leak=True)
    again = services.audit_review_decide(
        entry_id=flagged.pk, reviewer_id=reviewer.pk, leak=False, open_only=True
    )
    assert again is None
    flagged.refresh_from_db()
    assert flagged.review_state == "confirmed"
    assert AuditEntry.objects.filter(kind="review").count() == 1
