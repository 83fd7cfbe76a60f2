"""The pieces every domain's admin shares (booking_site/admin.py)."""

import pytest

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(client, staff):
    client.force_login(staff)
    return client


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("/admin/reservations/reservation/", "A buyer holds at most 2 cars at once"),
        ("/admin/events/seatholdgroup/", "A user holds at most 10 seats of one event at once"),
        ("/admin/slots/slotbooking/", "A guest has at most 5 active (pending or confirmed) bookings at once"),
    ],
)
def test_each_claim_list_states_its_cap_as_set(operator, settings, path, says):
    settings.RESERVATION_MAX_ACTIVE_HOLDS_PER_BUYER = 2

    page = operator.get(path).content.decode()

    assert says in page and "limit_reached" in page
