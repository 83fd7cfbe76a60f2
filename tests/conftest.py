import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NoReturn

import pytest
from django.conf import settings
from django.utils import timezone
from psycopg import sql
from rest_framework.test import APIClient

from ops import embedded
from tests.factories import UserFactory, house
from tests.processes import stop_group


@pytest.fixture(scope="session", autouse=True)
def _flush_by_deleting_what_is_there():
    """After each ``transaction=True`` test (and each cluster test) the database is emptied with Django's
    ``flush``: one TRUNCATE of every table, about a second on a busy two-core machine, for the ~160 such
    tests a good part of `make test`. Deleting the rows of the few tables that have any empties it just as
    well in milliseconds; then ``post_migrate`` runs as after a TRUNCATE. The deletes run with triggers
    and foreign keys off (``session_replication_role``, which only a superuser may set: the suite's own
    servers run as one) since the audit table's trigger refuses a DELETE; otherwise Django's TRUNCATE.
    The content types and permissions stay: ``post_migrate`` makes them from the models alone (no test
    writes them), and finding them there costs it a few reads where writing them again was most of a
    flush's time."""
    from django.contrib.auth.models import Permission
    from django.contrib.contenttypes.models import ContentType
    from django.core.management.commands import flush

    truncate = flush.sql_flush
    kept = {ContentType._meta.db_table, Permission._meta.db_table}

    def delete_rows(style, connection, reset_sequences=True, allow_cascade=False) -> list[str]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_setting('is_superuser') = 'on'")
            (superuser,) = cursor.fetchone()
        if reset_sequences or not superuser:
            return truncate(style, connection, reset_sequences=reset_sequences, allow_cascade=allow_cascade)
        tables = set(connection.introspection.django_table_names(only_existing=True, include_views=False)) - kept
        probe = sql.SQL(" UNION ALL ").join(
            sql.SQL("SELECT {} WHERE EXISTS (SELECT FROM {})").format(sql.Literal(table), sql.Identifier(table))
            for table in tables
        )
        with connection.cursor() as cursor:
            cursor.execute(probe.as_string(connection.connection))
            filled = [table for (table,) in cursor.fetchall()]
        if not filled:
            return []  # as Django's flush of an empty database: no post_migrate either
        deletes = (sql.SQL("DELETE FROM {}").format(sql.Identifier(table)) for table in filled)
        return ["SET LOCAL session_replication_role = replica", *(d.as_string(connection.connection) for d in deletes)]

    flush.sql_flush = delete_rows
    yield
    flush.sql_flush = truncate


@pytest.fixture(autouse=True)
def _plain_http(settings):
    """The test client speaks plain HTTP; production settings would redirect it to HTTPS."""
    settings.SECURE_SSL_REDIRECT = False


@pytest.fixture(autouse=True)
def _static_files_without_collectstatic(settings):
    """Production serves hashed files from `collectstatic`; tests render pages without running it."""
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


@pytest.fixture(autouse=True)
def _reads_not_kept(settings):
    """Every read goes to the database, so a test sees its own writes at once; the tests of recent
    reads (``web.recent``) turn keeping back on with the ``recent_reads`` fixture."""
    from events import selectors

    settings.READS_MAX_AGE_SECONDS = 0
    selectors._layouts.clear()  # seat layouts are kept for good: one test's event ids are not another's


class Clock:
    """A view module's clock, set by the test: ``web.recent`` judges a kept read's age by the
    ``now`` the view gives it."""

    def __init__(self, moment):
        self.moment = moment

    def now(self):
        return self.moment

    def advance(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)

    @classmethod
    def patched_into(cls, views, monkeypatch) -> "Clock":
        clock = cls(timezone.now())
        monkeypatch.setattr(views, "timezone", clock)
        return clock


@pytest.fixture
def signed_in(user):
    """A client whose requests cost no statement to authenticate: the counts are the endpoint's own."""
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def recent_reads(settings):
    """Reads kept for the production second, starting empty."""
    from events.api.views import recent_counts, recent_seat_maps
    from slots.api.views import recent_pages

    settings.READS_MAX_AGE_SECONDS = 1
    for cache in (recent_counts, recent_seat_maps, recent_pages):
        cache.clear()
    yield
    for cache in (recent_counts, recent_seat_maps, recent_pages):
        cache.clear()


@pytest.fixture(autouse=True)
def _not_throttled(settings):
    """Throttling is off in tests (as in the benchmark); tests/web/test_throttling.py turns it on."""
    settings.THROTTLE_ENABLED = False


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def user(db):
    return UserFactory()


@pytest.fixture
def other_user(db):
    return UserFactory()


@pytest.fixture
def staff(db):
    """The platform's operator (a superuser: every organisation's), beside the one organisation the tests'
    resources belong to (``house``), so that what they create needs no ``organisationId``."""
    house()
    return UserFactory(is_staff=True, is_superuser=True)


@pytest.fixture
def client_for():
    """An API client authenticated with the user's token, as a client application would be."""

    def make(user) -> APIClient:
        client = APIClient()
        if user is not None:
            client.credentials(HTTP_AUTHORIZATION=f"Token {user.auth_token.key}")
        return client

    return make


@pytest.fixture
def api(client_for, user):
    return client_for(user)


@pytest.fixture
def cached_api_of(client_for):
    """``client_for`` on the cached-token path: the token is looked up once by a first request, then
    cached (what the round-trip tests measure)."""

    def make(user) -> APIClient:
        client = client_for(user)
        client.get("/api/users/me")
        return client

    return make


@pytest.fixture
def staff_api(client_for, staff):
    return client_for(staff)


@pytest.fixture
def served(transactional_db, tmp_path):
    """The production server (`manage.py serve`: granian, one worker) on a free port, on the test
    database; yields its base URL and stops it afterwards. Data must be committed to be seen by it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "DATABASE_URL": embedded.database_url(settings.DATABASES["default"]),
        "DEBUG": "False",
        "SECURE_SSL_REDIRECT": "False",
        "LOG_LEVEL": "ERROR",
        "WEB_CONCURRENCY": "1",
        "WEB_ACCESS_LOG": "false",
        "THROTTLE_ENABLED": "False",  # as in the tests' own settings: no 429 unless a test asks for one
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
    }
    # Its log goes to a file, not a pipe: a pipe nobody reads fills up (64 KiB) and the server blocks
    # writing to it, mid-request (a fuzzer's run logs that much).
    log = tmp_path / "serve.log"
    with log.open("w") as log_file:
        server = subprocess.Popen(
            [sys.executable, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=settings.BASE_DIR,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{base}/metrics", timeout=1)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"manage.py serve did not come up: {log.read_text()}") from None
                time.sleep(0.1)
        yield base
    finally:
        stop_group(server, signal.SIGTERM, grace=10)


# --- a webhook receiver: a threaded http.server on 127.0.0.1 ------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]


@dataclass
class Receiver:
    """Answers each POST with ``answer(received) -> (status, headers)`` (200 by default) and keeps it."""

    url: str = ""
    received: list[Received] = field(default_factory=list)
    answer: Callable[[Received], tuple[int, dict[str, str]]] = lambda received: (200, {})
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bodies(self) -> list[bytes]:
        return [r.body for r in self.received]


@pytest.fixture
def receiver(settings) -> Iterator[Receiver]:
    settings.WEBHOOKS_ALLOW_PRIVATE_URLS = True  # it listens on 127.0.0.1
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        disable_nagle_algorithm = True  # no 40 ms delayed-ACK wait between the headers and the body
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            length = int(self.headers.get("Content-Length", 0))
            received = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, self.rfile.read(length))
            with state.lock:
                state.received.append(received)
            status, headers = state.answer(received)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "2")
            self.end_headers()
            with contextlib.suppress(OSError):  # the sender gave up (its timeout) or was killed
                self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


# --- the servers some tests need beside PostgreSQL: Redis and RabbitMQ ----------------------------------
# `make test` runs on the embedded defaults (no broker server, no shared cache), as a newcomer gets it; the
# tests of what only a real server gives (the cluster's two workers and shared throttle, a worker on each
# kind of broker) point at the machine's own, each in a place of its own, and skip when it is not there.
# Under CI (`CI` set, as .ci/run does), where they run, a missing one fails instead of skipping.


def service_missing(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI runs every test")
    pytest.skip(reason)


def _answers(url: str) -> str | None:
    """None when the broker at ``url`` takes a connection, else why not."""
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:
        return f"{exc.__class__.__name__}: {exc}"
    return None


@pytest.fixture(scope="session")
def redis_url() -> str:
    """TEST_REDIS_URL, by default database 15 of the machine's Redis (the tests' own: they may empty it)."""
    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    if problem := _answers(url):
        service_missing(f"no Redis at TEST_REDIS_URL={url} ({problem})")
    return url


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    """TEST_RABBITMQ_URL, by default the machine's RabbitMQ as its default user (each test its own queue)."""
    url = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
    if problem := _answers(url):
        service_missing(f"no RabbitMQ at TEST_RABBITMQ_URL={url} ({problem})")
    return url
