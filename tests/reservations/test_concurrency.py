"""Races against a real PostgreSQL: many connections released at once (SPEC 2.1)."""

import contextlib
import threading
from datetime import timedelta

import pytest
from django.utils import timezone

from booking_site.audit.services import trail
from booking_site.metrics import CONSTRAINT_BACKSTOPS
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

    def unlocked_car(car_id):
        car = Car.objects.filter(pk=car_id).first()
        with contextlib.suppress(threading.BrokenBarrierError):
            everyone_has_read.wait()  # all buyers check before any inserts: the race, every time
        return car

    monkeypatch.setattr(services, "_lock_car", unlocked_car)

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


def test_two_expiry_jobs_at_once_write_one_event_per_hold():
    past = timezone.now() - timedelta(hours=1)
    held = [ReservationFactory(created_at=past, expires_at=past + timedelta(minutes=1)) for _ in range(60)]

    counts = run_concurrently([lambda: services.reservations_expire_due(now=timezone.now(), batch_size=7)] * 4)

    assert sum(counts) == 60
    assert Reservation.objects.filter(state="EXPIRED").count() == 60
    for reservation in held:
        assert trail(reservation).filter(event_type="EXPIRED").count() == 1
