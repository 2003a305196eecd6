"""Settings for the isolation service, driven by environment variables.

With no variable set this is the embedded, single-machine setup: SQLite, an in-process
cache, Celery tasks run eagerly and the offline responder. ``../shared/API.md`` lists
every variable; production sets ``DATABASE_URL``, ``REDIS_URL`` and the secrets.
"""

import base64
import hashlib
import os
from pathlib import Path

import phonenumbers
import wordfreq
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

from isolation_site.envvars import (
    MAX_SECONDS,
    env_bool,
    env_choice,
    env_codes,
    env_database,
    env_header,
    env_http_url,
    env_list,
    env_model,
    env_number,
    env_origins,
    env_rate,
    env_redis_url,
    env_secret,
    env_str,
    url_scheme_check,
)

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DEBUG", False)

# Secrets: generated for development only. Running with DEBUG off and no secret would
# silently make every token and vault forgeable, so refuse to start instead.
SECRET_KEY = env_secret("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off.")
    SECRET_KEY = "django-insecure-development-only-key-do-not-use-in-production"  # noqa: S105

# A comma list; blanks around each key (after a comma, say) are not part of it.
ENCRYPTION_KEYS = [key.strip() for key in env_secret("ENCRYPTION_KEYS").split(",") if key.strip()]
if not ENCRYPTION_KEYS:
    if not DEBUG:
        raise ImproperlyConfigured(
            "ENCRYPTION_KEYS must be set when DEBUG is off (a comma list of Fernet keys)."
        )
    # Derived from the development SECRET_KEY so that a restart can still decrypt.
    ENCRYPTION_KEYS = [
        base64.urlsafe_b64encode(hashlib.sha256(SECRET_KEY.encode()).digest()).decode()
    ]
for _key in ENCRYPTION_KEYS:
    try:
        Fernet(_key)
    except ValueError:
        # Refused now, not at the first vault write: no message would be storable.
        raise ImproperlyConfigured(
            "ENCRYPTION_KEYS must be Fernet keys (url-safe base64 of 32 bytes); generate one "
            "with: python -c 'from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())'"
        ) from None

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1"])

# HTTPS ----------------------------------------------------------------------------------
# On unless DEBUG: HTTP is redirected to HTTPS (but /healthz, the load balancer's probe),
# HSTS, secure-only cookies. Off only for plain HTTP on a trusted network. API.md's two
# words only: read as a boolean, a typo such as "enable" would silently turn HTTPS off.
SECURE_HTTPS = env_choice("SECURE_HTTPS", "off" if DEBUG else "on", ("on", "off")) == "on"
if SECURE_HTTPS:
    SECURE_SSL_REDIRECT = True
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    SECURE_HSTS_SECONDS = 31536000
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
# The header a TLS-terminating proxy sets, e.g. X-Forwarded-Proto: "https" in it means the
# request came over TLS. Unset, such a header is ignored (a client could forge it).
PROXY_SSL_HEADER = env_header("PROXY_SSL_HEADER")
if PROXY_SSL_HEADER:
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + PROXY_SSL_HEADER.upper().replace("-", "_"), "https")
CSRF_TRUSTED_ORIGINS = env_origins("CSRF_TRUSTED_ORIGINS")
SESSION_COOKIE_HTTPONLY = True
# No script reads the CSRF cookie: the chat page takes its token from a meta tag, the admin
# and /api/docs/ from the page the server renders. Out of reach of an injected script too.
CSRF_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "knox",
    "pgtrigger",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "sessions_app",
    "audit_app",
]

MIDDLEWARE = [
    # Outermost: a response held open by its view (a stream's slots) that the server never
    # gets, a hang-up or an error below replacing it, is closed all the same.
    "core.middleware.UnsentResponseMiddleware",
    # Every API answer, errors of the middleware below included, says no-store.
    "core.middleware.NoStoreApiMiddleware",
    "core.middleware.RequestSizeLimitMiddleware",
    "core.middleware.ServiceUnavailableMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "core.csp.CSPMiddleware",  # django-csp's, its settings' policies built once
    # Serves the admin's and /api/docs/'s assets from gunicorn or uvicorn, no web server needed.
    "core.middleware.StaticFilesMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

# The admin's notices ride in its session. The default (a signed cookie, the session as a
# fallback) builds a cookie signer on every request, the API's included, that never uses it.
MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"

ROOT_URLCONF = "isolation_site.urls"
WSGI_APPLICATION = "isolation_site.wsgi.application"
ASGI_APPLICATION = "isolation_site.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Database -----------------------------------------------------------------------------
# Postgres (psycopg is the one driver installed) or SQLite, the databases the service is
# written and tested for; Django would refuse another scheme without naming the variable.
DATABASES = {
    "default": env_database(
        "DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}", ("postgres", "postgresql", "sqlite")
    ),
}
# Read whatever the database, so that a bad value never waits for the move to Postgres.
_conn_max_age = env_number("CONN_MAX_AGE", 60, minimum=0, maximum=MAX_SECONDS)
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # IMMEDIATE transactions make concurrent writers queue instead of failing mid-transaction.
    DATABASES["default"]["OPTIONS"] = {"timeout": 20, "transaction_mode": "IMMEDIATE"}
else:
    # Persistent connections keep a turn's few queries cheap; the health check makes a
    # connection killed by a restart or failover heal on the next request.
    DATABASES["default"]["CONN_MAX_AGE"] = _conn_max_age
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    options = DATABASES["default"].setdefault("OPTIONS", {})
    options.setdefault("connect_timeout", 2)
    # Parameters bound by the server, and a statement a connection has run a few times
    # prepared: Postgres then parses and plans each of a turn's statements once per
    # connection, not on every execution (a third of its CPU per turn, measured). Behind a
    # pooler in transaction mode that does not track prepared statements (PgBouncer older
    # than 1.21, or without max_prepared_statements), add ?server_side_binding=false.
    options.setdefault("server_side_binding", True)
    options.setdefault("prepare_threshold", 5)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Cache, history store, fingerprint index ----------------------------------------------
# Checked here, not at the first request: a URL redis-py cannot read would make each a 500.
REDIS_URL = env_redis_url("REDIS_URL")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": env_str("CACHE_KEY_PREFIX", "isolation"),
            "OPTIONS": {
                # Short timeouts so an outage becomes a quick 503, not a hung request.
                "SOCKET_CONNECT_TIMEOUT": 1,
                "SOCKET_TIMEOUT": 2,
            },
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# Celery -------------------------------------------------------------------------------
# Redis or RabbitMQ, the two brokers the settings below are written for (kombu would take
# others, or none it knows, and the first post would fail). Celery reads the read and write
# URLs from the environment itself.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "")
_broker_read_url = env_str("CELERY_BROKER_READ_URL", "")
_broker_write_url = env_str("CELERY_BROKER_WRITE_URL", "")
for _name, _url in (
    (
        "CELERY_BROKER_URL" if CELERY_BROKER_URL else "CELERY_BROKER_URL (unset, so REDIS_URL)",
        CELERY_BROKER_URL or REDIS_URL,
    ),
    ("CELERY_BROKER_READ_URL", _broker_read_url),
    ("CELERY_BROKER_WRITE_URL", _broker_write_url),
):
    url_scheme_check(_name, _url, ("redis", "rediss", "amqp", "amqps", "pyamqp"))
CELERY_BROKER_URL = CELERY_BROKER_URL or REDIS_URL or "memory://"
# No broker configured means the embedded setup: run tasks in the web process.
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", CELERY_BROKER_URL == "memory://")
if not CELERY_TASK_ALWAYS_EAGER and CELERY_BROKER_URL == "memory://":
    # Tasks would go to a queue in this process's memory that no worker reads: every turn
    # accepted and none answered, while /healthz says the broker is fine.
    raise ImproperlyConfigured(
        "CELERY_TASK_ALWAYS_EAGER is off but no broker is set: set CELERY_BROKER_URL or "
        "REDIS_URL for a Celery worker to read the turns from, or leave "
        "CELERY_TASK_ALWAYS_EAGER unset to run them in the web process."
    )
# RabbitMQ (amqp://, amqps://) or Redis (redis://, rediss://): the two behave differently
# when a worker dies, so some settings below depend on which one it is.
BROKER_IS_AMQP = CELERY_BROKER_URL.partition("://")[0] in {"amqp", "amqps", "pyamqp"}


def broker_transport(*urls: str | None) -> str | None:
    """kombu's Redis transport less a Redis client built per publish and per acknowledgement
    (``core/broker.py``) when every broker URL given is a plain ``redis://`` one; otherwise
    None, and each URL's scheme names its transport. Not for ``rediss://``: kombu turns TLS on
    by that scheme's transport name, which a transport of our own would lose."""
    given = [url for url in urls if url]
    return (
        "core.broker:Transport"
        if given and all(url.partition("://")[0] == "redis" for url in given)
        else None
    )


# The transport named here is used for all three URLs, so it must suit them all.
CELERY_BROKER_TRANSPORT = broker_transport(CELERY_BROKER_URL, _broker_read_url, _broker_write_url)
CELERY_TASK_IGNORE_RESULT = True
# Celery's own defaults, written out: the web reads them on every publish (once per turn)
# through Django's settings, where an absent one costs Celery a handful of raised exceptions
# (35-42 us of CPU each on this machine at its slowest, against 11 for one present).
CELERY_TASK_DEFAULT_QUEUE = "celery"
CELERY_TASK_SEND_SENT_EVENT = False
CELERY_TASK_REPR_MAXLEVELS = 3
CELERY_BROKER_POOL_ACQUIRE_TIMEOUT = None
# A task is acknowledged only once it has run (run_turn is idempotent), so a worker's death
# hands it to another worker instead of losing it.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# Bounds the TCP connect and, with RabbitMQ, the AMQP handshake: a down broker is a quick
# 503 for a post, not a hung request.
CELERY_BROKER_CONNECTION_TIMEOUT = 2
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.5,
    "interval_max": 1,
}
# Redis: a killed worker's unacknowledged task comes back after the visibility timeout
# (Redis's default is an hour); it must be well under the 120 s promise, and restores must
# be checked often. A redelivery may overlap a slow first run: the database keeps one reply.
CELERY_VISIBILITY_TIMEOUT = env_number(
    "CELERY_VISIBILITY_TIMEOUT", 60, minimum=1, maximum=MAX_SECONDS
)
REDIS_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": CELERY_VISIBILITY_TIMEOUT,
    "unacked_restore_interval": 5,
    "unacked_restore_throttle": 1,
    "socket_connect_timeout": 2,
    # A hung broker costs a post this long before its 503; the cache uses the same bound.
    "socket_timeout": 2,
}
# RabbitMQ: no visibility timeout. An unacknowledged task is redelivered the moment the
# channel that took it closes (its worker killed, its connection lost), and never while
# that channel lives, except past RabbitMQ's consumer_timeout (30 min by default; a turn
# holds its delivery at most its retry countdown plus the task's hard time limit, 110 s
# by default, so leave the default, or anything over 5 min). Publisher confirms make a
# 202 mean RabbitMQ holds the task, as Redis's reply does; the read and write timeouts
# bound a hung broker (py-amqp would silently ignore the Redis options above).
AMQP_BROKER_TRANSPORT_OPTIONS = {
    "confirm_publish": True,
    "read_timeout": 2,
    "write_timeout": 2,
}
CELERY_BROKER_TRANSPORT_OPTIONS = (
    AMQP_BROKER_TRANSPORT_OPTIONS if BROKER_IS_AMQP else REDIS_BROKER_TRANSPORT_OPTIONS
)
# A task running when its RabbitMQ connection drops can no longer be acknowledged and is
# already redelivered elsewhere: stop it (prefork pool) rather than run it twice. Not with
# Redis, where the run can still acknowledge after reconnecting.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = BROKER_IS_AMQP
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# Claude -------------------------------------------------------------------------------
ANTHROPIC_API_KEY = env_secret("ANTHROPIC_API_KEY")
ANTHROPIC_BASE_URL = env_http_url("ANTHROPIC_BASE_URL")
if ANTHROPIC_BASE_URL is None:
    # Unset for the SDK too: handed None it reads the variable itself, and would take a
    # blank one for its base URL (every call failing) instead of its own default.
    os.environ.pop("ANTHROPIC_BASE_URL", None)
LLM_PROVIDER = env_choice(
    "LLM_PROVIDER", "anthropic" if ANTHROPIC_API_KEY else "offline", ("anthropic", "offline")
)
if LLM_PROVIDER == "anthropic" and not ANTHROPIC_API_KEY:
    # Claude would refuse every call: no turn could end but failed.
    raise ImproperlyConfigured("LLM_PROVIDER='anthropic' needs ANTHROPIC_API_KEY.")
CLAUDE_MODEL = env_model("CLAUDE_MODEL", "claude-haiku-4-5-20251001")
CLAUDE_MAX_TOKENS = env_number("CLAUDE_MAX_TOKENS", 1024, minimum=1)
CLAUDE_TIMEOUT_SECONDS = env_number(
    "CLAUDE_TIMEOUT_SECONDS", 25.0, minimum=0.1, kind=float, maximum=MAX_SECONDS
)
# The SDK retries 429/5xx/connection errors with backoff; a turn then gets further
# attempts as fresh tasks, so a Claude outage of a few calls does not fail the turn.
CLAUDE_MAX_RETRIES = env_number("CLAUDE_MAX_RETRIES", 3, minimum=0)
TURN_MAX_ATTEMPTS = env_number("TURN_MAX_ATTEMPTS", 3, minimum=1)
# A turn's whole life, every attempt included: API.md promises a turn Claude cannot
# answer ends ``failed`` within 120 s. Calls are sized to end before it.
TURN_DEADLINE_SECONDS = env_number("TURN_DEADLINE_SECONDS", 100, minimum=1, maximum=MAX_SECONDS)
TURN_RETRY_DELAY_SECONDS = env_number(
    "TURN_RETRY_DELAY_SECONDS", 2.0, minimum=0, kind=float, maximum=MAX_SECONDS
)
# No run of a turn outlives the turn: the soft limit stops a call past the deadline that
# its own timeouts did not, the hard one a run that ignores the soft one.
CELERY_TASK_SOFT_TIME_LIMIT = TURN_DEADLINE_SECONDS
CELERY_TASK_TIME_LIMIT = TURN_DEADLINE_SECONDS + 10
CLAUDE_SYSTEM_PROMPT = env_str(
    "CLAUDE_SYSTEM_PROMPT",
    "You are a helpful assistant. You only know what this user told you in this "
    "conversation; never claim to know anything about other users.",
)

# Conversation policy ------------------------------------------------------------------
# Where messages are kept: sessions_app.stores.<name>.HistoryStore.
HISTORY_STORE = env_choice("HISTORY_STORE", "db", ("db", "redis", "cached_db"))
if HISTORY_STORE == "redis" and not REDIS_URL:
    # Silently keeping history elsewhere when Redis-only (TTL'd) storage was asked for
    # would break the promise that setting makes.
    raise ImproperlyConfigured("HISTORY_STORE='redis' needs REDIS_URL.")
if HISTORY_STORE == "cached_db" and not REDIS_URL and not CELERY_TASK_ALWAYS_EAGER:
    # Without Redis the cache is each process's memory: the worker's replies would bump
    # versions the web processes never see, and they would serve histories without them.
    raise ImproperlyConfigured(
        "HISTORY_STORE='cached_db' with a Celery worker needs REDIS_URL: the cache must be "
        "one the web processes and the worker share."
    )
SESSION_TTL_SECONDS = env_number("SESSION_TTL_SECONDS", 7200, minimum=1, maximum=MAX_SECONDS)
# PII: off, redact (irreversible) or pseudonymize (placeholders, per-session vault).
PII_MODE = env_choice("PII_MODE", "pseudonymize", ("off", "redact", "pseudonymize"))
# Regions whose national phone formats are recognised (international +numbers always are).
# Checked here: a region phonenumbers does not know made the first message holding a
# national phone-like number a 500. Lower case is read as upper ("gb" is "GB").
PII_PHONE_REGIONS = env_codes(
    "PII_PHONE_REGIONS",
    ["US", "GB", "DE", "FR", "IN"],
    phonenumbers.SUPPORTED_REGIONS,
    "the region codes phonenumbers knows (ISO 3166, e.g. US,GB; the United Kingdom is GB)",
)
# The languages whose everyday words the leak scan takes as no evidence (wordfreq's codes):
# a model writes them by itself. A reply in another language would have its everyday words
# read as rare ones, and withheld once another user had written a few of them.
LEAK_SCAN_LANGUAGES = env_codes(
    "LEAK_SCAN_LANGUAGES",
    ["en"],
    # Not ja, ko or zh: wordfreq looks their words up with MeCab or jieba, not installed.
    sorted(set(wordfreq.available_languages()) - {"ja", "ko", "zh"}),
    "wordfreq's language codes (e.g. en,de,fr; not ja, ko or zh, whose words need a "
    "tokenizer the service does not install)",
    case=str.lower,
)
# A reply carrying tokens only other users introduced: withheld, or delivered and flagged.
LEAK_ACTION = env_choice("LEAK_ACTION", "suppress", ("suppress", "flag"))
# The leak hold (audit_app/holds.py): from a user's LEAK_HOLD_AFTER-th flagged reply within
# LEAK_HOLD_SECONDS that review has not found harmless, every reply of theirs is withheld,
# so that a withheld reply no longer tells a prober anything. 0 turns it off.
LEAK_HOLD_AFTER = env_number("LEAK_HOLD_AFTER", 3, minimum=0)
LEAK_HOLD_SECONDS = env_number("LEAK_HOLD_SECONDS", 24 * 3600, minimum=1, maximum=MAX_SECONDS)
# The fingerprint index (keyed hashes of distinctive tokens -> who introduced them): in
# REDIS_URL's Redis (or FINGERPRINT_REDIS_URL's), else in a database table.
FINGERPRINT_REDIS_URL = env_redis_url("FINGERPRINT_REDIS_URL")
FINGERPRINT_TTL_SECONDS = env_number(
    "FINGERPRINT_TTL_SECONDS", 30 * 24 * 3600, minimum=1, maximum=MAX_SECONDS
)
FINGERPRINT_BUCKET_BITS = env_number("FINGERPRINT_BUCKET_BITS", 12, minimum=0, maximum=16)
# Audit log: repeated security events of one user and reason within this window are one
# counted entry; entries are sealed into the hash chain every AUDIT_SEAL_INTERVAL_SECONDS.
AUDIT_AGGREGATE_WINDOW_SECONDS = env_number(
    "AUDIT_AGGREGATE_WINDOW_SECONDS", 60, minimum=0, maximum=MAX_SECONDS
)
AUDIT_SEAL_INTERVAL_SECONDS = env_number(
    "AUDIT_SEAL_INTERVAL_SECONDS", 5, minimum=1, maximum=MAX_SECONDS
)
# Set it to keep verifying the chain across a SECRET_KEY rotation (else derived from it).
AUDIT_CHAIN_KEY = env_secret("AUDIT_CHAIN_KEY")
AUDIT_WITHHELD_TEXT_READER = "sessions_app.queries.turn_withheld_text"
MAX_MESSAGE_CHARS = env_number("MAX_MESSAGE_CHARS", 16000, minimum=1)
MAX_REQUEST_BYTES = env_number("MAX_REQUEST_BYTES", 1048576, minimum=1)
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_REQUEST_BYTES
# Checked here: DRF parses it on every request, so a bad one would make each post a 500.
CHAT_THROTTLE_RATE = env_rate("CHAT_THROTTLE_RATE", "60/min")
STATELESS_TOKEN_MAX_BYTES = env_number("STATELESS_TOKEN_MAX_BYTES", 65536, minimum=1)
# ?wait requests and event streams one user may hold open at once; one more: 429.
MAX_WAITS_PER_USER = env_number("MAX_WAITS_PER_USER", 8, minimum=1)
# Waits and streams one web process holds at once (past it: ?wait 202 at once, a stream
# 503). Unset: under gunicorn its threads less an eighth (gunicorn.conf.py tells the app
# its thread count), elsewhere no bound (under uvicorn a wait holds no thread).
WAITS_PER_PROCESS = env_number("WAITS_PER_PROCESS", None, minimum=1)
# Under uvicorn: the threads of a worker process that run waits' and streams' database work.
ASGI_THREADS = env_number("ASGI_THREADS", 8, minimum=1)
# How long a turn may stay pending or running before the sweep re-runs or fails it: past
# the task's hard time limit, so a live run is never mistaken for a lost one.
STALE_TURN_SECONDS = env_number("STALE_TURN_SECONDS", 120, minimum=1, maximum=MAX_SECONDS)
SWEEP_INTERVAL_SECONDS = env_number("SWEEP_INTERVAL_SECONDS", 30, minimum=1, maximum=MAX_SECONDS)
PURGE_INTERVAL_SECONDS = env_number("PURGE_INTERVAL_SECONDS", 300, minimum=1, maximum=MAX_SECONDS)
CELERY_BEAT_SCHEDULE = {
    "sweep-stale-turns": {
        "task": "sessions_app.tasks.sweep_stale_turns",
        "schedule": SWEEP_INTERVAL_SECONDS,
    },
    "seal-audit-chain": {
        "task": "audit_app.tasks.seal_audit_chain",
        "schedule": AUDIT_SEAL_INTERVAL_SECONDS,
    },
    "purge-expired-sessions": {
        "task": "sessions_app.tasks.purge_expired_sessions",
        "schedule": PURGE_INTERVAL_SECONDS,
    },
}

# REST framework -----------------------------------------------------------------------
REST_FRAMEWORK = {
    # Token first, so an unauthenticated call gets 401 with WWW-Authenticate.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "sessions_app.tokens.TokenAuthentication",
        "sessions_app.page_auth.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 100,
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["core.api.JSONParser"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "core.api.JsonFirstNegotiation",
    "EXCEPTION_HANDLER": "core.errors.exception_handler",
    # drf-spectacular's, describing each operation in its own words (core/openapi.py).
    "DEFAULT_SCHEMA_CLASS": "core.openapi.AutoSchema",
    "DEFAULT_THROTTLE_RATES": {"chat": CHAT_THROTTLE_RATE},
    # Proxies in front that append to X-Forwarded-For: the failed-sign-in limit per client
    # address takes the address the nearest one saw. 0: the peer's own address, since a
    # client can write any X-Forwarded-For it likes.
    "NUM_PROXIES": env_number("NUM_PROXIES", 0, minimum=0),
}
if DEBUG:
    REST_FRAMEWORK["DEFAULT_RENDERER_CLASSES"].append("core.api.BrowsableAPIRenderer")

SPECTACULAR_SETTINGS = {
    "TITLE": "Isolation chat API",
    "DESCRIPTION": "A multi-tenant chat service on Claude where one user's conversation "
    "never reaches another user.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Operation ids and tags without the version prefix: a generated client's
    # `sessions.sessions_create`, not `api.api_v1_sessions_create`.
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    # /healthz's parts share one set of states: one schema name for it.
    "ENUM_NAME_OVERRIDES": {"PartStateEnum": ["ok", "down"]},
    # Nullable objects and unions (a turn's reply and error, the stateless token) as OpenAPI
    # 3.0 validators read them.
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "core.openapi.nullable_unions",
    ],
}

# Auth, i18n, static -------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": f"django.contrib.auth.password_validation.{name}"}
    for name in (
        "UserAttributeSimilarityValidator",
        "MinimumLengthValidator",
        "CommonPasswordValidator",
        "NumericPasswordValidator",
    )
]
# Every password sign-in (API token, login page, admin) passes the failed-sign-in limit.
AUTHENTICATION_BACKENDS = ["sessions_app.signin.ThrottledModelBackend"]
# Failed sign-ins allowed per username and per client address in one window (DRF syntax).
LOGIN_THROTTLE_RATE = env_rate("LOGIN_THROTTLE_RATE", "10/min")
# An API token stops working this long after it was issued.
TOKEN_TTL_SECONDS = env_number("TOKEN_TTL_SECONDS", 86400, minimum=1, maximum=MAX_SECONDS)
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "chat"
LOGOUT_REDIRECT_URL = "login"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# Under `make run` (DEBUG) nothing has been collected: serve the assets where they lie.
WHITENOISE_USE_FINDERS = WHITENOISE_AUTOREFRESH = DEBUG
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# Browser pages: Content Security Policy ------------------------------------------------
# Every page loads only this site's own files (no inline script or style, no CDN), and its
# fetch and EventSource reach only this site: the chat and login pages, the admin, and
# /api/docs/ (Swagger UI from drf-spectacular's sidecar package; its view adds what it needs,
# see core/docs.py).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'none'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'"],
        "connect-src": ["'self'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    },
}

# Any case, as operators write it ("debug"); logging itself takes upper case only.
LOG_LEVEL = env_choice(
    "LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), any_case=True
)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "isolation": {"()": "sessions_app.isolation.IsolationLogFilter"},
        "require_debug_false": {"()": "django.utils.log.RequireDebugFalse"},
    },
    "formatters": {
        "ids": {
            "format": "%(asctime)s %(levelname)s %(name)s "
            "[user=%(isolation_user)s session=%(isolation_session)s] %(message)s"
        }
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "ids", "filters": ["isolation"]},
        "mail_admins": {
            "class": "django.utils.log.AdminEmailHandler",
            "filters": ["require_debug_false"],
            "level": "ERROR",
        },
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Django's own console handler (DEBUG) would print every request error a second
        # time beside the root's: "django" keeps only the mail to ADMINS, and propagates.
        "django": {"handlers": ["mail_admins"], "level": "INFO", "propagate": True},
        # These log request bodies or SQL parameters at DEBUG, that is, conversation content.
        **{
            name: {"level": "WARNING"}
            for name in ("httpx", "httpx2", "anthropic", "django.db.backends")
        },
    },
}
