import threading
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import transaction
from django.utils import timezone

from core import errors
from core.audit.models import AuditEvent
from core.errors import Forbidden, ValidationFailed
from core.expiry import expire_all
from slots.models import Slot, SlotBooking
from slots.services import bookings, reschedule, rules, slots
from tests.factories import UserFactory, house_operator
from tests.slots.factories import HostFactory, SlotBookingFactory, SlotFactory


def overdue_hold(**fields) -> SlotBooking:
    past = timezone.now() - timedelta(hours=1)
    return SlotBookingFactory(status="PENDING", created_at=past, expires_at=past + timedelta(minutes=5), **fields)


@pytest.mark.django_db
def test_the_expiry_job_expires_overdue_holds_frees_their_seats_and_audits_each():
    slot = SlotFactory(capacity=5)
    overdue = [overdue_hold(slot=slot, seats=2), overdue_hold(slot=slot)]
    live = SlotBookingFactory(slot=slot, status="PENDING")

    assert bookings.slot_bookings_expire_due(now=timezone.now(), batch_size=1) == 2

    slot.refresh_from_db()
    assert slot.booked == live.seats
    assert set(SlotBooking.objects.filter(status="EXPIRED")) == set(overdue)
    events = AuditEvent.objects.filter(subject_type="slotbooking", event_type="EXPIRED")
    assert sorted(int(e.subject_id) for e in events) == sorted(b.pk for b in overdue)
    assert {e.actor_label for e in events} == {"system:expire_holds"}


@pytest.mark.django_db
def test_slots_take_part_in_every_expiry_door():
    overdue_hold()
    assert expire_all(now=timezone.now())["slots"] == 1

    overdue_hold()
    out = StringIO()
    call_command("expire_holds", stdout=out)
    assert "slots: expired 1" in out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_the_expiry_job_leaves_a_slot_locked_by_a_request_to_that_request_instead_of_waiting():
    hold = overdue_hold()
    locked, release = threading.Event(), threading.Event()

    def request_holding_the_slot():
        with transaction.atomic():
            list(Slot.objects.select_for_update().filter(pk=hold.slot_id))
            locked.set()
            release.wait(10)

    thread = threading.Thread(target=request_holding_the_slot)
    thread.start()
    try:
        assert locked.wait(10)
        assert bookings.slot_bookings_expire_due(now=timezone.now()) == 0  # returns at once, no deadlock
    finally:
        release.set()
        thread.join()
    assert bookings.slot_bookings_expire_due(now=timezone.now()) == 1


@pytest.mark.django_db(transaction=True)
def test_the_expiry_job_moves_past_holds_on_a_locked_slot_instead_of_fetching_them_again():
    """A full batch of overdue holds whose slot a request holds used to come back in every next batch:
    the job spun until the request let go. Now they are skipped once, and the job goes on past them."""
    busy = SlotFactory(capacity=3)
    stuck = [overdue_hold(slot=busy) for _ in range(3)]
    free = overdue_hold()  # a later id, on a slot nobody holds
    locked, release = threading.Event(), threading.Event()
    released = []

    def request_holding_the_slot():
        with transaction.atomic():
            list(Slot.objects.select_for_update().filter(pk=busy.pk))
            locked.set()
            released.append("by the test" if release.wait(10) else "by the timeout")

    thread = threading.Thread(target=request_holding_the_slot)
    thread.start()
    try:
        assert locked.wait(10)
        assert bookings.slot_bookings_expire_due(now=timezone.now(), batch_size=2) == 1
    finally:
        release.set()
        thread.join()

    assert released == ["by the test"]  # the job returned while the slot was still locked
    assert SlotBooking.objects.get(pk=free.pk).status == "EXPIRED"
    assert {b.status for b in SlotBooking.objects.filter(pk__in=[b.pk for b in stuck])} == {"PENDING"}
    assert bookings.slot_bookings_expire_due(now=timezone.now(), batch_size=2) == 3


@pytest.mark.django_db
def test_creating_many_slots_is_all_or_nothing():
    host = HostFactory()
    start = timezone.now() + timedelta(days=1)
    existing = SlotFactory(host=host, start=start + timedelta(hours=2), end=start + timedelta(hours=3))
    ranges = [(start + timedelta(hours=h), start + timedelta(hours=h, minutes=30)) for h in range(4)]

    with pytest.raises(rules.SlotOverlap) as refused:
        slots.slots_create_many(host=host, ranges=ranges, actor=host, now=timezone.now())

    assert refused.value.details == {"slotIds": [existing.pk]}
    assert list(Slot.objects.filter(host=host)) == [existing]


@pytest.mark.django_db
def test_new_slots_may_not_overlap_each_other_and_need_a_host():
    host = HostFactory()
    start = timezone.now() + timedelta(days=1)

    with pytest.raises(rules.SlotOverlap):
        slots.slots_create_many(
            host=host,
            ranges=[(start, start + timedelta(hours=1)), (start + timedelta(minutes=30), start + timedelta(hours=2))],
            actor=host,
            now=timezone.now(),
        )
    with pytest.raises(ValidationFailed):
        guest = UserFactory()
        slots.slot_create(host=guest, start=start, end=start + timedelta(hours=1), actor=guest, now=timezone.now())


@pytest.mark.django_db
def test_rescheduling_a_hold_keeps_it_a_hold_with_its_expiry():
    hold = SlotBookingFactory(status="PENDING")
    target = SlotFactory()

    moved = reschedule.slot_booking_reschedule(
        booking_id=hold.pk, slot_id=target.pk, user=hold.guest, now=timezone.now()
    )

    assert (moved.status, moved.expires_at, moved.rescheduled_from_id) == ("PENDING", hold.expires_at, hold.pk)


@pytest.mark.django_db
def test_rescheduling_an_overdue_hold_is_410_and_expires_it():
    hold = overdue_hold()

    with pytest.raises(errors.HoldExpired):
        reschedule.slot_booking_reschedule(
            booking_id=hold.pk, slot_id=SlotFactory().pk, user=hold.guest, now=timezone.now()
        )


@pytest.mark.django_db
def test_a_guest_cannot_reschedule_out_of_the_window_but_an_operator_can():
    soon = timezone.now() + timedelta(minutes=30)
    booking = SlotBookingFactory(slot=SlotFactory(start=soon, end=soon + timedelta(minutes=30)))
    target = SlotFactory()

    with pytest.raises(rules.CancellationWindowClosed):
        reschedule.slot_booking_reschedule(
            booking_id=booking.pk, slot_id=target.pk, user=booking.guest, now=timezone.now()
        )
    staff = house_operator()
    moved = reschedule.slot_booking_reschedule(booking_id=booking.pk, slot_id=target.pk, user=staff, now=timezone.now())
    assert moved.slot_id == target.pk


@pytest.mark.django_db
def test_a_guest_may_release_a_pending_hold_inside_the_window():
    soon = timezone.now() + timedelta(minutes=30)
    hold = SlotBookingFactory(status="PENDING", slot=SlotFactory(start=soon, end=soon + timedelta(minutes=30)))

    cancelled = bookings.slot_booking_cancel(booking_id=hold.pk, user=hold.guest, now=timezone.now())

    assert cancelled.status == "CANCELLED"


@pytest.mark.django_db
def test_the_booking_limit_is_a_setting(settings):
    settings.SLOTS_MAX_ACTIVE_BOOKINGS_PER_GUEST = 1
    guest = UserFactory()
    bookings.slot_booking_create(slot_id=SlotFactory().pk, guest=guest, now=timezone.now())

    with pytest.raises(errors.LimitReached):
        bookings.slot_booking_create(slot_id=SlotFactory().pk, guest=guest, now=timezone.now())


@pytest.mark.django_db
@pytest.mark.parametrize("who", ["guest", "host"])
def test_only_an_operator_expires_a_pending_hold_now(who):
    hold = SlotBookingFactory(status="PENDING")
    user = hold.guest if who == "guest" else hold.slot.host

    with pytest.raises(Forbidden):
        bookings.slot_booking_expire(booking_id=hold.pk, user=user, now=timezone.now())

    hold.refresh_from_db()
    assert hold.status == "PENDING"
    assert not AuditEvent.objects.filter(subject_type="slotbooking", subject_id=str(hold.pk)).exists()


@pytest.mark.django_db
def test_the_bookings_policy_lets_the_host_see_and_cancel_but_not_confirm():
    booking = SlotBookingFactory(status="PENDING")
    host, stranger, policy = booking.slot.host, UserFactory(), bookings.SLOT_BOOKINGS.policy

    assert [policy.may(host, action, booking) for action in ("see", "cancel", "confirm", "reschedule")] == [
        True,
        True,
        False,
        False,
    ]
    assert not any(policy.may(stranger, action, booking) for action in ("see", "cancel", "confirm"))
    assert policy.may(booking.guest, "confirm", booking) and not policy.may(booking.guest, "expire", booking)
