"""Races against a real PostgreSQL: many connections released at once (SPEC 2.1)."""

import random
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from booking_site.audit.services import trail
from booking_site.metrics import CONSTRAINT_BACKSTOPS
from events import services
from events.models import Seat, SeatClaim, SeatHoldGroup
from tests.concurrency import run_concurrently
from tests.events.factories import make_event, violations, write_hold
from tests.factories import UserFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.concurrency, pytest.mark.slow]

USERS = 32


def backstop_hits() -> float:
    return CONSTRAINT_BACKSTOPS.labels("seat_claim_one_active_per_seat")._value.get()


def hold_race(client_for):
    """32 users each hold a random 3 of the same 6 seats at once."""
    event = make_event(total_seats=6)
    rng = random.Random(20260101)
    wanted = [rng.sample([f"S{i}" for i in range(1, 7)], 3) for _ in range(USERS)]
    clients = [client_for(UserFactory()) for _ in range(USERS)]
    before = backstop_hits()

    responses = run_concurrently(
        [
            lambda c=c, codes=codes: c.post(f"/api/events/{event.pk}/seats/reserve", {"seatCodes": codes})
            for c, codes in zip(clients, wanted, strict=True)
        ]
    )

    return event, wanted, responses, backstop_hits() - before


def assert_clean_race(event, wanted, responses, backstops) -> None:
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {201, 409}, statuses
    winners = [r.json()["seatCodes"] for r in responses if r.status_code == 201]
    won_seats = [code for codes in winners for code in codes]
    assert len(won_seats) == len(set(won_seats)), "a seat is in two winning holds"
    assert 1 <= len(winners) <= 2
    for response, codes in zip(responses, wanted, strict=True):
        if response.status_code == 409:
            assert response.json()["error"]["code"] == "seats_unavailable"
            assert set(response.json()["error"]["details"]["seatCodes"]) <= set(codes)
    assert SeatHoldGroup.objects.filter(event=event).count() == len(winners), "a loser holds something"
    assert SeatClaim.objects.filter(event=event).count() == len(won_seats)
    assert violations(event) == []
    assert backstops == 0, "the lock, not the constraint, must decide the race"


def test_thirty_two_users_holding_random_seats_never_share_one(client_for):
    assert_clean_race(*hold_race(client_for))


def test_control_without_the_seat_locks_the_race_is_caught(client_for, monkeypatch):
    def unlocked_seats(*, event_id, seat_ids=None, codes=None):
        seats = Seat.objects.filter(event_id=event_id)
        seats = seats.filter(pk__in=seat_ids) if seat_ids is not None else seats.filter(code__in=codes)
        found = list(seats.order_by("pk"))
        time.sleep(0.05)  # widen the window between the check and the insert
        return found

    monkeypatch.setattr(services, "_lock_seats", unlocked_seats)

    event, wanted, responses, backstops = hold_race(client_for)

    assert backstops > 0, "without the locks the users race past the check and the constraint has to refuse them"
    with pytest.raises(AssertionError):
        assert_clean_race(event, wanted, responses, backstops)


def test_best_available_racers_all_get_distinct_seats(client_for):
    event = make_event(layout=(("A",), 3, 10))
    clients = [client_for(UserFactory()) for _ in range(12)]

    responses = run_concurrently(
        [lambda c=c: c.post(f"/api/events/{event.pk}/seats/reserve", {"quantity": 2}) for c in clients]
    )

    assert [r.status_code for r in responses] == [201] * 12
    seats = [code for r in responses for code in r.json()["seatCodes"]]
    assert len(seats) == len(set(seats)) == 24
    assert violations(event) == []


def test_fifty_confirms_of_one_hold_book_it_once():
    event, user = make_event(), UserFactory()
    group = services.seats_hold(event_id=event.pk, user=user, seat_codes=["S1", "S2", "S3"], now=timezone.now())

    def confirm():
        return services.seats_confirm(event_id=event.pk, hold_group_id=group.pk, user=user, now=timezone.now())

    results = run_concurrently([confirm] * 50)

    confirmed = [r for r in results if isinstance(r, SeatHoldGroup)]
    refused = [r for r in results if not isinstance(r, SeatHoldGroup)]
    assert len(confirmed) == 1
    assert all(isinstance(r, services.HoldNotActive) for r in refused), refused
    assert trail(services.hold_subject(group)).filter(event_type="CONFIRMED").count() == 1
    event.refresh_from_db()
    assert event.confirmed_seats == 3
    assert violations(event) == []


@pytest.mark.parametrize("overdue", [False, True])
def test_confirm_release_expiry_and_a_rival_hold_racing_end_in_one_state(overdue):
    event, owner, rival = make_event(), UserFactory(), UserFactory()
    created = timezone.now() - timedelta(hours=1) if overdue else timezone.now()
    group = write_hold(event, ["S1", "S2"], user=owner, created_at=created)
    now = timezone.now
    contenders = [
        lambda: services.seats_confirm(event_id=event.pk, hold_group_id=group.pk, user=owner, now=now()),
        lambda: services.seats_release(event_id=event.pk, hold_group_id=group.pk, user=owner, now=now()),
        lambda: services.events_expire_due(now=now()),
        lambda: services.seats_hold(event_id=event.pk, user=rival, seat_codes=["S2", "S3"], now=now()),
    ] * 3

    results = run_concurrently(contenders)

    assert not [r for r in results if isinstance(r, Exception) and not isinstance(r, services.DomainError)]
    group.refresh_from_db()
    events = trail(services.hold_subject(group)).exclude(event_type="CREATED")
    assert group.state in {"CONFIRMED", "RELEASED", "EXPIRED"}
    assert [(e.from_state, e.to_state) for e in events] == [("HELD", group.state)]
    rival_holds = SeatHoldGroup.objects.filter(user=rival)
    if overdue:
        assert group.state == "EXPIRED"
        assert rival_holds.count() == 1
    if group.state == "CONFIRMED":
        assert not rival_holds.exists()
    assert violations(event) == []


def test_two_expiry_jobs_at_once_write_one_event_per_group():
    event = make_event(total_seats=60)
    past = timezone.now() - timedelta(hours=1)
    groups = [
        write_hold(event, [f"S{i}", f"S{i + 1}"], created_at=past, expires_at=past + timedelta(minutes=1))
        for i in range(1, 60, 2)
    ]

    counts = run_concurrently([lambda: services.events_expire_due(now=timezone.now(), batch_size=4)] * 4)

    assert sum(counts) == 30
    for group in groups:
        assert trail(services.hold_subject(group)).filter(event_type="EXPIRED").count() == 1
    assert violations(event) == []
