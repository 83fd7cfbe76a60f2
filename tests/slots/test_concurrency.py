"""Every rule that counts holds under real concurrency: threads released together by a barrier, each
with its own PostgreSQL connection. Each race has a control that removes the lock (the public
functions of ``core.locking`` are replaced by plain reads) and makes every racer finish its check before any
of them writes (a ``threading.Barrier`` right after the check), so the control sees the race every
time: the invariant breaks, or a database backstop had to refuse it."""

import contextlib
import functools
import threading
import time
from datetime import timedelta

import pytest
from django.db import OperationalError, transaction
from django.db.models import Q, Sum
from django.utils import timezone
from psycopg import sql

from core import declarations, errors, locking
from core.audit.models import AuditEvent
from core.metrics import CONSTRAINT_BACKSTOPS
from core.statements import table
from slots import locks
from slots.availability import availability_clean
from slots.models import Slot, SlotBooking
from slots.services import appointments, bookings, rules
from slots.services import reschedule as slots_reschedule
from slots.services import slots as slots_slots
from tests.concurrency import deadlocks_found_sooner, run_concurrently
from tests.factories import UserFactory
from tests.slots.factories import HostFactory, SlotBookingFactory, SlotFactory, morning
from web.accounts.models import User

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.concurrency, pytest.mark.slow]

WINDOW = 0.3  # long enough for another thread to reach its next lock


def backstops(constraint: str) -> float:
    return CONSTRAINT_BACKSTOPS.labels(constraint)._value.get()


def booker(slot_id: int, guest: User, seats: int = 1):
    return lambda: bookings.slot_booking_create(slot_id=slot_id, guest=guest, seats=seats, now=timezone.now())


def assert_counters_match_bookings() -> None:
    for slot in Slot.objects.all():
        claimed = slot.bookings.blocking().aggregate(total=Sum("seats"))["total"] or 0
        assert slot.booked == claimed <= slot.capacity, f"slot {slot.pk}"


def wins(results) -> list[SlotBooking]:
    unexpected = [r for r in results if isinstance(r, Exception) and not isinstance(r, errors.DomainError)]
    assert not unexpected, unexpected
    return [r for r in results if isinstance(r, SlotBooking)]


def wait_for_everyone(barrier: threading.Barrier) -> None:
    """Every racer has checked before any of them writes: the race, every time. A racer that does not
    come (it was refused earlier) breaks the barrier after its timeout instead of hanging the test."""
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait()


def read_user(user: sql.Composable) -> sql.Composable:
    """``locking.user_lock_sql`` without the lock: the user's row read."""
    return sql.SQL("EXISTS (SELECT FROM {} WHERE id = {})").format(table(User), user)


def remove_slot_lock(monkeypatch, racers: int) -> None:
    """The slots are read, not locked; every racer reads the seat counter before any of them takes seats."""
    everyone_has_read = threading.Barrier(racers, timeout=10)

    lock_slots = locks.lock_slots

    def unlocked(slot_ids, **kwargs):
        # The same statement, in a transaction of its own that commits at once: what it reads, without
        # the lock held by the racer's transaction.
        slots = run_concurrently([lambda: transaction.atomic()(lock_slots)(slot_ids, **kwargs)])[0]
        if isinstance(slots, Exception):
            raise slots
        wait_for_everyone(everyone_has_read)
        return slots

    monkeypatch.setattr(locks, "lock_slots", unlocked)


def remove_guest_lock(monkeypatch, racers: int) -> None:
    """The guest is read, not locked; every racer counts the guest's bookings and inserts its own before
    any of them commits (a booking counts and inserts in one statement, after its locks)."""
    everyone_has_inserted = threading.Barrier(racers, timeout=10)
    create = bookings.SLOT_BOOKINGS.create

    def inserted(*args, **kwargs):
        booking = create(*args, **kwargs)
        wait_for_everyone(everyone_has_inserted)
        return booking

    monkeypatch.setattr(locking, "lock_user", lambda user_id: User.objects.get(pk=user_id))
    monkeypatch.setattr(locking, "user_lock_sql", read_user)
    monkeypatch.setattr(bookings.SLOT_BOOKINGS, "create", inserted)


def remove_host_lock(monkeypatch, racers: int) -> None:
    """The host is read, not locked; every racer runs the overlap check before any of them inserts.

    Then one racer inserts first and the others a moment later. Two inserts into the exclusion
    constraint's GiST index at the same instant can each find the other's row and wait for it, and
    PostgreSQL then ends one of them with a deadlock error instead of the constraint violation this
    control looks for (only a test without the host lock can get there)."""
    everyone_has_checked = threading.Barrier(racers, timeout=10)
    overlapping = slots_slots._overlapping

    def checked(**kwargs):
        clashes = overlapping(**kwargs)
        arrival = 0
        with contextlib.suppress(threading.BrokenBarrierError):
            arrival = everyone_has_checked.wait()
        if arrival:
            time.sleep(WINDOW)
        return clashes

    monkeypatch.setattr(locking, "lock_user", lambda user_id: User.objects.get(pk=user_id))
    monkeypatch.setattr(slots_slots, "_overlapping", checked)


# --- capacity ------------------------------------------------------------------------------------


def race_for_seats(*, capacity: int, guests: int):
    slot = SlotFactory(capacity=capacity)
    results = run_concurrently([booker(slot.pk, UserFactory()) for _ in range(guests)])
    return slot, results


def test_twelve_guests_on_a_capacity_three_slot_get_exactly_three():
    before = backstops("slot_booked_within_capacity")

    slot, results = race_for_seats(capacity=3, guests=12)

    assert len(wins(results)) == 3
    assert sum(isinstance(r, rules.SlotFull) for r in results) == 9
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
def test_control_without_the_slot_lock_only_the_check_constraint_stops_overbooking(monkeypatch, capacity, guests):
    remove_slot_lock(monkeypatch, racers=guests)
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
    assert sum(isinstance(r, errors.LimitReached) for r in results) == 3
    assert SlotBooking.objects.filter(guest=guest).count() == 5


def test_control_without_the_guest_lock_the_limit_of_five_breaks(monkeypatch):
    remove_guest_lock(monkeypatch, racers=8)

    guest, _ = race_one_guest_over_eight_hosts()

    assert SlotBooking.objects.filter(guest=guest).count() == 8


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
        return lambda: slots_slots.slot_create(
            host=host, start=begin, end=begin + timedelta(minutes=60), actor=host, now=timezone.now()
        )

    return host, run_concurrently([create(0), create(30)])


def test_two_overlapping_slot_creations_of_one_host_give_one_slot():
    before = backstops("slot_no_overlap_per_host")

    host, results = race_overlapping_creations()

    assert sum(isinstance(r, Slot) for r in results) == 1
    assert sum(isinstance(r, rules.SlotOverlap) for r in results) == 1
    assert Slot.objects.filter(host=host).count() == 1
    assert backstops("slot_no_overlap_per_host") == before


def test_control_without_the_host_lock_only_the_exclusion_constraint_stops_the_overlap(monkeypatch):
    remove_host_lock(monkeypatch, racers=2)
    before = backstops("slot_no_overlap_per_host")

    host, _ = race_overlapping_creations()

    assert backstops("slot_no_overlap_per_host") > before
    assert Slot.objects.filter(host=host).count() == 1


# --- reschedule -----------------------------------------------------------------------------------


def race_reschedule_against_bookers(bookers: int = 4):
    mover = SlotBookingFactory()
    target = SlotFactory(capacity=1)
    reschedule = lambda: slots_reschedule.slot_booking_reschedule(  # noqa: E731
        booking_id=mover.pk, slot_id=target.pk, user=mover.guest, now=timezone.now()
    )
    results = run_concurrently([reschedule] + [booker(target.pk, UserFactory()) for _ in range(bookers)])
    return mover, target, results


def test_a_reschedule_racing_bookings_of_its_target_never_overbooks():
    before = backstops("slot_booked_within_capacity")

    mover, target, results = race_reschedule_against_bookers()

    assert len(wins(results)) == 1
    assert SlotBooking.objects.filter(slot=target).blocking().count() == 1
    mover.refresh_from_db()
    moved = SlotBooking.objects.filter(rescheduled_from=mover).exists()
    assert mover.status == ("CANCELLED" if moved else "CONFIRMED")  # all or nothing
    assert_counters_match_bookings()
    assert backstops("slot_booked_within_capacity") == before


def test_control_without_the_slot_lock_the_reschedule_race_reaches_the_backstop(monkeypatch):
    remove_slot_lock(monkeypatch, racers=5)
    before = backstops("slot_booked_within_capacity")

    _, target, _ = race_reschedule_against_bookers(bookers=4)

    assert backstops("slot_booked_within_capacity") > before
    assert SlotBooking.objects.filter(slot=target).blocking().count() == 1
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

    results = run_concurrently([lambda: bookings.slot_bookings_expire_due(now=timezone.now(), batch_size=2)] * 2)

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
        [lambda: bookings.slot_bookings_expire_due(now=timezone.now())]
        + [booker(slot.pk, UserFactory()) for _ in range(3)]
    )

    assert len(wins(results)) == 3
    assert SlotBooking.objects.filter(slot=slot, status="EXPIRED").count() == 3
    assert_counters_match_bookings()


# --- the guest's row against foreign keys to it ----------------------------------------------------


def guest_op(operation: str, booking: SlotBooking):
    if operation == "confirm":
        return lambda: bookings.slot_booking_confirm(booking_id=booking.pk, user=booking.guest, now=timezone.now())
    return lambda: bookings.slot_booking_cancel(booking_id=booking.pk, user=booking.guest, now=timezone.now())


def pause_after(monkeypatch, owner, name: str, *, then_set: threading.Event, before: threading.Event | None = None):
    """Patch ``owner.<name>`` so the thread that reaches it (holding its locks) signals ``then_set``,
    waits for ``before`` (when given) and for ``WINDOW`` so the other thread runs into its next lock."""
    real = getattr(owner, name)

    def paused(*args, **kwargs):
        then_set.set()
        if before is not None:
            before.wait(10)
        time.sleep(WINDOW)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, paused)


def pause_in_the_statement(monkeypatch, lifecycle, *, then_set: threading.Event, seconds: float) -> None:
    """A transition is one statement: make ``lifecycle``'s signal ``then_set`` as it starts, and sleep
    ``seconds`` once its locks are held (in its ``fits``, judged after them), so the other thread runs into
    its next lock meanwhile. Its statements are composed afresh for this test."""
    monkeypatch.setattr(
        declarations, "transition_statement", functools.cache(declarations.transition_statement.__wrapped__)
    )
    monkeypatch.setattr(
        lifecycle, "fits", lambda: sql.SQL("(SELECT true FROM pg_sleep({}))").format(sql.Literal(seconds))
    )
    run = lifecycle._run

    def signalled(*args, **kwargs):
        then_set.set()
        return run(*args, **kwargs)

    monkeypatch.setattr(lifecycle, "_run", signalled)


@pytest.mark.parametrize("first", ["the_booking_op", "the_new_booking"])
@pytest.mark.parametrize("operation", ["confirm", "cancel"])
def test_a_guest_confirming_or_cancelling_while_booking_the_same_slot_does_not_deadlock(monkeypatch, operation, first):
    """The guest's new booking holds the guest's row and waits for the slot; the confirm or cancel holds
    the slot and inserts an audit event naming the guest as its actor, which takes FOR KEY SHARE on the
    guest's row. With FOR UPDATE on that row the two waited for each other; FOR NO KEY UPDATE lets the
    audit insert through. Both orders of arrival."""
    slot = SlotFactory(capacity=3, start=timezone.now() + timedelta(days=3))
    status = "PENDING" if operation == "confirm" else "CONFIRMED"
    booking = SlotBookingFactory(slot=slot, status=status)
    holds_locks, other_started = threading.Event(), threading.Event()
    if first == "the_booking_op":  # it holds the slot (and booking) when the new booking comes
        pause_in_the_statement(monkeypatch, bookings.SLOT_BOOKINGS, then_set=holds_locks, seconds=WINDOW)
    else:  # the new booking holds the guest and the slot when the confirm or cancel comes
        pause_after(monkeypatch, bookings, "_check_guest_limits", then_set=holds_locks, before=other_started)

    def second(function):
        def run():
            holds_locks.wait(10)
            other_started.set()
            return function()

        return run

    op, new_booking = guest_op(operation, booking), booker(slot.pk, booking.guest)
    if first == "the_booking_op":
        results = run_concurrently([op, second(new_booking)])
    else:
        results = list(reversed(run_concurrently([new_booking, second(op)])))

    assert holds_locks.is_set()
    wins(results)  # no deadlock, no database error: only refusals the services chose
    assert isinstance(results[0], SlotBooking)
    assert results[0].status == ("CONFIRMED" if operation == "confirm" else "CANCELLED")
    assert_counters_match_bookings()


# --- judging expiry by the clock after the lock wait -----------------------------------------------


def test_a_confirm_that_waited_for_the_slot_past_the_expiry_expires_the_hold_instead():
    """The view took ``now`` before the lock wait; the hold lapsed meanwhile, and a new booking of the
    guest with the same host counted it as lapsed. The confirm must not revive it (410, EXPIRED)."""
    host = HostFactory()
    held, other = SlotFactory(host=host, capacity=2), SlotFactory(host=host, capacity=2)
    guest = UserFactory()
    hold = SlotBookingFactory(
        slot=held, guest=guest, status="PENDING", expires_at=timezone.now() + timedelta(seconds=0.6)
    )
    slot_busy = threading.Event()

    def another_request_holding_the_slot():
        with transaction.atomic():
            list(Slot.objects.select_for_update().filter(pk=held.pk))
            slot_busy.set()
            time.sleep(1.2)

    def confirm():
        slot_busy.wait(10)
        now = timezone.now()  # before the expiry; the lock wait ends after it
        return bookings.slot_booking_confirm(booking_id=hold.pk, user=guest, now=now)

    def book_the_same_host_after_the_expiry():
        slot_busy.wait(10)
        time.sleep(0.8)
        return bookings.slot_booking_create(slot_id=other.pk, guest=guest, now=timezone.now())

    _, confirmed, booked = run_concurrently(
        [another_request_holding_the_slot, confirm, book_the_same_host_after_the_expiry]
    )

    assert isinstance(confirmed, errors.HoldExpired), confirmed
    assert isinstance(booked, SlotBooking), booked
    hold.refresh_from_db()
    assert hold.status == "EXPIRED"
    assert SlotBooking.objects.active(now=timezone.now()).filter(guest=guest, slot__host=host).count() == 1
    assert_counters_match_bookings()


def test_a_confirm_in_flight_and_a_new_booking_with_the_same_host_are_serialized_by_the_guest_lock(monkeypatch):
    """The confirm holds its locks before the hold lapses and commits after; a new booking of the guest
    with the same host, made after the expiry, waits for the guest's row and then sees the confirmed
    booking (one per host). Without the guest lock in the confirm both committed."""
    host = HostFactory()
    held, other = SlotFactory(host=host, capacity=2), SlotFactory(host=host, capacity=2)
    guest = UserFactory()
    expires_at = timezone.now() + timedelta(seconds=0.5)
    hold = SlotBookingFactory(slot=held, guest=guest, status="PENDING", expires_at=expires_at)
    confirming = threading.Event()
    # The confirm decides before the expiry; it commits after it.
    pause_in_the_statement(monkeypatch, bookings.SLOT_BOOKINGS, then_set=confirming, seconds=1.0)

    def book_the_same_host_after_the_expiry():
        confirming.wait(10)
        time.sleep(max(0.0, (expires_at - timezone.now()).total_seconds()) + 0.1)
        return bookings.slot_booking_create(slot_id=other.pk, guest=guest, now=timezone.now())

    confirm = lambda: bookings.slot_booking_confirm(booking_id=hold.pk, user=guest, now=timezone.now())  # noqa: E731
    confirmed, booked = run_concurrently([confirm, book_the_same_host_after_the_expiry])

    assert isinstance(confirmed, SlotBooking) and confirmed.status == "CONFIRMED", confirmed
    assert isinstance(booked, errors.LimitReached), booked
    assert SlotBooking.objects.filter(guest=guest, status__in=["PENDING", "CONFIRMED"]).count() == 1
    assert_counters_match_bookings()


# --- a guest is never in two places at once ---------------------------------------------------------


def pairwise_overlapping_slots(count: int) -> list[Slot]:
    """``count`` slots of ``count`` hosts, each an hour long and starting a minute after the one before:
    every two of them overlap."""
    start = morning(3)
    return [
        SlotFactory(start=start + timedelta(minutes=n), end=start + timedelta(minutes=60 + n)) for n in range(count)
    ]


def race_one_guest_over_overlapping_slots(count: int = 50):
    guest = UserFactory()
    results = run_concurrently([booker(slot.pk, guest) for slot in pairwise_overlapping_slots(count)])
    return guest, results


def remove_guest_lock_while_the_first_booking_is_uncommitted(monkeypatch, racers: int) -> None:
    """The guest is read, not locked. One racer books and keeps its transaction open; the others check
    the guest's bookings and insert meanwhile, so none of them sees its booking (a booking checks and
    inserts in one statement, after its locks). Then it commits."""
    everyone_has_read = threading.Barrier(racers, timeout=10)
    create = bookings.SLOT_BOOKINGS.create

    def racing(*args, **kwargs):
        first = False
        with contextlib.suppress(threading.BrokenBarrierError):
            first = everyone_has_read.wait() == 0
        if not first:
            time.sleep(WINDOW)  # the first has inserted its booking by now
        booking = create(*args, **kwargs)
        if first:
            time.sleep(3 * WINDOW)  # the others check and insert before it commits
        return booking

    monkeypatch.setattr(locking, "lock_user", lambda user_id: User.objects.get(pk=user_id))
    monkeypatch.setattr(locking, "user_lock_sql", read_user)
    monkeypatch.setattr(bookings.SLOT_BOOKINGS, "create", racing)


def assert_no_guest_in_two_places() -> None:
    for booking in SlotBooking.objects.blocking():
        others = SlotBooking.objects.blocking().filter(
            guest=booking.guest_id, start__lt=booking.end, end__gt=booking.start
        )
        assert list(others) == [booking]


def test_fifty_pairwise_overlapping_bookings_of_one_guest_across_fifty_hosts_give_one():
    before = backstops(rules.GUEST_NO_OVERLAP)

    guest, results = race_one_guest_over_overlapping_slots(50)

    assert len(wins(results)) == 1
    assert sum(isinstance(r, rules.GuestOverlap) for r in results) == 49
    assert SlotBooking.objects.filter(guest=guest).count() == 1
    assert_no_guest_in_two_places()
    assert backstops(rules.GUEST_NO_OVERLAP) == before  # the guest's lock decided, not the constraint


def test_control_without_the_guest_lock_only_the_exclusion_constraint_keeps_the_guest_in_one_place(monkeypatch):
    remove_guest_lock_while_the_first_booking_is_uncommitted(monkeypatch, racers=50)
    before = backstops(rules.GUEST_NO_OVERLAP)

    guest, results = race_one_guest_over_overlapping_slots(50)

    # Two racers inserting at once can each wait for the other in the constraint's index: PostgreSQL
    # then ends one with a deadlock error; only a test without the guest's lock gets there.
    lost = [r for r in results if not isinstance(r, SlotBooking | rules.GuestOverlap)]
    assert all(isinstance(r, OperationalError) for r in lost), lost
    assert backstops(rules.GUEST_NO_OVERLAP) > before  # the race happened; the backstop caught it
    assert SlotBooking.objects.filter(guest=guest).count() == 1
    assert_no_guest_in_two_places()
    assert_counters_match_bookings()


def test_a_reschedule_racing_a_booking_of_the_same_guest_at_the_same_time_leaves_one():
    guest = UserFactory()
    moving = SlotBookingFactory(guest=guest)
    target, clashing = pairwise_overlapping_slots(2)

    def reschedule():
        return slots_reschedule.slot_booking_reschedule(
            booking_id=moving.pk, slot_id=target.pk, user=guest, now=timezone.now()
        )

    results = run_concurrently([reschedule, booker(clashing.pk, guest)])

    assert len(wins(results)) == 1
    assert isinstance(next(r for r in results if not isinstance(r, SlotBooking)), rules.GuestOverlap)
    assert_no_guest_in_two_places()
    assert_counters_match_bookings()


# --- appointments: booking intervals of a host's hours -------------------------------------------------


def working_hosts(count: int) -> list[User]:
    hosts = [HostFactory() for _ in range(count)]
    for host in hosts:
        document = {
            "timeZone": "UTC",
            "weekly": [{"weekday": day, "start": "00:00", "end": "24:00"} for day in range(7)],
            "durations": [60],
        }
        slots_slots.availability_set(host=host, fields=availability_clean(document), actor=host, now=timezone.now())
    return hosts


def interval_booker(host: User, guest: User, start, minutes: int = 60):
    end = start + timedelta(minutes=minutes)
    return lambda: appointments.appointment_book(host_id=host.pk, guest=guest, start=start, end=end, now=timezone.now())


def race_one_guest_over_fifty_overlapping_intervals_of_five_hosts():
    guest, hosts = UserFactory(), working_hosts(5)
    start = morning(3)
    bookers = [interval_booker(hosts[n % 5], guest, start + timedelta(minutes=n)) for n in range(50)]
    return guest, run_concurrently(bookers)


def remove_the_users_locks(monkeypatch, racers: int) -> None:
    """The guest and the host are read, not locked; every racer checks before any of them inserts."""
    everyone_has_checked = threading.Barrier(racers, timeout=10)
    create = appointments.APPOINTMENTS.create

    def checked(*args, **kwargs):
        arrival = 0
        with contextlib.suppress(threading.BrokenBarrierError):
            arrival = everyone_has_checked.wait()
        if arrival:
            time.sleep(WINDOW)  # one inserts first (see remove_host_lock)
        return create(*args, **kwargs)

    monkeypatch.setattr(locking, "lock_users", lambda ids: {u.pk: u for u in User.objects.filter(pk__in=ids)})
    monkeypatch.setattr(appointments.APPOINTMENTS, "create", checked)


def lost_to_the_database(results) -> None:
    """In a control, besides the clean refusals, a racer may lose to a deadlock error: two inserts into one
    exclusion constraint's index at once each waiting for the other (only a test without the locks gets
    there)."""
    lost = [r for r in results if not isinstance(r, SlotBooking | errors.DomainError)]
    assert all(isinstance(r, OperationalError) for r in lost), lost


def test_fifty_pairwise_overlapping_intervals_of_one_guest_across_five_hosts_give_one():
    before = backstops(rules.GUEST_NO_OVERLAP), backstops(rules.HOST_NO_OVERLAP)

    guest, results = race_one_guest_over_fifty_overlapping_intervals_of_five_hosts()

    assert len(wins(results)) == 1
    assert SlotBooking.objects.filter(guest=guest).blocking().count() == 1
    assert_no_guest_in_two_places()
    assert (backstops(rules.GUEST_NO_OVERLAP), backstops(rules.HOST_NO_OVERLAP)) == before


def test_control_without_the_users_locks_the_fifty_intervals_reach_the_backstops(monkeypatch):
    remove_the_users_locks(monkeypatch, racers=50)
    deadlocks_found_sooner(monkeypatch)  # their inserts wait on each other: 1 s per cycle PostgreSQL breaks
    before = backstops(rules.GUEST_NO_OVERLAP) + backstops(rules.HOST_NO_OVERLAP)

    guest, results = race_one_guest_over_fifty_overlapping_intervals_of_five_hosts()

    lost_to_the_database(results)
    assert backstops(rules.GUEST_NO_OVERLAP) + backstops(rules.HOST_NO_OVERLAP) > before
    assert SlotBooking.objects.filter(guest=guest).blocking().count() == 1
    assert_no_guest_in_two_places()


def race_two_guests_on_one_hosts_interval():
    [host] = working_hosts(1)
    start = morning(3)
    return host, run_concurrently([interval_booker(host, UserFactory(), start) for _ in range(2)])


def test_two_guests_on_the_same_interval_of_one_host_give_one():
    before = backstops(rules.HOST_NO_OVERLAP)

    host, results = race_two_guests_on_one_hosts_interval()

    assert len(wins(results)) == 1
    assert sum(isinstance(r, rules.SlotOverlap) for r in results) == 1
    assert Slot.objects.filter(host=host, status=Slot.Status.AVAILABLE).count() == 1
    assert backstops(rules.HOST_NO_OVERLAP) == before


def test_control_without_the_host_lock_only_the_hosts_exclusion_constraint_stops_the_second(monkeypatch):
    remove_the_users_locks(monkeypatch, racers=2)
    before = backstops(rules.HOST_NO_OVERLAP)

    host, results = race_two_guests_on_one_hosts_interval()

    lost_to_the_database(results)
    assert backstops(rules.HOST_NO_OVERLAP) > before
    assert Slot.objects.filter(host=host, status=Slot.Status.AVAILABLE).count() == 1


def a_slot_booking_and_an_interval_booking_of_one_guest_at_the_same_time():
    guest, [host] = UserFactory(), working_hosts(1)
    slot = pairwise_overlapping_slots(1)[0]
    return [booker(slot.pk, guest), interval_booker(host, guest, slot.start)]


def remove_the_guests_lock_while_the_slot_booking_is_uncommitted(monkeypatch) -> None:
    """The guest is read, not locked, on both paths (the slot booking's ``user_lock_sql``, the interval's
    ``lock_users``). The slot booking inserts and keeps its transaction open; the interval booking checks
    the guest's bookings meanwhile (it sees nothing: the other is uncommitted) and inserts. Then the slot
    booking commits."""
    both_locked = threading.Barrier(2, timeout=10)
    create, check_target = bookings.SLOT_BOOKINGS.create, appointments.APPOINTMENTS.check_target

    def slot_booking_first(*args, **kwargs):
        wait_for_everyone(both_locked)
        booking = create(*args, **kwargs)
        time.sleep(3 * WINDOW)  # the interval booking checks and inserts before this commits
        return booking

    def interval_checks_after_it(*args, **kwargs):
        wait_for_everyone(both_locked)
        time.sleep(WINDOW)  # the slot booking has inserted by now
        return check_target(*args, **kwargs)

    monkeypatch.setattr(locking, "user_lock_sql", read_user)
    monkeypatch.setattr(locking, "lock_users", lambda ids: {u.pk: u for u in User.objects.filter(pk__in=ids)})
    monkeypatch.setattr(bookings.SLOT_BOOKINGS, "create", slot_booking_first)
    monkeypatch.setattr(appointments.APPOINTMENTS, "check_target", interval_checks_after_it)


def test_a_slot_booking_racing_an_interval_booking_of_the_same_guest_at_the_same_time_gives_one():
    before = backstops(rules.GUEST_NO_OVERLAP)

    results = run_concurrently(a_slot_booking_and_an_interval_booking_of_one_guest_at_the_same_time())

    assert len(wins(results)) == 1
    assert isinstance(next(r for r in results if not isinstance(r, SlotBooking)), rules.GuestOverlap)
    assert_no_guest_in_two_places()
    assert_counters_match_bookings()
    assert backstops(rules.GUEST_NO_OVERLAP) == before  # the guest's lock decided, not the constraint


def test_control_without_the_guests_lock_the_slot_and_interval_race_reaches_the_guests_backstop(monkeypatch):
    remove_the_guests_lock_while_the_slot_booking_is_uncommitted(monkeypatch)
    before = backstops(rules.GUEST_NO_OVERLAP)

    slot_booking, interval_booking = run_concurrently(
        a_slot_booking_and_an_interval_booking_of_one_guest_at_the_same_time()
    )

    # The interval's check passed (it could not see the slot booking); only the constraint refused it.
    assert isinstance(slot_booking, SlotBooking)
    assert isinstance(interval_booking, rules.GuestOverlap), interval_booking
    assert backstops(rules.GUEST_NO_OVERLAP) == before + 1
    assert_no_guest_in_two_places()
    assert_counters_match_bookings()


def a_hosts_booking_as_a_guest_in_flight_and_a_guest_booking_them_then(monkeypatch):
    """Two racers: the host books a published slot of another host and keeps its transaction open a moment
    after inserting; meanwhile a guest books the host at that time. (Only once the host's insert is done:
    the other order is allowed, as nothing refuses a host's booking as a guest over their own appointment.)"""
    [host], guest = working_hosts(1), UserFactory()
    slot = pairwise_overlapping_slots(1)[0]
    inserted = threading.Event()
    create = bookings.SLOT_BOOKINGS.create

    def create_then_linger(*args, **kwargs):
        booking = create(*args, **kwargs)
        inserted.set()
        time.sleep(3 * WINDOW)  # the guest's booking asks for the host meanwhile
        return booking

    def guest_books_the_host():
        inserted.wait(10)
        return interval_booker(host, guest, slot.start)()

    monkeypatch.setattr(bookings.SLOT_BOOKINGS, "create", create_then_linger)
    return host, guest, [booker(slot.pk, host), guest_books_the_host]


def test_a_guest_booking_a_host_who_is_booking_elsewhere_then_waits_for_the_host_and_is_refused(monkeypatch):
    host, guest, racers = a_hosts_booking_as_a_guest_in_flight_and_a_guest_booking_them_then(monkeypatch)

    as_guest, as_host = run_concurrently(racers)

    assert isinstance(as_guest, SlotBooking) and as_guest.guest_id == host.pk
    assert isinstance(as_host, rules.SlotOverlap), as_host
    assert not SlotBooking.objects.filter(guest=guest).exists()


def test_control_without_the_hosts_lock_the_host_is_booked_in_two_places_and_nothing_backstops_it(monkeypatch):
    host, guest, racers = a_hosts_booking_as_a_guest_in_flight_and_a_guest_booking_them_then(monkeypatch)
    monkeypatch.setattr(locking, "user_lock_sql", read_user)
    monkeypatch.setattr(locking, "lock_users", lambda ids: {u.pk: u for u in User.objects.filter(pk__in=ids)})

    as_guest, as_host = run_concurrently(racers)

    # The guest's check could not see the host's uncommitted booking, and no constraint spans the two.
    assert isinstance(as_guest, SlotBooking) and isinstance(as_host, SlotBooking), (as_guest, as_host)
    assert (as_host.slot.host_id, as_host.guest_id, as_guest.guest_id) == (host.pk, guest.pk, host.pk)
    assert (as_guest.start, as_guest.end) == (as_host.start, as_host.end)


def a_reschedule_and_a_booking_of_its_target_interval():
    """A guest's appointment, and two racers: its reschedule three hours later, another guest's booking there."""
    [host] = working_hosts(1)
    mover, other = UserFactory(), UserFactory()
    start = morning(3)
    old = appointments.appointment_book(
        host_id=host.pk, guest=mover, start=start, end=start + timedelta(hours=1), now=timezone.now()
    )
    target = start + timedelta(hours=3)

    def reschedule():
        end = target + timedelta(hours=1)
        return slots_reschedule.appointment_reschedule(
            booking_id=old.pk, start=target, end=end, user=mover, now=timezone.now()
        )

    return host, old, [reschedule, interval_booker(host, other, target)]


def assert_no_host_in_two_places(host) -> None:
    taken = Slot.objects.filter(host=host, status=Slot.Status.AVAILABLE)
    for slot in taken:
        assert list(taken.filter(start__lt=slot.end, end__gt=slot.start)) == [slot]


def test_a_reschedule_racing_a_booking_of_its_target_interval_never_double_books_the_host():
    host, old, racers = a_reschedule_and_a_booking_of_its_target_interval()
    before = backstops(rules.HOST_NO_OVERLAP)

    results = run_concurrently(racers)

    [won] = wins(results)
    assert isinstance(next(r for r in results if r is not won), rules.SlotOverlap)
    old.refresh_from_db()
    assert old.status == ("CANCELLED" if won.rescheduled_from_id == old.pk else "CONFIRMED")
    assert_no_host_in_two_places(host)
    assert backstops(rules.HOST_NO_OVERLAP) == before


def test_control_without_the_users_locks_the_reschedule_race_reaches_the_hosts_backstop(monkeypatch):
    host, _, racers = a_reschedule_and_a_booking_of_its_target_interval()
    remove_the_users_locks(monkeypatch, racers=2)
    before = backstops(rules.HOST_NO_OVERLAP)

    results = run_concurrently(racers)

    lost_to_the_database(results)
    assert backstops(rules.HOST_NO_OVERLAP) > before
    assert_no_host_in_two_places(host)
