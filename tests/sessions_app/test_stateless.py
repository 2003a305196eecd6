"""Stateless sessions (``POST /api/v1/stateless/chat/``): the whole history travels in an
encrypted, user-bound, expiring token, and nothing of the conversation stays on the server.

Claude is the fake Messages API, reached through the real SDK (sync under the test client's
WSGI handler, ``AsyncAnthropic`` on an event loop)."""

import asyncio
import base64
import functools
import json
import logging
import secrets
import time
import uuid

import httpx
import pytest
import redis
from asgiref.sync import sync_to_async
from celery.signals import before_task_publish, task_prerun
from cryptography.fernet import Fernet, InvalidToken
from django.core.handlers.asgi import ASGIHandler
from django.db import connection, connections
from hypothesis import HealthCheck, assume, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from audit_app.models import AuditEntry
from audit_app.services import content_hash
from sessions_app import stateless
from sessions_app.services import SUPPRESSED_NOTICE

from ..factories import UserFactory, token_for
from ..fakes.claude import FakeClaude, canaries_in

pytestmark = pytest.mark.django_db

URL = "/api/v1/stateless/chat/"


def _chat(api, content: str, token: str | None = None, status: int = 200) -> dict:
    response = api.post(URL, {"token": token, "content": content}, format="json")
    assert response.status_code == status, response.content
    assert "no-store" in response["Cache-Control"]
    return response.json()


def _sent(fake: FakeClaude) -> list[tuple[str, str]]:
    """The messages of the last request Claude got, as (role, text)."""
    return [(m["role"], m["content"]) for m in fake.requests[-1]["messages"]]


def _canary() -> str:
    return f"CANARY-{secrets.token_hex(6)}"


# A conversation ----------------------------------------------------------------------------


def test_a_conversation_carries_its_history_in_the_token(api, fake_claude):
    canary = _canary()
    first = _chat(api, f"My word is {canary}.")
    assert first["reply"] == f"Echo: My word is {canary}."
    second = _chat(api, "What is my word?", first["token"])
    assert _sent(fake_claude) == [
        ("user", f"My word is {canary}."),
        ("assistant", f"Echo: My word is {canary}."),
        ("user", "What is my word?"),
    ]
    third = _chat(api, "Thanks.", second["token"])
    assert len(_sent(fake_claude)) == 5 and third["reply"] == "Echo: Thanks."
    # Under WSGI the turn runs synchronously, with the sync client.
    assert {h["x-stainless-async"] for h in fake_claude.request_headers} == {"false"}
    # Encrypted, not just signed: the token reads as noise to whoever holds it.
    for body in (first, second, third):
        assert canary.encode() not in base64.urlsafe_b64decode(body["token"])


def test_a_replayed_token_forks_the_conversation(api, fake_claude):
    first = _chat(api, "Start.")
    _chat(api, "Branch one.", first["token"])
    _chat(api, "Branch two.", first["token"])
    assert _sent(fake_claude) == [
        ("user", "Start."),
        ("assistant", "Echo: Start."),
        ("user", "Branch two."),
    ]


def test_each_conversation_gets_its_own_id(api, user, fake_claude):
    one = stateless.token_open(_chat(api, "One.")["token"], user_id=user.pk)
    two = stateless.token_open(_chat(api, "Two.")["token"], user_id=user.pk)
    assert one.id != two.id and one.id.version == 4


def test_content_is_checked_as_for_any_message(api, fake_claude, settings):
    settings.MAX_MESSAGE_CHARS = 10
    for content in ("", "   ", 42, "x" * 11, "a\x00b"):
        response = api.post(URL, {"token": None, "content": content}, format="json")
        assert response.status_code == 400, (content, response.content)
    assert api.post(URL, {"content": "hi"}, format="json").status_code == 400  # token is required
    assert api.post(URL, {"token": 7, "content": "hi"}, format="json").status_code == 400
    assert fake_claude.request_count() == 0


def test_the_endpoint_needs_authentication(client, fake_claude):
    response = client.post(URL, {"token": None, "content": "hi"}, content_type="application/json")
    assert response.status_code == 401 and response["WWW-Authenticate"]
    assert fake_claude.request_count() == 0


# Tokens that are refused -------------------------------------------------------------------


def _tampered(token: str) -> str:
    raw = bytearray(base64.urlsafe_b64decode(token))
    raw[40] ^= 1  # a bit of the ciphertext
    return base64.urlsafe_b64encode(bytes(raw)).decode()


def _foreign(token: str) -> str:
    # The same layout under a key this service does not hold.
    return Fernet(Fernet.generate_key()).encrypt(b"x" * 40).decode()


@pytest.mark.parametrize(
    ("alter", "code"),
    [
        (lambda token: "not a token at all", "token_malformed"),
        (lambda token: "", "token_malformed"),
        # CharField's own NUL check would answer null_characters_not_allowed instead.
        (lambda token: token[:10] + "\x00" + token[10:], "token_malformed"),
        (lambda token: token.replace("=", "") + "A", "token_truncated"),
        (lambda token: token[:-12], "token_truncated"),
        (lambda token: token[:40], "token_truncated"),
        (_tampered, "token_invalid"),
        (_foreign, "token_invalid"),
    ],
)
def test_a_bad_token_is_400_saying_which_and_nothing_is_sent(api, user, fake_claude, alter, code):
    token = _chat(api, "Hello.")["token"]
    body = _chat(api, "Hello again.", alter(token), status=400)
    assert body["code"] == code and body["detail"]
    assert fake_claude.request_count() == 1
    [entry] = AuditEntry.objects.filter(kind="security", user=user)
    assert code in entry.reason and token not in entry.reason


def test_another_users_token_is_403_and_tells_nothing(api, other_api, other_user, fake_claude):
    canary = _canary()
    token = _chat(api, f"My word is {canary}.")["token"]
    response = other_api.post(URL, {"token": token, "content": "What was said?"}, format="json")
    assert response.status_code == 403
    assert response.json()["code"] == "token_other_user"
    assert canary not in response.content.decode()
    assert fake_claude.request_count() == 1
    [entry] = AuditEntry.objects.filter(kind="security", user=other_user)
    assert "another user" in entry.reason and canary not in entry.reason


def test_a_token_expires_its_ttl_after_the_turn_that_issued_it(api, user, settings, fake_claude):
    ttl = settings.SESSION_TTL_SECONDS
    conversation = stateless.Conversation(user.pk, uuid.uuid4(), (("user", "Hi."),))
    old = stateless.token_issue(conversation, now=time.time() - ttl - 5)
    body = _chat(api, "Still there?", old, status=400)
    assert body["code"] == "token_expired"
    assert fake_claude.request_count() == 0
    recent = stateless.token_issue(conversation, now=time.time() - ttl + 60)
    fresh = _chat(api, "Still there?", recent)
    # The new token counts from this turn.
    assert stateless.token_open(fresh["token"], user_id=user.pk, now=time.time() + ttl - 60)


def test_a_token_lives_its_whole_ttl_to_the_fraction_of_a_second(user, settings):
    """Issued at x.9 s, a token rounded to the second would expire 0.9 s early."""
    ttl = settings.SESSION_TTL_SECONDS
    conversation = stateless.Conversation(user.pk, uuid.uuid4(), (("user", "Hi."),))
    issued = 1_800_000_000.9
    token = stateless.token_issue(conversation, now=issued)
    assert stateless.token_open(token, user_id=user.pk, now=issued + ttl - 0.05) == conversation
    with pytest.raises(stateless.TokenExpired):
        stateless.token_open(token, user_id=user.pk, now=issued + ttl + 0.05)


def test_a_turn_that_would_outgrow_the_token_is_413_and_the_old_token_stays_good(
    api, settings, fake_claude
):
    settings.STATELESS_TOKEN_MAX_BYTES = 3000
    first = _chat(api, "Hello.")
    # The message alone is too much: refused before Claude is called.
    body = _chat(api, secrets.token_hex(2000), first["token"], status=413)
    assert body["code"] == "token_too_large"
    assert fake_claude.request_count() == 1
    # The reply would be too much: Claude was called, but no token comes of it.
    fake_claude.set_responder(lambda body: secrets.token_hex(2000))
    _chat(api, "Say something long.", first["token"], status=413)
    assert fake_claude.request_count() == 2
    fake_claude.set_responder(None)
    _chat(api, "Hello again.", first["token"])
    assert _sent(fake_claude) == [
        ("user", "Hello."),
        ("assistant", "Echo: Hello."),
        ("user", "Hello again."),
    ]


@pytest.mark.parametrize("text", ["A" * 70000, "not a token " * 6000])
def test_text_past_the_limit_that_is_no_token_is_malformed_not_too_large(api, text, fake_claude):
    """API.md's 413 is for a token that would grow past the limit; a long text that is
    no token at all is malformed (400), and says so."""
    body = _chat(api, "Hello.", text, status=400)
    assert body["code"] == "token_malformed"
    assert fake_claude.request_count() == 0


def test_a_token_over_a_lowered_limit_is_413(api, settings, fake_claude):
    first = _chat(api, "Hello.")
    settings.STATELESS_TOKEN_MAX_BYTES = len(first["token"]) - 1
    assert _chat(api, "Again.", first["token"], status=413)["code"] == "token_too_large"
    assert fake_claude.request_count() == 1


def _grown(token: str, past: int) -> str:
    """``token`` with ciphertext blocks added until it is longer than ``past``: shaped as a
    whole token (its form passes), but not one this service issued."""
    raw = base64.urlsafe_b64decode(token)
    blocks = secrets.token_bytes(16 * (past * 3 // 4 // 16 + 1))
    return base64.urlsafe_b64encode(raw[:-32] + blocks + raw[-32:]).decode()


@pytest.mark.parametrize("past", ["grown past the limit", "the limit lowered"])
def test_an_altered_token_past_the_limit_is_400_and_audited_not_413(
    api, user, settings, fake_claude, past
):
    """No token is issued past the limit: one past it that is not an unaltered token of
    ours was altered or forged, and is answered as every other such token (400, audited),
    not as ours issued before the limit was lowered (413, which says "start again")."""
    token = _chat(api, "Hello.")["token"]
    if past == "grown past the limit":
        altered = _grown(token, settings.STATELESS_TOKEN_MAX_BYTES)
        assert settings.STATELESS_TOKEN_MAX_BYTES < len(altered) < settings.MAX_REQUEST_BYTES
    else:
        altered = _tampered(token)
        settings.STATELESS_TOKEN_MAX_BYTES = len(altered) - 1
    body = _chat(api, "Hello again.", altered, status=400)
    assert body["code"] == "token_invalid"
    assert fake_claude.request_count() == 1
    [entry] = AuditEntry.objects.filter(kind="security", user=user)
    assert "token_invalid" in entry.reason


def test_a_token_at_the_limit_opens_and_a_body_past_the_request_limit_is_413(
    api, user, settings, fake_claude
):
    """Around the token check: a token of ours exactly at the limit is still good (only
    the turn that would grow it is refused, 413 ``token_too_large``), and a body over
    ``MAX_REQUEST_BYTES`` is refused at the door whatever token it holds."""
    token = _chat(api, "Hello.")["token"]
    settings.STATELESS_TOKEN_MAX_BYTES = len(token)
    assert stateless.token_open(token, user_id=user.pk).messages[0] == ("user", "Hello.")
    # Text that does not compress, so the token surely grows past its cipher's padding.
    again = f"Again: {secrets.token_urlsafe(96)}"
    assert _chat(api, again, token, status=413)["code"] == "token_too_large"
    body = json.dumps({"token": _grown(token, settings.MAX_REQUEST_BYTES), "content": "Hi."})
    response = api.generic("POST", URL, body, content_type="application/json")
    assert response.status_code == 413
    assert response.json()["code"] == "request_too_large"
    assert fake_claude.request_count() == 1


def test_keys_rotate(api, user, settings, fake_claude):
    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.ENCRYPTION_KEYS = [old_key]
    first = _chat(api, "Hello.")
    settings.ENCRYPTION_KEYS = [new_key, old_key]
    second = _chat(api, "Again.", first["token"])
    assert len(_sent(fake_claude)) == 3
    # Issued under the first key only.
    assert Fernet(new_key).decrypt(second["token"].encode())
    with pytest.raises(InvalidToken):
        Fernet(old_key).decrypt(second["token"].encode())
    settings.ENCRYPTION_KEYS = [new_key]
    assert _chat(api, "Again.", first["token"], status=400)["code"] == "token_invalid"
    _chat(api, "Once more.", second["token"])


# Never accepted: a property ----------------------------------------------------------------

OWNER = 1


@functools.cache
def _valid_tokens() -> tuple[str, str]:
    def issue(words: str) -> str:
        history = (("user", words), ("assistant", f"Echo: {words}"))
        return stateless.token_issue(stateless.Conversation(OWNER, uuid.uuid4(), history))

    return issue("CANARY-first and more words"), issue("CANARY-second, another text")


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


def _altered_tokens(a: str, b: str) -> st.SearchStrategy[str]:
    raw_a, raw_b = base64.urlsafe_b64decode(a), base64.urlsafe_b64decode(b)
    index, raw_index = st.integers(0, len(a) - 1), st.integers(0, len(raw_a) - 1)
    return st.one_of(
        # A byte of the token changed, the text kept well-formed.
        st.tuples(raw_index, st.integers(1, 255)).map(
            lambda p: _encode(raw_a[: p[0]] + bytes([raw_a[p[0]] ^ p[1]]) + raw_a[p[0] + 1 :])
        ),
        # A character replaced, inserted or deleted.
        st.tuples(index, st.characters()).map(lambda p: a[: p[0]] + p[1] + a[p[0] + 1 :]),
        st.tuples(index, st.text(min_size=1, max_size=3)).map(
            lambda p: a[: p[0]] + p[1] + a[p[0] :]
        ),
        index.map(lambda i: a[:i] + a[i + 1 :]),
        # Truncated at either end.
        index.map(lambda i: a[:i]),
        index.map(lambda i: a[i + 1 :]),
        # Two valid tokens spliced, as text and as bytes.
        st.tuples(index, st.integers(0, len(b))).map(lambda p: a[: p[0]] + b[p[1] :]),
        st.tuples(raw_index, st.integers(0, len(raw_b))).map(
            lambda p: _encode(raw_a[: p[0]] + raw_b[p[1] :])
        ),
        # A token twice.
        st.just(a + b),
    )


@hypothesis_settings(max_examples=400, deadline=None, database=None)
@given(data=st.data())
def test_no_altered_truncated_or_spliced_token_is_ever_accepted(data):
    a, b = _valid_tokens()
    assert stateless.token_open(a, user_id=OWNER) and stateless.token_open(b, user_id=OWNER)
    altered = data.draw(st.one_of(_altered_tokens(a, b), _altered_tokens(b, a)))
    assume(altered not in (a, b))
    with pytest.raises(stateless.TokenError):
        stateless.token_open(altered, user_id=OWNER)


@hypothesis_settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_the_endpoint_refuses_every_altered_token_and_sends_nothing(data, api, fake_claude):
    a, b = _valid_tokens()
    altered = data.draw(_altered_tokens(a, b))
    assume(altered not in (a, b))
    response = api.post(URL, {"token": altered, "content": "Hello."}, format="json")
    # 403 if it were somehow valid (the tokens are user 1's): it never is.
    assert response.status_code == 400, response.content
    assert response.json()["code"] in {
        "token_malformed",
        "token_truncated",
        "token_invalid",
    }
    assert fake_claude.request_count() == 0


# The turn ----------------------------------------------------------------------------------


def test_claude_unavailable_is_503_and_the_old_token_stays_good(api, settings, fake_claude):
    first = _chat(api, "Hello.")
    fake_claude.fail(500, times=settings.CLAUDE_MAX_RETRIES + 1)
    body = _chat(api, "Are you there?", first["token"], status=503)
    assert body["code"] == "unavailable" and body["detail"]
    assert fake_claude.request_count() == 1 + settings.CLAUDE_MAX_RETRIES + 1
    _chat(api, "Are you there?", first["token"])
    assert _sent(fake_claude)[-1] == ("user", "Are you there?") and len(_sent(fake_claude)) == 3


@pytest.mark.parametrize("body", [b'{"id": "msg_trunc', b"{}"], ids=["cut-short", "empty-object"])
def test_an_unreadable_reply_is_503_and_the_old_token_stays_good(api, fake_claude, body):
    first = _chat(api, "Hello.")
    fake_claude.malformed(body=body)
    answer = _chat(api, "Are you there?", first["token"], status=503)
    assert answer["code"] == "unavailable" and answer["detail"]
    assert _chat(api, "Are you there?", first["token"])["reply"] == "Echo: Are you there?"


def test_a_dripping_claude_is_503_by_the_turns_deadline(api, settings, fake_claude):
    settings.TURN_DEADLINE_SECONDS = 2
    settings.CLAUDE_TIMEOUT_SECONDS = 30  # the deadline, not this, must bound the call
    # The answer would come whole after 6 s, each byte well within any read timeout: a
    # request thread held that long (under gunicorn, until its --timeout kills the worker).
    fake_claude.drip(times=10, every=0.1, count=60)
    started = time.monotonic()
    assert _chat(api, "Hello.", status=503)["code"] == "unavailable"
    assert time.monotonic() - started < settings.TURN_DEADLINE_SECONDS + 1


def test_a_few_failures_are_retried_within_the_turn(api, settings, fake_claude):
    fake_claude.fail(529, times=settings.CLAUDE_MAX_RETRIES)
    assert _chat(api, "Hello.")["reply"] == "Echo: Hello."


def test_pii_is_pseudonymised_for_claude_and_restored_for_its_owner(api, user, fake_claude):
    first = _chat(api, "My email is alice.w@example.com")
    assert _sent(fake_claude)[-1] == ("user", "My email is <EMAIL_ADDRESS_1>")
    assert first["reply"] == "Echo: My email is alice.w@example.com"
    second = _chat(api, "Write to bob.k@example.org and alice.w@example.com", first["token"])
    assert "@example" not in json.dumps(fake_claude.requests)
    assert _sent(fake_claude)[-1] == ("user", "Write to <EMAIL_ADDRESS_2> and <EMAIL_ADDRESS_1>")
    assert second["reply"] == "Echo: Write to bob.k@example.org and alice.w@example.com"
    # The vault travels inside the token, encrypted with the placeholders.
    conversation = stateless.token_open(second["token"], user_id=user.pk)
    assert conversation.vault == {
        "<EMAIL_ADDRESS_1>": "alice.w@example.com",
        "<EMAIL_ADDRESS_2>": "bob.k@example.org",
    }


def test_a_made_up_placeholder_is_reserved_in_the_token(api, user, fake_claude):
    """As in a stored session: the next address is not numbered 2, which would have shown
    it inside Claude's earlier reply on the next restore."""
    first = _chat(api, "My email is alice.w@example.com")
    fake_claude.set_responder(lambda body: "I will forward it to <EMAIL_ADDRESS_2>.")
    second = _chat(api, "Please pass it on", first["token"])
    assert second["reply"] == "I will forward it to <EMAIL_ADDRESS_2>."
    fake_claude.set_responder(lambda body: "Noted.")
    third = _chat(api, "My bank is boss@example.org", second["token"])
    assert _sent(fake_claude)[-1] == ("user", "My bank is <EMAIL_ADDRESS_3>")
    conversation = stateless.token_open(third["token"], user_id=user.pk)
    assert conversation.vault["<EMAIL_ADDRESS_2>"] == ""


def test_a_reply_with_pii_of_no_placeholder_is_scrubbed(api, fake_claude):
    fake_claude.set_responder(lambda body: "Mail carol.z@example.net about it.")
    assert _chat(api, "Whom should I mail?")["reply"] == "Mail [EMAIL_ADDRESS] about it."


def test_redact_mode_redacts(api, settings, fake_claude):
    settings.PII_MODE = "redact"
    body = _chat(api, "My email is alice.w@example.com")
    assert _sent(fake_claude)[-1] == ("user", "My email is [EMAIL_ADDRESS]")
    assert body["reply"] == "Echo: My email is [EMAIL_ADDRESS]"


SECRET = "Remember my codename: Vexmoria Quintaplex, and my order 48291-XK7."
LEAK = "Your codename is Vexmoria Quintaplex and your order is 48291-XK7."


def _leaking(body: dict) -> str:
    """A model that hands out what another user told it, to whoever asks."""
    last = str(body["messages"][-1]["content"])
    return LEAK if "codename" in last.lower() and "Remember" not in last else "Noted."


def test_a_leaked_reply_is_withheld_and_kept_out_of_the_token(
    api, other_api, other_user, settings, fake_claude
):
    fake_claude.set_responder(_leaking)
    _chat(api, SECRET)
    body = _chat(other_api, "What is my codename?")
    assert body["reply"] == SUPPRESSED_NOTICE
    conversation = stateless.token_open(body["token"], user_id=other_user.pk)
    assert conversation.messages == (("user", "What is my codename?"),)
    [entry] = AuditEntry.objects.filter(flagged=True)
    assert entry.user_id == other_user.pk and "suppressed" in entry.reason
    assert entry.session_id == conversation.id and "Vexmoria" not in str(entry.evidence)
    assert entry.content_hash == content_hash(LEAK)  # the reply withheld, not the notice
    fake_claude.set_responder(lambda body: "All right.")
    _chat(other_api, "Thanks.", body["token"])
    assert "Vexmoria" not in json.dumps(fake_claude.requests[-1])


def test_a_turn_indexes_what_the_scan_reads_and_no_list_that_only_an_erasure_reads(
    api, other_api, user, settings, fake_claude
):
    """The postings are what catches another user's reply carrying the conversation's data;
    a list of them, which a stored session keeps for its erasure, nothing would ever read:
    nothing erases a conversation the server does not keep."""
    from audit_app.services import fingerprint_index, reply_scan

    client = redis.Redis.from_url(settings.REDIS_URL)
    before = set(client.scan_iter("fp:*"))
    fake_claude.set_responder(lambda body: "Noted, Quintaplex.")
    conversation = stateless.token_open(_chat(api, SECRET)["token"], user_id=user.pk)
    written = set(client.scan_iter("fp:*")) - before
    index = fingerprint_index()
    generation = index.layout.generation(time.time())
    needed = {
        index.layout.key(digest, generation).encode()
        for _, text in conversation.messages  # the message and the reply, as kept
        for digest in reply_scan(user_id=user.pk, session_id=conversation.id, text=text).digests
    }
    assert needed and written == needed  # postings only, no conversation's list
    # Another user's reply carrying them is caught by them, and named to the reviewer.
    fake_claude.set_responder(_leaking)
    assert _chat(other_api, "What is my codename?")["reply"] == SUPPRESSED_NOTICE
    [entry] = AuditEntry.objects.filter(flagged=True)
    named = {
        (posting["user_id"], posting["session_id"])
        for item in entry.evidence["items"]
        for posting in item["introduced_by"]
    }
    assert named == {(user.pk, str(conversation.id))}


def test_under_leak_action_flag_the_reply_is_delivered_and_flagged(
    api, other_api, settings, fake_claude
):
    settings.LEAK_ACTION = "flag"
    fake_claude.set_responder(_leaking)
    _chat(api, SECRET)
    assert _chat(other_api, "What is my codename?")["reply"] == LEAK
    [entry] = AuditEntry.objects.filter(flagged=True)
    assert "delivered and flagged" in entry.reason


def test_a_users_own_stateless_data_is_not_a_leak(api, fake_claude):
    fake_claude.set_responder(lambda body: LEAK)
    token = _chat(api, SECRET)["token"]
    assert _chat(api, "What is my codename?", token)["reply"] == LEAK
    assert not AuditEntry.objects.filter(flagged=True).exists()


def test_the_chat_throttle_counts_stateless_posts_with_the_others(api, settings, fake_claude):
    settings.CHAT_THROTTLE_RATE = "3/min"
    sid = api.post("/api/v1/sessions/", {}, format="json").json()["id"]
    posted = api.post(f"/api/v1/sessions/{sid}/messages/", {"content": "Hi."}, format="json")
    assert posted.status_code == 202
    token = _chat(api, "One.")["token"]
    token = _chat(api, "Two.", token)["token"]
    response = api.post(URL, {"token": token, "content": "Three."}, format="json")
    assert response.status_code == 429 and response["Retry-After"]
    assert fake_claude.request_count() == 3


# Nothing kept ------------------------------------------------------------------------------


def _row_counts() -> dict[str, int]:
    counts = {}
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            name = connection.ops.quote_name(table)  # from introspection, quoted
            cursor.execute(f"SELECT count(*) FROM {name}")  # noqa: S608
            counts[table] = cursor.fetchone()[0]
    return counts


def _tables_holding(text: str) -> list[str]:
    found = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            name = connection.ops.quote_name(table)  # from introspection, quoted
            query = f"SELECT count(*) FROM {name} t WHERE t::text LIKE %s"  # noqa: S608
            cursor.execute(query, [f"%{text}%"])
            if cursor.fetchone()[0]:
                found.append(table)
    return found


def _redis_keys_holding(url: str, text: str) -> list[bytes]:
    """Every key of the test's Redis database whose name or value holds ``text``."""
    needle, found = text.encode(), []
    with redis.Redis.from_url(url) as client:
        for key in client.scan_iter(count=1000):
            if needle in key or needle in repr(_redis_value(client, key)).encode():
                found.append(key)
    return found


def _redis_value(client: redis.Redis, key: bytes) -> object:
    match client.type(key):
        case b"string":
            return client.get(key)
        case b"hash":
            return client.hgetall(key)
        case b"list":
            return client.lrange(key, 0, -1)
        case b"set":
            return client.smembers(key)
        case b"zset":
            return client.zrange(key, 0, -1)
        case b"stream":
            return client.xrange(key)
    return None


def test_no_conversation_content_is_kept_on_the_server(api, settings, caplog, fake_claude):
    caplog.set_level(logging.DEBUG)
    tasks: list[object] = []

    def record(**kwargs: object) -> None:
        tasks.append(kwargs.get("sender"))

    before_task_publish.connect(record, weak=False)
    task_prerun.connect(record, weak=False)
    canary, before = _canary(), _row_counts()
    try:
        first = _chat(api, f"My word is {canary}, write it to alice.w@example.com")
        second = _chat(api, f"Say {canary} again.", first["token"])
    finally:
        before_task_publish.disconnect(record)
        task_prerun.disconnect(record)
    assert canary in second["reply"]
    after = _row_counts()
    # Only the audit trail grows (hashes and counts): no session, message, turn or vault.
    assert {table for table in after if after[table] != before[table]} == {"audit_app_auditentry"}
    assert _tables_holding(canary) == [] and _tables_holding("alice.w") == []
    assert _redis_keys_holding(settings.REDIS_URL, canary) == []
    assert _redis_keys_holding(settings.REDIS_URL, "alice.w") == []
    assert canary not in caplog.text and "alice.w" not in caplog.text
    assert tasks == []  # nothing went to the broker


# On an event loop --------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_fifty_conversations_on_one_event_loop_each_send_only_their_own(fake_claude):
    users = [UserFactory() for _ in range(50)]
    canaries = {user.pk: _canary() for user in users}
    stateless.stateless_chat(user_id=users[0].pk, token=None, content="Warm up.")
    fake_claude.reset()
    fake_claude.default_delay = 0.5

    async def conversation(user_id: int) -> stateless.StatelessReply:
        canary = canaries[user_id]
        first = await stateless.stateless_chat_async(
            user_id=user_id, token=None, content=f"My word is {canary}."
        )
        assert first.reply == f"Echo: My word is {canary}."
        return await stateless.stateless_chat_async(
            user_id=user_id, token=first.token, content="What is my word?"
        )

    async def all_at_once() -> list[stateless.StatelessReply]:
        try:
            return await asyncio.gather(*(conversation(user.pk) for user in users))
        finally:
            await sync_to_async(connections.close_all)()

    started = time.monotonic()
    replies = asyncio.run(all_at_once())
    # One after another, 100 calls of 0.5 s would take 50 s: they overlapped.
    assert time.monotonic() - started < 20
    assert fake_claude.request_count() == 100
    for request in fake_claude.requests:
        assert len(canaries_in(json.dumps(request["messages"]))) == 1, request
    second_turns = [r for r in fake_claude.requests if len(r["messages"]) == 3]
    carried = set().union(*(canaries_in(json.dumps(r["messages"])) for r in second_turns))
    assert len(second_turns) == 50 and carried == set(canaries.values())
    for user, reply in zip(users, replies, strict=True):
        history = stateless.token_open(reply.token, user_id=user.pk).messages
        assert canaries_in(json.dumps(history)) == {canaries[user.pk]}


@pytest.mark.django_db(transaction=True)
def test_under_asgi_the_endpoint_serves_many_users_at_once(fake_claude, monkeypatch):
    # Each ASGI request reads the database in a thread of its own: close it with the request.
    monkeypatch.setitem(connection.settings_dict, "CONN_MAX_AGE", 0)
    users = [UserFactory() for _ in range(8)]
    canaries = {user.pk: _canary() for user in users}
    keys = {user.pk: token_for(user) for user in users}  # API tokens are rows: made here
    fake_claude.default_delay = 0.3

    async def post(client, user, body: dict) -> httpx.Response:
        headers = {"Authorization": f"Token {keys[user.pk]}"} if user else {}
        return await client.post(URL, json=body, headers=headers)

    async def conversation(client, user) -> dict:
        first = await post(client, user, {"token": None, "content": canaries[user.pk]})
        assert first.status_code == 200, first.content
        body = {"token": first.json()["token"], "content": "Again?"}
        second = await post(client, user, body)
        assert second.status_code == 200 and "no-store" in second.headers["Cache-Control"]
        return second.json()

    async def run() -> tuple[list[dict], list[httpx.Response]]:
        transport = httpx.ASGITransport(app=ASGIHandler())
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            replies = await asyncio.gather(*(conversation(client, user) for user in users))
            refused = [
                await post(client, None, {"token": None, "content": "Hi."}),
                await post(client, users[0], {"token": "garbage", "content": "Hi."}),
                await client.get(URL, headers={"Authorization": f"Token {keys[users[0].pk]}"}),
            ]
        return replies, refused

    replies, refused = asyncio.run(run())
    assert [r.status_code for r in refused] == [401, 400, 405]
    assert refused[1].json()["code"] == "token_malformed"
    assert all("no-store" in r.headers["Cache-Control"] for r in refused)
    assert fake_claude.request_count() == 16
    # Awaited through AsyncAnthropic on the loop, not the sync client in a thread.
    assert {h["x-stainless-async"] for h in fake_claude.request_headers} == {"async:asyncio"}
    for request in fake_claude.requests:
        assert len(canaries_in(json.dumps(request["messages"]))) == 1, request
    for user, reply in zip(users, replies, strict=True):
        assert reply["reply"] == "Echo: Again?"
        history = stateless.token_open(reply["token"], user_id=user.pk).messages
        assert canaries_in(json.dumps(history)) == {canaries[user.pk]}


@pytest.mark.django_db(transaction=True)
def test_the_sync_and_async_clients_send_the_same_request(api, fake_claude, user):
    _chat(api, "Hello.")

    async def turn() -> None:
        try:
            await stateless.stateless_chat_async(user_id=user.pk, token=None, content="Hello.")
        finally:
            await sync_to_async(connections.close_all)()

    asyncio.run(turn())
    sync, async_ = fake_claude.requests
    assert sync == async_
    ignored = {"x-stainless-async", "user-agent", "x-stainless-runtime", "content-length"}
    headers = [
        {k: v for k, v in h.items() if k not in ignored and not k.startswith("x-stainless-")}
        for h in fake_claude.request_headers
    ]
    assert headers[0].keys() == headers[1].keys()


# What the scan may tell, and what it indexes ------------------------------------------------


def test_echoing_ones_own_words_is_no_leak_and_tells_nothing_of_others(
    api, other_api, fake_claude: FakeClaude
):
    """A reply scanned before the user's own message is indexed would be withheld exactly
    when someone else had used those words: one bit of another user's conversation."""
    sid = other_api.post("/api/v1/sessions/", {}, format="json").json()["id"]
    their_secret = "Please ship order ZQ-88213377 to the Xylophrax warehouse"
    posted = other_api.post(
        f"/api/v1/sessions/{sid}/messages/?wait=5", {"content": their_secret}, format="json"
    )
    assert posted.json()["status"] == "completed"
    probe = _chat(api, "Xylophrax 88213377")  # the fake Claude echoes it back
    assert probe["reply"] == "Echo: Xylophrax 88213377"
    assert not AuditEntry.objects.filter(flagged=True).exists()


def test_what_is_scanned_and_indexed_is_the_scrubbed_reply(api, other_api, fake_claude):
    """PII redacted from what the user reads never enters the fingerprint index either."""
    fake_claude.set_responder(lambda body: "Write to quillfeather.vantrask@example.org today.")
    assert _chat(api, "Who do I write to?")["reply"] == "Write to [EMAIL_ADDRESS] today."
    # Had its tokens been indexed as this user's, the same words to another user would be
    # evidence of a leak.
    fake_claude.set_responder(lambda body: "Quillfeather Vantrask answered.")
    assert _chat(other_api, "Who answered?")["reply"] != SUPPRESSED_NOTICE
    assert not AuditEntry.objects.filter(flagged=True).exists()
