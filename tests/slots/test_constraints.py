"""Each invariant has a PostgreSQL constraint: a direct bad write (bypassing the services) is refused."""

import importlib
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone
from psycopg import errors as pg_errors

from slots.models import Slot, SlotBooking
from tests.slots.factories import HostFactory, SlotBookingFactory, SlotFactory

pytestmark = pytest.mark.django_db


def refused(write) -> IntegrityError:
    with pytest.raises(IntegrityError) as caught, transaction.atomic():
        write()
    return caught.value


def test_booked_seats_never_exceed_capacity():
    slot = SlotFactory(capacity=2)

    error = refused(lambda: Slot.objects.filter(pk=slot.pk).update(booked=3))

    assert "slot_booked_within_capacity" in str(error)
    assert isinstance(error.__cause__, pg_errors.CheckViolation)


def test_booked_seats_never_go_below_zero():
    slot = SlotFactory()

    refused(lambda: Slot.objects.filter(pk=slot.pk).update(booked=F("booked") - 1))


def test_a_slot_ends_after_it_starts():
    slot = SlotFactory()

    assert "slot_ends_after_start" in str(refused(lambda: Slot.objects.filter(pk=slot.pk).update(end=slot.start)))


def test_capacity_is_at_least_one():
    slot = SlotFactory()

    assert "slot_capacity_positive" in str(refused(lambda: Slot.objects.filter(pk=slot.pk).update(capacity=0)))


def test_slot_status_is_known():
    slot = SlotFactory()

    refused(lambda: Slot.objects.filter(pk=slot.pk).update(status="BOOKED"))


def test_one_hosts_available_slots_never_overlap():
    slot = SlotFactory()

    error = refused(lambda: SlotFactory(host=slot.host, start=slot.start + timedelta(minutes=29)))

    assert isinstance(error.__cause__, pg_errors.ExclusionViolation)
    assert "slot_no_overlap_per_host" in str(error)


def test_adjacent_cancelled_and_other_hosts_slots_may_share_time():
    slot = SlotFactory()

    SlotFactory(host=slot.host, start=slot.end, end=slot.end + timedelta(minutes=30))
    SlotFactory(host=slot.host, start=slot.start - timedelta(minutes=30), end=slot.start)
    SlotFactory(host=slot.host, start=slot.start, end=slot.end, status=Slot.Status.CANCELLED)
    SlotFactory(host=HostFactory(), start=slot.start, end=slot.end)


def test_reopening_a_cancelled_slot_over_a_new_one_is_refused():
    slot = SlotFactory()
    Slot.objects.filter(pk=slot.pk).update(status=Slot.Status.CANCELLED)
    SlotFactory(host=slot.host, start=slot.start, end=slot.end)

    refused(lambda: Slot.objects.filter(pk=slot.pk).update(status=Slot.Status.AVAILABLE))


# --- a host's appointments keep their buffer on both sides (slot_no_overlap_per_host, slot_buffer_before_per_host) ---

BUFFER = timedelta(minutes=10)


def appointment(host, start, *, buffer=BUFFER, minutes=30) -> Slot:
    """An appointment's slot written directly, as ``Appointments.create`` writes it: its time and its buffer."""
    end = start + timedelta(minutes=minutes)
    return SlotFactory(
        host=host, kind="APPOINTMENT", start=start, end=end, blocked_from=start - buffer, blocked_until=end + buffer
    )


def test_a_published_slot_in_the_buffer_before_an_appointment_is_refused():
    slot = SlotFactory()

    error = refused(lambda: appointment(slot.host, slot.end + BUFFER - timedelta(minutes=1)))

    assert isinstance(error.__cause__, pg_errors.ExclusionViolation)
    assert "slot_buffer_before_per_host" in str(error)


def test_a_published_slot_in_the_buffer_after_an_appointment_is_refused():
    booked = appointment(HostFactory(), timezone.now().replace(microsecond=0) + timedelta(days=3))

    error = refused(lambda: SlotFactory(host=booked.host, start=booked.end + BUFFER - timedelta(minutes=1)))

    assert isinstance(error.__cause__, pg_errors.ExclusionViolation)
    assert "slot_no_overlap_per_host" in str(error)


def test_appointments_keep_the_larger_of_their_buffers_apart_and_no_more():
    first = appointment(HostFactory(), timezone.now().replace(microsecond=0) + timedelta(days=3))
    host, wide = first.host, 3 * BUFFER

    assert "slot_buffer_before_per_host" in str(refused(lambda: appointment(host, first.end + BUFFER, buffer=wide)))
    assert "slot_no_overlap_per_host" in str(refused(lambda: appointment(host, first.start - wide, buffer=wide)))
    appointment(host, first.end + BUFFER)  # the buffer apart, not twice the buffer
    appointment(host, first.start - BUFFER - timedelta(minutes=30))
    SlotFactory(host=host, start=first.end + BUFFER + timedelta(minutes=30) + BUFFER)
    SlotFactory(host=HostFactory(), start=first.end, end=first.end + BUFFER)  # another host's time


def test_only_an_appointment_has_a_buffer_and_it_is_around_its_time():
    slot, booked = SlotFactory(), appointment(HostFactory(), timezone.now() + timedelta(days=3))

    for write in (
        lambda: Slot.objects.filter(pk=slot.pk).update(blocked_from=slot.start, blocked_until=slot.end),
        lambda: Slot.objects.filter(pk=booked.pk).update(blocked_from=None, blocked_until=None),
        lambda: Slot.objects.filter(pk=booked.pk).update(blocked_from=booked.start + timedelta(minutes=1)),
        lambda: Slot.objects.filter(pk=booked.pk).update(blocked_until=booked.end - timedelta(minutes=1)),
    ):
        assert "slot_blocked_around_appointment" in str(refused(write))


def test_the_migration_adding_the_buffer_before_refuses_existing_slots_in_it_and_names_them():
    """What ``slots.0005`` does on a database where a published slot already sits in the buffer before an
    appointment: it stops, naming the pair (the constraint is dropped here, inside the test's transaction)."""
    migration = importlib.import_module("slots.migrations.0005_slot_blocked_buffer_both_sides")
    slot = SlotFactory()
    later = SlotFactory(host=slot.host, start=slot.end, end=slot.end + timedelta(minutes=30))  # back to back: fine
    editor = SimpleNamespace(connection=connection)
    migration.refuse_slots_in_a_buffer(None, editor)
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # no foreign-key check pending: the table may change
        cursor.execute("ALTER TABLE slots_slot DROP CONSTRAINT slot_buffer_before_per_host")
    booked = appointment(slot.host, later.end + timedelta(minutes=5))  # its buffer before: 10 minutes
    appointment(slot.host, later.end + timedelta(hours=2), buffer=timedelta(0))  # clear of the rest

    with pytest.raises(RuntimeError) as refused_:
        migration.refuse_slots_in_a_buffer(None, editor)

    assert str(refused_.value).startswith("1 pair(s)")
    assert f"host {slot.host_id}: slots #{later.pk} and #{booked.pk}" in str(refused_.value)
    assert "expire_holds" in str(refused_.value)


def test_the_migration_gives_an_existing_appointment_its_buffer_on_both_sides():
    migration = importlib.import_module("slots.migrations.0005_slot_blocked_buffer_both_sides")
    booking = SlotBookingFactory(slot=appointment(HostFactory(), timezone.now() + timedelta(days=3)))
    slot = booking.slot
    with connection.cursor() as cursor:  # as 0004 left it: the slot to the end of the buffer after, no columns
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute("ALTER TABLE slots_slot DROP CONSTRAINT slot_blocked_around_appointment")
        cursor.execute(migration.JOIN)
        cursor.execute("UPDATE slots_slot SET blocked_from = NULL, blocked_until = NULL")

        cursor.execute(migration.SPLIT)

    slot.refresh_from_db()
    assert (slot.start, slot.end) == (booking.start, booking.end)
    assert (slot.blocked_from, slot.blocked_until) == (booking.start - BUFFER, booking.end + BUFFER)


def test_a_booking_has_at_least_one_seat():
    booking = SlotBookingFactory()

    refused(lambda: SlotBooking.objects.filter(pk=booking.pk).update(seats=0))


def test_a_pending_booking_has_an_expiry():
    booking = SlotBookingFactory(status=SlotBooking.Status.PENDING)

    assert "slotbooking_pending_expires" in str(
        refused(lambda: SlotBooking.objects.filter(pk=booking.pk).update(expires_at=None))
    )


def test_booking_status_is_known():
    booking = SlotBookingFactory()

    refused(lambda: SlotBooking.objects.filter(pk=booking.pk).update(status="FAILED"))


# --- a guest is never in two places at once (slotbooking_guest_no_overlap) ---------------------------


def at_the_same_time_with_another_host(booking: SlotBooking, *, shift: timedelta = timedelta(0)) -> Slot:
    return SlotFactory(start=booking.start + shift, end=booking.end + shift)


def test_one_guests_active_bookings_never_overlap_in_time_whatever_the_host():
    booking = SlotBookingFactory()
    clashing = at_the_same_time_with_another_host(booking, shift=timedelta(minutes=15))

    error = refused(lambda: SlotBookingFactory(guest=booking.guest, slot=clashing))

    assert isinstance(error.__cause__, pg_errors.ExclusionViolation)
    assert "slotbooking_guest_no_overlap" in str(error)


def test_a_live_hold_blocks_its_guest_as_a_confirmed_booking_does():
    hold = SlotBookingFactory(status=SlotBooking.Status.PENDING)

    refused(lambda: SlotBookingFactory(guest=hold.guest, slot=at_the_same_time_with_another_host(hold)))


def test_back_to_back_ended_and_other_guests_bookings_may_share_time():
    booking = SlotBookingFactory()
    same_time = at_the_same_time_with_another_host(booking)

    SlotBookingFactory(guest=booking.guest, slot=SlotFactory(start=booking.end, end=booking.end + timedelta(hours=1)))
    SlotBookingFactory(
        guest=booking.guest, slot=SlotFactory(start=booking.start - timedelta(hours=1), end=booking.start)
    )
    SlotBookingFactory(guest=booking.guest, slot=same_time, status=SlotBooking.Status.CANCELLED)
    SlotBookingFactory(guest=booking.guest, slot=same_time, status=SlotBooking.Status.EXPIRED)
    SlotBookingFactory(slot=same_time)


def test_an_overdue_hold_never_blocks_a_booking_made_after_its_expiry_nor_can_it_be_confirmed_over_it():
    past = timezone.now() - timedelta(hours=1)
    overdue = SlotBookingFactory(
        status=SlotBooking.Status.PENDING, created_at=past, expires_at=past + timedelta(minutes=10)
    )

    later = SlotBookingFactory(guest=overdue.guest, slot=at_the_same_time_with_another_host(overdue))

    assert later.pk
    refused(lambda: SlotBooking.objects.filter(pk=overdue.pk).update(status=SlotBooking.Status.CONFIRMED))


def test_a_hold_alive_when_a_booking_was_made_blocks_it_even_once_overdue():
    created = timezone.now() - timedelta(hours=1)
    hold = SlotBookingFactory(
        status=SlotBooking.Status.PENDING, created_at=created, expires_at=created + timedelta(minutes=10)
    )

    refused(
        lambda: SlotBookingFactory(
            guest=hold.guest, slot=at_the_same_time_with_another_host(hold), created_at=created + timedelta(minutes=5)
        )
    )


def test_a_bookings_time_is_its_own_and_ends_after_it_starts():
    booking = SlotBookingFactory()

    assert "slotbooking_ends_after_start" in str(
        refused(lambda: SlotBooking.objects.filter(pk=booking.pk).update(end=booking.start))
    )


def test_the_migration_adding_the_guests_rule_refuses_existing_overlaps_and_names_them():
    """What ``slots.0002`` does on a database where a guest is already in two places: it stops, naming the
    pairs, and changes nothing (the constraint is dropped here, inside the test's transaction, to write them)."""
    migration = importlib.import_module("slots.migrations.0002_slotbooking_start_end_guest_no_overlap")
    first = SlotBookingFactory()
    SlotBookingFactory(guest=first.guest, slot=SlotFactory(start=first.start, end=first.end), status="CANCELLED")
    editor = SimpleNamespace(connection=connection)
    migration.refuse_overlapping_bookings(None, editor)  # a cancelled one is no clash
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # no foreign-key check pending: the table may change
        cursor.execute("ALTER TABLE slots_slotbooking DROP CONSTRAINT slotbooking_guest_no_overlap")
    second = SlotBookingFactory(guest=first.guest, slot=SlotFactory(start=first.start, end=first.end))

    with pytest.raises(RuntimeError) as refused:
        migration.refuse_overlapping_bookings(None, editor)

    assert f"guest {first.guest_id}: bookings #{first.pk} and #{second.pk}" in str(refused.value)
    assert "expire_holds" in str(refused.value)
