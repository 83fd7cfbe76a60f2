"""Each database constraint refuses a bad row written directly, bypassing the services."""

from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from reservations.models import Car, Reservation
from tests.factories import house
from tests.reservations.factories import CarFactory, ReservationFactory

pytestmark = pytest.mark.django_db


def refused(constraint: str):
    return pytest.raises(IntegrityError, match=constraint)


@pytest.mark.parametrize("state", ["HELD", "CONFIRMED"])
def test_one_active_reservation_per_car(state):
    car = CarFactory()
    ReservationFactory(car=car, state=Reservation.State.HELD)

    with refused("reservation_one_active_per_car"), transaction.atomic():
        ReservationFactory(car=car, state=state)


def test_finished_reservations_do_not_count_as_active():
    car = CarFactory()
    for state in ["CANCELLED", "EXPIRED", "CANCELLED"]:
        ReservationFactory(car=car, state=state)

    ReservationFactory(car=car, state="HELD")

    assert car.reservations.count() == 4


def test_state_must_be_valid():
    with refused("reservation_state_valid"), transaction.atomic():
        ReservationFactory(state="LOST")


def test_a_hold_expires_after_it_was_created():
    now = timezone.now()

    with refused("reservation_expires_after_creation"), transaction.atomic():
        ReservationFactory(created_at=now, expires_at=now - timedelta(seconds=1))


def test_car_status_must_be_valid():
    with refused("car_status_valid"), transaction.atomic():
        Car.objects.create(organisation=house(), dealer_id=1, label="x", status="SOLD")
