"""The embedded defaults a newcomer gets (docs/contract.md §8): with no DATABASE_URL and no CELERY_BROKER_URL the
project runs on pgserver's PostgreSQL in var/pgdata and kombu's filesystem broker in var/broker. `make test` runs
on them when nothing is set; this test checks a fresh process on them whatever the suite runs on."""

import os
import subprocess
import sys

import pytest
from django.conf import settings

pytestmark = pytest.mark.slow

PROBE = """
from django.db import connection
from config.celery import app
from core.expiry import expire_all
from django.utils import timezone
with connection.cursor() as cursor:
    cursor.execute("SELECT count(*) FROM reservations_reservation")
with app.connection_for_write() as conn:
    conn.ensure_connection(max_retries=1)
print("host", connection.settings_dict["HOST"])
print("broker", app.conf.broker_url)
print("transport", type(app.connection_for_write().transport).__module__)
print("expired", expire_all(now=timezone.now()))
"""


def manage(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "CELERY_BROKER_URL"}}
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_migrate_and_run_a_job_on_the_embedded_defaults():
    manage("migrate", "--noinput")

    out = manage("shell", "-c", PROBE)

    assert "host /" in out  # a Unix socket directory of the embedded server, not a TCP host
    assert "broker filesystem://" in out
    assert "transport ops.embedded" in out  # the transport whose files appear whole
    assert "expired {" in out
