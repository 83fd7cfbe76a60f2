from datetime import timedelta

import pytest
from django.utils import timezone

from core.audit.models import AuditEvent
from reservations.models import Car, Reservation
from tests.reservations.factories import CarFactory, ReservationFactory

pytestmark = pytest.mark.django_db

RESERVATION_FIELDS = {"id", "carId", "buyerId", "state", "expiresAt", "requestId", "createdAt", "updatedAt"}


def error_code(response) -> str:
    return response.json()["error"]["code"]


def hold(api, car, **body):
    return api.post("/api/reservations", {"carId": car.pk, **body}, format="json")


# --- POST /api/reservations ------------------------------------------------------------------------


def test_hold_returns_the_reservation_of_seed_000(api, user):
    car = CarFactory()

    response = hold(api, car, holdDurationMinutes=10)

    assert response.status_code == 201
    body = response.json()
    assert set(body) == RESERVATION_FIELDS
    assert body["carId"] == car.pk and body["buyerId"] == user.pk and body["state"] == "HELD"
    assert body["requestId"] is None
    reservation = Reservation.objects.get(pk=body["id"])
    assert reservation.expires_at - reservation.created_at == timedelta(minutes=10)


def test_hold_defaults_to_fifteen_minutes(api):
    response = hold(api, CarFactory())

    reservation = Reservation.objects.get(pk=response.json()["id"])
    assert reservation.expires_at - reservation.created_at == timedelta(minutes=15)


def test_hold_writes_a_created_audit_event(api, user):
    response = hold(api, CarFactory(), requestId="req-1")

    event = AuditEvent.objects.get(subject_type="reservation", subject_id=str(response.json()["id"]))
    assert (event.event_type, event.from_state, event.to_state, event.actor_id) == ("CREATED", "", "HELD", user.pk)
    assert event.request_id == response["X-Request-ID"]


def test_hold_stores_the_request_id(api):
    assert hold(api, CarFactory(), requestId="req-42").json()["requestId"] == "req-42"


def test_a_held_car_is_unavailable_to_the_next_buyer(api, client_for, other_user):
    car = CarFactory()
    hold(api, car)

    response = hold(client_for(other_user), car)

    assert response.status_code == 409
    assert error_code(response) == "car_unavailable"
    assert response.json()["error"]["details"] == {"carId": car.pk}


def test_a_confirmed_car_is_unavailable(api):
    car = CarFactory()
    ReservationFactory(car=car, state=Reservation.State.CONFIRMED)

    assert error_code(hold(api, car)) == "car_unavailable"


def test_an_overdue_hold_never_blocks_and_is_expired_on_the_spot(api):
    car = CarFactory()
    past = timezone.now() - timedelta(hours=1)
    overdue = ReservationFactory(car=car, created_at=past, expires_at=past + timedelta(minutes=15))

    response = hold(api, car)

    assert response.status_code == 201
    overdue.refresh_from_db()
    assert overdue.state == "EXPIRED"
    assert AuditEvent.objects.filter(subject_id=str(overdue.pk), event_type="EXPIRED").count() == 1


def test_an_inactive_car_cannot_be_held(api):
    response = hold(api, CarFactory(status=Car.Status.INACTIVE))

    assert response.status_code == 409 and error_code(response) == "car_unavailable"


def test_hold_of_a_missing_car_is_404(api):
    response = api.post("/api/reservations", {"carId": 999999}, format="json")

    assert response.status_code == 404 and error_code(response) == "not_found"


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "carId"),
        ({"carId": "seven"}, "carId"),
        ({"carId": 0}, "carId"),
        ({"carId": 10**30}, "carId"),
        ({"carId": 1, "holdDurationMinutes": 0}, "holdDurationMinutes"),
        ({"carId": 1, "holdDurationMinutes": 61}, "holdDurationMinutes"),
        ({"carId": 1, "holdDurationMinutes": 1.5}, "holdDurationMinutes"),
        ({"carId": 1, "colour": "red"}, "colour"),
    ],
)
def test_invalid_hold_requests_are_400_per_field(api, body, field):
    response = api.post("/api/reservations", body, format="json")

    assert response.status_code == 400
    assert error_code(response) == "validation_error"
    assert field in response.json()["error"]["details"]["fields"]


def test_a_buyer_cannot_hold_for_someone_else(api, other_user):
    response = hold(api, CarFactory(), buyerId=other_user.pk)

    assert response.status_code == 403 and error_code(response) == "forbidden"


def test_staff_hold_on_behalf_of_a_buyer(staff_api, user):
    response = hold(staff_api, CarFactory(), buyerId=user.pk)

    assert response.status_code == 201 and response.json()["buyerId"] == user.pk


def test_staff_hold_for_a_missing_buyer_is_404(staff_api):
    assert hold(staff_api, CarFactory(), buyerId=987654).status_code == 404


def test_hold_needs_credentials(client_for):
    response = hold(client_for(None), CarFactory())

    assert response.status_code == 401 and error_code(response) == "not_authenticated"


# --- confirm / cancel --------------------------------------------------------------------------------


def test_confirm_a_hold(api, user):
    reservation = ReservationFactory(buyer=user)

    response = api.post(f"/api/reservations/{reservation.pk}/confirm", {}, format="json")

    assert response.status_code == 200 and response.json()["state"] == "CONFIRMED"
    event = AuditEvent.objects.get(subject_id=str(reservation.pk), event_type="CONFIRMED")
    assert (event.from_state, event.to_state) == ("HELD", "CONFIRMED")


def test_confirm_twice_is_an_invalid_state_transition(api, user):
    reservation = ReservationFactory(buyer=user, state=Reservation.State.CONFIRMED)

    response = api.post(f"/api/reservations/{reservation.pk}/confirm")

    assert response.status_code == 400 and error_code(response) == "invalid_state_transition"


def test_confirm_an_overdue_hold_is_410_and_expires_it(api, user):
    past = timezone.now() - timedelta(hours=1)
    reservation = ReservationFactory(buyer=user, created_at=past, expires_at=past + timedelta(minutes=1))

    response = api.post(f"/api/reservations/{reservation.pk}/confirm")

    assert response.status_code == 410 and error_code(response) == "hold_expired"
    reservation.refresh_from_db()
    assert reservation.state == "EXPIRED"
    assert AuditEvent.objects.filter(subject_id=str(reservation.pk), event_type="EXPIRED").count() == 1


def test_confirm_an_expired_hold_is_410(api, user):
    reservation = ReservationFactory(buyer=user, state=Reservation.State.EXPIRED)

    assert api.post(f"/api/reservations/{reservation.pk}/confirm").status_code == 410


def test_confirm_someone_elses_hold_is_403(api, other_user):
    reservation = ReservationFactory(buyer=other_user)

    response = api.post(f"/api/reservations/{reservation.pk}/confirm")

    assert response.status_code == 403 and error_code(response) == "not_owner"
    reservation.refresh_from_db()
    assert reservation.state == "HELD"


def test_confirm_missing_is_404(api):
    assert api.post("/api/reservations/424242/confirm").status_code == 404


def test_confirm_refuses_unknown_fields(api, user):
    reservation = ReservationFactory(buyer=user)

    assert api.post(f"/api/reservations/{reservation.pk}/confirm", {"force": True}, format="json").status_code == 400


def test_cancel_a_hold_with_a_reason(api, user):
    reservation = ReservationFactory(buyer=user)

    response = api.post(f"/api/reservations/{reservation.pk}/cancel", {"reason": "changed my mind"}, format="json")

    assert response.status_code == 200 and response.json()["state"] == "CANCELLED"
    event = AuditEvent.objects.get(subject_id=str(reservation.pk), event_type="CANCELLED")
    assert event.metadata == {"reason": "changed my mind"}


def test_cancel_a_confirmed_reservation_is_an_invalid_transition(api, user):
    reservation = ReservationFactory(buyer=user, state=Reservation.State.CONFIRMED)

    response = api.post(f"/api/reservations/{reservation.pk}/cancel")

    assert response.status_code == 400 and error_code(response) == "invalid_state_transition"


def test_cancel_an_overdue_hold_is_refused_and_expires_it(api, user):
    past = timezone.now() - timedelta(hours=1)
    reservation = ReservationFactory(buyer=user, created_at=past, expires_at=past + timedelta(minutes=1))

    response = api.post(f"/api/reservations/{reservation.pk}/cancel")

    assert response.status_code == 400 and error_code(response) == "invalid_state_transition"
    reservation.refresh_from_db()
    assert reservation.state == "EXPIRED"


def test_cancel_someone_elses_hold_is_403(api, other_user):
    reservation = ReservationFactory(buyer=other_user)

    assert api.post(f"/api/reservations/{reservation.pk}/cancel").status_code == 403


def test_cancel_reason_too_long_is_400(api, user):
    reservation = ReservationFactory(buyer=user)

    response = api.post(f"/api/reservations/{reservation.pk}/cancel", {"reason": "x" * 501}, format="json")

    assert response.status_code == 400 and "reason" in response.json()["error"]["details"]["fields"]


def test_staff_cancel_any_hold(staff_api, user):
    reservation = ReservationFactory(buyer=user)

    assert staff_api.post(f"/api/reservations/{reservation.pk}/cancel").status_code == 200


# --- reads -------------------------------------------------------------------------------------------


def test_get_own_reservation(api, user):
    reservation = ReservationFactory(buyer=user)

    response = api.get(f"/api/reservations/{reservation.pk}")

    assert response.status_code == 200 and response.json()["id"] == reservation.pk


def test_an_overdue_hold_reads_as_expired(api, user):
    past = timezone.now() - timedelta(hours=1)
    reservation = ReservationFactory(buyer=user, created_at=past, expires_at=past + timedelta(minutes=1))

    assert api.get(f"/api/reservations/{reservation.pk}").json()["state"] == "EXPIRED"


def test_get_someone_elses_reservation_is_403(api, other_user):
    reservation = ReservationFactory(buyer=other_user)

    assert api.get(f"/api/reservations/{reservation.pk}").status_code == 403


def test_get_missing_reservation_is_404(api):
    response = api.get("/api/reservations/99999999")

    assert response.status_code == 404 and error_code(response) == "not_found"


def test_an_id_too_large_for_the_database_is_404_not_500(api):
    assert api.get("/api/reservations/99999999999999999999999").status_code == 404


def test_current_reservation_of_a_car(api, user):
    car = CarFactory()
    ReservationFactory(car=car, buyer=user, state=Reservation.State.CANCELLED)
    current = ReservationFactory(car=car, buyer=user)

    response = api.get(f"/api/reservations/car/{car.pk}")

    assert response.status_code == 200 and response.json()["id"] == current.pk


def test_current_reservation_ignores_overdue_holds(api, user):
    car = CarFactory()
    past = timezone.now() - timedelta(hours=1)
    ReservationFactory(car=car, buyer=user, created_at=past, expires_at=past + timedelta(minutes=1))

    response = api.get(f"/api/reservations/car/{car.pk}")

    assert response.status_code == 404 and error_code(response) == "not_found"


def test_current_reservation_of_another_buyer_is_403(api, other_user):
    car = CarFactory()
    ReservationFactory(car=car, buyer=other_user)

    assert api.get(f"/api/reservations/car/{car.pk}").status_code == 403


def test_list_shows_own_reservations_newest_first(api, user, other_user):
    mine = [ReservationFactory(buyer=user, state=Reservation.State.CANCELLED) for _ in range(3)]
    ReservationFactory(buyer=other_user)

    body = api.get("/api/reservations").json()

    assert [r["id"] for r in body["results"]] == [r.pk for r in reversed(mine)]
    assert (body["count"], body["page"], body["limit"]) == (3, 1, 20)


def test_staff_list_everyone(staff_api, user, other_user):
    ReservationFactory(buyer=user)
    ReservationFactory(buyer=other_user)

    assert staff_api.get("/api/reservations").json()["count"] == 2


def test_list_filters_by_state_and_car(api, user):
    car = CarFactory()
    held = ReservationFactory(buyer=user, car=car)
    ReservationFactory(buyer=user, state=Reservation.State.CANCELLED)
    past = timezone.now() - timedelta(hours=1)
    overdue = ReservationFactory(buyer=user, created_at=past, expires_at=past + timedelta(minutes=1))

    assert [r["id"] for r in api.get("/api/reservations?state=HELD").json()["results"]] == [held.pk]
    assert [r["id"] for r in api.get("/api/reservations?state=EXPIRED").json()["results"]] == [overdue.pk]
    assert [r["id"] for r in api.get(f"/api/reservations?carId={car.pk}").json()["results"]] == [held.pk]


@pytest.mark.parametrize(
    "query",
    ["state=LOST", "carId=abc", "carId=1.5", "carId=0", "carId=9223372036854775808", "page=0", "limit=101", "page=x"],
)
def test_list_refuses_bad_filters_and_pages(api, query):
    response = api.get(f"/api/reservations?{query}")

    assert response.status_code == 400 and error_code(response) == "validation_error"


def test_list_pages(api, user):
    for _ in range(5):
        ReservationFactory(buyer=user, state=Reservation.State.CANCELLED)

    body = api.get("/api/reservations?page=2&limit=2").json()

    assert (len(body["results"]), body["count"], body["page"], body["limit"]) == (2, 5, 2, 2)
    assert api.get("/api/reservations?page=9&limit=2").json()["results"] == []


def test_audit_trail_of_a_reservation(api, user):
    car = CarFactory()
    reservation_id = hold(api, car).json()["id"]
    api.post(f"/api/reservations/{reservation_id}/confirm")

    body = api.get(f"/api/reservations/{reservation_id}/events").json()

    assert [(e["eventType"], e["fromState"], e["toState"]) for e in body["results"]] == [
        ("CREATED", "", "HELD"),
        ("CONFIRMED", "HELD", "CONFIRMED"),
    ]
    assert body["results"][0]["actorId"] == user.pk


def test_audit_trail_of_someone_elses_reservation_is_403(api, other_user):
    reservation = ReservationFactory(buyer=other_user)

    assert api.get(f"/api/reservations/{reservation.pk}/events").status_code == 403


# --- cars --------------------------------------------------------------------------------------------


def test_staff_create_a_car(staff_api, staff):
    response = staff_api.post("/api/cars", {"dealerId": 7, "label": "Tesla Model 3", "status": "ACTIVE"}, format="json")

    assert response.status_code == 201
    body = response.json()
    assert body["dealerId"] == 7 and body["label"] == "Tesla Model 3" and body["available"] is True
    created = AuditEvent.objects.get(subject_type="car", subject_id=str(body["id"]), event_type="CREATED")
    assert (created.actor_id, created.actor_label) == (staff.pk, f"user:{staff.pk}")


def test_a_buyer_cannot_create_cars(api):
    response = api.post("/api/cars", {"dealerId": 7, "label": "x"}, format="json")

    assert response.status_code == 403 and error_code(response) == "forbidden"


@pytest.mark.parametrize(
    "body",
    [
        {"label": "x"},
        {"dealerId": 1},
        {"dealerId": 1, "label": "x", "status": "SOLD"},
        {"dealerId": 1, "label": "x" * 201},
    ],
)
def test_create_car_validation(staff_api, body):
    assert staff_api.post("/api/cars", body, format="json").status_code == 400


def test_list_cars_with_availability(api, user):
    free, held, inactive = CarFactory(), CarFactory(), CarFactory(status=Car.Status.INACTIVE)
    ReservationFactory(car=held)

    body = api.get("/api/cars").json()
    assert {c["id"]: c["available"] for c in body["results"]} == {free.pk: True, held.pk: False, inactive.pk: False}
    assert [c["id"] for c in api.get("/api/cars?available=true").json()["results"]] == [free.pk]
    assert api.get("/api/cars?available=maybe").status_code == 400
    assert api.get("/api/cars?dealerId=1.5").status_code == 400  # an id, not quietly truncated to 1


def test_get_a_car(api):
    car = CarFactory()

    assert api.get(f"/api/cars/{car.pk}").json()["id"] == car.pk
    assert api.get("/api/cars/987654").status_code == 404


# --- the cap on a buyer's live holds (docs/contract.md §2.7) ---------------------------------------


def test_a_buyer_holds_at_most_three_cars_at_once(api, user):
    for _ in range(3):
        assert hold(api, CarFactory()).status_code == 201
    car = CarFactory()

    response = hold(api, car)

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "limit_reached"
    assert response.json()["error"]["details"] == {"rule": "active_car_holds_per_buyer", "limit": 3}
    assert not Reservation.objects.filter(car=car).exists()
    assert Reservation.objects.filter(buyer=user).count() == 3


def test_the_cap_counts_only_live_holds(api, user):
    past = timezone.now() - timedelta(hours=1)
    ReservationFactory(buyer=user, state="CONFIRMED")  # bought, not held
    ReservationFactory(buyer=user, state="CANCELLED")
    ReservationFactory(buyer=user, created_at=past, expires_at=past + timedelta(minutes=1))  # overdue: free
    ReservationFactory(buyer=user)
    ReservationFactory(buyer=user)

    assert hold(api, CarFactory()).status_code == 201
    assert error_code(hold(api, CarFactory())) == "limit_reached"


def test_a_cancelled_hold_makes_room_for_another(api, user):
    held = [hold(api, CarFactory()).json()["id"] for _ in range(3)]

    assert api.post(f"/api/reservations/{held[0]}/cancel", {}).status_code == 200

    assert hold(api, CarFactory()).status_code == 201


def test_the_cap_is_a_setting(api, settings):
    settings.RESERVATION_MAX_ACTIVE_HOLDS_PER_BUYER = 1
    assert hold(api, CarFactory()).status_code == 201

    response = hold(api, CarFactory())

    assert response.json()["error"]["details"] == {"rule": "active_car_holds_per_buyer", "limit": 1}


def test_operators_are_exempt_from_the_cap_for_themselves_and_for_a_buyer(staff_api, staff, user):
    for _ in range(4):
        assert hold(staff_api, CarFactory()).status_code == 201
    for _ in range(4):
        assert hold(staff_api, CarFactory(), buyerId=user.pk).status_code == 201

    assert Reservation.objects.filter(buyer=staff, state="HELD").count() == 4
    assert Reservation.objects.filter(buyer=user, state="HELD").count() == 4


def test_a_hold_an_operator_makes_for_a_buyer_is_audited_as_the_operators(staff_api, staff, user):
    response = hold(staff_api, CarFactory(), buyerId=user.pk)

    [created] = AuditEvent.objects.filter(subject_type="reservation", subject_id=str(response.json()["id"]))
    assert (created.event_type, created.actor_id) == ("CREATED", staff.pk)
