"""Races against a real PostgreSQL: many connections released at once (docs/contract.md §2.1)."""

import contextlib
import functools
import threading
import time
from datetime import timedelta

import pytest
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone
from psycopg import sql

from booking_site import engine, locking
from booking_site.accounts.models import User
from booking_site.audit.services import trail
from booking_site.errors import HoldExpired, LimitReached
from booking_site.metrics import CONSTRAINT_BACKSTOPS
from booking_site.statements import table
from reservations import services
from reservations.models import Car, Reservation
from tests.concurrency import run_concurrently
from tests.factories import UserFactory
from tests.reservations.factories import CarFactory, ReservationFactory

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
    everyone_has_read = threading.Barrier(BUYERS, timeout=10)

    def unlocked_car(car_id, *, taken_at, owner=None):
        taken = Exists(Reservation.objects.active(now=taken_at).filter(car=OuterRef("pk")))
        car = Car.objects.filter(pk=car_id).annotate(taken=taken).first()
        with contextlib.suppress(threading.BrokenBarrierError):
            everyone_has_read.wait()  # all buyers check before any inserts: the race, every time
        return car

    monkeypatch.setattr(locking, "lock_car", unlocked_car)

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
    monkeypatch.setattr(engine, "_transition_statement", functools.cache(engine._transition_statement.__wrapped__))
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
    monkeypatch.setattr(locking, "claim_lock_sql", lambda: sql.SQL(""))

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
    """The buyer is read, not locked; every racer counts the buyer's holds and inserts its own before any
    of them commits (a hold counts and inserts in one statement, after its locks)."""
    everyone_has_inserted = threading.Barrier(CARS, timeout=10)
    create = services.RESERVATIONS.create

    def inserted(*args, **kwargs):
        reservation = create(*args, **kwargs)
        with contextlib.suppress(threading.BrokenBarrierError):
            everyone_has_inserted.wait()
        return reservation

    read_only = sql.SQL("EXISTS (SELECT FROM {} WHERE id = {})")  # the user's row read, not locked
    monkeypatch.setattr(locking, "user_lock_sql", lambda user: read_only.format(table(User), user))
    monkeypatch.setattr(services.RESERVATIONS, "create", inserted)

    buyer, _ = race_one_buyer_over_eight_cars()

    assert Reservation.objects.filter(buyer=buyer, state="HELD").count() > 3
