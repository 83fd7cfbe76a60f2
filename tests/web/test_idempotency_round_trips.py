"""What an Idempotency-Key costs on the wire, for every domain's claim write: at most one round trip more
than the same write without a key (docs/decisions/0003-idempotency.md), whatever the write's own path
costs (``tests.round_trips``; the cars' absolute counts are pinned in tests/reservations). A hold that is
one statement in autocommit (the car's, the slot booking's, the seats':
docs/decisions/0022-one-statement-holds.md) is two with a key: BEGIN, the key's lookup and gate ride in
front of the hold's statement, the record's INSERT with the COMMIT; a write in a transaction of its own
pays none more today (its BEGIN carries the key, its COMMIT the record)."""

import pytest

from core.models import IdempotencyRecord
from tests.events.factories import make_event
from tests.factories import UserFactory
from tests.reservations.factories import CarFactory
from tests.round_trips import round_trips
from tests.slots.factories import SlotFactory

pytestmark = pytest.mark.django_db(transaction=True)

WRITES = {
    "car hold": lambda: ("/api/reservations", {"carId": CarFactory().pk}),
    "seat hold": lambda: (f"/api/events/{make_event().pk}/seats/reserve", {"seatCodes": ["S1"]}),
    "seat hold, best available": lambda: (f"/api/events/{make_event().pk}/seats/reserve", {"quantity": 2}),
    "slot booking": lambda: ("/api/bookings", {"slotId": SlotFactory().pk}),
}


@pytest.fixture
def api(client_for):
    api = client_for(UserFactory())
    api.get("/api/reservations")  # the token is looked up once, then cached: the path measured here
    return api


def trips_of(api, write, **headers):
    path, body = write()
    with round_trips() as trips:
        response = api.post(path, body, format="json", **headers)
    assert response.status_code == 201, response.content
    return trips


@pytest.mark.parametrize("name", WRITES.keys())
def test_a_key_costs_at_most_one_round_trip_more(api, name):
    without = trips_of(api, WRITES[name])

    keyed = trips_of(api, WRITES[name], HTTP_IDEMPOTENCY_KEY="k-1")

    assert keyed.count <= without.count + 1, (without.count, keyed.statements)
    assert IdempotencyRecord.objects.get(key="k-1").response_status == 201
