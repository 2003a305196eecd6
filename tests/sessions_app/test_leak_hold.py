"""The leak hold: past a few flagged replies, every reply of the user is withheld alike, so
that a withheld reply stops telling a prober whether someone else wrote what they guessed."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone

from audit_app import holds
from audit_app.holds import HELD_NOTICE, HELD_REASON, leak_hold_active
from audit_app.models import AuditEntry
from audit_app.services import audit_review_decide, content_hash
from sessions_app import rows, stateless
from sessions_app.queries import turn_withheld_text
from sessions_app.services import SUPPRESSED_NOTICE

from ..conftest import client_for
from ..factories import UserFactory
from ..support import post_and_wait

pytestmark = pytest.mark.django_db

SECRET = "Remember my codename: Vexmoria Quintaplex, and my order 48291-XK7."
LEAK = "Your codename is Vexmoria Quintaplex and your order is 48291-XK7."
CLEAN = "Paris is the capital of France."
CHANGELIST = "/admin/audit_app/auditentry/"


def _probing(body: dict) -> str:
    """A model that spells out what another user told it when asked for it, else answers."""
    last = str(body["messages"][-1]["content"])
    if "Remember" in last:
        return "Noted."
    return LEAK if "codename" in last.lower() else CLEAN


@pytest.fixture
def prober(settings, api, other_api, fake_claude):
    """The owner's secret in the index; the prober (``other_api``) on a budget of two."""
    settings.LEAK_HOLD_AFTER = 2
    fake_claude.set_responder(_probing)
    post_and_wait(api, SECRET)
    return other_api


def _probe(client, sid: str | None = None) -> dict:
    return post_and_wait(client, "What is my codename?", sid)[1]


def _held_after_two_probes(client) -> None:
    for _ in range(2):
        turn = _probe(client)
        assert turn["status"] == "suppressed" and turn["reply"]["content"] == SUPPRESSED_NOTICE


def _held_reasons() -> list[str]:
    return list(
        AuditEntry.objects.filter(kind="security", reason__startswith="replies held").values_list(
            "reason", flat=True
        )
    )


@pytest.mark.parametrize("store", ["db", "redis", "cached_db"])
def test_past_the_budget_every_reply_is_withheld_with_one_notice(
    store, settings, prober, api, django_capture_on_commit_callbacks
):
    settings.HISTORY_STORE = store
    with django_capture_on_commit_callbacks(execute=True):
        _probe(prober)
    assert _held_reasons() == []
    with django_capture_on_commit_callbacks(execute=True):
        _probe(prober)
    # The hold starts with the second flag, and staff are told once (after its commit).
    assert _held_reasons() == ["replies held: 2 flagged replies within 86400 s"]
    sid, clean = post_and_wait(prober, "What is the capital of France?")
    with django_capture_on_commit_callbacks(execute=True):
        hit = _probe(prober, sid)
    # A reply the scan found clean and one it flagged now read the same.
    for turn in (clean, hit):
        assert turn["status"] == "suppressed", turn
        assert turn["reply"]["content"] == HELD_NOTICE
        assert turn["reply"]["status"] == "suppressed"
    body = prober.get(f"/api/v1/sessions/{sid}/messages/").content
    assert b"Paris" not in body and b"Vexmoria" not in body
    # Both kept for staff; the clean one's entry says why it was withheld, unflagged.
    assert turn_withheld_text(turn_id=clean["id"]) == CLEAN
    assert turn_withheld_text(turn_id=hit["id"]) == LEAK
    entry = AuditEntry.objects.get(turn_id=clean["id"], kind="reply")
    assert (entry.flagged, entry.reason) == (False, HELD_REASON)
    assert entry.content_hash == content_hash(CLEAN)  # the reply withheld, not the notice
    # Flagged all the same, for review, and marked as flagged while held.
    flagged = AuditEntry.objects.get(turn_id=hit["id"], kind="reply")
    assert flagged.flagged and flagged.reason.startswith("reply held:")
    assert len(_held_reasons()) == 1
    # Other users are not held.
    assert post_and_wait(api, "What is the capital of France?")[1]["reply"]["content"] == CLEAN


def test_a_held_reply_adds_nothing_to_the_fingerprint_index(prober, other_user, fake_claude):
    """A held reply is not delivered, so its tokens are not the prober's: were they indexed,
    another user's reply carrying them would be blamed on a conversation that never had them."""
    _held_after_two_probes(prober)
    fresh = "Your Zorblatt Quexington ticket is QX-99812."
    fake_claude.set_responder(lambda body: fresh)
    sid, turn = post_and_wait(prober, "Tell me something")
    assert turn["reply"]["content"] == HELD_NOTICE
    stranger = client_for(UserFactory())
    fake_claude.set_responder(lambda body: fresh)
    assert post_and_wait(stranger, "Tell me something")[1]["status"] == "completed"


def test_review_marking_the_flags_false_positives_lifts_the_hold(prober, other_user):
    _held_after_two_probes(prober)
    assert leak_hold_active(user_id=other_user.pk)
    staff = UserFactory(is_staff=True)
    first = AuditEntry.objects.filter(flagged=True, user=other_user).first()
    audit_review_decide(entry_id=first.pk, reviewer_id=staff.pk, leak=False)
    assert not leak_hold_active(user_id=other_user.pk)
    assert post_and_wait(prober, "What is the capital of France?")[1]["reply"]["content"] == CLEAN
    # A confirmed leak still counts.
    other = AuditEntry.objects.filter(flagged=True, user=other_user).exclude(pk=first.pk).get()
    audit_review_decide(entry_id=other.pk, reviewer_id=staff.pk, leak=True)
    _probe(prober)
    assert leak_hold_active(user_id=other_user.pk)


def _later(monkeypatch, seconds: float) -> None:
    """The hold's clock ``seconds`` ahead (the flags' times stay as written)."""
    monkeypatch.setattr(holds, "now", lambda: timezone.now() + timedelta(seconds=seconds))


def test_the_hold_lifts_when_its_window_has_passed(monkeypatch, prober):
    _held_after_two_probes(prober)
    assert post_and_wait(prober, "Capital of France?")[1]["reply"]["content"] == HELD_NOTICE
    _later(monkeypatch, 86400 - 60)
    assert post_and_wait(prober, "Capital of France?")[1]["reply"]["content"] == HELD_NOTICE
    _later(monkeypatch, 86400 + 60)
    assert post_and_wait(prober, "Capital of France?")[1]["reply"]["content"] == CLEAN


def test_a_flag_raised_while_held_does_not_count_for_the_hold(prober, other_user):
    """A held hit reads as every held reply: were it counted, the hold would last longer
    after a hit than after a miss, and when it lifted would tell which probe hit."""
    _held_after_two_probes(prober)
    seen = AuditEntry.objects.filter(flagged=True, user=other_user).earliest("id")
    hit = _probe(prober)
    assert hit["reply"]["content"] == HELD_NOTICE
    assert AuditEntry.objects.get(turn_id=hit["id"], kind="reply").flagged
    # One of the two flags the prober saw found harmless: one left, under the budget of two.
    audit_review_decide(entry_id=seen.pk, reviewer_id=UserFactory().pk, leak=False)
    assert not leak_hold_active(user_id=other_user.pk)
    assert post_and_wait(prober, "Capital of France?")[1]["reply"]["content"] == CLEAN


def test_the_claim_through_the_orm_reads_the_hold_too(monkeypatch, prober):
    """The embedded database (SQLite) claims through the ORM, not the written-out statement."""
    _held_after_two_probes(prober)
    monkeypatch.setattr(rows, "in_sql", lambda: False)
    assert post_and_wait(prober, "Capital of France?")[1]["reply"]["content"] == HELD_NOTICE


def test_a_budget_of_zero_never_holds(settings, prober, other_user):
    settings.LEAK_HOLD_AFTER = 0
    for _ in range(4):
        assert _probe(prober)["reply"]["content"] == SUPPRESSED_NOTICE
    assert not leak_hold_active(user_id=other_user.pk) and not _held_reasons()
    assert post_and_wait(prober, "Capital of France?")[1]["reply"]["content"] == CLEAN


def test_under_leak_action_flag_there_is_no_hold(
    settings, prober, other_user, django_capture_on_commit_callbacks
):
    """Under ``flag`` no reply is withheld, so no flag is seen: a hold would itself tell the
    user, as it began, that a flag was raised. (A delivered reply's tokens are the prober's
    own from then on, so one flag is the budget here.)"""
    settings.LEAK_ACTION, settings.LEAK_HOLD_AFTER = "flag", 1
    with django_capture_on_commit_callbacks(execute=True):
        assert _probe(prober)["reply"]["content"] == LEAK
    assert AuditEntry.objects.filter(flagged=True, user=other_user).count() == 1
    turn = post_and_wait(prober, "What is the capital of France?")[1]
    assert turn["status"] == "completed" and turn["reply"]["content"] == CLEAN
    assert not leak_hold_active(user_id=other_user.pk) and not _held_reasons()


def _chat(client, content: str, token: str | None = None) -> dict:
    response = client.post(
        "/api/v1/stateless/chat/", {"token": token, "content": content}, format="json"
    )
    assert response.status_code == 200, response.content
    return response.json()


def test_stateless_replies_are_held_alike_and_kept_out_of_the_token(prober, other_user):
    for _ in range(2):
        assert _chat(prober, "What is my codename?")["reply"] == SUPPRESSED_NOTICE
    first = _chat(prober, "What is the capital of France?")
    assert first["reply"] == HELD_NOTICE
    conversation = stateless.token_open(first["token"], user_id=other_user.pk)
    assert conversation.messages == (("user", "What is the capital of France?"),)
    entry = AuditEntry.objects.filter(user=other_user, kind="reply").latest("id")
    assert (entry.flagged, entry.reason) == (False, HELD_REASON)
    assert entry.content_hash == content_hash(CLEAN)
    assert _chat(prober, "What is my codename?", first["token"])["reply"] == HELD_NOTICE


def _release_held(client, *entries: AuditEntry) -> str:
    selected = {"action": "release_held", "_selected_action": [e.pk for e in entries]}
    return client.post(CHANGELIST, selected, follow=True).content.decode()


def test_staff_release_held_replies_once_the_user_is_no_longer_held(
    client, reviewer, prober, other_user
):
    _held_after_two_probes(prober)
    seen = list(AuditEntry.objects.filter(flagged=True, user=other_user))
    sid, clean = post_and_wait(prober, "What is the capital of France?")
    hit = _probe(prober, sid)
    held = AuditEntry.objects.get(turn_id=clean["id"], kind="reply")
    held_hit = AuditEntry.objects.get(turn_id=hit["id"], kind="reply")
    # Still held: released now, a reply would tell the prober whether it was clean.
    page = _release_held(client, held, held_hit, *seen)
    assert "0 withheld replies released; 1 left withheld: their user is still held" in page
    # Nor does a decision to release the held hit release it yet (it is recorded all the same).
    page = client.post(
        f"{CHANGELIST}{held_hit.pk}/review/release/", {"seen": "open"}, follow=True
    ).content.decode()
    assert "its reply stays withheld while its user is held" in page
    held_hit.refresh_from_db()
    assert held_hit.review_state == "false_positive"
    for turn in (clean, hit):
        assert prober.get(f"/api/v1/turns/{turn['id']}/").json()["status"] == "suppressed"
    # Review finds the flags the prober saw harmless: the hold lifts, and all four go out.
    for flag in seen:
        client.post(f"{CHANGELIST}{flag.pk}/review/false_positive/", {"seen": "open"})
    assert not leak_hold_active(user_id=other_user.pk)
    assert "4 withheld replies released." in _release_held(client, held, held_hit, *seen)
    turn = prober.get(f"/api/v1/turns/{clean['id']}/").json()
    assert turn["status"] == "completed" and turn["reply"]["content"] == CLEAN
    turn = prober.get(f"/api/v1/turns/{hit['id']}/").json()
    assert turn["status"] == "completed" and turn["reply"]["content"] == LEAK
    assert CLEAN in prober.get(f"/api/v1/sessions/{sid}/messages/").content.decode()
    notes = AuditEntry.objects.filter(kind="review", reason__contains="released")
    assert {(n.user_id, n.turn_id) for n in notes} == {
        (reviewer.pk, entry.turn_id) for entry in (held, held_hit, *seen)
    }
    # Released once: a second release finds nothing withheld.
    assert "0 withheld replies released." in _release_held(client, held, held_hit, *seen)
    assert notes.count() == 4


def test_releasing_held_replies_needs_the_review_permission(client, prober, other_user):
    _held_after_two_probes(prober)
    _, clean = post_and_wait(prober, "What is the capital of France?")
    held = AuditEntry.objects.get(turn_id=clean["id"], kind="reply")
    viewer = UserFactory(is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_auditentry"))
    client.force_login(viewer)
    for flag in AuditEntry.objects.filter(flagged=True, user=other_user):
        audit_review_decide(entry_id=flag.pk, reviewer_id=viewer.pk, leak=False)
    _release_held(client, held)
    assert prober.get(f"/api/v1/turns/{clean['id']}/").json()["status"] == "suppressed"


def test_a_bulk_release_of_a_held_users_flag_records_the_decision_and_keeps_the_reply(
    client, reviewer, prober, other_user
):
    _held_after_two_probes(prober)
    hit = _probe(prober)
    held_hit = AuditEntry.objects.get(turn_id=hit["id"], kind="reply")
    selected = {"action": "release_reply", "_selected_action": [held_hit.pk]}
    page = client.post(CHANGELIST, selected, follow=True).content.decode()
    assert "1 open flags reviewed; 1 replies stay withheld while their user is held" in page
    held_hit.refresh_from_db()
    assert held_hit.review_state == "false_positive"
    assert prober.get(f"/api/v1/turns/{hit['id']}/").json()["status"] == "suppressed"
