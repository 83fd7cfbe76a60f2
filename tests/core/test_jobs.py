"""The periodic jobs (docs/contract.md §7): beat schedule, management commands, and a real Celery worker."""

import socket
import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from config.celery import app as celery_app
from core.tasks import expire_holds
from events.models import EventQueue, QueueEntry
from events.queue import queue_join
from events.services.events import event_update_details
from events.tasks import admit_queues
from reservations.models import Reservation
from tests.events.factories import make_event
from tests.factories import UserFactory
from tests.reservations.factories import ReservationFactory
from tests.workers import real_worker


def overdue_holds(n: int) -> list[Reservation]:
    past = timezone.now() - timedelta(hours=1)
    return [ReservationFactory(created_at=past, expires_at=past + timedelta(minutes=5)) for _ in range(n)]


@pytest.mark.django_db
def test_a_fresh_install_has_its_beat_schedule():
    tasks = {t.task: t for t in PeriodicTask.objects.select_related("interval")}

    expire = tasks["booking_site.tasks.expire_holds"]
    assert expire.enabled and (expire.interval.every, expire.interval.period) == (15, "seconds")
    assert tasks["booking_site.tasks.prune"].interval.every == 3600
    assert tasks["events.tasks.admit_queues"].interval.every == 5
    assert tasks["booking_site.tasks.send_reminders"].interval.every == 60


def test_every_scheduled_task_is_one_a_worker_runs():
    celery_app.loader.import_default_modules()  # what a worker does when it starts: each app's tasks.py

    assert set(settings.BEAT_SCHEDULE_SECONDS) <= set(celery_app.tasks)


@pytest.mark.django_db
def test_an_operator_edit_of_the_schedule_survives_the_next_migrate():
    PeriodicTask.objects.filter(task="booking_site.tasks.expire_holds").update(enabled=False)

    call_command("migrate", verbosity=0)

    assert not PeriodicTask.objects.get(task="booking_site.tasks.expire_holds").enabled


@pytest.mark.django_db
def test_expire_holds_command(capsys):
    holds = overdue_holds(3)
    fresh = ReservationFactory()

    call_command("expire_holds")

    assert "reservations: expired 3" in capsys.readouterr().out
    assert {r.state for r in Reservation.objects.filter(pk__in=[h.pk for h in holds])} == {"EXPIRED"}
    fresh.refresh_from_db()
    assert fresh.state == "HELD"


@pytest.mark.django_db
def test_prune_command(capsys):
    call_command("prune")

    assert "idempotency_records: deleted 0" in capsys.readouterr().out


@pytest.mark.django_db
def test_commands_explain_themselves(capsys):
    for command in ["expire_holds", "prune", "admit_queues", "send_reminders", "seed_demo", "up", "serve"]:
        with pytest.raises(SystemExit):
            call_command(command, "--help")
        assert len(capsys.readouterr().out) > 200


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_real_worker_runs_the_expiry_task_from_the_broker():
    holds = overdue_holds(4)

    with real_worker(celery_app):
        expire_holds.delay()
        deadline = time.monotonic() + 30
        while Reservation.objects.filter(state="HELD").exists() and time.monotonic() < deadline:
            time.sleep(0.2)

    assert set(Reservation.objects.filter(pk__in=[h.pk for h in holds]).values_list("state", flat=True)) == {"EXPIRED"}


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_real_worker_runs_the_admission_task_from_the_broker():
    event = make_event()
    event_update_details(event_id=event.pk, actor=None, now=timezone.now(), queue_enabled=True, admitted_per_minute=600)
    for _ in range(3):
        queue_join(event_id=event.pk, user=UserFactory(), now=timezone.now())
    EventQueue.objects.update(credit_from=timezone.now() - timedelta(seconds=10))

    with real_worker(celery_app):
        admit_queues.delay()
        deadline = time.monotonic() + 30
        while QueueEntry.objects.filter(state="WAITING").exists() and time.monotonic() < deadline:
            time.sleep(0.2)

    assert list(QueueEntry.objects.order_by("number").values_list("state", flat=True)) == ["ADMITTED"] * 3


@pytest.mark.parametrize("command", ["up", "serve"])
def test_a_taken_port_stops_a_server_command_before_it_starts_anything(command):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        with pytest.raises(CommandError, match=f"Port {port} on 127.0.0.1 is already in use.*PORT={port + 1}"):
            call_command(command, "--host", "127.0.0.1", "--port", str(port))
