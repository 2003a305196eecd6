"""Settings come from the environment; production refuses to start without its secrets."""

import ast
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SETTINGS_SOURCE = (ROOT / "isolation_site" / "settings.py").read_text()
VALID_KEY = "rP0RmBBqN7Yx7PrwnWbJ1dGPLmVZ8kxAqV8VwK9xG2c="


SUMMARY = (
    "import django, json; from django.conf import settings; django.setup();"
    "print(json.dumps({'engine': settings.DATABASES['default']['ENGINE'],"
    " 'cache': settings.CACHES['default']['BACKEND'],"
    " 'eager': settings.CELERY_TASK_ALWAYS_EAGER, 'llm': settings.LLM_PROVIDER,"
    " 'broker': settings.CELERY_BROKER_URL}))"
)
# Set by tests/settings.py for the suite itself; a fresh process must not inherit them.
SUITE_ENV = {
    "DEBUG",
    "SECRET_KEY",
    "ENCRYPTION_KEYS",
    "DATABASE_URL",
    "REDIS_URL",
    "CELERY_BROKER_URL",
    "CELERY_TASK_ALWAYS_EAGER",
    "LLM_PROVIDER",
    "ANTHROPIC_API_KEY",
    "DJANGO_SETTINGS_MODULE",
    "SECURE_HTTPS",
}


def load_settings(code: str = SUMMARY, **env: str | None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python with the production settings module and ``env`` (a
    variable given as None unset)."""
    clean = {k: v for k, v in os.environ.items() if k not in SUITE_ENV}
    env = {**clean, "DJANGO_SETTINGS_MODULE": "isolation_site.settings", **env}
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in env.items() if v is not None},
    )


def test_without_debug_and_secret_key_it_refuses_to_start():
    result = load_settings()
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def test_without_debug_and_encryption_keys_it_refuses_to_start():
    result = load_settings(SECRET_KEY="s")
    assert result.returncode != 0
    assert "ENCRYPTION_KEYS must be set" in result.stderr


def test_embedded_default_needs_no_services():
    result = load_settings(DEBUG="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(
        '{"engine": "django.db.backends.sqlite3", "cache": '
        '"django.core.cache.backends.locmem.LocMemCache", "eager": true, "llm": "offline", '
        '"broker": "memory://"}'
    )


def test_production_services_come_from_the_environment():
    result = load_settings(
        SECRET_KEY="s",
        ENCRYPTION_KEYS=VALID_KEY,
        ANTHROPIC_API_KEY="key",
        DATABASE_URL="postgres://postgres@127.0.0.1:5432/isolation",
        REDIS_URL="redis://127.0.0.1:6379/0",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(
        '{"engine": "django.db.backends.postgresql", "cache": '
        '"django_redis.cache.RedisCache", "eager": false, "llm": "anthropic", '
        '"broker": "redis://127.0.0.1:6379/0"}'
    )


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("HISTORY_STORE", "memory", "choose 'db', 'redis' or 'cached_db'"),
        ("PII_MODE", "mask", "choose 'off', 'redact' or 'pseudonymize'"),
        ("LEAK_ACTION", "delete", "choose 'suppress' or 'flag'"),
        ("LLM_PROVIDER", "openai", "choose 'anthropic' or 'offline'"),
    ],
)
def test_an_unknown_choice_refuses_to_start(name, value, says):
    result = load_settings(DEBUG="1", **{name: value})
    assert result.returncode != 0
    assert f"{name}={value!r}: {says}" in result.stderr


def test_the_redis_history_store_without_redis_refuses_to_start():
    result = load_settings(DEBUG="1", HISTORY_STORE="redis")
    assert result.returncode != 0
    assert "HISTORY_STORE='redis' needs REDIS_URL" in result.stderr


def test_the_cached_db_store_with_a_worker_but_no_shared_cache_refuses_to_start():
    """Each process would cache in its own memory: the web's copies never learn of the
    worker's replies, so a history read after a reply showed none."""
    broker = {"CELERY_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//"}
    result = load_settings(DEBUG="1", HISTORY_STORE="cached_db", **broker)
    assert result.returncode != 0
    assert "HISTORY_STORE='cached_db' with a Celery worker needs REDIS_URL" in result.stderr
    embedded = load_settings(DEBUG="1", HISTORY_STORE="cached_db")  # one process: eager
    assert embedded.returncode == 0, embedded.stderr


def test_static_assets_are_served_by_the_web_process_without_debug(tmp_path):
    """collectstatic, then gunicorn-style serving with DEBUG off: /api/docs/ has its assets."""
    env = {"SECRET_KEY": "s", "ENCRYPTION_KEYS": VALID_KEY, "STATIC_ROOT_FOR_TEST": str(tmp_path)}
    code = (
        "import django, os; from django.conf import settings;"
        "settings.STATIC_ROOT = os.environ['STATIC_ROOT_FOR_TEST']; django.setup();"
        "from django.core.management import call_command;"
        "call_command('collectstatic', '--noinput', verbosity=0);"
        "from django.test import Client;"
        "r = Client().get("
        "'/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui.css', secure=True);"
        "print(r.status_code, r.get('Content-Type'))"
    )
    result = load_settings(code, DEBUG="0", ALLOWED_HOSTS="testserver", **env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith('200 text/css; charset="utf-8"')


def test_persistent_connections_are_off_under_asgi_unless_asked_for():
    code = (
        "import isolation_site.asgi; from django.conf import settings;"
        "print(settings.DATABASES['default']['CONN_MAX_AGE'])"
    )
    database = {
        "SECRET_KEY": "s",
        "ENCRYPTION_KEYS": VALID_KEY,
        "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/isolation",
    }
    assert load_settings(code, **database).stdout.split()[-1] == "0"
    assert load_settings(code, CONN_MAX_AGE="30", **database).stdout.split()[-1] == "30"
    # Set but empty is unset: it was kept, and settings read it as the WSGI default, 60.
    assert load_settings(code, CONN_MAX_AGE="", **database).stdout.split()[-1] == "0"
    wsgi = code.replace("isolation_site.asgi", "isolation_site.wsgi")
    assert load_settings(wsgi, **database).stdout.split()[-1] == "60"


def test_encryption_keys_that_are_not_fernet_keys_refuse_to_start():
    result = load_settings(SECRET_KEY="s", ENCRYPTION_KEYS=f"{VALID_KEY},not-a-key")
    assert result.returncode != 0
    assert "ENCRYPTION_KEYS must be Fernet keys" in result.stderr


@pytest.mark.parametrize(
    ("name", "debug"),
    [
        ("SECRET_KEY", None),
        ("SECRET_KEY", "1"),  # not the development key either: it was set, to nothing usable
        ("ENCRYPTION_KEYS", None),
        ("AUDIT_CHAIN_KEY", None),
        ("ANTHROPIC_API_KEY", None),
    ],
)
def test_a_secret_of_blanks_only_refuses_to_start_naming_the_variable(name, debug):
    """Blanks were taken as the secret itself: SECRET_KEY=" " signed every session and
    token with a key anyone can guess, AUDIT_CHAIN_KEY keyed the chain with it, and
    ANTHROPIC_API_KEY chose Claude with a key it refuses."""
    secrets = {"SECRET_KEY": "s", "ENCRYPTION_KEYS": VALID_KEY}
    result = load_settings(DEBUG=debug, **{**secrets, name: " \t "})
    assert result.returncode != 0
    assert f"{name} is only blanks: give the secret itself, or leave {name} unset." in (
        result.stderr
    )


def test_secrets_are_read_as_set():
    """A secret beginning with "$" (Django's own generator may give one) was read by
    django-environ as the name of another variable: SECRET_KEY became that variable's value,
    or nothing. Blanks after the commas of ENCRYPTION_KEYS made a key that is not one."""
    code = (
        "import json; from django.conf import settings as s;"
        "print(json.dumps([s.SECRET_KEY, s.ENCRYPTION_KEYS, s.AUDIT_CHAIN_KEY]))"
    )
    other = VALID_KEY.replace("r", "s", 1)
    result = load_settings(
        code,
        DEBUG="0",
        SECRET_KEY="$HOME-and-then-some-secret",
        AUDIT_CHAIN_KEY="$PATH:9f#k",
        ENCRYPTION_KEYS=f"{VALID_KEY}, {other} ",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.split("\n")[-2]) == [
        "$HOME-and-then-some-secret",
        [VALID_KEY, other],
        "$PATH:9f#k",
    ]


BINDING = (
    "import django, json; from django.conf import settings; django.setup();"
    "from django.db import connection;"
    "print(json.dumps({'server': connection.features.uses_server_side_binding,"
    " 'threshold': settings.DATABASES['default']['OPTIONS'].get('prepare_threshold')}))"
)


def test_postgres_binds_parameters_on_the_server_unless_the_url_says_not_to():
    base = {"SECRET_KEY": "s", "ENCRYPTION_KEYS": VALID_KEY}
    url = "postgres://postgres@127.0.0.1:5432/isolation_settings"
    on = load_settings(BINDING, DATABASE_URL=url, **base)
    assert on.returncode == 0, on.stderr
    assert json.loads(on.stdout) == {"server": True, "threshold": 5}
    # Behind a pooler that cannot keep prepared statements, the URL turns binding off
    # (and with it preparing: a client-side binding cursor never prepares).
    off = load_settings(BINDING, DATABASE_URL=f"{url}?server_side_binding=false", **base)
    assert off.returncode == 0, off.stderr
    assert json.loads(off.stdout)["server"] is False


def test_a_request_error_is_logged_once_under_debug():
    """Django's own console handler (DEBUG) printed each request error a second time beside
    the root's handler, which carries the user and session ids."""
    code = (
        "import django, logging; django.setup();"
        "logging.getLogger('django.request').error('boom once')"
    )
    result = load_settings(code, DEBUG="1")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "boom once" in line]
    assert len(lines) == 1 and "[user=" in lines[0], result.stderr


@pytest.mark.parametrize(
    ("name", "rate", "says"),
    [
        ("LOGIN_THROTTLE_RATE", "lots", "give a count per period"),
        ("CHAT_THROTTLE_RATE", "lots", "give a count per period"),
        ("CHAT_THROTTLE_RATE", "10/fortnight", "give a count per period"),
        ("CHAT_THROTTLE_RATE", "60/month", "give a count per period"),  # DRF: 60 a minute
        ("CHAT_THROTTLE_RATE", "10/ms", "give a count per period"),  # DRF: 10 a minute
        ("CHAT_THROTTLE_RATE", "10/ds", "give a count per period"),  # DRF: 10 a day
        ("CHAT_THROTTLE_RATE", "0/min", "give a count of at least 1 per period"),
        ("LOGIN_THROTTLE_RATE", "0/min", "give a count of at least 1 per period"),
        ("LOGIN_THROTTLE_RATE", "000/s", "give a count of at least 1 per period"),
    ],
)
def test_a_throttle_rate_drf_cannot_use_refuses_to_start(name, rate, says):
    """Not in DRF's syntax, it started, and then every message post was a 500 (DRF parses
    the rate per request); 0 a period DRF takes, and then throttles every request: no
    message, or no sign-in, gets through."""
    result = load_settings(DEBUG="1", **{name: rate})
    assert result.returncode != 0
    assert f"{name}={rate!r}: {says}" in result.stderr


@pytest.mark.parametrize(
    ("name", "value", "must"),
    [
        ("SESSION_TTL_SECONDS", "0", "a whole number from 1 to 315360000"),
        ("SESSION_TTL_SECONDS", "2h", "a whole number from 1 to 315360000"),
        ("TOKEN_TTL_SECONDS", "-1", "a whole number from 1 to 315360000"),
        ("MAX_MESSAGE_CHARS", "0", "a whole number of at least 1"),
        ("MAX_REQUEST_BYTES", "-1048576", "a whole number of at least 1"),
        ("STATELESS_TOKEN_MAX_BYTES", "0", "a whole number of at least 1"),
        ("MAX_WAITS_PER_USER", "0", "a whole number of at least 1"),
        ("WAITS_PER_PROCESS", "-1", "a whole number of at least 1"),
        ("TURN_MAX_ATTEMPTS", "0", "a whole number of at least 1"),
        ("CLAUDE_MAX_RETRIES", "-1", "a whole number of at least 0"),
        ("CLAUDE_TIMEOUT_SECONDS", "nan", "a number from 0.1 to 315360000"),
        ("TURN_RETRY_DELAY_SECONDS", "-2", "a number from 0 to 315360000"),
        ("SWEEP_INTERVAL_SECONDS", "0", "a whole number from 1 to 315360000"),
        ("NUM_PROXIES", "-1", "a whole number of at least 0"),
        ("FINGERPRINT_BUCKET_BITS", "17", "a whole number from 0 to 16"),
        ("LEAK_HOLD_AFTER", "-1", "a whole number of at least 0"),
        ("LEAK_HOLD_SECONDS", "0", "a whole number from 1 to 315360000"),
        # A date that far on overflows: every sign-in, session or turn was a 500.
        ("SESSION_TTL_SECONDS", "300000000000", "a whole number from 1 to 315360000"),
        ("TOKEN_TTL_SECONDS", "300000000000", "a whole number from 1 to 315360000"),
        ("TURN_DEADLINE_SECONDS", "300000000000", "a whole number from 1 to 315360000"),
        ("LEAK_HOLD_SECONDS", "300000000000", "a whole number from 1 to 315360000"),
        ("FINGERPRINT_TTL_SECONDS", "300000000000", "a whole number from 1 to 315360000"),
        ("CONN_MAX_AGE", "abc", "a whole number from 0 to 315360000"),  # SQLite's too
    ],
)
def test_a_number_out_of_its_range_refuses_to_start(name, value, must):
    """0 or a negative started: a TTL of 0 expired every session at once, a size of 0
    refused every message, an interval of 0 made beat spin."""
    result = load_settings(DEBUG="1", **{name: value})
    assert result.returncode != 0
    assert f"{name}={value!r}: give {must}." in result.stderr


def test_numbers_at_the_edge_of_their_range_start():
    code = (
        "import django, json; from django.conf import settings; django.setup();"
        "print(json.dumps([settings.SESSION_TTL_SECONDS, settings.CLAUDE_MAX_RETRIES,"
        " settings.TURN_RETRY_DELAY_SECONDS, settings.REST_FRAMEWORK['NUM_PROXIES'],"
        " settings.WAITS_PER_PROCESS, settings.MAX_REQUEST_BYTES]))"
    )
    edge = {"SESSION_TTL_SECONDS": "1", "CLAUDE_MAX_RETRIES": "0", "TURN_RETRY_DELAY_SECONDS": "0"}
    result = load_settings(code, DEBUG="1", NUM_PROXIES=" 0 ", MAX_REQUEST_BYTES="", **edge)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == [1, 0, 0.0, 0, None, 1048576]


@pytest.mark.parametrize(
    ("env", "refusal"),
    [
        ({"REDIS_URL": "127.0.0.1:6379"}, "REDIS_URL='127.0.0.1:6379': Redis URL must specify"),
        ({"REDIS_URL": "redis://127.0.0.1:x/0"}, "REDIS_URL='redis://127.0.0.1:x/0': Port"),
        ({"FINGERPRINT_REDIS_URL": "http://h"}, "FINGERPRINT_REDIS_URL='http://h': Redis URL"),
        ({"CELERY_BROKER_URL": "rabbit://x"}, "CELERY_BROKER_URL='rabbit://x': give a URL"),
        ({"CELERY_BROKER_WRITE_URL": "x"}, "CELERY_BROKER_WRITE_URL='x': give a URL"),
        # Redis's own URL for a Unix socket is not one kombu knows: say which broker to use.
        ({"REDIS_URL": "unix:///tmp/r.sock"}, "CELERY_BROKER_URL (unset, so REDIS_URL)="),
    ],
)
def test_a_url_the_service_cannot_use_refuses_to_start(env, refusal):
    """They started, and then every message post was a 500."""
    result = load_settings(DEBUG="1", **env)
    assert result.returncode != 0
    assert refusal in result.stderr


def test_the_urls_the_service_uses_start():
    for env in (
        {"REDIS_URL": "rediss://127.0.0.1:6379/0", "CELERY_BROKER_URL": "pyamqp://h//"},
        {"REDIS_URL": "unix:///tmp/r.sock?db=1", "CELERY_BROKER_URL": "amqps://h//"},
        {"CELERY_BROKER_URL": "redis://127.0.0.1:6379/2"},
    ):
        result = load_settings(DEBUG="1", **env)
        assert result.returncode == 0, result.stderr


def test_the_anthropic_provider_without_a_key_refuses_to_start():
    """It started, and every turn failed; unset, LLM_PROVIDER still falls back to offline."""
    result = load_settings(DEBUG="1", LLM_PROVIDER="anthropic")
    assert result.returncode != 0
    assert "LLM_PROVIDER='anthropic' needs ANTHROPIC_API_KEY" in result.stderr


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DEBUG", "ture"),
        ("DEBUG", "maybe"),
        ("DEBUG", "1.0"),
        ("CELERY_TASK_ALWAYS_EAGER", "always"),
    ],
)
def test_a_yes_or_no_that_is_neither_refuses_to_start(name, value):
    """env.bool read any word it did not know as off: ``DEBUG=ture`` silently meant off."""
    result = load_settings(SECRET_KEY="s", ENCRYPTION_KEYS=VALID_KEY, **{name: value})
    assert result.returncode != 0
    assert f"{name}={value!r}: give 1, true, yes or on to turn it on, 0, false" in result.stderr


@pytest.mark.parametrize(
    "value",
    ["1", "2", "-1", " 1 ", "0", "00", "true", "True", "YES", "y", "on", "ok", "false", "Off"]
    + ["no", "N"],
)
def test_a_yes_or_no_reads_the_words_env_bool_reads_as_it_does(monkeypatch, value):
    import environ

    from isolation_site.envvars import env_bool

    monkeypatch.setenv("YES_OR_NO", value)
    read = environ.Env().bool("YES_OR_NO")
    assert env_bool("YES_OR_NO", False) is read is env_bool("YES_OR_NO", True)


def test_an_empty_yes_or_no_is_its_default():
    """As for every other variable; env.bool read an empty one as off, so the embedded setup
    with ``CELERY_TASK_ALWAYS_EAGER=`` sent its tasks to a memory broker no worker reads."""
    code = (
        "import django; from django.conf import settings; print(settings.CELERY_TASK_ALWAYS_EAGER)"
    )
    result = load_settings(code, DEBUG="1", CELERY_TASK_ALWAYS_EAGER="")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == "True"


def test_throttle_rates_in_drfs_syntax_start_as_drf_reads_them():
    code = (
        "import django, json; from django.conf import settings; django.setup();"
        "from rest_framework.throttling import SimpleRateThrottle as T;"
        "rates = [settings.CHAT_THROTTLE_RATE, settings.LOGIN_THROTTLE_RATE];"
        "print(json.dumps([T.parse_rate(None, r) for r in rates]))"
    )
    result = load_settings(code, DEBUG="1", CHAT_THROTTLE_RATE="1/s", LOGIN_THROTTLE_RATE="05/day")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == [[1, 1], [5, 86400]]


def _rate_period_tables(source: str) -> list[int]:
    """The lines of ``source`` holding a table of a rate's periods (``{"s": 1, "m": 60, ...}``):
    a reader of rates of its own, which could drift from DRF's."""
    return [
        node.lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Dict)
        and {"s", "m", "h", "d"} <= {k.value for k in node.keys if isinstance(k, ast.Constant)}
    ]


def test_every_rate_is_read_by_drfs_parser_alone():
    """The settings only check a rate's syntax; the sign-in limit once read its rate with a
    parser of its own beside DRF's, the throttles'."""
    tables = {
        str(path.relative_to(ROOT)): lines
        for app in ("core", "sessions_app", "audit_app", "isolation_site")
        for path in sorted((ROOT / app).rglob("*.py"))
        if (lines := _rate_period_tables(path.read_text()))
    }
    assert tables == {}
    assert _rate_period_tables('PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}') == [1]


# Every variable settings.py reads, by the first argument of its env readers.
READ = sorted(set(re.findall(r"env(?:\.\w+|_\w+)\(\s*\"([A-Z][A-Z0-9_]*)\"", SETTINGS_SOURCE)))
EVERY_SETTING = (
    "import json; from django.conf import settings;"
    "print(json.dumps({k: repr(getattr(settings, k)) for k in dir(settings) if k.isupper()}))"
)


def test_every_variable_set_but_empty_is_its_default():
    """README: "A variable set but empty counts as unset". Empty, ALLOWED_HOSTS allowed no host
    (every request a 400, /healthz too), PII_PHONE_REGIONS no region, CLAUDE_MODEL,
    CLAUDE_SYSTEM_PROMPT and CACHE_KEY_PREFIX were '', and LOG_LEVEL and DATABASE_URL crashed
    without naming themselves."""
    given = {"SECRET_KEY": "s", "ENCRYPTION_KEYS": VALID_KEY, "REDIS_URL": "redis://h:6379/0"}
    assert {"ALLOWED_HOSTS", "DATABASE_URL", "LOG_LEVEL", "PII_PHONE_REGIONS"} <= set(READ)
    unset = load_settings(EVERY_SETTING, **{**dict.fromkeys(READ), **given})
    empty = load_settings(EVERY_SETTING, **{**dict.fromkeys(READ, ""), **given})
    assert unset.returncode == 0, unset.stderr
    assert empty.returncode == 0, empty.stderr
    defaults = json.loads(unset.stdout.splitlines()[-1])
    assert defaults["ALLOWED_HOSTS"] == "['localhost', '127.0.0.1']"
    assert json.loads(empty.stdout.splitlines()[-1]) == defaults


REGIONS = "give a comma list of the region codes phonenumbers knows"
LANGS = "give a comma list of wordfreq's language codes"
LEVELS = "choose 'DEBUG', 'INFO', 'WARNING', 'ERROR' or 'CRITICAL' (in any case)."
SCHEMES = "give a URL starting postgres://, postgresql:// or sqlite://."
ORIGINS = "a scheme; give a comma list of origins with theirs, e.g. 'https://chat.example.com'."


@pytest.mark.parametrize(
    ("name", "value", "refusal"),
    [
        # A language wordfreq has no list of; one whose words it looks up with a tokenizer
        # not installed would have failed the first scan of a reply holding a new word.
        ("LEAK_SCAN_LANGUAGES", "en,xx", f"LEAK_SCAN_LANGUAGES='en,xx': 'xx' unknown; {LANGS}"),
        ("LEAK_SCAN_LANGUAGES", "de,JA", f"LEAK_SCAN_LANGUAGES='de,JA': 'ja' unknown; {LANGS}"),
        # Started, and the first message with a national phone-like number was a 500.
        ("PII_PHONE_REGIONS", "US,ZZ", f"PII_PHONE_REGIONS='US,ZZ': 'ZZ' unknown; {REGIONS}"),
        ("PII_PHONE_REGIONS", "uk", f"PII_PHONE_REGIONS='uk': 'UK' unknown; {REGIONS}"),
        # Refused by logging with "Unable to configure root logger", the variable unnamed.
        ("LOG_LEVEL", "bogus", f"LOG_LEVEL='bogus': {LEVELS}"),
        ("LOG_LEVEL", "10", f"LOG_LEVEL='10': {LEVELS}"),
        # Refused by Django's backend loader or a bare ValueError, the variable unnamed; the
        # password is not written to the log.
        ("DATABASE_URL", "mysql://app:pw@db/x", f"DATABASE_URL='mysql://app:***@db/x': {SCHEMES}"),
        ("DATABASE_URL", "db.sqlite3", f"DATABASE_URL='db.sqlite3': {SCHEMES}"),
        ("DATABASE_URL", "postgres://h:x/d", "DATABASE_URL='postgres://h:x/d': Port could not"),
        ("REDIS_URL", "redis://:pw@h:x/0", "REDIS_URL='redis://:***@h:x/0': Port"),
        # Started: only ``check`` said so, and a browser's post through the proxy was a 403.
        ("CSRF_TRUSTED_ORIGINS", "chat.example.com", f"'chat.example.com' without {ORIGINS}"),
        (
            "CSRF_TRUSTED_ORIGINS",
            "https://a.example.com,b.example.com, *.c.example.com",
            f"'b.example.com' or '*.c.example.com' without {ORIGINS}",
        ),
        # Started, and a browser's post through the proxy was a 403: no Origin has a path.
        (
            "CSRF_TRUSTED_ORIGINS",
            "https://a.example.com/,https://b.example.com/chat,https://*.c.example.com/d",
            "'https://a.example.com/', 'https://b.example.com/chat' or "
            "'https://*.c.example.com/d' not an origin",
        ),
        # Started, and every call to Claude failed ("missing an 'http://' or 'https://'").
        ("ANTHROPIC_BASE_URL", "notaurl", "ANTHROPIC_BASE_URL='notaurl': give a URL starting"),
        ("ANTHROPIC_BASE_URL", "ftp://x", "ANTHROPIC_BASE_URL='ftp://x': give a URL starting"),
        ("ANTHROPIC_BASE_URL", "https://", "ANTHROPIC_BASE_URL='https://': give a URL with a"),
        # Started, and no request could match it (HTTP_X FORWARDED PROTO): behind a TLS proxy
        # every request was redirected to HTTPS again. "$FOO" was silently another variable.
        ("PROXY_SSL_HEADER", "X Forwarded Proto", "PROXY_SSL_HEADER='X Forwarded Proto' is not"),
        ("PROXY_SSL_HEADER", "X_Forwarded_Proto", "'X_Forwarded_Proto' is not a header name"),
        ("PROXY_SSL_HEADER", "$FOO", "PROXY_SSL_HEADER='$FOO' is not a header name"),
        # Started, and every call to Claude was refused: a model id read with its newline.
        ("CLAUDE_MODEL", "claude-haiku-4-5\n", "CLAUDE_MODEL='claude-haiku-4-5\\n' is not a"),
        ("CLAUDE_MODEL", " claude-haiku-4-5", "CLAUDE_MODEL=' claude-haiku-4-5' is not a"),
        # A reference to another variable, which django-environ would have expanded.
        ("SECRET_KEY", "$DJANGO_SECRET", "SECRET_KEY names another variable ($DJANGO_SECRET)"),
        ("AUDIT_CHAIN_KEY", "$CHAIN_KEY", "AUDIT_CHAIN_KEY names another variable"),
    ],
)
def test_a_value_the_service_cannot_use_refuses_to_start_naming_the_variable(name, value, refusal):
    result = load_settings(DEBUG="1", **{name: value})
    assert result.returncode != 0
    assert refusal in result.stderr
    assert ":pw@" not in result.stderr


def test_phone_regions_the_log_level_and_languages_are_read_in_any_case():
    """Lower case is upper-cased: "gb" is GB, "debug" DEBUG (logging itself took upper case
    only, and the detector raised on a region it did not know); wordfreq's languages are
    lower case ("DE" is de)."""
    code = (
        "import django, json, logging; from django.conf import settings; django.setup();"
        "print(json.dumps([settings.PII_PHONE_REGIONS, logging.getLogger().level,"
        " settings.DATABASES['default']['ENGINE'], settings.LEAK_SCAN_LANGUAGES]))"
    )
    url = "postgresql://postgres@127.0.0.1:5432/isolation"
    result = load_settings(
        code,
        DEBUG="1",
        PII_PHONE_REGIONS=" us, gb ,In,",
        LOG_LEVEL="debug",
        DATABASE_URL=url,
        LEAK_SCAN_LANGUAGES="en, DE,Fr",
    )
    assert result.returncode == 0, result.stderr
    expected = [["US", "GB", "IN"], logging.DEBUG, "django.db.backends.postgresql"]
    expected.append(["en", "de", "fr"])
    assert json.loads(result.stdout.splitlines()[-1]) == expected


def test_trusted_origins_with_their_schemes_start():
    code = "from django.conf import settings; print(settings.CSRF_TRUSTED_ORIGINS)"
    origins = " https://chat.example.com , http://*.example.org:8443, https://*.example.net/,"
    result = load_settings(code, DEBUG="1", CSRF_TRUSTED_ORIGINS=origins)
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.split("\n")[-2]
        == "['https://chat.example.com', 'http://*.example.org:8443', 'https://*.example.net/']"
    )


def test_a_blank_claude_base_url_is_the_sdks_default_and_a_given_one_is_used():
    """Blank, the SDK read the variable again and took "" for its base URL: every call
    failed. A proxy's header is read as the proxy sends it."""
    code = (
        "import django, json; from django.conf import settings; django.setup();"
        "from sessions_app import llm;"
        "print(json.dumps([str(llm.client().base_url), settings.SECURE_PROXY_SSL_HEADER]))"
    )
    keyed = {"DEBUG": "1", "ANTHROPIC_API_KEY": "sk-test"}
    blank = load_settings(code, ANTHROPIC_BASE_URL=" ", PROXY_SSL_HEADER="", **keyed)
    assert blank.returncode == 0, blank.stderr
    assert json.loads(blank.stdout.splitlines()[-1]) == ["https://api.anthropic.com", None]
    given = load_settings(
        code,
        ANTHROPIC_BASE_URL="http://127.0.0.1:9/claude",
        PROXY_SSL_HEADER="X-Forwarded-Proto",
        **keyed,
    )
    assert given.returncode == 0, given.stderr
    assert json.loads(given.stdout.splitlines()[-1]) == [
        "http://127.0.0.1:9/claude/",
        ["HTTP_X_FORWARDED_PROTO", "https"],
    ]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HISTORY_STORE", "$NOPE"),
        ("REDIS_URL", "$MY_REDIS"),
        ("CELERY_BROKER_URL", "$MYBROKER"),
        ("SESSION_TTL_SECONDS", " $TTL "),
    ],
)
def test_a_value_naming_another_variable_refuses_to_start(name, value):
    """django-environ took it for the name of another variable, and the default when that
    one was unset; gunicorn and Celery, reading the environment themselves, took it as set:
    a broker URL '$MYBROKER' started, and every post was 503."""
    broker = "amqp://guest:guest@127.0.0.1:5672//"
    result = load_settings(DEBUG="1", MYBROKER=broker, **{name: value})
    assert result.returncode != 0
    assert f"{name} names another variable ({value.strip()}): values are read as set" in (
        result.stderr
    )


def test_a_value_beginning_with_a_dollar_is_read_as_set():
    code = "from django.conf import settings; print(repr(settings.CLAUDE_SYSTEM_PROMPT))"
    prompt = "$5 coupons are always valid. Be brief."
    result = load_settings(code, DEBUG="1", CLAUDE_SYSTEM_PROMPT=prompt)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == repr(prompt)


def test_tasks_off_the_web_process_with_no_broker_refuse_to_start():
    """They went to a queue in the process's memory that no worker reads: every turn
    accepted, none answered, and /healthz said the broker was fine."""
    result = load_settings(DEBUG="1", CELERY_TASK_ALWAYS_EAGER="0")
    assert result.returncode != 0
    assert "CELERY_TASK_ALWAYS_EAGER is off but no broker is set" in result.stderr


@pytest.mark.parametrize("rate", ["10/seconds", "5/mins", "3/hours", "1/days", "7/sec", "10/hr"])
def test_a_rate_with_its_periods_own_words_starts(rate):
    code = "from django.conf import settings; print(settings.CHAT_THROTTLE_RATE)"
    result = load_settings(code, DEBUG="1", CHAT_THROTTLE_RATE=rate)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == rate
