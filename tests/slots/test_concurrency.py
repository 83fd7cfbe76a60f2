"""Every rule that counts holds under real concurrency: threads released together by a barrier, each
with its own PostgreSQL connection. Each race has a control that removes the lock (the services'
``_lock_*`` functions are replaced by plain reads with a short sleep to widen the window) and shows
that the test then sees the race: the invariant breaks, or a database backstop had to refuse it."""

import time
from datetime import timedelta

import pytest
from django.db.models import Q, Sum
from django.utils import timezone

from booking_site.accounts.models import User
from booking_site.audit.models import AuditEvent
from booking_site.metrics import CONSTRAINT_BACKSTOPS
from slots import services
from slots.models import Slot, SlotBooking
from tests.concurrency import run_concurrently
from tests.factories import UserFactory
from tests.slots.factories import HostFactory, SlotBookingFactory, SlotFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.concurrency, pytest.mark.slow]

WINDOW = 0.2


def backstops(constraint: str) -> float:
    return CONSTRAINT_BACKSTOPS.labels(constraint)._value.get()


def booker(slot_id: int, guest: User, seats: int = 1):
    return lambda: services.slot_booking_create(slot_id=slot_id, guest=guest, seats=seats, now=timezone.now())


def assert_counters_match_bookings() -> None:
    for slot in Slot.objects.all():
        claimed = slot.bookings.claiming().aggregate(total=Sum("seats"))["total"] or 0
        assert slot.booked == claimed <= slot.capacity, f"slot {slot.pk}"


def wins(results) -> list[SlotBooking]:
    unexpected = [r for r in results if isinstance(r, Exception) and not isinstance(r, services.DomainError)]
    assert not unexpected, unexpected
    return [r for r in results if isinstance(r, SlotBooking)]


@pytest.fixture
def no_slot_lock(monkeypatch):
    def unlocked(slot_ids):
        slots = {slot.pk: slot for slot in Slot.objects.filter(pk__in=set(slot_ids)).order_by("pk")}
        time.sleep(WINDOW)
        return slots

    monkeypatch.setattr(services, "_lock_slots", unlocked)


@pytest.fixture
def no_guest_lock(monkeypatch):
    def unlocked(user_id):
        user = User.objects.get(pk=user_id)
        time.sleep(WINDOW)
        return user

    monkeypatch.setattr(services, "_lock_guest", unlocked)


@pytest.fixture
def no_host_lock(monkeypatch):
    def unlocked(user_id):
        user = User.objects.get(pk=user_id)
        time.sleep(WINDOW)
        return user

    monkeypatch.setattr(services, "_lock_host", unlocked)


# --- capacity ------------------------------------------------------------------------------------


def race_for_seats(*, capacity: int, guests: int):
    slot = SlotFactory(capacity=capacity)
    results = run_concurrently([booker(slot.pk, UserFactory()) for _ in range(guests)])
    return slot, results


def test_twelve_guests_on_a_capacity_three_slot_get_exactly_three():
    before = backstops("slot_booked_within_capacity")

    slot, results = race_for_seats(capacity=3, guests=12)

    assert len(wins(results)) == 3
    assert sum(isinstance(r, services.SlotFull) for r in results) == 9
    assert SlotBooking.objects.filter(slot=slot).count() == 3
    assert_counters_match_bookings()
    assert backstops("slot_booked_within_capacity") == before  # the lock decided, not the constraint


def test_ten_users_on_a_capacity_one_slot_get_one():
    before = backstops("slot_booked_within_capacity")

    slot, results = race_for_seats(capacity=1, guests=10)

    assert len(wins(results)) == 1
    assert SlotBooking.objects.filter(slot=slot).count() == 1
    assert_counters_match_bookings()
    assert backstops("slot_booked_within_capacity") == before


@pytest.mark.parametrize(("capacity", "guests"), [(3, 12), (1, 10)])
def test_control_without_the_slot_lock_only_the_check_constraint_stops_overbooking(no_slot_lock, capacity, guests):
    before = backstops("slot_booked_within_capacity")

    _, results = race_for_seats(capacity=capacity, guests=guests)

    assert backstops("slot_booked_within_capacity") > before  # the race happened; the backstop caught it
    assert len(wins(results)) == capacity
    assert_counters_match_bookings()


# --- the guest's count rules --------------------------------------------------------------------


def race_one_guest_over_eight_hosts():
    guest = UserFactory()
    slots = [SlotFactory() for _ in range(8)]
    results = run_concurrently([booker(slot.pk, guest) for slot in slots])
    return guest, results


def test_one_guest_booking_eight_hosts_at_once_gets_exactly_five():
    guest, results = race_one_guest_over_eight_hosts()

    assert len(wins(results)) == 5
    assert sum(isinstance(r, services.LimitReached) for r in results) == 3
    assert SlotBooking.objects.filter(guest=guest).count() == 5


def test_control_without_the_guest_lock_the_limit_of_five_breaks(no_guest_lock):
    guest, _ = race_one_guest_over_eight_hosts()

    assert SlotBooking.objects.filter(guest=guest).count() > 5


def test_one_guest_booking_two_slots_of_one_host_at_once_gets_one():
    guest, host = UserFactory(), HostFactory()
    slots = [SlotFactory(host=host) for _ in range(4)]

    results = run_concurrently([booker(slot.pk, guest) for slot in slots])

    assert len(wins(results)) == 1
    assert SlotBooking.objects.filter(guest=guest).count() == 1


# --- one host's slots ---------------------------------------------------------------------------


def race_overlapping_creations():
    host = HostFactory()
    start = timezone.now() + timedelta(days=2)

    def create(offset_minutes: int):
        begin = start + timedelta(minutes=offset_minutes)
        return lambda: services.slot_create(
            host=host, start=begin, end=begin + timedelta(minutes=60), actor=host, now=timezone.now()
        )

    return host, run_concurrently([create(0), create(30)])


def test_two_overlapping_slot_creations_of_one_host_give_one_slot():
    before = backstops("slot_no_overlap_per_host")

    host, results = race_overlapping_creations()

    assert sum(isinstance(r, Slot) for r in results) == 1
    assert sum(isinstance(r, services.SlotOverlap) for r in results) == 1
    assert Slot.objects.filter(host=host).count() == 1
    assert backstops("slot_no_overlap_per_host") == before


def test_control_without_the_host_lock_only_the_exclusion_constraint_stops_the_overlap(no_host_lock):
    before = backstops("slot_no_overlap_per_host")

    host, _ = race_overlapping_creations()

    assert backstops("slot_no_overlap_per_host") > before
    assert Slot.objects.filter(host=host).count() == 1


# --- reschedule -----------------------------------------------------------------------------------


def race_reschedule_against_bookers(bookers: int = 4):
    mover = SlotBookingFactory()
    target = SlotFactory(capacity=1)
    reschedule = lambda: services.slot_booking_reschedule(  # noqa: E731
        booking_id=mover.pk, slot_id=target.pk, user=mover.guest, now=timezone.now()
    )
    results = run_concurrently([reschedule] + [booker(target.pk, UserFactory()) for _ in range(bookers)])
    return mover, target, results


def test_a_reschedule_racing_bookings_of_its_target_never_overbooks():
    before = backstops("slot_booked_within_capacity")

    mover, target, results = race_reschedule_against_bookers()

    assert len(wins(results)) == 1
    assert SlotBooking.objects.filter(slot=target).claiming().count() == 1
    mover.refresh_from_db()
    moved = SlotBooking.objects.filter(rescheduled_from=mover).exists()
    assert mover.status == ("CANCELLED" if moved else "CONFIRMED")  # all or nothing
    assert_counters_match_bookings()
    assert backstops("slot_booked_within_capacity") == before


def test_control_without_the_slot_lock_the_reschedule_race_reaches_the_backstop(no_slot_lock):
    before = backstops("slot_booked_within_capacity")

    _, target, _ = race_reschedule_against_bookers()

    assert backstops("slot_booked_within_capacity") > before
    assert SlotBooking.objects.filter(slot=target).claiming().count() == 1
    assert_counters_match_bookings()


# --- the expiry job -------------------------------------------------------------------------------


def overdue_holds(count: int, slot=None) -> list[SlotBooking]:
    past = timezone.now() - timedelta(hours=1)
    where = {"slot": slot} if slot else {}
    return [
        SlotBookingFactory(status="PENDING", created_at=past, expires_at=past + timedelta(minutes=5), **where)
        for _ in range(count)
    ]


def test_two_expiry_runs_at_once_expire_each_hold_once():
    holds = overdue_holds(6)

    results = run_concurrently([lambda: services.slot_bookings_expire_due(now=timezone.now(), batch_size=2)] * 2)

    assert sum(results) == 6
    assert SlotBooking.objects.filter(status="EXPIRED").count() == 6
    assert (
        AuditEvent.objects.filter(
            Q(subject_type="slotbooking") & Q(subject_id__in=[str(h.pk) for h in holds]), event_type="EXPIRED"
        ).count()
        == 6
    )
    assert_counters_match_bookings()


def test_a_booking_racing_the_expiry_job_on_the_same_slot_neither_deadlocks_nor_double_frees():
    slot = SlotFactory(capacity=3)
    overdue_holds(3, slot=slot)

    results = run_concurrently(
        [lambda: services.slot_bookings_expire_due(now=timezone.now())]
        + [booker(slot.pk, UserFactory()) for _ in range(3)]
    )

    assert len(wins(results)) == 3
    assert SlotBooking.objects.filter(slot=slot, status="EXPIRED").count() == 3
    assert_counters_match_bookings()
