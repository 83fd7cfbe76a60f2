"""A partial cancel's races against a real PostgreSQL: against a whole cancel of the same booking, and
against seats freed elsewhere being offered to the waiting list at the same time. Each has a control that
removes the lock that decides it and shows the test then fails."""

import pytest
from django.utils import timezone
from psycopg import sql

from core import locking
from core.audit.services import trail
from events import locks, selectors
from events.models import SeatHoldGroup, WaitlistEntry
from events.services import rules, seat_holds, waitlist
from tests.concurrency import deadlocks_found_sooner, run_concurrently
from tests.events.factories import make_event, violations, write_hold
from tests.factories import UserFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.concurrency, pytest.mark.slow]

ROUNDS = 6


def cancel(group: SeatHoldGroup, codes: list[str] | None):
    return lambda: seat_holds.seat_booking_cancel(
        booking_group_id=group.booking_group_id, user=group.user, now=timezone.now(), seat_codes=codes
    )


def a_partial_and_a_whole_cancel_at_once() -> tuple:
    event = make_event(total_seats=4)
    booking = write_hold(event, ["S1", "S2", "S3"], state="CONFIRMED")

    partial, whole = run_concurrently([cancel(booking, ["S1"]), cancel(booking, None)])

    booking.refresh_from_db()
    event.refresh_from_db()
    ends = [e.event_type for e in trail(rules.hold_subject(booking))]
    return (type(partial).__name__, type(whole).__name__, booking.state, event.confirmed_seats, tuple(ends))


# The partial cancel got there first (then the whole cancel took the two seats left), or the whole one did
# (and the partial one found a cancelled booking); never both at once.
ONE_WAY = {
    ("SeatHoldGroup", "SeatHoldGroup", "CANCELLED", 0, (seat_holds.SEATS_CANCELLED, "CANCELLED")),
    ("BookingNotActive", "SeatHoldGroup", "CANCELLED", 0, ("CANCELLED",)),
}


def test_a_partial_and_a_whole_cancel_of_one_booking_end_one_way():
    for _ in range(ROUNDS):
        outcome = a_partial_and_a_whole_cancel_at_once()

        assert outcome in ONE_WAY


def test_control_without_the_bookings_lock_the_two_cancels_collide(monkeypatch):
    monkeypatch.setattr(
        locking, "lock_claim", lambda model, key, *, by="id", **_: model.objects.filter(**{by: key}).first()
    )
    monkeypatch.setattr(locking, "transition_lock_sql", lambda: sql.SQL(""))

    outcomes = [a_partial_and_a_whole_cancel_at_once() for _ in range(ROUNDS)]

    assert not set(outcomes) <= ONE_WAY


def a_partial_cancel_while_a_release_offers_seats() -> tuple[list[WaitlistEntry], list[object], list[str]]:
    """S1 of a booking cancelled while a hold on S3 and S4 is released, with three people waiting for one
    seat each: the three freed seats are offered, one each, head first."""
    event = make_event(total_seats=4)
    booking = write_hold(event, ["S1", "S2"], state="CONFIRMED")
    held = write_hold(event, ["S3", "S4"])
    entries = [
        waitlist.waitlist_join(event_id=event.pk, user=UserFactory(), quantity=1, now=timezone.now()) for _ in range(3)
    ]

    def release():
        return seat_holds.seat_hold_release(
            event_id=event.pk, hold_group_id=held.pk, user=held.user, now=timezone.now()
        )

    results = run_concurrently([cancel(booking, ["S1"]), release])

    entries = [WaitlistEntry.objects.select_related("hold_group").get(pk=e.pk) for e in entries]
    return entries, results, violations(event)


def offered(entries: list[WaitlistEntry]) -> list[str]:
    return [code for e in entries if e.hold_group for code in selectors.group_seat_codes(e.hold_group)]


def test_a_partial_cancel_while_a_release_offers_seats_offers_each_seat_once_in_list_order():
    for _ in range(ROUNDS):
        entries, results, wrong = a_partial_cancel_while_a_release_offers_seats()

        assert all(isinstance(r, SeatHoldGroup) for r in results), results
        assert wrong == []
        assert [e.state for e in entries] == ["OFFERED"] * 3
        assert sorted(offered(entries)) == ["S1", "S3", "S4"]
        offers = [trail(waitlist.waitlist_entry_subject(e)).get(event_type="OFFERED").pk for e in entries]
        assert offers == sorted(offers), "someone was offered seats before the one ahead of them"


def test_control_without_the_event_lock_of_the_released_seats_the_offers_collide(monkeypatch):
    monkeypatch.setattr(
        locks,
        "freed_events_lock_sql",
        lambda events: sql.SQL("SELECT id, waiting_count FROM events_event WHERE id IN ({})").format(events),
    )
    deadlocks_found_sooner(monkeypatch)  # the two may deadlock (not fine either): found in 0.1 s, not 1 s

    outcomes = []
    for _ in range(ROUNDS):
        entries, results, wrong = a_partial_cancel_while_a_release_offers_seats()
        fine = all(isinstance(r, SeatHoldGroup) for r in results) and not wrong
        outcomes.append(fine and sorted(offered(entries)) == ["S1", "S3", "S4"])

    assert not all(outcomes)
