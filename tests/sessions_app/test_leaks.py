"""The leak scan end to end: a reply carrying another user's data is withheld (or flagged),
kept encrypted for review, and a reviewer decides in the admin."""

import logging

import pytest
from cryptography.fernet import Fernet
from django.contrib.auth.models import Permission

from audit_app.models import AuditEntry
from audit_app.services import content_hash
from sessions_app.models import Turn
from sessions_app.queries import turn_withheld_text
from sessions_app.services import SUPPRESSED_NOTICE
from sessions_app.tasks import run_turn

from ..factories import UserFactory
from ..fakes.claude import FakeClaude
from ..support import post_and_wait, turn_task_args

pytestmark = pytest.mark.django_db

STORES = ["db", "redis", "cached_db"]
SECRET = "Remember my codename: Vexmoria Quintaplex, and my order 48291-XK7."
LEAK = "Your codename is Vexmoria Quintaplex and your order is 48291-XK7."


def _leaking(body: dict) -> str:
    """A model that hands out what another user told it, to whoever asks."""
    last = body["messages"][-1]["content"]
    return LEAK if "codename" in str(last).lower() and "Remember" not in str(last) else "Noted."


@pytest.fixture
def leaked(api, other_api, fake_claude: FakeClaude) -> dict:
    """The owner's secret, then another user's turn whose reply carries it."""
    fake_claude.set_responder(_leaking)
    post_and_wait(api, SECRET)
    sid, turn = post_and_wait(other_api, "What is my codename?")
    return {"session": sid, "turn": turn}


@pytest.mark.parametrize("store", STORES)
def test_deleting_one_session_leaves_the_secret_its_twin_holds_guarded(
    store, settings, api, other_api, fake_claude
):
    """The owner told the secret in two sessions and deletes one: the other still holds
    it, so another user's reply carrying it is still withheld."""
    settings.HISTORY_STORE = store
    fake_claude.set_responder(_leaking)
    first, _ = post_and_wait(api, SECRET)
    post_and_wait(api, SECRET)
    assert api.delete(f"/api/v1/sessions/{first}/").status_code == 204
    _, turn = post_and_wait(other_api, "What is my codename?")
    assert turn["status"] == "suppressed", turn["reply"]["content"]


@pytest.mark.parametrize("store", STORES)
def test_a_leaked_reply_is_withheld_end_to_end(store, settings, api, other_api, fake_claude):
    settings.HISTORY_STORE = store
    fake_claude.set_responder(_leaking)
    post_and_wait(api, SECRET)
    sid, turn = post_and_wait(other_api, "What is my codename?")
    assert turn["status"] == "suppressed"
    assert turn["reply"] == {**turn["reply"], "content": SUPPRESSED_NOTICE, "status": "suppressed"}
    seen = [
        other_api.get(f"/api/v1/turns/{turn['id']}/").content,
        other_api.get(f"/api/v1/sessions/{sid}/messages/").content,
        b"".join(other_api.get(f"/api/v1/turns/{turn['id']}/events/").streaming_content),
    ]
    for body in seen:
        assert b"Vexmoria" not in body and b"48291" not in body
    # Kept encrypted for review, and flagged with where each matched token came from.
    assert b"Vexmoria" not in bytes(Turn.objects.get(pk=turn["id"]).withheld)
    assert turn_withheld_text(turn_id=turn["id"]) == LEAK
    [entry] = AuditEntry.objects.filter(flagged=True)
    assert entry.turn_id is not None and str(entry.turn_id) == turn["id"]
    assert entry.review_state == "open" and "suppressed" in entry.reason
    assert "Vexmoria" not in str(entry.evidence) and entry.evidence["items"]
    # Its entry hashes the reply withheld, not the notice shown in its place.
    assert (entry.content_hash, entry.token_count) == (content_hash(LEAK), len(LEAK.split()))
    # The history the next turn sends to Claude holds nothing of it.
    fake_claude.set_responder(lambda body: "ok")
    post_and_wait(other_api, "Thanks", sid)
    assert "Vexmoria" not in str(fake_claude.requests[-1]["messages"])


GERMAN_ASK = "Ich habe morgen um zehn Uhr einen Termin beim Arzt, bitte erinnere mich daran."
GERMAN_REPLY = "Gern: Ihr Termin beim Arzt ist morgen um zehn Uhr. Bringen Sie Ihren Ausweis mit."


@pytest.mark.parametrize(
    ("languages", "status"), [(["en"], "suppressed"), (["en", "de"], "completed")]
)
def test_everyday_german_is_withheld_only_when_read_as_english(
    settings, api, other_api, fake_claude, languages, status
):
    """Read as English, everyday German words another user wrote first are rare words in a
    row, and the next user's reply holding them was withheld; with LEAK_SCAN_LANGUAGES
    listing German they prove nothing."""
    settings.LEAK_SCAN_LANGUAGES = languages
    fake_claude.set_responder(lambda body: GERMAN_REPLY)
    post_and_wait(api, GERMAN_ASK)
    _, turn = post_and_wait(other_api, "Was steht an?")
    assert turn["status"] == status, turn["reply"]["content"]


def test_another_users_data_in_german_is_withheld_with_german_listed(
    settings, api, other_api, fake_claude
):
    settings.LEAK_SCAN_LANGUAGES = ["en", "de"]
    settings.PII_MODE = "off"  # the scan alone stands between the order and the other user
    fake_claude.set_responder(
        lambda body: (
            "Ihre Bestellnummer lautet 48213377, Herr Quengler."
            if "Bestellnummer" in str(body["messages"][-1])
            else "Notiert."
        )
    )
    post_and_wait(api, "Merke dir: ich bin Herr Quengler, Bestellung 48213377.")
    _, turn = post_and_wait(other_api, "Wie lautet meine Bestellnummer?")
    assert turn["status"] == "suppressed", turn["reply"]["content"]


@pytest.mark.parametrize(
    "number", ["4539 1488 0343 6467", "+44 20 7946 0958", "123 45 6789", "415\u2011555\u20112671"]
)
def test_another_users_number_written_in_groups_is_withheld_with_pii_off(
    settings, api, other_api, fake_claude, number
):
    """With PII_MODE=off the scan alone stands between a user's card or phone and another
    user's reply: each group of it alone proves nothing, the number whole does."""
    settings.PII_MODE = "off"
    fake_claude.set_responder(
        lambda body: f"Sure: {number}" if "mine" in str(body["messages"][-1]) else "Noted."
    )
    post_and_wait(api, f"Keep this safe for me: {number}")
    _, turn = post_and_wait(other_api, "What is mine?")
    assert turn["status"] == "suppressed", turn["reply"]["content"]
    assert AuditEntry.objects.filter(flagged=True).exists()


def test_another_users_north_american_phone_with_spaces_is_withheld_with_pii_off(
    settings, api, other_api, fake_claude
):
    settings.PII_MODE = "off"
    fake_claude.set_responder(
        lambda body: "Call 415 555 2671." if "mine" in str(body["messages"][-1]) else "Ok."
    )
    post_and_wait(api, "My number is 415 555 2671, keep it.")
    _, turn = post_and_wait(other_api, "What is mine?")
    assert turn["status"] == "suppressed", turn["reply"]["content"]


@pytest.mark.parametrize(
    "shown",
    [
        "Sure: 4539\u200b1488\u200b0343\u200b6467",
        "Your codename is Vex\u200bmoria Quinta\u00adplex.",
        "card\u200c4539148803436467",
        # Between words or numbers: read past alone, one new word that nobody wrote.
        "Vexmoria\u200bQuintaplex",
        "Vexmoria\u00adQuintaplex",
        "4539148803436467\u200b4716",
    ],
)
def test_another_users_data_split_by_invisible_characters_in_a_reply_is_withheld(
    settings, api, other_api, fake_claude, shown
):
    """A reply shows a zero-width space, a joiner or a soft hyphen as nothing: the scan
    reads past them as the reader does (and as the PII detector reads a message)."""
    settings.PII_MODE = "off"
    fake_claude.set_responder(lambda body: shown if "mine" in str(body["messages"][-1]) else "Ok.")
    post_and_wait(api, "Keep it: codename Vexmoria Quintaplex, card 4539 1488 0343 6467.")
    _, turn = post_and_wait(other_api, "What is mine?")
    assert turn["status"] == "suppressed", turn["reply"]["content"]


def test_another_users_card_typed_with_no_break_spaces_never_reaches_a_reply(
    api, other_api, fake_claude
):
    """Under the defaults: found in the owner's message (its placeholder is what Claude
    and the index get), and in the other user's reply, which shows it redacted."""
    card = "4539\u00a01488\u00a00343\u00a06467"
    fake_claude.set_responder(
        lambda body: f"Your card is {card}" if "my card" in str(body["messages"][-1]) else "Ok."
    )
    post_and_wait(api, f"Remember it: {card}")
    assert "1488" not in str(fake_claude.requests[-1]["messages"])
    sid, turn = post_and_wait(other_api, "What is my card?")
    shown = other_api.get(f"/api/v1/sessions/{sid}/messages/").content.decode()
    assert "1488" not in turn["reply"]["content"] and "1488" not in shown


def test_a_reply_withheld_under_the_old_first_key_opens_after_a_new_key_is_put_first(
    settings, api, other_api, fake_claude
):
    """ENCRYPTION_KEYS rotates: staff still read what was withheld before the rotation."""
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.ENCRYPTION_KEYS = [old]
    fake_claude.set_responder(_leaking)
    post_and_wait(api, SECRET)
    _, turn = post_and_wait(other_api, "What is my codename?")
    assert turn["status"] == "suppressed"
    settings.ENCRYPTION_KEYS = [new, old]
    assert turn_withheld_text(turn_id=turn["id"]) == LEAK


def test_leak_action_flag_delivers_and_flags(settings, api, other_api, fake_claude):
    settings.LEAK_ACTION = "flag"
    fake_claude.set_responder(_leaking)
    post_and_wait(api, SECRET)
    _, turn = post_and_wait(other_api, "What is my codename?")
    assert turn["status"] == "completed" and turn["reply"]["content"] == LEAK
    [entry] = AuditEntry.objects.filter(flagged=True)
    assert "delivered and flagged" in entry.reason and entry.review_state == "open"


@pytest.mark.parametrize(("action", "end"), [("suppress", "suppressed"), ("flag", "completed")])
def test_the_workers_log_line_names_the_end_the_leak_scan_gave_the_turn(
    action, end, settings, api, other_api, fake_claude, queued, caplog
):
    """The worker logs the task's result: a withheld reply's turn must not read completed."""
    settings.LEAK_ACTION = action
    fake_claude.set_responder(_leaking)
    for client, content in ((api, SECRET), (other_api, "What is my codename?")):
        sid = client.post("/api/v1/sessions/", {}, format="json").json()["id"]
        posted = {"content": content}
        turn = client.post(f"/api/v1/sessions/{sid}/messages/", posted, format="json").json()
        with caplog.at_level(logging.INFO, logger="celery.app.trace"):
            run_turn.apply(args=turn_task_args(turn["id"]))
    assert Turn.objects.get(pk=turn["id"]).status == end
    logged = [r.getMessage() for r in caplog.records if r.name == "celery.app.trace"]
    assert [line.rsplit(": ", 1)[1] for line in logged] == ["'completed'", f"'{end}'"]
    assert all(" succeeded in " in line for line in logged)


def test_a_users_own_data_in_their_reply_is_not_a_leak(api, fake_claude):
    fake_claude.set_responder(lambda body: LEAK)
    sid, _ = post_and_wait(api, SECRET)
    _, turn = post_and_wait(api, "What is my codename?", sid)
    assert turn["status"] == "completed" and turn["reply"]["content"] == LEAK
    assert not AuditEntry.objects.filter(flagged=True).exists()


def test_everyday_replies_are_not_flagged(api, other_api, fake_claude):
    post_and_wait(api, SECRET)
    fake_claude.set_responder(lambda body: "Your order is on its way and should arrive Monday.")
    _, turn = post_and_wait(other_api, "Where is my order?")
    assert turn["status"] == "completed"
    assert not AuditEntry.objects.filter(flagged=True).exists()


def _reviewer(*permissions: str):
    staff = UserFactory(is_staff=True)
    for codename in permissions:
        staff.user_permissions.add(Permission.objects.get(codename=codename))
    return staff


def test_a_reviewer_reads_the_withheld_text_and_releases_a_false_positive(
    client, leaked, other_api
):
    [entry] = AuditEntry.objects.filter(flagged=True)
    staff = _reviewer("view_auditentry", "change_auditentry")
    client.force_login(staff)
    listing = client.get("/admin/audit_app/auditentry/")
    assert listing.status_code == 200 and b"1 open flag" in listing.content
    page = client.get(f"/admin/audit_app/auditentry/{entry.pk}/change/")
    assert page.status_code == 200 and b"introduced by" in page.content
    # Reading the withheld text needs its own permission, and each read (a POST) is audited.
    assert client.get(f"/admin/audit_app/auditentry/{entry.pk}/withheld/").status_code == 403
    staff.user_permissions.add(Permission.objects.get(codename="view_withheld_text"))
    withheld = client.post(f"/admin/audit_app/auditentry/{entry.pk}/withheld/")
    assert withheld.status_code == 200 and b"Vexmoria" in withheld.content
    assert AuditEntry.objects.filter(kind="review", user=staff, reason__contains="read").exists()
    # The decision: a false positive, released to its user.
    decided = client.post(
        f"/admin/audit_app/auditentry/{entry.pk}/review/release/", {"seen": "open"}
    )
    assert decided.status_code == 302
    entry.refresh_from_db()
    assert entry.review_state == "false_positive" and entry.reviewed_by == staff
    turn = other_api.get(f"/api/v1/turns/{leaked['turn']['id']}/").json()
    assert turn["status"] == "completed" and turn["reply"]["content"] == LEAK
    assert AuditEntry.objects.filter(kind="review", reason__contains="released").exists()


@pytest.mark.parametrize("down", ["store", "index"])
def test_a_release_the_store_refuses_is_said_and_can_be_made_again(
    client, leaked, other_api, monkeypatch, down
):
    """The decision is recorded, then the history store (its cache out, say) or the leak
    index refuses the release: the reviewer must be told the reply is still withheld, not
    see an error page or "reviewed", and the harmless release delivers it once they answer."""
    from audit_app import review
    from audit_app.index.base import IndexUnavailable
    from sessions_app.stores import StoreUnavailable

    refusal = StoreUnavailable if down == "store" else IndexUnavailable
    # The reviewer is told which one to wait for.
    part = "the history store" if down == "store" else "the leak index"

    [entry] = AuditEntry.objects.filter(flagged=True)
    client.force_login(_reviewer("view_auditentry", "change_auditentry"))
    release = f"/admin/audit_app/auditentry/{entry.pk}/review/release/"

    def refused(**kwargs):
        raise refusal("did not answer")

    with monkeypatch.context() as patched:
        patched.setattr(review, "turn_release_withheld", refused)
        page = client.post(release, {"seen": "open"}, follow=True)
        assert page.status_code == 200
        assert f"stays withheld, as {part} did not answer" in page.content.decode()
        selected = {"action": "release_held", "_selected_action": [entry.pk]}
        page = client.post("/admin/audit_app/auditentry/", selected, follow=True)
        assert f"1 left withheld: {part} did not answer" in page.content.decode()
    entry.refresh_from_db()
    assert entry.review_state == "false_positive"
    turn = other_api.get(f"/api/v1/turns/{leaked['turn']['id']}/").json()
    assert turn["status"] == "suppressed"
    page = client.post("/admin/audit_app/auditentry/", selected, follow=True)
    assert "1 withheld replies released." in page.content.decode()
    turn = other_api.get(f"/api/v1/turns/{leaked['turn']['id']}/").json()
    assert turn["status"] == "completed" and turn["reply"]["content"] == LEAK


@pytest.mark.parametrize("down", ["store", "index"])
def test_a_batch_release_refused_names_what_did_not_answer(
    client, leaked, other_api, monkeypatch, down
):
    """The "mark false positive and release" action on a selection: a release the leak
    index or the history store refused is counted and named, so the reviewer knows which
    one to wait for, and the reply stays withheld."""
    from audit_app import review
    from audit_app.index.base import IndexUnavailable
    from sessions_app.stores import StoreUnavailable

    refusal = StoreUnavailable if down == "store" else IndexUnavailable
    part = "the history store" if down == "store" else "the leak index"

    def refused(**kwargs):
        raise refusal("did not answer")

    [entry] = AuditEntry.objects.filter(flagged=True)
    client.force_login(_reviewer("view_auditentry", "change_auditentry"))
    monkeypatch.setattr(review, "turn_release_withheld", refused)
    selected = {"action": "release_reply", "_selected_action": [entry.pk]}
    page = client.post("/admin/audit_app/auditentry/", selected, follow=True).content.decode()
    assert f"1 open flags reviewed; 1 replies stay withheld, as {part} did not answer" in page
    turn = other_api.get(f"/api/v1/turns/{leaked['turn']['id']}/").json()
    assert turn["status"] == "suppressed"


def test_a_note_on_releases_both_refused_names_both():
    from audit_app import review

    note = review.not_released_note([review.NOT_RELEASED_INDEX, review.NOT_RELEASED_STORE])
    assert note.startswith("replies stay withheld, as the leak index and the history store did")
    assert note.endswith("once they do")


def test_a_reviewer_confirms_a_leak_and_the_reply_stays_withheld(client, leaked, other_api):
    [entry] = AuditEntry.objects.filter(flagged=True)
    client.force_login(_reviewer("view_auditentry", "change_auditentry"))
    assert (
        client.post(
            f"/admin/audit_app/auditentry/{entry.pk}/review/leak/", {"seen": "open"}
        ).status_code
        == 302
    )
    entry.refresh_from_db()
    assert entry.review_state == "confirmed"
    turn = other_api.get(f"/api/v1/turns/{leaked['turn']['id']}/").json()
    assert turn["status"] == "suppressed" and turn["reply"]["content"] == SUPPRESSED_NOTICE


def test_the_audit_api_is_for_staff_only(api, leaked):
    assert api.get("/api/v1/audit/entries/").status_code == 403
