"""HTTPS, cookies and caches: the transport around the isolation guarantees."""

import json
import re
import secrets

import pytest
from django.conf import settings
from django.test import Client
from rest_framework.test import APIClient

from .conftest import random_id
from .test_settings import VALID_KEY, load_settings

pytestmark = pytest.mark.django_db

PRODUCTION = {
    "SECRET_KEY": secrets.token_urlsafe(50),
    "ENCRYPTION_KEYS": VALID_KEY,
    "ALLOWED_HOSTS": "chat.example.com",
}


def _no_store(response) -> bool:
    return "no-store" in response.get("Cache-Control", "")


def test_every_api_answer_says_no_store(api, other_api, settings):
    sid = api.post("/api/v1/sessions/", {}, format="json").json()["id"]
    turn = api.post(f"/api/v1/sessions/{sid}/messages/?wait=5", {"content": "hi"}, format="json")
    settings.MAX_REQUEST_BYTES = 10
    too_large = api.post("/api/v1/sessions/", {"title": "x" * 50}, format="json")
    settings.MAX_REQUEST_BYTES = 1048576
    answers = {
        "token": APIClient().post("/api/v1/auth/token/", {}, format="json"),
        "sessions": api.get("/api/v1/sessions/"),
        "session": api.get(f"/api/v1/sessions/{sid}/"),
        "messages": api.get(f"/api/v1/sessions/{sid}/messages/"),
        "post": turn,
        "turn": api.get(f"/api/v1/turns/{turn.json()['id']}/"),
        "events": api.get(f"/api/v1/turns/{turn.json()['id']}/events/"),
        "404": other_api.get(f"/api/v1/sessions/{sid}/"),
        "401": APIClient().get("/api/v1/sessions/"),
        "400": api.post(f"/api/v1/sessions/{sid}/messages/", {"content": ""}, format="json"),
        "413": too_large,
        "unknown path": api.get(f"/api/v1/nothing/{random_id()}/"),
    }
    assert too_large.status_code == 413
    assert {name: _no_store(r) for name, r in answers.items()} == dict.fromkeys(answers, True)


def test_api_answers_say_no_store_under_a_path_prefix_too(api):
    """Served under a prefix (a proxy's SCRIPT_NAME), ``request.path`` starts with it."""
    response = api.get("/api/v1/sessions/", SCRIPT_NAME="/chat")
    assert response.status_code == 200 and response.wsgi_request.path == "/chat/api/v1/sessions/"
    assert _no_store(response)


@pytest.fixture
def https_on(settings):
    """The settings SECURE_HTTPS=on gives (checked against the settings module below)."""
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    settings.SECURE_HSTS_SECONDS = 31536000
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = True
    return settings


def test_https_redirects_everything_but_the_health_probe(https_on):
    client = Client()
    answer = client.get("/api/v1/sessions/")
    assert answer.status_code == 301
    assert answer["Location"] == "https://testserver/api/v1/sessions/"
    assert client.get("/healthz").status_code == 200
    secure = client.get("/api/v1/sessions/", secure=True)
    assert secure.status_code == 401
    assert secure["Strict-Transport-Security"].startswith("max-age=31536000")


def test_a_forwarded_proto_counts_only_behind_a_configured_proxy(https_on):
    forged = Client().get("/api/v1/sessions/", HTTP_X_FORWARDED_PROTO="https")
    assert forged.status_code == 301  # no proxy configured: the header is the client's word
    https_on.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    proxied = Client().get("/api/v1/sessions/", HTTP_X_FORWARDED_PROTO="https")
    assert proxied.status_code == 401


def test_secure_https_is_on_by_default_without_debug_and_sets_the_policy():
    code = (
        "import django, json; from django.conf import settings; django.setup();"
        "print(json.dumps([settings.SECURE_SSL_REDIRECT, settings.SECURE_REDIRECT_EXEMPT,"
        " settings.SECURE_HSTS_SECONDS, settings.SESSION_COOKIE_SECURE,"
        " settings.CSRF_COOKIE_SECURE, settings.SECURE_PROXY_SSL_HEADER,"
        " settings.CSRF_TRUSTED_ORIGINS]))"
    )
    result = load_settings(
        code,
        **PRODUCTION,
        PROXY_SSL_HEADER="X-Forwarded-Proto",
        CSRF_TRUSTED_ORIGINS="https://chat.example.com",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [
        True,
        ["^healthz$"],
        31536000,
        True,
        True,
        ["HTTP_X_FORWARDED_PROTO", "https"],
        ["https://chat.example.com"],
    ]
    off = load_settings(code, **PRODUCTION, SECURE_HTTPS="off")
    assert json.loads(off.stdout.strip().splitlines()[-1])[:2] == [False, []]


def _check_deploy(**env: str):
    code = (
        "import sys; from django.core.management import execute_from_command_line;"
        "execute_from_command_line(['manage.py', 'check', '--deploy', '--fail-level', 'WARNING'])"
    )
    return load_settings(code, **PRODUCTION, **env)


def test_check_deploy_reports_nothing_in_production():
    result = _check_deploy()
    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout


def test_check_deploy_warns_of_a_proxy_without_num_proxies():
    behind = _check_deploy(PROXY_SSL_HEADER="X-Forwarded-Proto")
    assert behind.returncode != 0 and "isolation.W001" in behind.stderr
    counted = _check_deploy(PROXY_SSL_HEADER="X-Forwarded-Proto", NUM_PROXIES="1")
    assert counted.returncode == 0, counted.stderr


def test_check_deploy_warns_of_a_sweep_that_would_rerun_live_turns():
    early = _check_deploy(STALE_TURN_SECONDS="110")
    assert early.returncode != 0 and "isolation.W002" in early.stderr
    longer = _check_deploy(TURN_DEADLINE_SECONDS="200", STALE_TURN_SECONDS="300")
    assert longer.returncode == 0, longer.stderr
    late = _check_deploy(TURN_DEADLINE_SECONDS="200")  # the default 120 s is now too short
    assert late.returncode != 0 and "isolation.W002" in late.stderr


def test_the_turn_tasks_time_limits_follow_the_turns_deadline():
    code = (
        "import django, json; django.setup(); from isolation_site.celery import app;"
        "print(json.dumps([app.conf.task_soft_time_limit, app.conf.task_time_limit]))"
    )
    result = load_settings(code, **PRODUCTION, TURN_DEADLINE_SECONDS="200")
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [200, 210], result.stderr


def test_check_deploy_does_complain_when_https_is_off():
    result = _check_deploy(SECURE_HTTPS="off")
    assert result.returncode != 0
    assert "security.W008" in result.stderr  # so the test above can fail


@pytest.mark.parametrize("value", ["enable", "true", "0", "ON"])
def test_secure_https_takes_only_on_or_off(value):
    """Read as a boolean, ``enable`` silently meant off: no redirect, no HSTS, insecure
    cookies. Only API.md's two words start."""
    result = load_settings(**PRODUCTION, SECURE_HTTPS=value)
    assert result.returncode != 0
    assert f"SECURE_HTTPS={value!r}: choose 'on' or 'off'" in result.stderr


def test_an_empty_secure_https_is_its_default_not_off():
    code = "import django; from django.conf import settings; print(settings.SECURE_SSL_REDIRECT)"
    result = load_settings(code, **PRODUCTION, SECURE_HTTPS="")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == "True"


def test_the_csrf_cookie_is_out_of_reach_of_scripts_and_the_chat_page_still_posts(user):
    """The chat page reads its token from the page, not from ``document.cookie``."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    page = client.get("/")
    cookie = page.cookies[settings.CSRF_COOKIE_NAME]
    assert cookie["httponly"] is True
    token = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text)[1]
    posted = client.post(
        "/api/v1/sessions/", {}, content_type="application/json", HTTP_X_CSRFTOKEN=token
    )
    assert posted.status_code == 201, posted.content


def test_a_user_model_whose_ids_outgrow_the_redis_index_is_refused(settings, monkeypatch):
    """The Redis fingerprint index keeps a user id in 4 bytes: a user model with a bigint
    key would fail every scan of such a user, so ``check`` (and ``migrate``) refuse it."""
    from django.contrib.auth import get_user_model

    from audit_app.models import AuditEntry
    from core import checks

    settings.REDIS_URL = "redis://127.0.0.1:6379/0"
    assert get_user_model()._meta.pk.get_internal_type() == "AutoField"
    assert checks.user_ids_fit_the_fingerprint_index() == []
    monkeypatch.setattr(checks, "get_user_model", lambda: AuditEntry)  # a BigAutoField key
    [error] = checks.user_ids_fit_the_fingerprint_index()
    assert error.id == "isolation.E001" and "BigAutoField" in error.msg
    settings.REDIS_URL, settings.FINGERPRINT_REDIS_URL = "", ""
    assert checks.user_ids_fit_the_fingerprint_index() == []  # the table keeps bigints
