"""Races against a real PostgreSQL: many connections released at once (docs/contract.md §2.1)."""

import functools
import threading
import time
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone
from psycopg import sql

from core import declarations, locking
from core.audit.services import trail
from core.errors import HoldExpired, LimitReached
from core.metrics import CONSTRAINT_BACKSTOPS
from reservations import services
from reservations.models import Car, Reservation
from reservations.services import CarUnavailable
from tests.concurrency import behind_an_open_hold, run_concurrently, unlocked
from tests.factories import UserFactory
from tests.reservations.factories import CarFactory, ReservationFactory
from web.accounts.models import User

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.concurrency]

BUYERS = 30


def backstop_hits() -> float:
    return CONSTRAINT_BACKSTOPS.labels("reservation_one_active_per_car")._value.get()


def hold_race(client_for) -> tuple[list[int], list[str], float]:
    """30 buyers hold the same car at once. Returns statuses, error codes, and constraint backstop hits."""
    car = CarFactory()
    clients = [client_for(UserFactory()) for _ in range(BUYERS)]
    before = backstop_hits()

    responses = run_concurrently([lambda c=c: c.post("/api/reservations", {"carId": car.pk}) for c in clients])

    statuses = [r.status_code for r in responses]
    codes = [r.json()["error"]["code"] for r in responses if r.status_code != 201]
    assert Reservation.objects.filter(car=car, state="HELD").count() <= 1  # the constraint always holds
    return statuses, codes, backstop_hits() - before


def assert_exactly_one_hold(statuses, codes, backstops) -> None:
    assert statuses.count(201) == 1
    assert statuses.count(409) == BUYERS - 1
    assert set(codes) == {"car_unavailable"}
    assert backstops == 0, "the lock, not the constraint, must decide the race"


def test_thirty_buyers_holding_one_car_get_one_hold(client_for):
    assert_exactly_one_hold(*hold_race(client_for))


def test_control_without_the_row_lock_the_race_is_caught(client_for, monkeypatch):
    monkeypatch.setattr(locking, "claim_lock_sql", unlocked(Car, pause=1.0))

    statuses, codes, backstops = hold_race(client_for)

    assert backstops > 0, "without the lock the buyers race past the check and the constraint has to refuse them"
    with pytest.raises(AssertionError):
        assert_exactly_one_hold(statuses, codes, backstops)


@pytest.mark.parametrize("overdue", [False, True])
def test_confirm_cancel_and_expire_racing_on_one_hold_end_in_one_state(overdue):
    buyer, operator = UserFactory(), UserFactory(is_staff=True)
    created = timezone.now() - timedelta(hours=1) if overdue else timezone.now()
    reservation = ReservationFactory(buyer=buyer, created_at=created, expires_at=created + timedelta(minutes=15))
    now = timezone.now
    contenders = [
        lambda: services.reservation_confirm(reservation_id=reservation.pk, user=buyer, now=now()),
        lambda: services.reservation_cancel(reservation_id=reservation.pk, user=buyer, now=now()),
        lambda: services.reservation_expire(reservation_id=reservation.pk, user=operator, now=now()),
        lambda: services.reservations_expire_due(now=now()),
    ] * 3

    run_concurrently(contenders)

    reservation.refresh_from_db()
    events = trail(reservation).exclude(event_type="CREATED")
    assert reservation.state in {"CONFIRMED", "CANCELLED", "EXPIRED"}
    assert [(e.from_state, e.to_state) for e in events] == [("HELD", reservation.state)]
    if overdue:
        assert reservation.state == "EXPIRED"


def confirms_and_cancels_deciding_slowly(monkeypatch) -> list[tuple[str, str]]:
    """Four confirms and four cancels of one hold at once, each transition's one statement pausing after
    its lock (in ``fits``) so every other one has started (taken its snapshot) meanwhile. Returns the
    transitions the hold's audit trail records."""
    monkeypatch.setattr(
        declarations, "transition_statement", functools.cache(declarations.transition_statement.__wrapped__)
    )
    monkeypatch.setattr(services.RESERVATIONS, "fits", lambda: sql.SQL("(SELECT true FROM pg_sleep(0.2))"))
    buyer = UserFactory()
    reservation = ReservationFactory(buyer=buyer)
    now = timezone.now
    run_concurrently(
        [
            lambda: services.reservation_confirm(reservation_id=reservation.pk, user=buyer, now=now()),
            lambda: services.reservation_cancel(reservation_id=reservation.pk, user=buyer, now=now()),
        ]
        * 4
    )
    return [(e.from_state, e.to_state) for e in trail(reservation).exclude(event_type="CREATED")]


def test_a_transition_decides_on_the_newest_row_its_lock_returns(monkeypatch):
    """One statement in autocommit: its snapshot is from before the lock wait, but READ COMMITTED returns
    the locked row's newest version (EvalPlanQual), so every waiter sees the winner's write and refuses."""
    [(from_state, to_state)] = confirms_and_cancels_deciding_slowly(monkeypatch)

    assert from_state == "HELD" and to_state in {"CONFIRMED", "CANCELLED"}


def test_control_without_the_claims_lock_a_confirm_and_a_cancel_both_commit(monkeypatch):
    monkeypatch.setattr(locking, "transition_lock_sql", lambda: sql.SQL(""))

    transitions = confirms_and_cancels_deciding_slowly(monkeypatch)

    assert len(transitions) > 1, "without the lock each statement decides on its snapshot's HELD"


def test_two_expiry_jobs_at_once_write_one_event_per_hold():
    past = timezone.now() - timedelta(hours=1)
    held = [ReservationFactory(created_at=past, expires_at=past + timedelta(minutes=1)) for _ in range(60)]

    counts = run_concurrently([lambda: services.reservations_expire_due(now=timezone.now(), batch_size=7)] * 4)

    assert sum(counts) == 60
    assert Reservation.objects.filter(state="EXPIRED").count() == 60
    for reservation in held:
        assert trail(reservation).filter(event_type="EXPIRED").count() == 1


def test_a_confirm_that_waited_for_the_lock_past_the_expiry_is_refused():
    """A confirm asked before the expiry and a rival hold asked after it both wait behind a lock on the
    hold until it has expired: the confirm judges by the time it got the lock (410), the rival gets the
    car, and neither overwrites the other's write."""
    buyer, rival = UserFactory(), UserFactory()
    now = timezone.now()
    reservation = ReservationFactory(
        buyer=buyer, created_at=now - timedelta(minutes=5), expires_at=now + timedelta(seconds=1)
    )
    locked, release = threading.Event(), threading.Event()

    def blocker():
        with transaction.atomic():
            Reservation.objects.select_for_update().get(pk=reservation.pk)
            locked.set()
            release.wait(10)
        return "released"

    def confirm():
        locked.wait(5)
        return services.reservation_confirm(reservation_id=reservation.pk, user=buyer, now=timezone.now())

    def rival_hold():
        locked.wait(5)
        time.sleep(1.2)  # asks after the expiry, while the expired hold's row is still locked
        return services.reservation_hold(car_id=reservation.car_id, buyer=rival, hold_minutes=5, now=timezone.now())

    def release_after_expiry():
        locked.wait(5)
        time.sleep(1.5)
        release.set()

    results = run_concurrently([blocker, confirm, rival_hold, release_after_expiry])

    reservation.refresh_from_db()
    assert reservation.state == "EXPIRED"
    assert isinstance(results[1], HoldExpired)
    assert isinstance(results[2], Reservation) and results[2].state == "HELD"
    assert trail(reservation).filter(event_type="EXPIRED").count() == 1
    assert not trail(reservation).filter(event_type="CONFIRMED").exists()


# --- the cap on one buyer's holds (docs/contract.md §2.7) ---------------------------------------------

CARS = 8


def race_one_buyer_over_eight_cars() -> tuple[object, list]:
    """One buyer holds eight cars at once; the cap is three."""
    buyer, cars = UserFactory(), [CarFactory() for _ in range(CARS)]
    holder = services.reservation_hold
    results = run_concurrently(
        [lambda car=car: holder(car_id=car.pk, buyer=buyer, hold_minutes=15, now=timezone.now()) for car in cars]
    )
    unexpected = [r for r in results if isinstance(r, Exception) and not isinstance(r, LimitReached)]
    assert not unexpected, unexpected
    return buyer, results


def test_one_buyer_holding_eight_cars_at_once_gets_exactly_three():
    buyer, results = race_one_buyer_over_eight_cars()

    assert sum(isinstance(r, Reservation) for r in results) == 3
    assert sum(isinstance(r, LimitReached) for r in results) == CARS - 3
    assert Reservation.objects.filter(buyer=buyer, state="HELD").count() == 3


def test_control_without_the_buyer_lock_the_cap_breaks(monkeypatch):
    """The buyer is read, not locked: every racer counts the buyer's holds from a snapshot taken before
    any of them commits, and inserts its own."""
    monkeypatch.setattr(locking, "claim_lock_sql", unlocked(User, pause=1.0))

    buyer, _ = race_one_buyer_over_eight_cars()

    assert Reservation.objects.filter(buyer=buyer, state="HELD").count() > 3


# --- a hold that waited for a lock while another hold committed under it (docs/decisions/0022) ---------


def hold(car, buyer):
    return lambda: services.reservation_hold(car_id=car.pk, buyer=buyer, hold_minutes=15, now=timezone.now())


def test_a_hold_that_waited_for_the_buyers_lock_counts_the_hold_committed_meanwhile():
    """The waiter's snapshot predates the first hold's commit, so its count of the buyer's holds is stale
    (two, not three): it sees so (the buyer's claim sequence moved since its snapshot), writes nothing,
    and decides in a transaction: BEGIN, the statement again, ROLLBACK (the refusal). 4 round trips."""
    buyer = UserFactory()
    for _ in range(2):
        ReservationFactory(buyer=buyer)

    first, second, trips = behind_an_open_hold(hold(CarFactory(), buyer), hold(CarFactory(), buyer))

    assert isinstance(first, Reservation), first
    assert isinstance(second, LimitReached), second
    assert Reservation.objects.filter(buyer=buyer, state="HELD").count() == 3
    sent = [s for s in trips.statements if "BEGIN" in s or "ROLLBACK" in s]
    assert trips.count == 4 and len(sent) == 2 and "BEGIN" in sent[0] and "ROLLBACK" in sent[1], trips.statements


def test_control_without_the_detection_the_waiter_breaks_the_cap(monkeypatch):
    monkeypatch.setattr(locking, "fresh_sql", lambda seen, locked: sql.SQL("true"))
    buyer = UserFactory()
    for _ in range(2):
        ReservationFactory(buyer=buyer)

    first, second, _ = behind_an_open_hold(hold(CarFactory(), buyer), hold(CarFactory(), buyer))

    assert isinstance(first, Reservation) and isinstance(second, Reservation)
    assert Reservation.objects.filter(buyer=buyer, state="HELD").count() == 4


def test_a_hold_that_waited_for_the_cars_lock_is_refused_by_the_hold_committed_meanwhile():
    """The waiter's snapshot predates the first hold's commit, so it finds the car free; the unique index
    refuses its insert, and it knows that for the arbiter's answer (the car's claim sequence moved since
    its snapshot), not a backstop. One round trip: nothing in it needs a second."""
    car = CarFactory()
    before = backstop_hits()

    first, second, trips = behind_an_open_hold(hold(car, UserFactory()), hold(car, UserFactory()))

    assert isinstance(first, Reservation), first
    assert isinstance(second, CarUnavailable), second
    assert backstop_hits() - before == 0
    assert trips.count == 1, trips.statements


def test_control_without_the_detection_the_cars_waiter_counts_a_backstop(monkeypatch):
    monkeypatch.setattr(locking, "fresh_sql", lambda seen, locked: sql.SQL("true"))
    car = CarFactory()
    before = backstop_hits()

    first, second, _ = behind_an_open_hold(hold(car, UserFactory()), hold(car, UserFactory()))

    assert isinstance(first, Reservation) and isinstance(second, CarUnavailable)
    assert backstop_hits() - before == 1


def test_holds_of_few_buyers_on_few_cars_with_edits_and_expiry_jobs_never_deadlock():
    """The hold's one statement takes the buyer's lock, then the car's, then the car's overdue holds
    (ADR 0001's order, by the plan's structure: ADR 0022); edits lock the car alone and the expiry job
    skips what is locked. Every buyer on every car at once, each car with an overdue hold to expire,
    beside edits and expiry jobs: only refusals, no deadlock (which PostgreSQL would report as an error)."""
    buyers, cars = [UserFactory() for _ in range(3)], [CarFactory() for _ in range(3)]
    past = timezone.now() - timedelta(hours=1)
    for car in cars:
        ReservationFactory(car=car, created_at=past, expires_at=past + timedelta(minutes=1))
    holds = [hold(car, buyer) for buyer in buyers for car in cars]
    edits = [lambda car=car: services.car_update(car_id=car.pk, label="edited") for car in cars]
    expiry = [lambda: services.reservations_expire_due(now=timezone.now())] * 2

    results = run_concurrently(holds * 2 + edits + expiry)

    unexpected = [r for r in results if isinstance(r, Exception) and not isinstance(r, CarUnavailable | LimitReached)]
    assert not unexpected, unexpected
    for car in cars:
        assert Reservation.objects.filter(car=car).blocking().count() == 1
