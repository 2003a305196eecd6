"""The leak hold: past a few flagged replies, every reply of the user is withheld alike, so
that a withheld reply stops telling a prober whether someone else wrote what they guessed."""

import time

import pytest

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


def _held_reasons() -> list[str]:
    return list(
        AuditEntry.objects.filter(kind="security", reason__startswith="replies held").values_list(
            "reason", flat=True
        )
    )


@pytest.mark.parametrize("store", ["db", "redis", "cached_db"])
def test_past_the_budget_every_reply_is_withheld_with_one_notice(store, settings, prober, api):
    settings.HISTORY_STORE = store
    for _ in range(2):
        turn = _probe(prober)
        assert turn["status"] == "suppressed" and turn["reply"]["content"] == SUPPRESSED_NOTICE
    # The hold starts with the second flag, and staff are told once.
    assert _held_reasons() == ["replies held: 2 flagged replies within 86400 s"]
    sid, clean = post_and_wait(prober, "What is the capital of France?")
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
    flagged = AuditEntry.objects.get(turn_id=hit["id"], kind="reply")
    assert flagged.flagged and "suppressed" in flagged.reason
    assert len(_held_reasons()) == 1
    # Other users are not held.
    assert post_and_wait(api, "What is the capital of France?")[1]["reply"]["content"] == CLEAN


def test_a_held_reply_adds_nothing_to_the_fingerprint_index(prober, other_user, fake_claude):
    """A held reply is not delivered, so its tokens are not the prober's: were they indexed,
    another user's reply carrying them would be blamed on a conversation that never had them."""
    _probe(prober), _probe(prober)
    fresh = "Your Zorblatt Quexington ticket is QX-99812."
    fake_claude.set_responder(lambda body: fresh)
    sid, turn = post_and_wait(prober, "Tell me something")
    assert turn["reply"]["content"] == HELD_NOTICE
    stranger = client_for(UserFactory())
    fake_claude.set_responder(lambda body: fresh)
    assert post_and_wait(stranger, "Tell me something")[1]["status"] == "completed"


def test_review_marking_the_flags_false_positives_lifts_the_hold(prober, other_user):
    _probe(prober), _probe(prober)
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


def test_the_hold_lifts_when_its_window_has_passed(settings, prober, other_user):
    settings.LEAK_HOLD_SECONDS = 1
    _probe(prober), _probe(prober)
    assert post_and_wait(prober, "Capital of France?")[1]["reply"]["content"] == HELD_NOTICE
    time.sleep(1.1)
    assert post_and_wait(prober, "Capital of France?")[1]["reply"]["content"] == CLEAN


def test_the_claim_through_the_orm_reads_the_hold_too(monkeypatch, prober):
    """The embedded database (SQLite) claims through the ORM, not the written-out statement."""
    _probe(prober), _probe(prober)
    monkeypatch.setattr(rows, "in_sql", lambda: False)
    assert post_and_wait(prober, "Capital of France?")[1]["reply"]["content"] == HELD_NOTICE


def test_a_budget_of_zero_never_holds(settings, prober, other_user):
    settings.LEAK_HOLD_AFTER = 0
    for _ in range(4):
        assert _probe(prober)["reply"]["content"] == SUPPRESSED_NOTICE
    assert not leak_hold_active(user_id=other_user.pk) and not _held_reasons()
    assert post_and_wait(prober, "Capital of France?")[1]["reply"]["content"] == CLEAN


def test_under_leak_action_flag_the_hold_withholds_too(settings, prober):
    """Flagged replies are delivered under ``flag``: past the budget they stop being. (A
    delivered reply's tokens are the prober's own from then on, so one flag is the budget.)"""
    settings.LEAK_ACTION, settings.LEAK_HOLD_AFTER = "flag", 1
    assert _probe(prober)["reply"]["content"] == LEAK
    turn = post_and_wait(prober, "What is the capital of France?")[1]
    assert turn["status"] == "suppressed" and turn["reply"]["content"] == HELD_NOTICE
    entry = AuditEntry.objects.get(turn_id=turn["id"], kind="reply")
    assert (entry.flagged, entry.reason) == (False, HELD_REASON)


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
    entry = AuditEntry.objects.filter(user=other_user, kind="reply").first()
    assert (entry.flagged, entry.reason) == (False, HELD_REASON)
    assert entry.content_hash == content_hash(CLEAN)
    assert _chat(prober, "What is my codename?", first["token"])["reply"] == HELD_NOTICE
