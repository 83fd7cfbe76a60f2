"""The audit-event job as it runs: two at once, a real Celery worker, a worker killed mid-delivery."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from standardwebhooks import Webhook

from config.celery import app as celery_app
from ops import embedded
from tests.concurrency import run_concurrently
from tests.factories import house
from tests.lengths import short_and_long
from tests.reservations.factories import CarFactory
from tests.web.webhooks.test_delivery import events_of
from tests.workers import real_worker
from web.webhooks import services
from web.webhooks.models import WebhookAttempt, WebhookDelivery
from web.webhooks.services import webhook_events_fan_out, webhooks_deliver
from web.webhooks.tasks import deliver_audit_events

UNLEASED_TAKE = services.TAKE_SQL.replace("next_attempt_at = %(lease)s, ", "").replace(
    "FOR UPDATE OF c SKIP LOCKED", ""
)


def wait_for(condition, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def two_jobs_over(receiver, subjects: int, per_subject: int):
    services.webhook_endpoint_create(organisation_id=house().pk, url=receiver.url, now=timezone.now())
    events_of([f"s{i}" for i in range(subjects)], per_subject)
    webhook_events_fan_out(now=timezone.now())  # both jobs find the deliveries there: they only send
    return run_concurrently([webhooks_deliver, webhooks_deliver])


@pytest.mark.django_db(transaction=True)
@pytest.mark.concurrency
@pytest.mark.slow
@short_and_long("subjects", 20, 100)
def test_two_jobs_at_once_deliver_each_of_ten_events_per_subject_exactly_once_in_order(receiver, subjects):
    runs = two_jobs_over(receiver, subjects=subjects, per_subject=10)
    events = subjects * 10

    assert all(run.delivered > 0 for run in runs), runs  # both jobs did send
    assert sum(run.delivered for run in runs) == events
    ids = [r.id for r in receiver.received]
    assert len(ids) == len(set(ids)) == events
    assert WebhookDelivery.objects.filter(status="DELIVERED", attempts=1).count() == events
    by_subject = defaultdict(list)
    for body in receiver.bodies():
        data = json.loads(body)["data"]
        by_subject[data["subject"]["id"]].append(data["id"])
    assert all(sent == sorted(sent) for sent in by_subject.values())


@pytest.mark.django_db(transaction=True)
@pytest.mark.concurrency
def test_control_without_the_lease_two_jobs_send_the_same_delivery_twice(receiver, monkeypatch):
    monkeypatch.setattr(services, "TAKE_SQL", UNLEASED_TAKE)

    two_jobs_over(receiver, subjects=100, per_subject=1)

    ids = [r.id for r in receiver.received]
    assert len(ids) > len(set(ids))


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_hold_through_the_api_reaches_the_receiver_within_a_second_through_a_real_worker(receiver, api, staff_api):
    secret = staff_api.post("/api/webhooks", {"url": receiver.url}).json()["secret"]
    with real_worker(celery_app):
        time.sleep(0.5)  # the worker is consuming
        started = time.monotonic()
        response = api.post("/api/reservations", {"carId": CarFactory().pk})
        wait_for(lambda: receiver.received, seconds=10)
        took = time.monotonic() - started

    assert response.status_code == 201
    body = Webhook(secret).verify(receiver.received[0].body, receiver.received[0].headers)
    assert body["type"] == "reservation.created" and body["data"]["subject"]["id"] == str(response.json()["id"])
    assert took < 2.5  # kicked on commit, not left to beat (whose first run is 5 s away)


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_worker_killed_mid_delivery_leaves_the_event_to_be_delivered_later(receiver):
    release = threading.Event()
    receiver.answer = lambda received: (release.wait(60), (200, {}))[1]
    services.webhook_endpoint_create(organisation_id=house().pk, url=receiver.url, now=timezone.now())
    events_of(["a"], 1)
    celery_app.control.purge()
    env = {
        **os.environ,
        "DATABASE_URL": embedded.database_url(django_settings.DATABASES["default"]),
        "WEBHOOKS_ALLOW_PRIVATE_URLS": "true",
        "WEBHOOK_KICK": "false",
        "LOG_LEVEL": "WARNING",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool", "solo", "--loglevel", "WARNING"],
        cwd=django_settings.BASE_DIR,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deliver_audit_events.delay()
        wait_for(lambda: receiver.received, seconds=60)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
        release.set()

    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.attempts) == ("PENDING", 1) and not WebhookAttempt.objects.exists()
    assert webhooks_deliver().delivered == 0  # its lease has not run out yet

    webhooks_deliver(now=timezone.now() + services.lease())

    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("DELIVERED", 2)
    assert [r.id for r in receiver.received] == [delivery.message_id] * 2  # once or more, with one webhook-id


@pytest.mark.django_db
def test_a_fresh_install_delivers_every_five_seconds():
    task = PeriodicTask.objects.select_related("interval").get(task="booking_site.webhooks.tasks.deliver_audit_events")

    assert task.enabled and (task.interval.every, task.interval.period) == (5, "seconds")


@pytest.mark.django_db
def test_the_command_delivers_and_explains_itself(receiver, endpoint, capsys):
    events_of(["a"], 2)

    call_command("deliver_audit_events")

    assert "fanned out: 2\ndelivered: 2\n" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        call_command("deliver_audit_events", "--help")
    assert "Standard Webhooks" in capsys.readouterr().out
