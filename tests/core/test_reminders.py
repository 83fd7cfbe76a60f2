"""Reminders (core/reminders.py, docs/contract.md §7): each confirmed booking — a slot booking, an
appointment, a seat booking — gets one REMINDED audit event REMINDER_HOURS_BEFORE hours before its start,
delivered as a webhook; jobs at once, a real worker, a job that was down. The job is run with a clock:
``now`` is the moment it runs at."""

import time
from datetime import timedelta

import pytest
from celery.signals import task_postrun
from django.core.management import call_command
from django.db import IntegrityError, OperationalError, connection, transaction
from django.db.models import Count
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django_celery_beat.models import PeriodicTask
from psycopg import sql

from config.celery import app as celery_app
from core import claims, locking, reminders
from core.audit.models import AuditEvent
from core.audit.services import record
from core.tasks import send_reminders
from events.models import SeatHoldGroup
from events.services import events as events_events
from events.services import seat_holds
from slots.availability import availability_clean
from slots.models import SlotBooking
from slots.services import appointments, reschedule
from slots.services import bookings as slots_bookings
from slots.services import slots as slots_slots
from tests.calendars import read_one
from tests.concurrency import run_concurrently
from tests.events.factories import make_event, write_hold
from tests.factories import UserFactory, house
from tests.slots.factories import HostFactory, SlotBookingFactory, SlotFactory, morning
from tests.web.webhooks.test_delivery import verified
from tests.workers import real_worker
from web.webhooks.services import webhook_endpoint_create, webhooks_deliver

DAY = timedelta(hours=24)  # REMINDER_HOURS_BEFORE's default


def reminded(subject_type: str) -> dict[str, int]:
    """Each subject's number of REMINDED events."""
    events = AuditEvent.objects.filter(subject_type=subject_type, event_type="REMINDED")
    return dict(events.values_list("subject_id").annotate(n=Count("id")))


def slot_booking(start, guest=None) -> SlotBooking:
    return slots_bookings.slot_booking_create(
        slot_id=SlotFactory(start=start).pk, guest=guest or UserFactory(), now=timezone.now()
    )


def seat_booking(event_date, seats: int = 2) -> SeatHoldGroup:
    event, user = make_event(total_seats=10, event_date=event_date), UserFactory()
    hold = seat_holds.seat_hold(event_id=event.pk, user=user, quantity=seats, now=timezone.now())
    return seat_holds.seat_hold_confirm(event_id=event.pk, hold_group_id=hold.pk, user=user, now=timezone.now())


def appointment(start):
    host = HostFactory()
    week = {"timeZone": "UTC", "weekly": [{"weekday": d, "start": "00:00", "end": "24:00"} for d in range(7)]}
    slots_slots.availability_set(
        host=host, fields=availability_clean({**week, "durations": [30]}), actor=host, now=timezone.now()
    )
    return appointments.appointment_book(
        host_id=host.pk, guest=UserFactory(), start=start, end=start + timedelta(minutes=30), now=timezone.now()
    )


# --- what is reminded, and when --------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_booking_is_reminded_once_when_its_start_is_a_day_away_not_before():
    start = morning(3)
    booking, seats, visit = slot_booking(start), seat_booking(start), appointment(start + timedelta(hours=2))

    assert reminders.reminders_send(now=start - DAY - timedelta(seconds=1)) == {"events": 0, "slots": 0}
    assert reminders.reminders_send(now=start - DAY) == {"events": 1, "slots": 1}
    assert reminders.reminders_send(now=start - DAY + timedelta(hours=2)) == {"events": 0, "slots": 1}
    assert reminders.reminders_send(now=start - timedelta(hours=1)) == {"events": 0, "slots": 0}

    assert reminded("slotbooking") == {str(booking.pk): 1, str(visit.pk): 1}
    assert reminded("seat_hold_group") == {str(seats.pk): 1}
    booking.refresh_from_db()
    assert booking.reminded_at == start - DAY and booking.status == "CONFIRMED"
    event = AuditEvent.objects.get(subject_type="seat_hold_group", event_type="REMINDED")
    assert (event.from_state, event.to_state, event.actor_label) == ("CONFIRMED", "CONFIRMED", "system:send_reminders")
    assert parse_datetime(event.metadata.pop("startsAt")) == start
    assert event.metadata == {
        "hoursBefore": 24,
        "eventId": seats.event_id,
        "bookingGroupId": str(seats.booking_group_id),
    }


@pytest.mark.django_db
def test_a_cancelled_a_held_or_a_pending_booking_gets_none(staff):
    start = morning(3)
    cancelled = slot_booking(start)
    slots_bookings.slot_booking_create(
        slot_id=SlotFactory(start=start).pk, guest=UserFactory(), hold=True, now=timezone.now()
    )
    slots_bookings.slot_booking_cancel(booking_id=cancelled.pk, user=staff, now=timezone.now())
    group = seat_booking(start)
    seat_holds.seat_booking_cancel(booking_group_id=group.booking_group_id, user=staff, now=timezone.now())
    event = make_event(total_seats=2, event_date=start)
    seat_holds.seat_hold(event_id=event.pk, user=UserFactory(), quantity=1, now=timezone.now())

    assert reminders.reminders_send(now=start - DAY) == {"events": 0, "slots": 0}
    assert not AuditEvent.objects.filter(event_type="REMINDED").exists()


@pytest.mark.django_db
def test_a_rescheduled_booking_is_reminded_by_its_new_start(staff):
    old_start, new_start = morning(3), morning(5)
    booking = slot_booking(old_start)
    moved = reschedule.slot_booking_reschedule(
        booking_id=booking.pk, slot_id=SlotFactory(start=new_start).pk, user=booking.guest, now=timezone.now()
    )

    assert reminders.reminders_send(now=old_start - DAY) == {"events": 0, "slots": 0}
    assert reminders.reminders_send(now=new_start - DAY) == {"events": 0, "slots": 1}
    assert reminded("slotbooking") == {str(moved.pk): 1}


@pytest.mark.django_db
def test_an_events_date_moved_before_the_moment_moves_the_reminder():
    group = seat_booking(morning(3))
    events_events.event_update_details(event_id=group.event_id, actor=None, now=timezone.now(), event_date=morning(6))

    assert reminders.reminders_send(now=morning(2)) == {"events": 0, "slots": 0}
    assert reminders.reminders_send(now=morning(5)) == {"events": 1, "slots": 0}


@pytest.mark.django_db
def test_a_booking_made_less_than_a_day_before_its_start_gets_none():
    soon = timezone.now() + timedelta(hours=3)
    slot_booking(soon)
    seat_booking(soon)

    assert reminders.reminders_send(now=timezone.now()) == {"events": 0, "slots": 0}
    assert reminders.reminders_send(now=soon - timedelta(minutes=1)) == {"events": 0, "slots": 0}


@pytest.mark.django_db
def test_a_job_that_was_down_sends_the_missed_ones_unless_the_start_has_passed():
    early, late = morning(3), morning(3) + timedelta(hours=5)
    passed, ahead = slot_booking(early), slot_booking(late)

    # Down from a day before the first start until two hours after it.
    assert reminders.reminders_send(now=early + timedelta(hours=2)) == {"events": 0, "slots": 1}

    assert reminded("slotbooking") == {str(ahead.pk): 1}
    passed.refresh_from_db()
    assert passed.reminded_at is None


@pytest.mark.django_db
def test_hours_before_is_a_setting_and_none_turns_reminders_off(settings, capsys):
    start = morning(3)
    slot_booking(start)
    settings.REMINDER_HOURS_BEFORE = None

    call_command("send_reminders")

    assert "Reminders are off" in capsys.readouterr().out
    assert reminders.reminders_send(now=start - DAY) == {}
    settings.REMINDER_HOURS_BEFORE = 2
    assert reminders.reminders_send(now=start - DAY) == {"events": 0, "slots": 0}
    assert reminders.reminders_send(now=start - timedelta(hours=2)) == {"events": 0, "slots": 1}
    event = AuditEvent.objects.get(event_type="REMINDED")
    assert event.metadata["hoursBefore"] == 2


@pytest.mark.django_db
def test_batches_go_on_until_every_due_booking_is_reminded():
    start = morning(3)
    bookings = [slot_booking(start + timedelta(minutes=m)) for m in range(7)]

    assert reminders.reminders_send(now=start - DAY + timedelta(hours=1), batch_size=3) == {"events": 0, "slots": 7}
    assert set(reminded("slotbooking")) == {str(b.pk) for b in bookings}


# --- webhooks, the database's backstop, the schedule and the command ---------------------------------------


@pytest.mark.django_db
def test_subscribers_get_slot_booking_and_seat_hold_reminded_webhooks(receiver):
    endpoint = webhook_endpoint_create(
        organisation_id=house().pk,
        url=receiver.url,
        event_types=["slot_booking.reminded", "seat_hold.reminded"],
        now=timezone.now(),
    )
    start = morning(3)
    booking, group = slot_booking(start), seat_booking(start + timedelta(hours=1))
    reminders.reminders_send(now=start - timedelta(hours=12))

    run = webhooks_deliver()

    assert run.delivered == 2
    bodies = sorted((verified(r, endpoint.secret) for r in receiver.received), key=lambda b: b["type"])
    assert [(b["type"], b["data"]["subject"]) for b in bodies] == [
        ("seat_hold.reminded", {"type": "seat_hold", "id": str(group.pk)}),
        ("slot_booking.reminded", {"type": "slot_booking", "id": str(booking.pk)}),
    ]
    data = bodies[1]["data"]
    assert (data["event"], data["fromState"], data["toState"]) == ("REMINDED", "CONFIRMED", "CONFIRMED")
    assert data["metadata"]["slotId"] == booking.slot_id
    assert parse_datetime(data["metadata"]["startsAt"]) == start


@pytest.mark.django_db
def test_a_reminder_changes_nothing_in_the_bookings_calendar_file(api, user):
    start = morning(3)
    booking = slot_booking(start, guest=user)
    before = api.get(f"/api/bookings/{booking.pk}/calendar").content

    reminders.reminders_send(now=start - DAY)

    assert read_one(api.get(f"/api/bookings/{booking.pk}/calendar").content).sequence == 0
    assert api.get(f"/api/bookings/{booking.pk}/calendar").content == before  # so its ETag stays


@pytest.mark.django_db
def test_a_second_reminder_of_a_booking_is_refused_by_the_database():
    booking = SlotBookingFactory()
    record(subject=booking, event="REMINDED", from_state="CONFIRMED", to_state="CONFIRMED")

    with pytest.raises(IntegrityError, match="audit_one_reminder_per_subject"), transaction.atomic():
        record(subject=booking, event="REMINDED", from_state="CONFIRMED", to_state="CONFIRMED")


@pytest.mark.django_db
def test_the_beat_job_runs_every_minute_from_migrate():
    task = PeriodicTask.objects.select_related("interval").get(task="booking_site.tasks.send_reminders")

    assert task.enabled and (task.interval.every, task.interval.period) == (60, "seconds")


@pytest.mark.django_db
def test_the_command_sends_what_is_due_now(capsys):
    due = SlotBookingFactory(
        slot=SlotFactory(start=timezone.now() + timedelta(hours=2)), created_at=timezone.now() - timedelta(days=2)
    )

    call_command("send_reminders")

    assert capsys.readouterr().out.splitlines() == ["events: reminded 0", "slots: reminded 1"]
    assert reminded("slotbooking") == {str(due.pk): 1}


# --- two jobs at once, and a real worker -------------------------------------------------------------------


def due_now(slot_bookings: int, seat_bookings: int) -> tuple[list[SlotBooking], list[SeatHoldGroup]]:
    """Bookings made two days ago that start within the next day: all due now."""
    made = timezone.now() - timedelta(days=2)
    soon = timezone.now() + timedelta(hours=3)
    bookings = [
        SlotBookingFactory(slot=SlotFactory(start=soon + timedelta(minutes=n)), created_at=made)
        for n in range(slot_bookings)
    ]
    event = make_event(total_seats=seat_bookings, event_date=soon)
    groups = [
        write_hold(event, [f"S{n + 1}"], state="CONFIRMED", created_at=made, expires_at=made + timedelta(minutes=5))
        for n in range(seat_bookings)
    ]
    return bookings, groups


def four_jobs_at_once(batch_size: int) -> list:
    return run_concurrently(
        [lambda: reminders.reminders_send(now=timezone.now(), batch_size=batch_size) for _ in range(4)]
    )


def backstopped(error: Exception) -> bool:
    return isinstance(error, IntegrityError) and "audit_one_reminder_per_subject" in str(error)


def deadlocked(error: Exception) -> bool:
    """Without the guard two jobs update the same rows, and PostgreSQL may end one of them as a deadlock."""
    return isinstance(error, OperationalError) and "deadlock" in str(error)


def remove_the_guard(monkeypatch) -> None:
    """The due rows are read, not locked, and written whether or not they were reminded meanwhile."""
    monkeypatch.setattr(locking, "batch_lock", lambda alias: sql.SQL(""))
    monkeypatch.setattr(reminders, "unreminded", lambda model, alias: claims.CONFIRMED.sql(model, alias))


@pytest.mark.django_db(transaction=True)
@pytest.mark.concurrency
@pytest.mark.slow
def test_four_jobs_at_once_remind_each_booking_exactly_once():
    bookings, groups = due_now(slot_bookings=40, seat_bookings=10)

    runs = four_jobs_at_once(batch_size=4)

    assert not [r for r in runs if isinstance(r, Exception)], runs
    assert sum(1 for run in runs if any(run.values())) >= 2, runs  # the jobs did share the work
    assert sum(run["slots"] for run in runs) == 40 and sum(run["events"] for run in runs) == 10
    assert reminded("slotbooking") == {str(b.pk): 1 for b in bookings}
    assert reminded("seat_hold_group") == {str(g.pk): 1 for g in groups}
    assert not SlotBooking.objects.filter(reminded_at__isnull=True).exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.concurrency
@pytest.mark.slow
def test_control_without_the_guard_the_backstop_refuses_the_second_reminders(monkeypatch):
    remove_the_guard(monkeypatch)
    bookings, groups = due_now(slot_bookings=10, seat_bookings=4)

    runs = four_jobs_at_once(batch_size=100)

    failed = [r for r in runs if isinstance(r, Exception)]
    assert failed, "no job was refused: the race went unnoticed"
    assert all(backstopped(r) or deadlocked(r) for r in failed), failed
    assert any(backstopped(r) for r in failed), failed
    assert reminded("slotbooking") == {str(b.pk): 1 for b in bookings}  # the backstop kept it once
    assert reminded("seat_hold_group") == {str(g.pk): 1 for g in groups}


@pytest.mark.django_db(transaction=True)
@pytest.mark.concurrency
@pytest.mark.slow
def test_control_without_the_guard_and_the_backstop_bookings_are_reminded_twice(monkeypatch):
    remove_the_guard(monkeypatch)
    backstop = next(c for c in AuditEvent._meta.constraints if c.name == "audit_one_reminder_per_subject")
    with connection.schema_editor() as editor:
        editor.remove_constraint(AuditEvent, backstop)
    try:
        due_now(slot_bookings=10, seat_bookings=4)

        runs = four_jobs_at_once(batch_size=100)

        assert all(deadlocked(r) for r in runs if isinstance(r, Exception)), runs
        assert max(reminded("slotbooking").values()) > 1
    finally:
        AuditEvent.objects.filter(event_type="REMINDED").delete()
        with connection.schema_editor() as editor:
            editor.add_constraint(AuditEvent, backstop)


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_real_worker_runs_the_reminder_task_from_the_broker_twice_and_sends_each_once():
    bookings, groups = due_now(slot_bookings=5, seat_bookings=2)
    runs: list[dict] = []

    def ran(sender=None, retval=None, **kwargs):
        if sender.name == send_reminders.name:
            runs.append(retval)

    task_postrun.connect(ran, weak=False)
    try:
        with real_worker(celery_app):
            send_reminders.delay()
            send_reminders.delay()  # two beats sent it
            deadline = time.monotonic() + 30
            while len(runs) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
    finally:
        task_postrun.disconnect(ran)

    assert sorted(runs, key=lambda run: run["slots"]) == [{"events": 0, "slots": 0}, {"events": 2, "slots": 5}]

    assert reminded("slotbooking") == {str(b.pk): 1 for b in bookings}
    assert reminded("seat_hold_group") == {str(g.pk): 1 for g in groups}
