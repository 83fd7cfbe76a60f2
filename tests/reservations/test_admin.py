"""The operators' back office, through the Django test client."""

from datetime import timedelta

import pytest
from django.utils import timezone

from core.audit.services import trail
from reservations.models import Car, Reservation
from tests.factories import house
from tests.reservations.factories import CarFactory, ReservationFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(client, staff):
    client.force_login(staff)
    return client


def test_car_list_shows_the_current_reservation(operator):
    car = CarFactory(label="Blue Volvo")
    reservation = ReservationFactory(car=car)

    page = operator.get("/admin/reservations/car/?q=Blue").content.decode()

    assert "Blue Volvo" in page and f"#{reservation.pk} HELD" in page


def test_car_list_filters(operator):
    CarFactory(status="INACTIVE")

    assert operator.get("/admin/reservations/car/?status__exact=INACTIVE").status_code == 200


def test_car_page_shows_its_trail(operator, staff_api):
    car_id = staff_api.post("/api/cars", {"dealerId": 3, "label": "Red Kia"}, format="json").json()["id"]

    page = operator.get(f"/admin/reservations/car/{car_id}/change/").content.decode()

    assert "Audit trail" in page and "CREATED" in page


def test_reservation_list_filters_and_searches_by_buyer(operator, user):
    ReservationFactory(buyer=user)
    ReservationFactory()

    page = operator.get(f"/admin/reservations/reservation/?q={user.email}&state=HELD").content.decode()

    assert "1 reservation" in page


def test_an_overdue_hold_shows_as_expired(operator):
    past = timezone.now() - timedelta(hours=1)
    ReservationFactory(created_at=past, expires_at=past + timedelta(minutes=1))

    page = operator.get("/admin/reservations/reservation/").content.decode()

    assert "EXPIRED" in page


def test_reservation_page_is_read_only_with_its_trail(operator, api, user):
    reservation_id = api.post("/api/reservations", {"carId": CarFactory().pk}, format="json").json()["id"]

    page = operator.get(f"/admin/reservations/reservation/{reservation_id}/change/").content.decode()

    assert "Audit trail" in page and "CREATED" in page and 'name="_save"' not in page


@pytest.mark.parametrize("action, state", [("cancel", "CANCELLED"), ("expire_now", "EXPIRED")])
def test_actions_go_through_the_services(operator, staff, action, state):
    held = ReservationFactory()
    confirmed = ReservationFactory(state="CONFIRMED")

    response = operator.post(
        "/admin/reservations/reservation/",
        {"action": action, "_selected_action": [held.pk, confirmed.pk]},
        follow=True,
    )

    page = response.content.decode()
    held.refresh_from_db()
    confirmed.refresh_from_db()
    assert (held.state, confirmed.state) == (state, "CONFIRMED")
    assert "1 reservation cancelled" in page or "1 reservation expired" in page
    assert f"#{confirmed.pk}" in page
    assert Reservation.objects.get(pk=held.pk).updated_at > held.created_at


def test_the_audit_log_and_schedule_pages_render(operator):
    for url in [
        "/admin/audit/auditevent/",
        "/admin/django_celery_beat/periodictask/",
        "/admin/booking_site/idempotencyrecord/",
    ]:
        assert operator.get(url).status_code == 200


def test_an_operator_adds_and_retires_a_car_through_the_services(operator):
    form = {"dealer_id": 4, "label": "Green Fiat", "make": "Fiat", "model": "500", "status": "ACTIVE"}

    operator.post("/admin/reservations/car/add/", {**form, "organisation": house().pk})
    car = Car.objects.get(label="Green Fiat")
    operator.post(f"/admin/reservations/car/{car.pk}/change/", {**form, "status": "INACTIVE"})

    car.refresh_from_db()
    assert car.status == "INACTIVE"
    assert [(e.event_type, e.from_state, e.to_state) for e in trail(car)] == [
        ("CREATED", "", "ACTIVE"),
        ("UPDATED", "ACTIVE", "INACTIVE"),
    ]
