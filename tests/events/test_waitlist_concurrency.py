"""The waiting list's races against a real PostgreSQL (docs/decisions/0016-waiting-list.md), each with a
control that removes what decides it and shows the test then fails."""

import functools
import time
from datetime import timedelta

import pytest
from django.utils import timezone
from psycopg import sql

from core import declarations, locking
from core.audit.services import trail
from core.errors import DomainError
from events import locks, selectors
from events.models import SeatHoldGroup, WaitlistEntry
from events.services import holds, rules, seat_holds, waitlist
from tests.concurrency import run_concurrently
from tests.events.factories import make_event, violations, write_hold
from tests.factories import UserFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.concurrency, pytest.mark.slow]

ROUNDS = 4


def join(event, quantity: int) -> WaitlistEntry:
    return waitlist.waitlist_join(event_id=event.pk, user=UserFactory(), quantity=quantity, now=timezone.now())


def release(group: SeatHoldGroup):
    return lambda: seat_holds.seat_hold_release(
        event_id=group.event_id, hold_group_id=group.pk, user=group.user, now=timezone.now()
    )


def entry(e: WaitlistEntry) -> WaitlistEntry:
    return WaitlistEntry.objects.select_related("hold_group").get(pk=e.pk)


def offered_codes(e: WaitlistEntry) -> set[str]:
    group = entry(e).hold_group
    return set(selectors.group_seat_codes(group)) if group else set()


def a_release_while_a_poller_holds_the_same_seat() -> tuple[set[str], bool]:
    """S1 released while a client polls to hold S1, and someone waits for two seats (one freed is not
    enough: it stays free for them); then S2 is released. Returns the seats offered to the waiter and
    whether the poller got S1."""
    event = make_event(total_seats=3)
    first, second = write_hold(event, ["S1"]), write_hold(event, ["S2"])
    write_hold(event, ["S3"])
    waiter, poller = join(event, quantity=2), UserFactory()

    def poll():
        for _ in range(40):
            try:
                return seat_holds.seat_hold(event_id=event.pk, user=poller, seat_codes=["S1"], now=timezone.now())
            except DomainError:
                time.sleep(0.002)
        return None

    results = run_concurrently([release(first), poll])
    assert not [r for r in results if isinstance(r, Exception)], results
    release(second)()
    assert violations(event) == []
    return offered_codes(waiter), results[1] is not None


def release_while_a_poller_holds_the_same_seat() -> list[tuple[set[str], bool]]:
    return [a_release_while_a_poller_holds_the_same_seat() for _ in range(ROUNDS)]


def test_a_seat_released_while_someone_waits_goes_to_them_never_to_a_poller():
    outcomes = release_while_a_poller_holds_the_same_seat()

    assert outcomes == [({"S1", "S2"}, False)] * ROUNDS


def test_control_without_the_waiting_counter_in_the_holds_reads_the_poller_takes_the_seat(monkeypatch):
    event_sql = locks.hold_event_sql

    def not_reading_the_list(*, lock_before=None):
        return sql.SQL(
            "SELECT id, sales_open, event_date, hold_minutes, 0 AS waiting_count, queue_enabled FROM ({}) e"
        ).format(event_sql(lock_before=lock_before))

    monkeypatch.setattr(locks, "hold_event_sql", not_reading_the_list)

    outcomes = release_while_a_poller_holds_the_same_seat()

    assert any(got_it for _, got_it in outcomes)


def two_releases_at_once() -> tuple[list[WaitlistEntry], list[object]]:
    event = make_event(total_seats=4)
    first, second = write_hold(event, ["S1", "S2"]), write_hold(event, ["S3", "S4"])
    entries = [join(event, quantity=2) for _ in range(3)]

    results = run_concurrently([release(first), release(second)])

    return [entry(e) for e in entries], results


def test_two_releases_at_once_offer_in_list_order_and_no_seat_twice():
    for _ in range(ROUNDS):
        (head, second, third), results = two_releases_at_once()

        assert all(isinstance(r, SeatHoldGroup) for r in results), results
        assert (head.state, second.state, third.state) == ("OFFERED", "OFFERED", "WAITING")
        assert not offered_codes(head) & offered_codes(second)
        assert len(offered_codes(head) | offered_codes(second)) == 4
        offers = [trail(waitlist.waitlist_entry_subject(e)).get(event_type="OFFERED").pk for e in (head, second)]
        assert offers == sorted(offers), "the head was offered seats after the one behind it"
        assert violations(head.event) == []


def test_control_without_the_event_lock_of_the_freed_seats_two_releases_collide(monkeypatch):
    monkeypatch.setattr(
        locks,
        "freed_events_lock_sql",
        lambda events: sql.SQL("SELECT id, waiting_count FROM events_event WHERE id IN ({})").format(events),
    )

    outcomes = []
    for _ in range(ROUNDS):
        (_head, second, _third), results = two_releases_at_once()
        outcomes.append(all(isinstance(r, SeatHoldGroup) for r in results) and second.state == "OFFERED")

    assert not all(outcomes)


def an_offer_lapsing_while_its_user_confirms() -> tuple:
    event = make_event(total_seats=2)
    group = write_hold(event, ["S1", "S2"])
    head, behind = join(event, quantity=2), join(event, quantity=2)
    release(group)()
    offer = entry(head).hold_group
    lapsed = offer.expires_at + timedelta(seconds=1)

    results = run_concurrently(
        [
            lambda: seat_holds.seat_hold_confirm(
                event_id=event.pk, hold_group_id=offer.pk, user=head.user, now=timezone.now()
            ),
            lambda: seat_holds.seat_holds_expire_due(now=lapsed),
        ]
    )

    offer.refresh_from_db()
    transitions = trail(rules.hold_subject(offer)).exclude(event_type="CREATED").count()
    entry_events = trail(waitlist.waitlist_entry_subject(head)).exclude(event_type__in=["CREATED", "OFFERED"])
    confirm = type(results[0]).__name__
    outcome = (confirm, offer.state, entry(head).state, entry(behind).state, transitions, entry_events.count())
    return (*outcome, violations(event) == [])


def offers_lapsing_while_their_users_confirm() -> list[tuple]:
    return [an_offer_lapsing_while_its_user_confirms() for _ in range(ROUNDS)]


# The confirm got there first, or the expiry did (and the seats went to the next in line).
ONE_WAY = {
    ("SeatHoldGroup", "CONFIRMED", "ACCEPTED", "WAITING", 1, 1, True),
    ("HoldExpired", "EXPIRED", "EXPIRED", "OFFERED", 1, 1, True),
}


def test_an_offer_lapsing_while_its_user_confirms_ends_one_way():
    outcomes = offers_lapsing_while_their_users_confirm()

    assert set(outcomes) <= ONE_WAY


def test_control_without_the_claims_lock_the_offer_is_both_accepted_and_lapsed(monkeypatch):
    monkeypatch.setattr(locking, "transition_lock_sql", lambda: sql.SQL(""))
    # The confirm's one statement decides on its snapshot, then pauses: the expiry commits meanwhile, every round.
    monkeypatch.setattr(
        declarations, "transition_statement", functools.cache(declarations.transition_statement.__wrapped__)
    )
    monkeypatch.setattr(holds.SEAT_HOLDS, "fits", lambda: sql.SQL("(SELECT true FROM pg_sleep(0.3))"))

    outcomes = offers_lapsing_while_their_users_confirm()

    assert not set(outcomes) <= ONE_WAY
