"""The lean write path (issue "Fast when sales open", part 2; issue 18): round trips to PostgreSQL per car
hold over HTTP on the cached-token path, counting BEGIN and COMMIT (``tests.round_trips``). A hold is one
statement in autocommit (docs/decisions/0022-one-statement-holds.md)."""

from datetime import timedelta

import pytest
from django.utils import timezone

from core.audit.services import trail
from core.models import IdempotencyRecord
from reservations.models import Reservation
from tests.factories import UserFactory
from tests.reservations.factories import CarFactory, ReservationFactory
from tests.round_trips import round_trips

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_car_hold_is_one_statement_in_autocommit(cached_api_of):
    car, buyer = CarFactory(), UserFactory()
    api = cached_api_of(buyer)

    with round_trips() as trips:
        response = api.post("/api/reservations", {"carId": car.pk})

    assert response.status_code == 201, response.content
    assert trips.count == 1, trips.statements
    assert not any(s.startswith(("BEGIN", "COMMIT")) for s in trips.statements), trips.statements
    [created] = trail(Reservation.objects.get(pk=response.json()["id"]))
    assert (created.event_type, created.to_state, created.actor_id) == ("CREATED", "HELD", buyer.pk)


def test_a_car_hold_that_expires_an_overdue_hold_first_is_one_round_trip(cached_api_of):
    past = timezone.now() - timedelta(hours=1)
    overdue = ReservationFactory(created_at=past, expires_at=past + timedelta(minutes=1))
    api = cached_api_of(UserFactory())

    with round_trips() as trips:
        response = api.post("/api/reservations", {"carId": overdue.car_id})

    assert response.status_code == 201, response.content
    assert trips.count == 1, trips.statements
    assert Reservation.objects.get(pk=overdue.pk).state == "EXPIRED"
    assert [(e.event_type, e.actor_label) for e in trail(overdue)] == [("EXPIRED", "system:expire_holds")]


def test_a_hold_refused_because_the_car_is_taken_is_one_round_trip(cached_api_of):
    held = ReservationFactory()
    api = cached_api_of(UserFactory())

    with round_trips() as trips:
        response = api.post("/api/reservations", {"carId": held.car_id})

    assert response.status_code == 409, response.content
    assert trips.count == 1, trips.statements


@pytest.mark.parametrize(("path", "state"), [("confirm", "CONFIRMED"), ("cancel", "CANCELLED")])
def test_a_confirm_or_a_cancel_is_one_round_trip(cached_api_of, path, state):
    buyer = UserFactory()
    held = ReservationFactory(buyer=buyer)
    api = cached_api_of(buyer)

    with round_trips() as trips:
        response = api.post(f"/api/reservations/{held.pk}/{path}", {})

    assert response.status_code == 200, response.content
    assert trips.count == 1, trips.statements  # the statement, in autocommit: no BEGIN, no COMMIT
    assert [(e.event_type, e.from_state, e.actor_id) for e in trail(held)] == [(state, "HELD", buyer.pk)]


# With an Idempotency-Key (docs/decisions/0003-idempotency.md): a transaction, BEGIN, the key's lookup and
# its gate riding in front of the hold's statement (in the transaction: the same one statement), then the
# record's INSERT with the COMMIT; the handler's savepoint statements go with its own statements.


def test_a_car_hold_with_a_key_is_two_round_trips(cached_api_of):
    car = CarFactory()
    api = cached_api_of(UserFactory())

    with round_trips() as trips:
        response = api.post("/api/reservations", {"carId": car.pk}, HTTP_IDEMPOTENCY_KEY="k-1")

    assert response.status_code == 201, response.content
    assert trips.count == 2, trips.statements
    assert IdempotencyRecord.objects.get(key="k-1").response_body == response.json()


def test_a_replay_is_two_round_trips(cached_api_of):
    car = CarFactory()
    api = cached_api_of(UserFactory())
    first = api.post("/api/reservations", {"carId": car.pk}, HTTP_IDEMPOTENCY_KEY="k-2")

    with round_trips() as trips:
        again = api.post("/api/reservations", {"carId": car.pk}, HTTP_IDEMPOTENCY_KEY="k-2")

    assert again.json() == first.json() and again["Idempotent-Replayed"] == "true"
    assert trips.count == 2, trips.statements  # BEGIN, the lookup and its gate (the hold skipped); ROLLBACK


def test_a_hold_refused_with_a_key_is_two_round_trips_and_stored(cached_api_of):
    held = ReservationFactory()
    api = cached_api_of(UserFactory())

    with round_trips() as trips:
        response = api.post("/api/reservations", {"carId": held.car_id}, HTTP_IDEMPOTENCY_KEY="k-3")

    assert response.status_code == 409, response.content
    assert trips.count == 2, trips.statements
    assert IdempotencyRecord.objects.get(key="k-3").response_status == 409


@pytest.mark.parametrize(("path", "state"), [("confirm", "CONFIRMED"), ("cancel", "CANCELLED")])
def test_a_confirm_or_a_cancel_with_a_key_is_two_round_trips(cached_api_of, path, state):
    buyer = UserFactory()
    held = ReservationFactory(buyer=buyer)
    api = cached_api_of(buyer)

    with round_trips() as trips:
        response = api.post(f"/api/reservations/{held.pk}/{path}", {}, HTTP_IDEMPOTENCY_KEY="k-4")

    assert response.status_code == 200, response.content
    # BEGIN, the lookup, its gate and the statement (its savepoint rides along); the record and COMMIT
    assert trips.count == 2, trips.statements
    assert Reservation.objects.get(pk=held.pk).state == state


def test_a_hold_refused_by_the_cap_on_a_buyers_holds_is_one_round_trip(cached_api_of):
    """The cap costs no statement of its own: the hold's statement counts the buyer's live holds under the
    buyer's lock, and refuses (nothing to roll back)."""
    buyer, car = UserFactory(), CarFactory()
    for _ in range(3):
        ReservationFactory(buyer=buyer)
    api = cached_api_of(buyer)

    with round_trips() as trips:
        response = api.post("/api/reservations", {"carId": car.pk})

    assert response.status_code == 409, response.content
    assert response.json()["error"]["code"] == "limit_reached"
    assert trips.count == 1, trips.statements
