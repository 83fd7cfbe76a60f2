"""The invariant monitor (core/invariants.py, docs/decisions/0012-invariants.md): a clean database
reports every invariant holding; a row corrupted directly (past the services, past a constraint where one
stands in the way) is reported by its invariant, and only by it."""

import urllib.request
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from core import invariants, reminders
from core.audit.models import AuditEvent
from core.audit.services import record
from core.tasks import check_invariants
from events import queue
from events.models import Event, EventQueue, QueueEntry, SeatClaim, SeatHoldGroup, WaitlistEntry
from events.services import events as events_events
from events.services import rules, seat_holds
from reservations import services as reservations
from reservations.models import Reservation
from slots.models import Slot, SlotBooking
from slots.services import bookings
from tests.events.factories import make_event, overdue_hold, write_hold
from tests.factories import UserFactory
from tests.reservations.factories import CarFactory, ReservationFactory
from tests.slots.factories import SlotBookingFactory, SlotFactory

pytestmark = pytest.mark.django_db


def broken() -> dict[str, list[str]]:
    """What the monitor finds now: each broken invariant and the rows it names."""
    report = invariants.invariants_check(now=timezone.now())
    return {r["name"]: r["rows"] for r in report.broken}


def drop_constraint(name: str, table: str) -> None:
    """Take a constraint away for this test's transaction (rolled back with it), to write what it refuses."""
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # no deferred foreign-key checks pending: ALTER refuses
        cursor.execute(f'ALTER TABLE "{table}" DROP CONSTRAINT IF EXISTS "{name}"')
        cursor.execute(f'DROP INDEX IF EXISTS "{name}"')


def some_of_everything(staff):
    """Claims in every state of every domain, all made by the services."""
    now = timezone.now()
    buyer, guest = UserFactory(), UserFactory()
    cars = [CarFactory() for _ in range(4)]
    _held, confirmed, cancelled, expired = (  # two buyers: a buyer holds at most 3 cars at once
        reservations.reservation_hold(car_id=car.pk, buyer=owner, hold_minutes=15, now=now)
        for car, owner in zip(cars, [buyer, buyer, guest, guest], strict=True)
    )
    reservations.reservation_confirm(reservation_id=confirmed.pk, user=buyer, now=now)
    reservations.reservation_cancel(reservation_id=cancelled.pk, user=guest, now=now)
    reservations.reservation_expire(reservation_id=expired.pk, user=staff, now=now)

    event = make_event(total_seats=10)
    holds = [seat_holds.seat_hold(event_id=event.pk, user=buyer, quantity=2, now=now) for _ in range(4)]
    seat_holds.seat_hold_confirm(event_id=event.pk, hold_group_id=holds[1].pk, user=buyer, now=now)
    booking = seat_holds.seat_hold_confirm(event_id=event.pk, hold_group_id=holds[2].pk, user=buyer, now=now)
    seat_holds.seat_booking_cancel(booking_group_id=booking.booking_group_id, user=buyer, now=now)
    seat_holds.seat_hold_release(event_id=event.pk, hold_group_id=holds[3].pk, user=buyer, now=now)

    slot = SlotFactory(capacity=5)
    pending = bookings.slot_booking_create(slot_id=slot.pk, guest=guest, hold=True, now=now)
    bookings.slot_booking_confirm(booking_id=pending.pk, user=guest, now=now)
    other = bookings.slot_booking_create(slot_id=SlotFactory(capacity=2).pk, guest=UserFactory(), seats=2, now=now)
    bookings.slot_booking_cancel(booking_id=other.pk, user=staff, now=now)

    # Reminded, one of them cancelled since: both were confirmed when reminded.
    start = now + timedelta(days=3)
    _kept, dropped = (
        bookings.slot_booking_create(slot_id=SlotFactory(start=start).pk, guest=UserFactory(), now=now)
        for _ in range(2)
    )
    seats = seat_holds.seat_hold(
        event_id=make_event(total_seats=2, event_date=start).pk, user=buyer, quantity=1, now=now
    )
    seat_holds.seat_hold_confirm(event_id=seats.event_id, hold_group_id=seats.pk, user=buyer, now=now)
    assert reminders.reminders_send(now=start - timedelta(hours=12)) == {"events": 1, "slots": 2}
    bookings.slot_booking_cancel(booking_id=dropped.pk, user=staff, now=now)
    return event


def test_a_clean_database_reports_every_invariant_holding(staff, capsys):
    some_of_everything(staff)
    # A hold just overdue, which the expiry job has not reached yet: that is not a broken invariant.
    just_overdue = timezone.now() - timedelta(seconds=30)
    ReservationFactory(created_at=just_overdue - timedelta(minutes=1), expires_at=just_overdue)

    call_command("check_invariants")

    out = capsys.readouterr().out
    assert f"All {len(invariants.registered())} invariants hold" in out
    assert "BROKEN" not in out
    assert set(check_invariants().values()) == {0}  # the beat job's task


def _two_active_reservations():
    drop_constraint("reservation_one_active_per_car", "reservations_reservation")
    first = ReservationFactory()
    second = ReservationFactory(car=first.car, state="CONFIRMED")
    record(subject=second, event="CONFIRMED", from_state="HELD", to_state="CONFIRMED")
    return {first.pk, second.pk}


def created(subject, state="HELD"):
    """The CREATED event the services write with every claim (the factories write rows alone)."""
    record(subject=subject, event="CREATED", to_state=state)
    return subject


def _reservation_ended_unaudited():
    reservation = created(ReservationFactory())
    Reservation.objects.filter(pk=reservation.pk).update(state="CANCELLED")
    return {reservation.pk}


def _reservation_ended_twice():
    reservation = created(ReservationFactory(state="EXPIRED"))
    record(subject=reservation, event="EXPIRED", from_state="HELD", to_state="EXPIRED")
    record(subject=reservation, event="CANCELLED", from_state="HELD", to_state="CANCELLED")
    return {reservation.pk}


def _stale_reservation():
    past = timezone.now() - timedelta(hours=1)
    return {ReservationFactory(created_at=past, expires_at=past + timedelta(minutes=5)).pk}


def _seat_in_two_holds():
    drop_constraint("seat_claim_one_active_per_seat", "events_seatclaim")
    event = make_event(total_seats=3)
    return {write_hold(event, ["S1"]).pk, write_hold(event, ["S1", "S2"]).pk}


def _confirmed_seats_drifted():
    event = make_event(total_seats=3)
    Event.objects.filter(pk=event.pk).update(confirmed_seats=1)
    return {event.pk}


def _waiting_count_drifted():
    event = make_event(total_seats=3)
    Event.objects.filter(pk=event.pk).update(waiting_count=2)
    return {event.pk}


def _offer_outliving_its_hold():
    event = make_event(total_seats=2)
    group = write_hold(event, ["S1", "S2"], state="CONFIRMED")
    entry = WaitlistEntry.objects.create(
        event=event,
        user=UserFactory(),
        quantity=2,
        state="OFFERED",
        hold_group=group,
        offer_expires_at=group.expires_at,
        created_at=timezone.now(),
        updated_at=timezone.now(),
    )
    return {entry.pk}


def _queued(joins: int):
    event = make_event()
    events_events.event_update_details(event_id=event.pk, actor=None, now=timezone.now(), queue_enabled=True)
    entries = [queue.queue_join(event_id=event.pk, user=UserFactory(), now=timezone.now())[0] for _ in range(joins)]
    return event, entries


def _queue_mark_drifted():
    event, _ = _queued(3)
    queue.queue_admit(event_id=event.pk, now=timezone.now() + timedelta(seconds=2))
    EventQueue.objects.filter(pk=event.pk).update(admitted_through=0)  # positions would be off by two
    return {event.pk}


def _queue_number_gap():
    event, entries = _queued(2)
    QueueEntry.objects.filter(pk=entries[0].pk).delete()
    return {event.pk}


def _seat_claim_left_behind():
    event = make_event(total_seats=3)
    group = write_hold(event, ["S1", "S2"])
    SeatClaim.objects.filter(group=group, seat__code="S2").update(state="RELEASED")
    return {group.pk}


def _seat_of_a_booking_released_alone():
    """A seat of a booking in another state than CANCELLED (only a cancel frees a booked seat on its own),
    its group's count and the event's counter kept in step so that only this rule sees it."""
    event = make_event(total_seats=3)
    group = write_hold(event, ["S1", "S2"], state="CONFIRMED")
    SeatClaim.objects.filter(group=group, seat__code="S2").update(state="RELEASED")
    SeatHoldGroup.objects.filter(pk=group.pk).update(seat_count=1)
    Event.objects.filter(pk=event.pk).update(confirmed_seats=1)
    return {group.pk}


def _seat_hold_ended_unaudited():
    event = make_event(total_seats=3)
    group = write_hold(event, ["S1"])
    created(rules.hold_subject(group))
    SeatHoldGroup.objects.filter(pk=group.pk).update(state="RELEASED")
    SeatClaim.objects.filter(group=group).update(state="RELEASED")
    return {group.pk}


def _stale_seat_hold():
    return {overdue_hold(make_event(total_seats=3), ["S1"]).pk}


def _slot_counter_drifted():
    slot = SlotFactory(capacity=3)
    SlotBookingFactory(slot=slot)
    Slot.objects.filter(pk=slot.pk).update(booked=2)
    return {slot.pk}


def _slot_over_capacity():
    slot = SlotFactory(capacity=1)
    SlotBookingFactory(slot=slot)
    drop_constraint("slot_booked_within_capacity", "slots_slot")
    SlotBookingFactory(slot=slot)  # booked: 2 of 1
    return {slot.pk}


def _slot_booking_ended_unaudited():
    booking = created(SlotBookingFactory(status="PENDING"), "PENDING")
    SlotBooking.objects.filter(pk=booking.pk).update(status="EXPIRED")
    Slot.objects.filter(pk=booking.slot_id).update(booked=0)
    return {booking.pk}


def _stale_slot_hold():
    past = timezone.now() - timedelta(hours=1)
    return {SlotBookingFactory(status="PENDING", created_at=past, expires_at=past + timedelta(minutes=5)).pk}


def reminded(subject, *, booking=None):
    """A REMINDED event as the reminder job writes it (and ``reminded_at`` on ``booking``, when given)."""
    record(subject=subject, event="REMINDED", from_state="CONFIRMED", to_state="CONFIRMED")
    if booking is not None:
        type(booking).objects.filter(pk=booking.pk).update(reminded_at=timezone.now())


def _slot_booking_reminded_once_cancelled():
    booking = created(SlotBookingFactory(status="CANCELLED"), "CONFIRMED")
    record(subject=booking, event="CANCELLED", from_state="CONFIRMED", to_state="CANCELLED")
    reminded(booking, booking=booking)
    return {booking.pk}


def _slot_booking_reminded_unrecorded():
    booking = created(SlotBookingFactory(), "CONFIRMED")
    reminded(booking)
    return {booking.pk}


def _seat_booking_reminded_twice():
    drop_constraint("audit_one_reminder_per_subject", AuditEvent._meta.db_table)
    group = write_hold(make_event(total_seats=1), ["S1"], state="CONFIRMED")
    created(rules.hold_subject(group), "CONFIRMED")
    reminded(rules.hold_subject(group), booking=group)
    reminded(rules.hold_subject(group))
    return {group.pk}


def _held_seats_reminded():
    group = write_hold(make_event(total_seats=1), ["S1"])
    created(rules.hold_subject(group))
    reminded(rules.hold_subject(group), booking=group)
    return {group.pk}


CORRUPTIONS = {
    "reservations.one_active_per_car": [_two_active_reservations],
    "reservations.terminal_claim_audited_once": [_reservation_ended_unaudited, _reservation_ended_twice],
    "reservations.no_stale_hold": [_stale_reservation],
    "events.one_active_claim_per_seat": [_seat_in_two_holds],
    "events.confirmed_seats_counted": [_confirmed_seats_drifted],
    "events.seat_claims_mirror_group": [_seat_claim_left_behind, _seat_of_a_booking_released_alone],
    "events.waiting_counted": [_waiting_count_drifted],
    "events.offer_follows_its_hold": [_offer_outliving_its_hold],
    "events.terminal_claim_audited_once": [_seat_hold_ended_unaudited],
    "events.no_stale_hold": [_stale_seat_hold],
    "events.queue_numbers_and_mark": [_queue_mark_drifted, _queue_number_gap],
    "slots.booked_counted": [_slot_counter_drifted],
    "slots.within_capacity": [_slot_over_capacity],
    "slots.terminal_claim_audited_once": [_slot_booking_ended_unaudited],
    "slots.no_stale_hold": [_stale_slot_hold],
    "slots.reminded_once_while_confirmed": [_slot_booking_reminded_once_cancelled, _slot_booking_reminded_unrecorded],
    "events.reminded_once_while_confirmed": [_seat_booking_reminded_twice, _held_seats_reminded],
}


def test_every_invariant_has_a_corruption_that_it_reports():
    assert set(CORRUPTIONS) == {invariant.name for invariant in invariants.registered()}


@pytest.mark.parametrize(
    ("name", "corrupt"),
    [(name, corrupt) for name, corruptions in CORRUPTIONS.items() for corrupt in corruptions],
    ids=lambda value: value if isinstance(value, str) else value.__name__.strip("_"),
)
def test_a_corrupted_row_is_reported_by_its_invariant(name, corrupt):
    rows = corrupt()

    found = broken()

    assert set(found) == {name}
    assert set(found[name]) == {str(pk) for pk in rows}


def test_the_command_exits_non_zero_with_a_readable_report(capsys):
    reservation = created(ReservationFactory(state="CANCELLED"))  # ended without its audit event

    with pytest.raises(SystemExit) as exit:
        call_command("check_invariants")

    out, err = capsys.readouterr()
    assert exit.value.code == 1
    assert f"BROKEN reservations.terminal_claim_audited_once: 1 reservations.reservation ({reservation.pk})" in out
    assert "ok     slots.within_capacity" in out
    assert f"1 of {len(invariants.registered())} invariants broken" in err


def test_the_audit_trails_checked_are_those_of_the_window_unless_all_history_is_asked(settings):
    long_ago = timezone.now() - timedelta(hours=settings.INVARIANTS_AUDIT_WINDOW_HOURS, minutes=1)
    old = ReservationFactory(state="CANCELLED", created_at=long_ago, expires_at=long_ago + timedelta(minutes=5))
    AuditEvent.objects.create(
        occurred_at=long_ago,
        actor_label="system",
        subject_type="reservation",
        subject_id=str(old.pk),
        event_type="CREATED",
        to_state="HELD",
    )  # and no CANCELLED event

    assert "reservations.terminal_claim_audited_once" not in broken()
    report = invariants.invariants_check(now=timezone.now(), all_history=True)
    assert [r["rows"] for r in report.broken] == [[str(old.pk)]]


def test_the_beat_job_checks_every_minute_from_migrate():
    task = PeriodicTask.objects.select_related("interval").get(task="booking_site.tasks.check_invariants")

    assert task.enabled and (task.interval.every, task.interval.period) == (60, "seconds")


def test_the_admin_index_says_all_hold_and_when(staff, client):
    client.force_login(staff)
    assert "Invariants not checked yet" in client.get("/admin/").content.decode()

    invariants.invariants_check(now=timezone.now() - timedelta(seconds=20))

    page = client.get("/admin/").content.decode()
    assert f"All {len(invariants.registered())} invariants hold" in page
    assert "checked 20 s ago" in page


def test_the_admin_index_says_what_is_broken_and_links_the_rows(staff, client):
    rows = _two_active_reservations()
    invariants.invariants_check(now=timezone.now())
    client.force_login(staff)

    page = client.get("/admin/").content.decode()

    assert f"1 of {len(invariants.registered())} invariants broken" in page
    assert "reservations.one_active_per_car" in page
    for pk in rows:
        assert f'<a href="/admin/reservations/reservation/{pk}/change/">{pk}</a>' in page


def test_a_link_to_a_seat_hold_names_its_group(rf, staff):
    group = _seat_hold_ended_unaudited().pop()
    invariants.invariants_check(now=timezone.now())
    request = rf.get("/admin/")
    request.user = staff

    from core.templatetags.invariants import invariants_status

    [entry] = invariants_status({"request": request})["broken"]
    assert entry["rows"] == [(str(group), f"/admin/events/seatholdgroup/{group}/change/")]


def test_metrics_report_each_invariant(client):
    _stale_reservation()
    invariants.invariants_check(now=timezone.now())

    text = client.get("/metrics").content.decode()

    assert 'booking_invariant_violations{invariant="reservations.no_stale_hold"} 1.0' in text
    assert 'booking_invariant_violations{invariant="slots.within_capacity"} 0.0' in text
    assert "booking_invariants_checked_timestamp_seconds " in text


@pytest.mark.slow
def test_metrics_report_the_invariants_from_every_worker_of_the_production_server(served):
    """``manage.py serve`` runs with the multiprocess collector: the gauges are one series each (the most
    recent value, from the stored report), not one per worker process."""
    _stale_reservation()
    invariants.invariants_check(now=timezone.now())

    text = urllib.request.urlopen(f"{served}/metrics", timeout=5).read().decode()

    assert 'booking_invariant_violations{invariant="reservations.no_stale_hold"} 1.0' in text
    assert "booking_invariants_checked_timestamp_seconds 0.0" not in text
    assert 'pid="' not in "".join(line for line in text.splitlines() if line.startswith("booking_invariant"))
