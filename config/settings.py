"""Settings: one module, read from the environment (and ``.env`` when present).

Every variable is documented in ``.env.example``. With nothing configured the project runs on the
embedded defaults of ``ops.embedded`` (docs/contract.md §8).
"""

import os
from pathlib import Path
from urllib.parse import unquote

import environ
from corsheaders.defaults import default_headers
from django.core.exceptions import ImproperlyConfigured

from ops import embedded

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env")

DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env("SECRET_KEY", default="dev-only-insecure-key-set-SECRET_KEY-in-production-0123456789")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
# Browser clients on other origins (django-cors-headers), e.g. https://shop.example.com; none by default.
CORS_ALLOWED_ORIGINS = env.list("CORS_ALLOWED_ORIGINS", default=[])
CORS_URLS_REGEX = r"^/api/.*$"
CORS_ALLOW_HEADERS = (*default_headers, "idempotency-key", "x-request-id", "x-queue-token")
CORS_EXPOSE_HEADERS = ["Idempotency-Key", "X-Request-ID", "Idempotent-Replayed", "Retry-After"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "corsheaders",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "django_prometheus",
    "core",
    "web.accounts",
    "core.audit",
    "web.webhooks",
    "reservations",
    "events",
    "slots",
    "demo",
    "ops",
]

MIDDLEWARE = [
    "core.metrics.RequestMetricsMiddleware",
    "core.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "core.middleware.AdminMessageMiddleware",
    "web.webhooks.kick.KickDeliveryMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

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

# --- The web server (`manage.py serve`, granian: docs/decisions/0006-request-floor.md) ------------
# Worker processes, and threads in each: one thread per process on this project's measurements.
WEB_CONCURRENCY = env.int("WEB_CONCURRENCY", default=os.cpu_count() or 1)
WEB_THREADS = env.int("WEB_THREADS", default=1)
# Off by default: the load balancer in front logs every request, and granian's access log line cost
# 6-9 % of a worker's CPU (docs/decisions/0006-request-floor.md). On when nothing else logs requests.
WEB_ACCESS_LOG = env.bool("WEB_ACCESS_LOG", default=False)

# --- Database -------------------------------------------------------------------------------------
# A lock wait longer than DB_LOCK_TIMEOUT_MS answers 503 `busy` instead of queueing forever.
DB_LOCK_TIMEOUT_MS = env.int("DB_LOCK_TIMEOUT_MS", default=5000)
if env("DATABASE_URL", default=""):
    _database = env.db("DATABASE_URL")
    _database["HOST"] = unquote(_database["HOST"])  # a socket directory may be given %-encoded
else:
    _database = embedded.database(VAR_DIR)
_database["ENGINE"] = "django_prometheus.db.backends.postgresql"
_database["CONN_MAX_AGE"] = env.int("DB_CONN_MAX_AGE", default=60)
_database["CONN_HEALTH_CHECKS"] = False  # no SELECT 1 per request: a dead connection is a 503 once (0006)
# Statements are bound server-side (the extended protocol: parameters travel apart from the text, so a
# statement's text is the same on every call) and prepared on a connection once it has run
# DB_PREPARE_THRESHOLD times there (psycopg's default, 5); PostgreSQL then parses and plans it once per
# connection instead of on every call (docs/decisions/0021-prepared-statements.md). Empty: never prepare,
# for a pooler in transaction mode that does not track prepared statements (deploy/README.md).
_prepare_threshold = env("DB_PREPARE_THRESHOLD", default="5")
DB_PREPARE_THRESHOLD = int(_prepare_threshold) if _prepare_threshold else None
_database.setdefault("OPTIONS", {}).update(
    options=f"-c lock_timeout={DB_LOCK_TIMEOUT_MS}",
    server_side_binding=True,
    prepare_threshold=DB_PREPARE_THRESHOLD,
)
DATABASES = {"default": _database}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_USER_MODEL = "accounts.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# --- Internationalisation -------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
# Times as operators read them in the admin: "1 Dec 2026, 22:04", not "Dec. 1, 2026, 10:04 p.m."
FORMAT_MODULE_PATH = ["config.formats"]
USE_I18N = True
USE_TZ = True
# The operators' time zone: the admin shows and reads local times in it; the database stores UTC.
TIME_ZONE = env("TIME_ZONE", default="UTC")

# --- Static files (served by WhiteNoise; `collectstatic` fills STATIC_ROOT) ----------------------
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = DEBUG

# --- Security (the production defaults follow DEBUG=False; `check --deploy` is clean with them) ----
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 3600)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=not DEBUG)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=not DEBUG)
SECURE_REDIRECT_EXEMPT = [r"^api/health(/ready)?$", r"^metrics$"]  # load-balancer probes speak plain HTTP

# --- REST framework -------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "web.accounts.auth.CachedTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": [
        "web.renderers.JSONRenderer",
        "web.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "web.renderers.ContentNegotiation",
    "DEFAULT_PARSER_CLASSES": [
        "web.parsers.SafeJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_PAGINATION_CLASS": "web.api.PagePagination",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    # Every operation's refusals derived from its view (docs/decisions/0011-schema-refusals.md).
    "DEFAULT_SCHEMA_CLASS": "web.schema.ApiSchema",
    "EXCEPTION_HANDLER": "core.errors.exception_handler",
    # web/throttling.py: on unless THROTTLE_ENABLED is off, at the THROTTLE_RATES below.
    "DEFAULT_THROTTLE_CLASSES": [
        "web.throttling.AnonThrottle",
        "web.throttling.UserThrottle",
        "web.throttling.ScopeThrottle",
    ],
    # How many proxies in front add X-Forwarded-For: the client's address is the one the outermost of
    # them saw. 0: the connection's own address, and a client cannot pick its counter with that header.
    "NUM_PROXIES": env.int("NUM_PROXIES", default=0),
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "booking_site API",
    "DESCRIPTION": "Reserve scarce things (cars, event seats, time slots) without ever selling one twice.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI from the project's own static files: /api/docs/ works without the internet.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Request bodies documented as JSON only: a client generated from the schema sends JSON. The server
    # still parses forms and multipart (DEFAULT_PARSER_CLASSES) for the browsable API's HTML forms and
    # `curl -d` (docs/decisions/0018-schema-for-clients.md).
    "PARSER_WHITELIST": ["rest_framework.parsers.JSONParser"],
    # Ids in paths (config.urls.IdConverter): 1 to 18 digits; a longer one matches no route (404).
    "PATH_CONVERTER_OVERRIDES": {"id": {"type": "integer", "minimum": 1, "maximum": 999_999_999_999_999_999}},
    # Three models have a "status": name each enum after its model.
    "ENUM_NAME_OVERRIDES": {
        "CarStatusEnum": "reservations.models.Car.Status",
        "SlotStatusEnum": "slots.models.Slot.Status",
        "SlotBookingStatusEnum": "slots.models.SlotBooking.Status",
    },
}

# Throttle counters must be shared by every web process: point CACHE_URL at Redis in production. With
# the in-process default each process counts alone: N processes allow N times each rate.
CACHES = {"default": env.cache("CACHE_URL", default="locmemcache://")}
# Throttling (docs/decisions/0010-abuse-limits.md), per rate "N/second|minute|hour|day"; a rate set to
# "none" turns that scope off. Over one: 429 `throttled` with Retry-After.
THROTTLE_ENABLED = env.bool("THROTTLE_ENABLED", default=True)


def _unless_none(name: str, default: str) -> str | None:
    """The variable's value, or None when it is set to "none" (or empty): that feature is off."""
    value = env(name, default=default)
    return None if value.lower() in ("", "none") else value


THROTTLE_RATES = {
    "anon": _unless_none("THROTTLE_ANON", "60/minute"),  # without credentials, per IP address
    "user": _unless_none("THROTTLE_USER", "600/minute"),  # a signed-in user
    "holds": _unless_none("THROTTLE_HOLDS", "30/minute"),  # car, seat and slot holds, per user (not operators)
    "registration": _unless_none("THROTTLE_REGISTRATION", "20/hour"),  # POST /api/users, per IP address
}

# How long a web process may keep using a token lookup (a revoked token works at most this long on
# another process); 0 turns the cache off. See web/accounts/auth.py.
AUTH_TOKEN_CACHE_SECONDS = env.float("AUTH_TOKEN_CACHE_SECONDS", default=10)
AUTH_TOKEN_CACHE_SIZE = env.int("AUTH_TOKEN_CACHE_SIZE", default=10_000)

# --- Product settings -----------------------------------------------------------------------------
IDEMPOTENCY_TTL_HOURS = env.int("IDEMPOTENCY_TTL_HOURS", default=24)
EXPIRY_BATCH_SIZE = env.int("EXPIRY_BATCH_SIZE", default=500)
RESERVATION_HOLD_MINUTES_DEFAULT = env.int("RESERVATION_HOLD_MINUTES_DEFAULT", default=15)
SLOTS_CANCELLATION_WINDOW_HOURS = env.int("SLOTS_CANCELLATION_WINDOW_HOURS", default=1)
SLOTS_MAX_ACTIVE_BOOKINGS_PER_GUEST = env.int("SLOTS_MAX_ACTIVE_BOOKINGS_PER_GUEST", default=5)
# The caps on what one user holds at once (core.policy.Cap; operators are exempt): live car
# holds per buyer, and seats held per user on one event.
RESERVATION_MAX_ACTIVE_HOLDS_PER_BUYER = env.int("RESERVATION_MAX_ACTIVE_HOLDS_PER_BUYER", default=3)
EVENT_MAX_HELD_SEATS_PER_USER = env.int("EVENT_MAX_HELD_SEATS_PER_USER", default=10)
SLOTS_HOLD_MINUTES_DEFAULT = env.int("SLOTS_HOLD_MINUTES_DEFAULT", default=10)
# Hot reads (event counts, seat maps, the slot listing) served from each process's memory for at most
# this long (0 to 1 s; 0 reads the database every time), with the moment read as `asOf`.
READS_MAX_AGE_SECONDS = env.float("READS_MAX_AGE_SECONDS", default=1.0)
# The invariant monitor (core/invariants.py) reports a hold still HELD this long after one
# expiry interval past its expiry: the expiry job is not keeping up.
INVARIANTS_OVERDUE_MARGIN_SECONDS = env.int("INVARIANTS_OVERDUE_MARGIN_SECONDS", default=60)
# ... and checks the audit trails of the claims with an audit event in this many hours (0: all history,
# a scan of every claim; `manage.py check_invariants --all-history` does that once).
INVARIANTS_AUDIT_WINDOW_HOURS = env.int("INVARIANTS_AUDIT_WINDOW_HOURS", default=24)
# Each confirmed booking (a slot booking, an appointment, a seat booking) is reminded once this many hours
# before its start (core/reminders.py): a REMINDED audit event, delivered as a webhook. "none": off.
_reminder_hours = _unless_none("REMINDER_HOURS_BEFORE", "24")
if _reminder_hours is not None and not (_reminder_hours.isdigit() and int(_reminder_hours) >= 1):
    raise ImproperlyConfigured(
        f"REMINDER_HOURS_BEFORE={_reminder_hours}: a whole number of hours (1 or more), or none."
    )
REMINDER_HOURS_BEFORE = None if _reminder_hours is None else int(_reminder_hours)

# Calendar files and feeds (docs/contract.md §3.8): how long an event (which has only a start) lasts in a
# calendar; how many days back a feed lists bookings, and cancelled ones cancelled in that time.
CALENDAR_EVENT_DURATION_MINUTES = env.int("CALENDAR_EVENT_DURATION_MINUTES", default=120)
CALENDAR_FEED_PAST_DAYS = env.int("CALENDAR_FEED_PAST_DAYS", default=30)
# Admin CSV exports (web/exports.py): rows fetched from the database per round trip.
EXPORT_CHUNK_SIZE = env.int("EXPORT_CHUNK_SIZE", default=2000)

# --- Celery ---------------------------------------------------------------------------------------
if env("CELERY_BROKER_URL", default=""):
    CELERY_BROKER_URL = env("CELERY_BROKER_URL")
    CELERY_BROKER_TRANSPORT: str | None = None  # the URL's scheme says
    CELERY_BROKER_TRANSPORT_OPTIONS: dict = {}
else:
    CELERY_BROKER_URL, CELERY_BROKER_TRANSPORT, CELERY_BROKER_TRANSPORT_OPTIONS = embedded.broker(VAR_DIR)
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = "UTC"
# The periodic tasks a fresh install gets (created on migrate, editable in the admin afterwards).
BEAT_SCHEDULE_SECONDS = {
    "booking_site.tasks.expire_holds": env.int("EXPIRE_HOLDS_EVERY_SECONDS", default=15),
    "booking_site.tasks.prune": env.int("PRUNE_EVERY_SECONDS", default=3600),
    "booking_site.webhooks.tasks.deliver_audit_events": env.int("DELIVER_AUDIT_EVENTS_EVERY_SECONDS", default=5),
    "booking_site.tasks.check_invariants": env.int("CHECK_INVARIANTS_EVERY_SECONDS", default=60),
    "events.tasks.admit_queues": env.int("ADMIT_QUEUES_EVERY_SECONDS", default=5),
    "booking_site.tasks.send_reminders": env.int("SEND_REMINDERS_EVERY_SECONDS", default=60),
}

# --- Webhooks (docs/contract.md §3.7, docs/decisions/0013-webhooks.md) -----------------------------
# Seconds to connect, and to wait for the answer: a 2xx within it is delivered.
WEBHOOK_TIMEOUT_SECONDS = env.float("WEBHOOK_TIMEOUT_SECONDS", default=10)
# The waits before each retry (seconds, ±20 % jitter); after the last retry a delivery is FAILED.
WEBHOOK_RETRY_DELAYS = [
    int(s.strip())
    for s in env.list(
        "WEBHOOK_RETRY_DELAYS", default=["5", "300", "1800", "7200", "18000", "36000", "50400", "72000", "86400"]
    )
    if s.strip()  # empty: no retries
]
# An endpoint whose every delivery failed for this many days is disabled.
WEBHOOK_DISABLE_AFTER_DAYS = env.int("WEBHOOK_DISABLE_AFTER_DAYS", default=5)
# Private, loopback and link-local URLs (after DNS) are refused unless this is true.
WEBHOOKS_ALLOW_PRIVATE_URLS = env.bool("WEBHOOKS_ALLOW_PRIVATE_URLS", default=DEBUG)
# Delivered deliveries and their attempts are pruned after this many days.
WEBHOOK_RETENTION_DAYS = env.int("WEBHOOK_RETENTION_DAYS", default=30)
# One run of the job sends at most this many attempts (the next run goes on).
WEBHOOK_MAX_ATTEMPTS_PER_RUN = env.int("WEBHOOK_MAX_ATTEMPTS_PER_RUN", default=1000)
# A request that may have written kicks a delivery run at once (from a background thread); off: beat alone.
WEBHOOK_KICK = env.bool("WEBHOOK_KICK", default=True)

# --- Logging: JSON lines in production, readable lines in development; every line has request_id --
LOG_LEVEL = env("LOG_LEVEL", default="INFO")
LOG_FORMAT = env("LOG_FORMAT", default="text" if DEBUG else "json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "core.middleware.RequestIdLogFilter"}},
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
        "text": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["request_id"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"pgserver": {"level": "WARNING"}},
}
