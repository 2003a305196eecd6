"""PII_MODE end to end through the API, with every history store: Claude sees placeholders,
the owner sees the originals, nobody else sees either, and erasure shreds the vault."""

import base64
import json
import logging

import pytest
from cryptography.fernet import Fernet, InvalidToken

from audit_app.models import AuditEntry
from sessions_app import crypto
from sessions_app.models import SessionVault
from sessions_app.stores import history_store

from ..fakes.claude import FakeClaude
from ..support import post_and_wait

pytestmark = pytest.mark.django_db

STORES = ["db", "redis", "cached_db"]
SECRET = "My name is Alice Johnson, write to alice.johnson@example.com or call +44 20 7946 0958."
RAW = ("Alice Johnson", "alice.johnson@example.com", "+44 20 7946 0958")


def _sent_to_claude(fake: FakeClaude) -> str:
    return json.dumps([body.get("messages") for body in fake.requests])


def _stored(session_id: str) -> str:
    from sessions_app.models import ChatSession

    session = ChatSession.objects.get(pk=session_id)
    return " ".join(m.content for m in history_store().page(session=session, offset=0, limit=99))


@pytest.mark.parametrize("store", STORES)
def test_pseudonymised_claude_sees_placeholders_the_owner_sees_originals(
    store, settings, api, fake_claude: FakeClaude
):
    settings.HISTORY_STORE = store
    sid, turn = post_and_wait(api, SECRET)
    sent = _sent_to_claude(fake_claude)
    assert not any(raw in sent for raw in RAW)
    assert "<PERSON_1>" in sent and "<EMAIL_ADDRESS_1>" in sent and "<PHONE_NUMBER_1>" in sent
    stored = _stored(sid)
    assert not any(raw in stored for raw in RAW) and "<EMAIL_ADDRESS_1>" in stored
    # The owner reads the originals everywhere: the turn, its reply, the history, the stream.
    assert turn["user_message"]["content"] == SECRET
    assert turn["reply"]["content"] == f"Echo: {SECRET}"
    history = api.get(f"/api/v1/sessions/{sid}/messages/").json()["results"]
    assert [m["content"] for m in history] == [SECRET, f"Echo: {SECRET}"]
    events = api.get(f"/api/v1/turns/{turn['id']}/events/")
    assert "alice.johnson@example.com" in b"".join(events.streaming_content).decode()
    # The same value again in the session keeps its placeholder.
    post_and_wait(api, "Again: alice.johnson@example.com", sid)
    assert "Again: <EMAIL_ADDRESS_1>" in _stored(sid)


@pytest.mark.parametrize("store", STORES)
def test_a_value_the_vault_holds_is_protected_again_without_its_cue(
    store, settings, api, fake_claude: FakeClaude
):
    """ "Kate Bush" is found after "My name is"; alone in a later message the detector sees
    no name in it ("bush" is a word), yet it is this session's personal data: it went to
    Claude, and into the store, in the clear."""
    settings.HISTORY_STORE = store
    sid, _ = post_and_wait(api, "My name is Kate Bush.")
    _, turn = post_and_wait(api, "Kate Bush lives at home", sid)
    sent = _sent_to_claude(fake_claude)
    assert "Kate Bush" not in sent and "<PERSON_1> lives at home" in sent
    assert "Kate Bush" not in _stored(sid)
    assert turn["user_message"]["content"] == "Kate Bush lives at home"  # the owner's view
    assert turn["reply"]["content"] == "Echo: Kate Bush lives at home"


def test_placeholders_of_another_session_or_made_up_ones_stay_as_they_are(
    api, fake_claude: FakeClaude
):
    post_and_wait(api, SECRET)  # another session of the same user holds <EMAIL_ADDRESS_1>
    fake_claude.set_responder(lambda body: "I know <EMAIL_ADDRESS_1> and <EMAIL_ADDRESS_7>.")
    sid, turn = post_and_wait(api, "Hello, who am I?")
    assert turn["reply"]["content"] == "I know <EMAIL_ADDRESS_1> and <EMAIL_ADDRESS_7>."
    assert "alice" not in api.get(f"/api/v1/sessions/{sid}/messages/").content.decode().lower()


def test_another_user_sees_neither_originals_nor_placeholders_resolved(
    api, other_api, fake_claude: FakeClaude
):
    post_and_wait(api, SECRET)
    fake_claude.set_responder(lambda body: "Your email is <EMAIL_ADDRESS_1>.")
    sid, turn = post_and_wait(other_api, "What is my email?")
    assert turn["reply"]["content"] == "Your email is <EMAIL_ADDRESS_1>."
    assert not any(raw in json.dumps(turn) for raw in RAW)


def test_a_reply_holding_pii_not_of_this_session_is_redacted(api, fake_claude: FakeClaude):
    fake_claude.set_responder(lambda body: "Contact bob.smith@example.org about <PERSON_1>.")
    sid, turn = post_and_wait(api, "My name is Alice Johnson.")
    assert turn["reply"]["content"] == "Contact [EMAIL_ADDRESS] about Alice Johnson."
    assert "bob.smith" not in _stored(sid)


@pytest.mark.parametrize("store", STORES)
def test_redact_mode_is_irreversible(store, settings, api, fake_claude: FakeClaude):
    settings.HISTORY_STORE = store
    settings.PII_MODE = "redact"
    sid, turn = post_and_wait(api, SECRET)
    expected = "My name is [PERSON], write to [EMAIL_ADDRESS] or call [PHONE_NUMBER]."
    assert turn["user_message"]["content"] == expected
    assert not any(raw in _sent_to_claude(fake_claude) + _stored(sid) for raw in RAW)
    assert not SessionVault.objects.exists()


def test_off_mode_keeps_the_text_as_sent(settings, api, fake_claude: FakeClaude):
    settings.PII_MODE = "off"
    sid, turn = post_and_wait(api, SECRET)
    assert SECRET in _sent_to_claude(fake_claude) and turn["user_message"]["content"] == SECRET


@pytest.mark.parametrize("store", STORES)
def test_deleting_a_session_makes_its_vault_unreadable(store, settings, api, fake_claude):
    settings.HISTORY_STORE = store
    sid, _ = post_and_wait(api, SECRET)
    vault = SessionVault.objects.get(session_id=sid)
    copy_of_entries = bytes(vault.entries)  # as a backup or replica would hold it
    assert "alice.johnson@example.com" not in copy_of_entries.decode()
    assert "alice.johnson" in crypto.open_with(bytes(vault.wrapped_key), copy_of_entries).decode()
    assert api.delete(f"/api/v1/sessions/{sid}/").status_code == 204
    assert not SessionVault.objects.filter(session_id=sid).exists()
    # Without the session's data key, the site's keys alone cannot open the copy.
    with pytest.raises(InvalidToken):
        crypto.unseal(copy_of_entries)


def test_raw_pii_reaches_neither_audit_entries_nor_logs(api, fake_claude: FakeClaude, caplog):
    with caplog.at_level(logging.DEBUG):
        post_and_wait(api, SECRET)
    entries = json.dumps(list(AuditEntry.objects.values()), default=str)
    for raw in RAW:
        assert raw not in entries
        assert raw not in caplog.text


def test_the_broker_carries_ids_only(api, user, queued, fake_claude: FakeClaude):
    """A queued task names the turn, its owner and its session: no content, no PII."""
    sid = api.post("/api/v1/sessions/", {}, format="json").json()["id"]
    response = api.post(f"/api/v1/sessions/{sid}/messages/", {"content": SECRET}, format="json")
    assert response.status_code == 202
    [message] = queued.lrange("celery", 0, -1)
    body = base64.b64decode(json.loads(message)["body"]).decode()
    assert json.loads(body)[0] == [response.json()["id"], user.pk, sid]
    for raw in (*RAW, "Alice", "write to"):
        assert raw not in message.decode() and raw not in body


# Reading a turn back: the vault comes along with the turn, not in a query of its own -------

JOINED_VAULT = 'JOIN "sessions_app_sessionvault"'
VAULT_ALONE = 'FROM "sessions_app_sessionvault"'


def _turn_read(user, turn_id: str) -> tuple[list[str], list[str]]:
    """Read the turn through the gate; return its exchange's texts and the SQL it took."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from sessions_app import selectors

    with CaptureQueriesContext(connection) as read:
        turn = selectors.turn_get_for_owner(user=user, turn_id=turn_id)
    return [m.content for m in turn.exchange], [q["sql"] for q in read.captured_queries]


@pytest.mark.parametrize("mode", ["off", "redact", "pseudonymize"])
@pytest.mark.parametrize("store", STORES)
def test_a_turn_read_back_restores_with_the_vault_read_along_with_it(
    store, mode, settings, user, api, fake_claude: FakeClaude
):
    settings.HISTORY_STORE = store
    settings.PII_MODE = mode
    _, posted = post_and_wait(api, SECRET)
    exchange, sql = _turn_read(user, posted["id"])
    if mode == "redact":
        expected = "My name is [PERSON], write to [EMAIL_ADDRESS] or call [PHONE_NUMBER]."
        assert exchange == [expected, f"Echo: {expected}"]
    else:
        assert exchange == [SECRET, f"Echo: {SECRET}"]
    assert JOINED_VAULT in sql[0] and 'FROM "sessions_app_turn"' in sql[0]
    assert not any(VAULT_ALONE in statement for statement in sql)


def test_a_placeholder_made_up_in_a_session_without_a_vault_stays_and_is_reserved(
    user, api, fake_claude: FakeClaude
):
    from sessions_app import privacy

    post_and_wait(api, SECRET)  # another session of the user has a vault
    fake_claude.set_responder(lambda body: "I know <EMAIL_ADDRESS_1>.")
    sid, posted = post_and_wait(api, "Hello, who am I?")
    assert privacy.vault_read(session_id=sid) == {"<EMAIL_ADDRESS_1>": ""}  # reserved only
    exchange, sql = _turn_read(user, posted["id"])
    assert exchange == ["Hello, who am I?", "I know <EMAIL_ADDRESS_1>."]
    assert not any(VAULT_ALONE in statement for statement in sql)  # read with the turn


@pytest.mark.parametrize(
    ("reply", "reads", "reserved"),
    [
        ("Hello <PERSON_1>, noted.", 1, False),  # only the vault's: the scrub's read serves
        ("Hello <PERSON_1>; <EMAIL_ADDRESS_9> too.", 2, True),  # one made up: read, reserved
    ],
)
def test_the_turns_end_reads_the_vault_again_only_for_a_placeholder_it_did_not_hold(
    api, fake_claude: FakeClaude, reply, reads, reserved
):
    """The reply's scrub read the vault; a vault only grows, so the end, which reserves the
    placeholders Claude made up, reads it again only for one the scrub's read did not hold."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from sessions_app import privacy

    sid, _ = post_and_wait(api, SECRET)
    fake_claude.set_responder(lambda body: reply)
    with CaptureQueriesContext(connection) as queries:
        post_and_wait(api, "Say hello to me.", sid)
    alone = [q["sql"] for q in queries.captured_queries if VAULT_ALONE in q["sql"]]
    assert len(alone) == reads, alone
    assert ("<EMAIL_ADDRESS_9>" in privacy.vault_read(session_id=sid)) is reserved
    assert privacy.vault_read(session_id=sid)["<PERSON_1>"] == "Alice Johnson"


def test_a_withheld_replys_made_up_placeholder_is_reserved_before_its_release(user, settings):
    """Withheld, the reply is not what is stored; released later, after a new address had
    taken its number, it would have shown that address."""
    from audit_app.services import ScanResult
    from sessions_app import privacy, services

    settings.LEAK_ACTION = "suppress"
    session = services.chat_session_create(owner=user)
    turn = services.message_accept(user=user, session_id=session.pk, content="to a.b@example.com")
    reply = "I forwarded it to <EMAIL_ADDRESS_2>."
    assert services.turn_complete(turn_id=turn.pk, reply=reply, scan=ScanResult(True, 1.0))
    assert privacy.vault_read(session_id=session.pk)["<EMAIL_ADDRESS_2>"] == ""
    after = services.message_accept(user=user, session_id=session.pk, content="boss@secret.org")
    assert after.exchange[0].content == "boss@secret.org"
    assert "<EMAIL_ADDRESS_3>" in _stored(str(session.pk))


def test_a_titles_placeholder_is_reserved_though_nothing_else_is_found(user):
    from sessions_app import privacy, services

    session = services.chat_session_create(owner=user, title="Notes for <PERSON_1>")
    services.message_accept(user=user, session_id=session.pk, content="My name is Kate Bush.")
    session.refresh_from_db()
    assert privacy.title_restore(session=session) == "Notes for <PERSON_1>"
    assert privacy.vault_read(session_id=session.pk)["<PERSON_2>"] == "Kate Bush"


@pytest.mark.parametrize("store", STORES)
def test_a_made_up_placeholder_never_shows_a_value_given_its_number_later(
    store, settings, api, fake_claude: FakeClaude
):
    """Claude wrote <EMAIL_ADDRESS_2> before the session had a second address. Had the
    user's next address been numbered 2, every read of that reply would have shown it
    there: a sentence nobody wrote. Typed by the user, the same."""
    settings.HISTORY_STORE = store
    sid, _ = post_and_wait(api, SECRET)  # <EMAIL_ADDRESS_1>
    fake_claude.set_responder(lambda body: "I will forward it to <EMAIL_ADDRESS_2>.")
    post_and_wait(api, "Please pass it on. Or to <EMAIL_ADDRESS_3>?", sid)
    fake_claude.set_responder(lambda body: "Noted.")
    post_and_wait(api, "My bank's email is secret.boss@example.org", sid)
    history = api.get(f"/api/v1/sessions/{sid}/messages/").json()["results"]
    assert [m["content"] for m in history[2:4]] == [
        "Please pass it on. Or to <EMAIL_ADDRESS_3>?",
        "I will forward it to <EMAIL_ADDRESS_2>.",
    ]
    assert history[4]["content"] == "My bank's email is secret.boss@example.org"
    assert "My bank's email is <EMAIL_ADDRESS_4>" in _stored(sid)


def test_a_typed_placeholder_past_the_reserved_numbers_never_shows_a_value(
    api, fake_claude: FakeClaude
):
    """<EMAIL_ADDRESS_100000> is reserved, <EMAIL_ADDRESS_100001> past the bound is not:
    numbered after the reserved one, the next address took the unreserved number, and every
    read of the first message showed it there."""
    typed = "See <EMAIL_ADDRESS_100000> and <EMAIL_ADDRESS_100001>"
    sid, _ = post_and_wait(api, typed)
    post_and_wait(api, "My email is boss@secret-example.org", sid)
    history = api.get(f"/api/v1/sessions/{sid}/messages/").json()["results"]
    assert history[0]["content"] == typed
    assert "My email is <EMAIL_ADDRESS_1>" in _stored(sid)


def test_a_reply_writing_a_vault_value_in_full_is_stored_with_its_placeholder(
    api, fake_claude: FakeClaude
):
    """Claude was sent <PERSON_1> and writes the name it stands for (it may guess it): the
    detector sees no name without its cue, the vault does. Stored in the clear, it would go
    to Claude with every later turn."""
    sid, _ = post_and_wait(api, "My name is Kate Bush.")
    fake_claude.set_responder(lambda body: "Kate Bush lives at home")
    _, turn = post_and_wait(api, "Where do I live?", sid)
    assert turn["reply"]["content"] == "Kate Bush lives at home"  # the owner's view
    assert "Kate Bush" not in _stored(sid)
    fake_claude.set_responder(lambda body: "ok")
    post_and_wait(api, "Thanks", sid)
    assert "Kate Bush" not in json.dumps(fake_claude.requests[-1]["messages"])


def test_a_restore_refuses_the_vault_of_another_session(user, api, fake_claude: FakeClaude):
    from sessions_app import privacy
    from sessions_app.models import ChatSession

    theirs, _ = post_and_wait(api, SECRET)
    fake_claude.set_responder(lambda body: "Write to <EMAIL_ADDRESS_1>.")
    sid, _ = post_and_wait(api, "Hello")
    page = history_store().page(session=ChatSession.objects.get(pk=sid), offset=0, limit=9)
    with pytest.raises(ValueError):
        privacy.messages_restore(
            session_id=page[0].session_id,
            messages=page,
            vault_row=SessionVault.objects.get(session_id=theirs),
        )


def test_a_vault_sealed_under_the_old_first_key_opens_after_a_new_key_is_put_first(
    settings, api, fake_claude: FakeClaude
):
    """ENCRYPTION_KEYS rotates: the first key encrypts, all of them decrypt."""
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.ENCRYPTION_KEYS = [old]
    sid, _ = post_and_wait(api, SECRET)
    settings.ENCRYPTION_KEYS = [new, old]
    history = api.get(f"/api/v1/sessions/{sid}/messages/").json()["results"]
    assert [m["content"] for m in history] == [SECRET, f"Echo: {SECRET}"]
    # The vault still grows: a new value gets the next placeholder, the old one its own.
    again = "Again: alice.johnson@example.com, or bob.smith@example.org."
    _, turn = post_and_wait(api, again, sid)
    assert turn["reply"]["content"] == f"Echo: {again}"
    assert "<EMAIL_ADDRESS_1>, or <EMAIL_ADDRESS_2>" in _stored(sid)
