"""The lean write path (issue "Fast when sales open", part 2): round trips to PostgreSQL per car hold
over HTTP on the cached-token path, counting BEGIN and COMMIT (``tests.round_trips``)."""

from datetime import timedelta

import pytest
from django.utils import timezone

from booking_site.audit.services import trail
from reservations.models import Reservation
from tests.factories import UserFactory
from tests.reservations.factories import CarFactory, ReservationFactory
from tests.round_trips import round_trips

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def api_of(cached_api_of):
    return cached_api_of


def test_a_car_hold_is_four_round_trips(api_of):
    car, buyer = CarFactory(), UserFactory()
    api = api_of(buyer)

    with round_trips() as trips:
        response = api.post("/api/reservations", {"carId": car.pk})

    assert response.status_code == 201, response.content
    assert trips.count <= 4, trips.statements
    [created] = trail(Reservation.objects.get(pk=response.json()["id"]))
    assert (created.event_type, created.to_state, created.actor_id) == ("CREATED", "HELD", buyer.pk)


def test_a_car_hold_that_expires_an_overdue_hold_first_is_four_round_trips(api_of):
    past = timezone.now() - timedelta(hours=1)
    overdue = ReservationFactory(created_at=past, expires_at=past + timedelta(minutes=1))
    api = api_of(UserFactory())

    with round_trips() as trips:
        response = api.post("/api/reservations", {"carId": overdue.car_id})

    assert response.status_code == 201, response.content
    assert trips.count <= 4, trips.statements
    assert Reservation.objects.get(pk=overdue.pk).state == "EXPIRED"
    assert [(e.event_type, e.actor_label) for e in trail(overdue)] == [("EXPIRED", "system:expire_holds")]


def test_a_hold_refused_because_the_car_is_taken_is_three_round_trips(api_of):
    held = ReservationFactory()
    api = api_of(UserFactory())

    with round_trips() as trips:
        response = api.post("/api/reservations", {"carId": held.car_id})

    assert response.status_code == 409, response.content
    assert trips.count <= 3, trips.statements


@pytest.mark.parametrize(("path", "state"), [("confirm", "CONFIRMED"), ("cancel", "CANCELLED")])
def test_a_confirm_or_a_cancel_is_four_round_trips(api_of, path, state):
    buyer = UserFactory()
    held = ReservationFactory(buyer=buyer)
    api = api_of(buyer)

    with round_trips() as trips:
        response = api.post(f"/api/reservations/{held.pk}/{path}", {})

    assert response.status_code == 200, response.content
    assert trips.count <= 4, trips.statements
    assert [(e.event_type, e.from_state, e.actor_id) for e in trail(held)] == [(state, "HELD", buyer.pk)]
