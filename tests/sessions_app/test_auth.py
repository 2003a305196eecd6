"""Sign-in and API tokens: issue, use, expiry, revocation, the failed-sign-in limit, the
password policy, the demo seed and what the admin shows.

The limit is tested through its three doors (the token endpoint, the login page, the admin
login) on the real Redis cache; addresses are set per request with ``REMOTE_ADDR``.
"""

import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.apps import apps
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import MD5PasswordHasher, make_password
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from knox.models import AuthToken
from knox.signals import token_expired
from rest_framework.request import Request
from rest_framework.test import APIClient, APIRequestFactory

from audit_app.models import AuditEntry
from sessions_app import services, tasks
from sessions_app.models import ChatSession
from sessions_app.tokens import _TOKENS, TokenAuthentication

from ..conftest import ROOT, as_written
from ..factories import UserFactory, token_for

pytestmark = pytest.mark.django_db

TOKEN_URL = "/api/v1/auth/token/"
SESSIONS_URL = "/api/v1/sessions/"
PASSWORD = "pw-for-tests"


def sign_in_api(username: str, password: str, address: str = "10.0.0.1"):
    return APIClient().post(
        TOKEN_URL, {"username": username, "password": password}, format="json", REMOTE_ADDR=address
    )


def sign_in_page(path: str, username: str, password: str, address: str = "10.0.0.1"):
    return Client().post(path, {"username": username, "password": password}, REMOTE_ADDR=address)


def with_token(key: str, keyword: str = "Token") -> APIClient:
    return APIClient(HTTP_AUTHORIZATION=f"{keyword} {key}")


# Tokens --------------------------------------------------------------------------------------


@pytest.mark.usefixtures("vendor")  # knox's query, and Postgres's written out
def test_a_sign_in_issues_a_token_that_works_under_token_and_bearer(user):
    response = sign_in_api(user.username, PASSWORD)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"token", "expires_at"}
    for keyword in ("Token", "Bearer", "bearer"):
        assert with_token(body["token"], keyword).get(SESSIONS_URL).status_code == 200, keyword


@pytest.mark.usefixtures("vendor")  # knox's query, and Postgres's written out
def test_the_token_expires_after_token_ttl_seconds(user, settings):
    settings.TOKEN_TTL_SECONDS = 3600
    before = timezone.now()
    body = sign_in_api(user.username, PASSWORD).json()
    expires_at = AuthToken.objects.get(user=user).expiry
    assert abs(expires_at - (before + timedelta(seconds=3600))) < timedelta(seconds=5)
    assert body["expires_at"].startswith(expires_at.strftime("%Y-%m-%dT%H:%M:%S"))

    settings.TOKEN_TTL_SECONDS = 1
    key = sign_in_api(user.username, PASSWORD).json()["token"]
    assert with_token(key).get(SESSIONS_URL).status_code == 200
    time.sleep(1.1)
    response = with_token(key).get(SESSIONS_URL)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"
    assert set(response.json()) >= {"detail", "code"}


@pytest.mark.usefixtures("vendor")  # knox's query, and Postgres's written out
def test_each_sign_in_gets_its_own_token_and_sign_out_revokes_only_that_one(user):
    phone, laptop = (sign_in_api(user.username, PASSWORD).json()["token"] for _ in range(2))
    assert phone != laptop
    assert with_token(phone).get(SESSIONS_URL).status_code == 200
    assert with_token(laptop, "Bearer").get(SESSIONS_URL).status_code == 200

    assert with_token(phone, "Bearer").delete(TOKEN_URL).status_code == 204
    assert with_token(phone).get(SESSIONS_URL).status_code == 401
    assert with_token(phone).delete(TOKEN_URL).status_code == 401
    assert with_token(laptop).get(SESSIONS_URL).status_code == 200


def test_a_new_password_signs_out_every_api_token_of_that_user_only(user, other_user, admin_client):
    """A password reset meant to lock someone out locks out the tokens they took too."""
    phone, laptop = (sign_in_api(user.username, PASSWORD).json()["token"] for _ in range(2))
    others = sign_in_api(other_user.username, PASSWORD).json()["token"]
    # A sign-in writes last_login, a save of the user that keeps its password.
    assert with_token(phone).get(SESSIONS_URL).status_code == 200

    response = admin_client.post(
        f"/admin/auth/user/{user.pk}/password/",
        {"password1": "a-new-pw-for-tests", "password2": "a-new-pw-for-tests"},
    )
    assert response.status_code == 302, response.content
    assert with_token(phone).get(SESSIONS_URL).status_code == 401
    assert with_token(laptop).get(SESSIONS_URL).status_code == 401
    assert with_token(others).get(SESSIONS_URL).status_code == 200
    fresh = sign_in_api(user.username, "a-new-pw-for-tests").json()["token"]
    assert with_token(fresh).get(SESSIONS_URL).status_code == 200

    user.refresh_from_db()
    user.set_unusable_password()
    user.save()
    assert with_token(fresh).get(SESSIONS_URL).status_code == 401
    assert with_token(others).get(SESSIONS_URL).status_code == 200


def test_a_sign_in_that_rehashes_the_password_keeps_the_users_other_tokens(user, settings):
    """Django rehashes a password on a sign-in whose stored hash is outdated (a new default
    hasher, more iterations after an upgrade): the same password, a new hash, which must
    not sign the user's other devices out. A new password still does."""
    phone = sign_in_api(user.username, PASSWORD).json()["token"]
    settings.PASSWORD_HASHERS = [
        "django.contrib.auth.hashers.PBKDF2PasswordHasher",
        *settings.PASSWORD_HASHERS,
    ]
    laptop = sign_in_api(user.username, PASSWORD)
    assert laptop.status_code == 200
    user.refresh_from_db()
    assert user.password.startswith("pbkdf2_sha256$")  # rehashed by the sign-in
    assert with_token(phone).get(SESSIONS_URL).status_code == 200
    assert with_token(laptop.json()["token"]).get(SESSIONS_URL).status_code == 200
    user.set_password("a-new-pw-for-tests")
    user.save(update_fields=["password"])
    assert with_token(phone).get(SESSIONS_URL).status_code == 401


def test_a_page_drawn_for_one_user_is_not_answered_with_anothers_cookie(user, other_user):
    """The chat page names its user in X-Page-User: a browser whose cookie is now another
    account's (a sign-in in another tab) gets 401 for it, before anything is read or
    audited. A token ignores the header: an API client has no page."""
    browser = Client()
    browser.force_login(other_user)  # the cookie the browser holds now
    stale = browser.get(SESSIONS_URL, HTTP_X_PAGE_USER=str(user.pk))
    assert stale.status_code == 401
    assert stale.json()["code"] == "signed_in_as_another_user"
    assert "WWW-Authenticate" in stale.headers
    chat = services.chat_session_create(owner=user)
    foreign = browser.get(f"/api/v1/sessions/{chat.pk}/", HTTP_X_PAGE_USER=str(user.pk))
    assert foreign.status_code == 401
    assert not AuditEntry.objects.filter(kind="security").exists()
    # Its event stream (an EventSource sends no header) names the page's user in the address.
    turn = services.message_accept(user=user, session_id=chat.pk, content="hi")
    stream = browser.get(f"/api/v1/turns/{turn.pk}/events/?page_user={user.pk}")
    assert stream.status_code == 401
    assert stream.json()["code"] == "signed_in_as_another_user"
    assert not AuditEntry.objects.filter(kind="security").exists()
    assert browser.get(SESSIONS_URL, HTTP_X_PAGE_USER=str(other_user.pk)).status_code == 200
    assert browser.get(SESSIONS_URL).status_code == 200
    key = sign_in_api(other_user.username, PASSWORD).json()["token"]
    assert with_token(key).get(SESSIONS_URL, HTTP_X_PAGE_USER=str(user.pk)).status_code == 200


def test_a_new_password_assigned_as_a_hash_over_an_outdated_one_signs_tokens_out(user, settings):
    """After an upgrade every stored hash is outdated until its user signs in: a new
    password set from a shell as a hash (no sign-in's check running) is no rehash."""
    stolen = sign_in_api(user.username, PASSWORD).json()["token"]
    settings.PASSWORD_HASHERS = [
        "django.contrib.auth.hashers.PBKDF2PasswordHasher",
        *settings.PASSWORD_HASHERS,
    ]
    user.refresh_from_db()
    user.password = make_password("a-brand-new-pw-for-tests")
    user.save()
    assert with_token(stolen).get(SESSIONS_URL).status_code == 401


def test_saving_a_user_without_a_new_password_keeps_its_tokens(user):
    key = sign_in_api(user.username, PASSWORD).json()["token"]
    user.refresh_from_db()
    user.first_name = "Renamed"
    user.save()
    user.save(update_fields=["last_login"])
    assert with_token(key).get(SESSIONS_URL).status_code == 200


@pytest.mark.usefixtures("vendor")  # knox's query, and Postgres's written out
def test_a_request_reads_only_its_own_token_however_many_the_user_has(user):
    """One query authenticates, not one more that reads every other token of the user."""
    keys = [token_for(user) for _ in range(12)]
    AuthToken.objects.filter(user=user).exclude(token_key=keys[0][:15]).update(
        expiry=timezone.now() - timedelta(seconds=1)
    )
    request = APIRequestFactory().get(SESSIONS_URL, HTTP_AUTHORIZATION=f"Token {keys[0]}")
    with CaptureQueriesContext(connection) as queries:
        authenticated, token = TokenAuthentication().authenticate(Request(request))
    assert (authenticated.pk, len(queries)) == (user.pk, 1)
    assert "knox_authtoken" in queries[0]["sql"] and "auth_user" in queries[0]["sql"]
    assert AuthToken.objects.filter(user=user).count() == 12  # nothing read, nothing deleted


@pytest.mark.parametrize("vendor", ["postgresql"], indirect=True)
def test_on_postgres_a_token_is_read_by_the_written_out_statement(vendor, user):
    # Knox's query answers the same: only the SQL that ran tells which way was taken.
    key = token_for(user)
    with CaptureQueriesContext(connection) as queries:
        authenticated, _ = TokenAuthentication().authenticate_credentials(key.encode())
    assert authenticated.pk == user.pk
    assert as_written(queries, _TOKENS) == [_TOKENS]


@pytest.mark.usefixtures("vendor")  # knox's query, and Postgres's written out
def test_an_expired_token_is_refused_and_deleted_and_knox_signals_it(user):
    key = token_for(user)
    AuthToken.objects.filter(user=user).update(expiry=timezone.now() - timedelta(seconds=1))
    signalled = []

    def expired(sender, **kwargs) -> None:
        signalled.append((sender, kwargs["username"], kwargs["source"]))

    token_expired.connect(expired)
    try:
        response = with_token(key).get(SESSIONS_URL)
    finally:
        token_expired.disconnect(expired)
    assert response.status_code == 401
    assert not AuthToken.objects.filter(user=user).exists()
    assert signalled == [(TokenAuthentication, user.username, "auth_token")]


@pytest.mark.usefixtures("vendor")
def test_the_request_carries_the_tokens_own_user_whole(user, other_user):
    mine, theirs = token_for(user), token_for(other_user)
    for key, owner in ((mine, user), (theirs, other_user)):
        request = APIRequestFactory().get(SESSIONS_URL, HTTP_AUTHORIZATION=f"Token {key}")
        authenticated, token = TokenAuthentication().authenticate(Request(request))
        assert (authenticated.pk, token.user_id, token.token_key) == (owner.pk, owner.pk, key[:15])
        assert (authenticated.username, authenticated.is_active) == (owner.username, True)
        assert authenticated.date_joined == owner.date_joined  # a whole row, not a few columns


@pytest.mark.usefixtures("vendor")
def test_a_wrong_secret_under_a_real_key_and_an_inactive_users_token_are_401(user):
    key = token_for(user)
    forged = key[:15] + ("0" if key[15] != "0" else "1") + key[16:]
    assert with_token(forged).get(SESSIONS_URL).status_code == 401
    assert with_token(key).get(SESSIONS_URL).status_code == 200
    type(user).objects.filter(pk=user.pk).update(is_active=False)
    assert with_token(key).get(SESSIONS_URL).status_code == 401


def test_expired_tokens_go_at_the_next_sign_in_and_in_the_purge(user, other_user):
    live = token_for(user)
    old = [token_for(user) for _ in range(3)] + [token_for(other_user)]
    AuthToken.objects.filter(token_key__in=[key[:15] for key in old]).update(
        expiry=timezone.now() - timedelta(seconds=1)
    )
    fresh = sign_in_api(user.username, PASSWORD).json()["token"]
    kept = set(AuthToken.objects.values_list("token_key", flat=True))
    assert kept == {live[:15], fresh[:15], old[3][:15]}  # the other user's waits for the purge
    assert tasks.purge_expired_sessions() == 0
    assert set(AuthToken.objects.values_list("token_key", flat=True)) == {live[:15], fresh[:15]}
    assert with_token(live).get(SESSIONS_URL).status_code == 200


def test_signing_out_needs_a_token(user):
    response = APIClient().delete(TOKEN_URL)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"
    browser = APIClient()
    browser.force_login(user)  # a session cookie holds no token to sign out
    assert browser.delete(TOKEN_URL).status_code == 401


@pytest.mark.parametrize("key", ["\u00e9" * 64, "g" * 64, "ab\x00cd"])
def test_a_key_that_is_not_hexadecimal_is_401(user, key):
    response = with_token(key).get(SESSIONS_URL)
    assert response.status_code == 401
    assert set(response.json()) >= {"detail", "code"}


def test_the_database_holds_no_usable_key(user):
    keys = [sign_in_api(user.username, PASSWORD).json()["token"] for _ in range(2)]
    keys.append(token_for(user))
    stored = [
        str(value)
        for model in apps.get_models()
        for row in model._base_manager.values_list()
        for value in row
    ]
    assert len(stored) > 10
    for key in keys:
        assert not any(key in value for value in stored)
        assert with_token(key).get(SESSIONS_URL).status_code == 200


def test_the_schema_declares_the_bearer_scheme():
    document = APIClient().get("/api/schema/?format=json").json()
    schemes = document["components"]["securitySchemes"]
    bearer = [name for name, scheme in schemes.items() if scheme.get("scheme") == "bearer"]
    assert bearer and schemes[bearer[0]]["type"] == "http"
    assert {bearer[0]: []} in document["paths"][SESSIONS_URL]["get"]["security"]
    assert {bearer[0]: []} in document["paths"][TOKEN_URL]["delete"]["security"]
    assert "security" not in document["paths"][TOKEN_URL]["post"] or document["paths"][TOKEN_URL][
        "post"
    ]["security"] in ([], [{}])


# The failed-sign-in limit --------------------------------------------------------------------

LOGIN_PAGE = "/accounts/login/"
ADMIN_LOGIN = "/admin/login/"


def assert_throttled(response) -> None:
    assert response.status_code == 429
    assert 1 <= int(response["Retry-After"]) <= 60


def test_failures_are_limited_per_username_across_every_sign_in(user, settings):
    settings.LOGIN_THROTTLE_RATE = "3/min"
    # Each failure from another address: only the username's count can be reached.
    assert sign_in_api(user.username, "wrong", "10.0.1.1").status_code == 400
    assert sign_in_page(LOGIN_PAGE, user.username, "wrong", "10.0.1.2").status_code == 200
    assert sign_in_page(ADMIN_LOGIN, user.username, "wrong", "10.0.1.3").status_code == 200

    response = sign_in_api(user.username, PASSWORD, "10.0.1.4")  # the right password
    assert_throttled(response)
    assert response.json()["code"] == "throttled"
    assert "Try again in" in response.json()["detail"]
    assert_throttled(sign_in_page(LOGIN_PAGE, user.username, PASSWORD, "10.0.1.5"))
    assert_throttled(sign_in_page(ADMIN_LOGIN, user.username, PASSWORD, "10.0.1.6"))
    # Another user, from one of those addresses, is not concerned.
    assert sign_in_api(UserFactory().username, PASSWORD, "10.0.1.1").status_code == 200


def _password_change(browser: Client, old: str):
    new = {"new_password1": "a-new-pw-for-tests", "new_password2": "a-new-pw-for-tests"}
    return browser.post("/admin/password_change/", {"old_password": old, **new})


def test_the_admins_password_change_counts_guesses_of_the_old_password(settings):
    """A stolen staff session must not guess the password without limit, then sign in."""
    settings.LOGIN_THROTTLE_RATE = "3/min"
    staff = UserFactory(is_staff=True)
    browser = Client(REMOTE_ADDR="10.0.3.1")
    browser.force_login(staff)
    for _ in range(3):
        wrong = _password_change(browser, "wrong")
        assert wrong.status_code == 200 and "old password was entered incorrectly" in wrong.text

    refused = _password_change(browser, PASSWORD)  # the right one, past the limit
    assert_throttled(refused)
    assert "Too many failed sign-ins" in refused.text
    staff.refresh_from_db()
    assert staff.check_password(PASSWORD)
    # One count with the sign-ins: the username is throttled everywhere.
    assert_throttled(sign_in_api(staff.username, PASSWORD, "10.0.3.2"))


def test_a_right_old_password_changes_it_and_does_not_count(settings):
    settings.LOGIN_THROTTLE_RATE = "1/min"
    staff = UserFactory(is_staff=True)
    browser = Client(REMOTE_ADDR="10.0.3.3")
    browser.force_login(staff)
    assert _password_change(browser, PASSWORD).status_code == 302
    assert sign_in_api(staff.username, "a-new-pw-for-tests", "10.0.3.3").status_code == 200


def test_failures_are_limited_per_address_across_every_sign_in(settings):
    settings.LOGIN_THROTTLE_RATE = "3/min"
    users = [UserFactory() for _ in range(5)]
    address = "10.0.2.1"
    assert sign_in_api(users[0].username, "wrong", address).status_code == 400
    assert sign_in_page(LOGIN_PAGE, users[1].username, "wrong", address).status_code == 200
    assert sign_in_page(ADMIN_LOGIN, "nobody-at-all", "wrong", address).status_code == 200

    assert_throttled(sign_in_api(users[3].username, PASSWORD, address))
    assert_throttled(sign_in_page(LOGIN_PAGE, users[3].username, PASSWORD, address))
    assert_throttled(sign_in_page(ADMIN_LOGIN, users[4].username, PASSWORD, address))
    # The same users elsewhere are not concerned.
    assert sign_in_api(users[3].username, PASSWORD, "10.0.2.2").status_code == 200


@pytest.mark.parametrize("page", [LOGIN_PAGE, ADMIN_LOGIN])
def test_a_throttled_sign_in_page_is_its_form_again_saying_why(page, user, settings):
    """A person at the login page gets the form back, not a line of plain text."""
    settings.LOGIN_THROTTLE_RATE = "1/min"
    assert sign_in_page(page, user.username, "wrong").status_code == 200
    response = sign_in_page(page, user.username, PASSWORD)
    assert_throttled(response)
    assert response["Content-Type"].startswith("text/html")
    html = response.content.decode()
    assert 'name="password"' in html and f'value="{user.username}"' in html
    [said] = re.findall(r'<(?:p|li) class="error[^"]*"[^>]*>([^<]+)<', html)
    assert said.strip().startswith("Too many failed sign-ins") and "Try again in" in said
    # The 429 names the right password no more than the wrong one: it checked none.
    assert "did not match" not in html and "correct username" not in html


def test_a_forged_forwarded_for_header_does_not_change_the_address(settings):
    settings.LOGIN_THROTTLE_RATE = "2/min"
    for n in range(2):
        response = APIClient().post(
            TOKEN_URL,
            {"username": f"guess{n}", "password": "wrong"},
            format="json",
            REMOTE_ADDR="10.0.3.1",
            HTTP_X_FORWARDED_FOR=f"192.0.2.{n}",
        )
        assert response.status_code == 400
    response = APIClient().post(
        TOKEN_URL,
        {"username": "guess9", "password": "wrong"},
        format="json",
        REMOTE_ADDR="10.0.3.1",
        HTTP_X_FORWARDED_FOR="192.0.2.99",
    )
    assert_throttled(response)


def test_successful_sign_ins_never_count(user, settings):
    settings.LOGIN_THROTTLE_RATE = "2/min"
    for _ in range(5):
        assert sign_in_api(user.username, PASSWORD).status_code == 200
        assert sign_in_page(LOGIN_PAGE, user.username, PASSWORD).status_code == 302
    assert sign_in_api(user.username, "wrong").status_code == 400
    assert sign_in_api(user.username, PASSWORD).status_code == 200
    assert sign_in_page(LOGIN_PAGE, user.username, "wrong").status_code == 200
    assert_throttled(sign_in_api(user.username, PASSWORD))


def test_a_throttled_sign_in_spends_no_password_hash(user, settings, monkeypatch):
    settings.LOGIN_THROTTLE_RATE = "1/min"
    hashes = []
    encode = MD5PasswordHasher.encode
    monkeypatch.setattr(
        MD5PasswordHasher, "encode", lambda self, *a: hashes.append(1) or encode(self, *a)
    )
    assert sign_in_api(user.username, "wrong").status_code == 400
    assert hashes
    hashes.clear()
    assert_throttled(sign_in_api(user.username, PASSWORD))
    assert_throttled(sign_in_api("nobody-at-all", "wrong"))  # same address
    assert_throttled(sign_in_page(LOGIN_PAGE, user.username, PASSWORD))
    assert hashes == []


def test_parallel_guesses_cannot_slip_past_the_limit(settings, monkeypatch):
    """Each guess takes its place in the count before its (slow) hash runs."""
    settings.LOGIN_THROTTLE_RATE = "5/min"
    hashes = []
    encode = MD5PasswordHasher.encode

    def slow_encode(self, *args):
        hashes.append(1)
        time.sleep(0.3)
        return encode(self, *args)

    monkeypatch.setattr(MD5PasswordHasher, "encode", slow_encode)

    def guess(n: int) -> int:
        try:
            return sign_in_api(f"nobody{n}", "wrong", "10.0.4.1").status_code
        finally:
            connection.close()

    with ThreadPoolExecutor(20) as pool:
        statuses = sorted(pool.map(guess, range(20)))
    assert statuses == [400] * 5 + [429] * 15
    assert len(hashes) == 5


def test_the_limit_ends_when_its_window_passes(user, settings):
    settings.LOGIN_THROTTLE_RATE = "2/s"
    assert sign_in_api(user.username, "wrong").status_code == 400
    assert sign_in_api(user.username, "wrong").status_code == 400
    response = sign_in_api(user.username, PASSWORD)
    assert_throttled(response)
    time.sleep(int(response["Retry-After"]) + 0.05)
    assert sign_in_api(user.username, PASSWORD).status_code == 200


def test_a_counter_that_expires_as_it_is_counted_is_counted_again(user, monkeypatch):
    """The window can end between the counter's ``add`` and its increment: that sign-in
    counts in the next window, it is not a 500."""
    from django.core.cache import cache

    add = cache.add
    expired = []

    def add_then_expire(key, *args, **kwargs):
        added = add(key, *args, **kwargs)
        if str(key).count(":") > 2 and not expired:  # a counter, named after its window's end
            expired.append(cache.delete(key))
        return added

    monkeypatch.setattr(cache, "add", add_then_expire)
    assert sign_in_api(user.username, "wrong").status_code == 400
    assert sign_in_api(user.username, PASSWORD).status_code == 200
    assert expired == [True]


def test_an_unthrottled_sign_in_page_still_works(user, settings):
    settings.LOGIN_THROTTLE_RATE = "3/min"
    staff = UserFactory(is_staff=True, is_superuser=True)
    assert sign_in_page(ADMIN_LOGIN, staff.username, PASSWORD).status_code == 302
    page = Client().get(ADMIN_LOGIN)
    assert page.status_code == 200 and b'name="password"' in page.content


# Passwords and the demo seed -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("password", "why"),
    [
        ("short1!", "password_too_short"),
        ("password123", "password_too_common"),
        ("49381726354", "password_entirely_numeric"),
        ("bartholomew-quince", "password_too_similar"),
    ],
)
def test_passwords_meet_djangos_full_set_of_validators(password, why):
    user = get_user_model()(username="bartholomew-quince")
    with pytest.raises(ValidationError) as refused:
        validate_password(password, user=user)
    assert why in {error.code for error in refused.value.error_list}


def test_a_good_password_passes_the_validators():
    validate_password("mauve-lantern-orbit-47", user=get_user_model()(username="alice"))


def test_seed_demo_users_refuses_with_debug_off():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    env.pop("DEBUG", None)
    result = subprocess.run(
        [sys.executable, "manage.py", "seed_demo_users"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "DEBUG" in result.stderr
    assert "API token" not in result.stdout
    assert not get_user_model().objects.filter(username="staff").exists()


def test_seed_demo_users_prints_working_logins_with_debug_on(settings, capsys):
    settings.DEBUG = True
    call_command("seed_demo_users")
    call_command("seed_demo_users")  # a second run keeps the users, issues new tokens
    lines = [line.split() for line in capsys.readouterr().out.splitlines() if "API token" in line]
    assert [line[0] for line in lines] == ["alice", "bob", "staff"] * 2
    for username, _, password, _, _, key, _ in lines:
        assert sign_in_api(username, password).status_code == 200
        assert with_token(key).get(SESSIONS_URL).status_code == 200


# The admin -----------------------------------------------------------------------------------


@pytest.fixture
def staff_client(client):
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


def test_staff_cannot_extend_or_retitle_a_session(staff_client, user):
    session = services.chat_session_create(owner=user, title="groceries")
    url = f"/admin/sessions_app/chatsession/{session.pk}/change/"
    page = staff_client.get(url)
    assert page.status_code == 200
    assert b'name="title"' not in page.content and b'name="expires_at' not in page.content
    later = timezone.now() + timedelta(days=365)
    staff_client.post(
        url,
        {
            "title": "renamed",
            "expires_at_0": later.strftime("%Y-%m-%d"),
            "expires_at_1": "00:00:00",
            "messages-TOTAL_FORMS": "0",
            "messages-INITIAL_FORMS": "0",
        },
    )
    session.refresh_from_db()
    fresh = ChatSession.objects.get(pk=session.pk)
    assert fresh.title == "groceries"
    assert fresh.expires_at == session.expires_at < later


def test_staff_cannot_delete_a_session_past_its_erasure(staff_client, user):
    """A delete in the admin would cascade in the database only (not the redis store's keys
    nor the fingerprint postings): erasure is the owner's DELETE or the expiry purge."""
    session = services.chat_session_create(owner=user, title="groceries")
    url = f"/admin/sessions_app/chatsession/{session.pk}/delete/"
    assert staff_client.get(url).status_code == 403
    assert staff_client.post(url, {"post": "yes"}).status_code == 403
    changelist = staff_client.post(
        "/admin/sessions_app/chatsession/",
        {"action": "delete_selected", "_selected_action": [str(session.pk)], "post": "yes"},
    )
    assert changelist.status_code in (200, 302)
    assert ChatSession.objects.filter(pk=session.pk).exists()


def test_the_token_admin_shows_no_usable_key(staff_client, user):
    key = sign_in_api(user.username, PASSWORD).json()["token"]
    token = AuthToken.objects.get(user=user)
    listing = staff_client.get("/admin/knox/authtoken/")
    detail = staff_client.get(f"/admin/knox/authtoken/{token.pk}/change/")
    assert listing.status_code == detail.status_code == 200
    assert user.username.encode() in listing.content
    for page in (listing, detail):
        assert key.encode() not in page.content
        assert key[: len(token.token_key)].encode() not in page.content
    # Knox's own admin would issue a token and show its key; this one issues none.
    assert staff_client.get("/admin/knox/authtoken/add/").status_code == 403
    # Revoking (deleting) a token stays possible.
    staff_client.post(f"/admin/knox/authtoken/{token.pk}/delete/", {"post": "yes"})
    assert with_token(key).get(SESSIONS_URL).status_code == 401
