import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from core.audit.models import AuditEvent
from core.metrics import CONSTRAINT_BACKSTOPS
from events.models import Event, Seat, SeatClaim, SeatHoldGroup
from tests.events.factories import make_event, overdue_hold, violations, write_hold

pytestmark = pytest.mark.django_db

EVENT_FIELDS = {
    "organisationId",
    "id",
    "name",
    "eventDate",
    "location",
    "totalSeats",
    "confirmedSeats",
    "heldSeats",
    "availableSeats",
    "salesOpen",
    "holdMinutes",
    "waitlistEnabled",
    "waitingCount",
    "queueEnabled",
    "admittedPerMinute",
    "admissionWindowMinutes",
    "createdAt",
}


def backstop_hits(constraint: str) -> float:
    return CONSTRAINT_BACKSTOPS.labels(constraint)._value.get()


def error_code(response) -> str:
    return response.json()["error"]["code"]


def reserve(api, event, **body):
    return api.post(f"/api/events/{event.pk}/seats/reserve", body, format="json")


def confirm(api, event, hold_group_id, **body):
    return api.post(f"/api/events/{event.pk}/seats/confirm", {"holdGroupId": str(hold_group_id), **body})


def release(api, event, hold_group_id, **body):
    return api.post(f"/api/events/{event.pk}/seats/release", {"holdGroupId": str(hold_group_id), **body})


def booked(api, event, codes) -> str:
    hold_id = reserve(api, event, seatCodes=codes).json()["holdGroupId"]
    return confirm(api, event, hold_id).json()["bookingGroupId"]


# --- POST /api/events, GET /api/events[/{id}] ---------------------------------------------------------


def test_staff_create_a_plain_event(staff_api):
    response = staff_api.post(
        "/api/events",
        {"name": "Coldplay Concert", "date": "2031-01-10T18:00:00Z", "location": "Mumbai", "totalSeats": 500},
    )

    assert response.status_code == 201
    body = response.json()
    assert set(body) == EVENT_FIELDS | {"eventId"}
    assert body["eventId"] == body["id"]
    assert (body["totalSeats"], body["availableSeats"], body["heldSeats"], body["confirmedSeats"]) == (500, 500, 0, 0)
    codes = list(Seat.objects.filter(event_id=body["id"]).order_by("number").values_list("code", flat=True))
    assert codes[:3] == ["S1", "S2", "S3"] and codes[-1] == "S500" and len(codes) == 500
    assert AuditEvent.objects.filter(subject_type="event", subject_id=str(body["id"]), event_type="CREATED").exists()


def test_staff_create_an_event_with_a_layout(staff_api):
    layout = {"sections": ["A", "B"], "rows": 3, "seatsPerRow": 4}
    response = staff_api.post(
        "/api/events", {"name": "Gala", "date": "2031-01-10T18:00:00Z", "location": "Pune", "layout": layout}
    )

    assert response.status_code == 201
    assert response.json()["totalSeats"] == 24
    seat = Seat.objects.get(event_id=response.json()["id"], code="B-3-4")
    assert (seat.section, seat.row, seat.number) == ("B", 3, 4)


@pytest.mark.parametrize(
    "body, field",
    [
        ({"date": "2031-01-10T18:00:00Z", "location": "x", "totalSeats": 5}, "name"),
        ({"name": "x", "date": "soon", "location": "x", "totalSeats": 5}, "date"),
        ({"name": "x", "date": "2031-01-10T18:00:00Z", "location": "x"}, "totalSeats"),
        ({"name": "x", "date": "2031-01-10T18:00:00Z", "location": "x", "totalSeats": 0}, "totalSeats"),
        ({"name": "x", "date": "2031-01-10T18:00:00Z", "location": "x", "totalSeats": 10**6}, "totalSeats"),
        ({"name": "x", "date": "2031-01-10T18:00:00Z", "location": "x", "totalSeats": 5, "colour": 1}, "colour"),
        ({"name": "x", "date": "2031-01-10T18:00:00Z", "location": 7, "totalSeats": 5}, "location"),
        (
            {
                "name": "x",
                "date": "2031-01-10T18:00:00Z",
                "location": "x",
                "layout": {"sections": [1], "rows": 1, "seatsPerRow": 2},
            },
            "layout",
        ),
        (
            {"name": "x", "date": "2031-01-10T18:00:00Z", "location": "x", "layout": {"sections": ["A-1"], "rows": 1}},
            "layout",
        ),
        (
            {
                "name": "x",
                "date": "2031-01-10T18:00:00Z",
                "location": "x",
                "totalSeats": 5,
                "layout": {"sections": ["A"], "rows": 2, "seatsPerRow": 2},
            },
            "totalSeats",
        ),
    ],
)
def test_invalid_event_creation_is_400_per_field(staff_api, body, field):
    response = staff_api.post("/api/events", body)

    assert response.status_code == 400
    assert error_code(response) == "validation_error"
    assert field in response.json()["error"]["details"]["fields"]


@pytest.mark.parametrize(
    ("zone", "date"),
    [
        ("America/New_York", "9999-12-31T23:00:00"),  # naive, read in New York: past year 9999 in UTC
        ("UTC", "9999-12-31T23:30:00Z"),  # stored, but unlistable east of UTC
        ("Asia/Kolkata", "0001-01-01T00:00:00"),  # naive, read in Kolkata: before year 1 in UTC
        ("UTC", "2000-01-01T00:00:00Z"),  # in the past
        ("UTC", "+11y"),  # more than ten years ahead
    ],
)
def test_an_event_date_in_the_past_or_far_ahead_is_400(staff_api, api, settings, zone, date):
    settings.TIME_ZONE = zone
    if date == "+11y":
        date = (timezone.now() + timedelta(days=11 * 365)).isoformat()
    with timezone.override(zone):
        response = staff_api.post("/api/events", {"name": "x", "date": date, "location": "x", "totalSeats": 1})
        listing = api.get("/api/events")

    assert response.status_code == 400, response.content
    assert error_code(response) == "validation_error"
    assert "date" in response.json()["error"]["details"]["fields"]
    assert not Event.objects.exists()
    assert listing.status_code == 200


def test_an_event_date_up_to_ten_years_ahead_is_accepted(staff_api):
    date = timezone.now() + timedelta(days=3650)

    response = staff_api.post("/api/events", {"name": "x", "date": date.isoformat(), "location": "x", "totalSeats": 1})

    assert response.status_code == 201, response.content
    assert Event.objects.get().event_date == date


def test_only_staff_create_events(api):
    response = api.post("/api/events", {"name": "x", "date": "2031-01-10T18:00:00Z", "location": "x", "totalSeats": 5})

    assert response.status_code == 403 and error_code(response) == "forbidden"


def test_event_detail_has_counts_that_add_up(api, client_for, other_user):
    event = make_event(total_seats=10)
    booked(api, event, ["S1", "S2"])
    reserve(client_for(other_user), event, seatCodes=["S3", "S4", "S5"])
    overdue_hold(event, ["S6"])

    body = api.get(f"/api/events/{event.pk}").json()

    assert set(body) == EVENT_FIELDS | {"asOf"}  # asOf: when the counts were read
    assert (body["confirmedSeats"], body["heldSeats"], body["availableSeats"]) == (2, 3, 5)
    assert body["eventDate"] and body["name"] == "Coldplay Concert"
    assert violations(event) == []


def test_missing_event_is_404(api):
    response = api.get("/api/events/999999")

    assert response.status_code == 404 and error_code(response) == "not_found"


def test_event_list_filters(api):
    now = timezone.now()
    past = make_event(total_seats=1, event_date=now - timedelta(days=3))
    soon = make_event(total_seats=1, event_date=now + timedelta(days=1))
    later = make_event(total_seats=1, event_date=now + timedelta(days=10))

    def ids(query):
        response = api.get(f"/api/events{query}")
        assert response.status_code == 200
        return [e["id"] for e in response.json()["results"]]

    assert ids("") == [past.pk, soon.pk, later.pk]
    assert ids("?upcoming=true") == [soon.pk, later.pk]
    assert ids("?upcoming=false") == [past.pk]
    day = (now + timedelta(days=5)).date().isoformat()
    assert ids(f"?dateFrom={day}") == [later.pk]
    assert ids(f"?dateTo={day}") == [past.pk, soon.pk]
    assert set(api.get("/api/events").json()) == {"results", "count", "page", "limit"}


@pytest.mark.parametrize("query", ["?upcoming=yes", "?dateFrom=tomorrow", "?limit=1000"])
def test_bad_event_filters_are_400(api, query):
    assert api.get(f"/api/events{query}").status_code == 400


def test_events_need_credentials(client_for):
    assert client_for(None).get("/api/events").status_code == 401


# --- GET /api/events/{id}/seats -------------------------------------------------------------------------


def test_seat_map_shows_each_status(api, user):
    event = make_event(layout=(("A",), 1, 4))
    booked(api, event, ["A-1-1"])
    reserve(api, event, seatCodes=["A-1-2"])
    overdue_hold(event, ["A-1-3"])

    body = api.get(f"/api/events/{event.pk}/seats").json()

    assert [(s["code"], s["status"]) for s in body["seats"]] == [
        ("A-1-1", "BOOKED"),
        ("A-1-2", "HELD"),
        ("A-1-3", "AVAILABLE"),
        ("A-1-4", "AVAILABLE"),
    ]
    assert body["seats"][0] == {"code": "A-1-1", "section": "A", "row": 1, "number": 1, "status": "BOOKED"}
    assert (body["totalSeats"], body["confirmedSeats"], body["heldSeats"], body["availableSeats"]) == (4, 1, 1, 2)


def test_seat_map_of_missing_event_is_404(api):
    assert api.get("/api/events/999999/seats").status_code == 404


# --- POST /api/events/{id}/seats/reserve ------------------------------------------------------------------


def test_reserve_seats_by_code(api, user):
    event = make_event()

    response = reserve(api, event, seatCodes=["S1", "S2", "S3"])

    assert response.status_code == 201
    body = response.json()
    assert body["seatCodes"] == ["S1", "S2", "S3"]
    assert body["expiresIn"] == 300 and body["state"] == "HELD" and body["userId"] == user.pk
    group = SeatHoldGroup.objects.get(pk=body["holdGroupId"])
    assert group.expires_at - group.created_at == timedelta(minutes=5)
    assert SeatClaim.objects.filter(group=group, state="HELD").count() == 3
    event_ = AuditEvent.objects.get(subject_type="seat_hold_group", subject_id=str(group.pk))
    assert (event_.event_type, event_.to_state, event_.actor_id) == ("CREATED", "HELD", user.pk)


def test_hold_duration_is_the_events_setting(api):
    event = make_event(hold_minutes=12)

    body = reserve(api, event, seatCodes=["S1"]).json()

    assert body["expiresIn"] == 720


def test_reserve_best_available_adjacent_in_one_row(api):
    event = make_event(layout=(("A",), 2, 5))
    write_hold(event, ["A-1-2"], state="CONFIRMED")

    body = reserve(api, event, quantity=3).json()

    assert body["seatCodes"] == ["A-1-3", "A-1-4", "A-1-5"]


def test_best_available_falls_back_to_scattered_seats(api):
    event = make_event(layout=(("A",), 2, 3))
    write_hold(event, ["A-1-2", "A-2-2"], state="CONFIRMED")

    body = reserve(api, event, quantity=3).json()

    assert body["seatCodes"] == ["A-1-1", "A-1-3", "A-2-1"]


def test_best_available_beyond_what_is_free_is_409(api):
    event = make_event(total_seats=3)
    write_hold(event, ["S1"], state="CONFIRMED")

    response = reserve(api, event, quantity=3)

    assert response.status_code == 409 and error_code(response) == "seats_unavailable"
    assert response.json()["error"]["details"]["available"] == 2


def test_a_taken_seat_refuses_the_whole_request_and_lists_the_taken_seats(api, client_for, other_user):
    event = make_event()
    reserve(client_for(other_user), event, seatCodes=["S2", "S4"])

    response = reserve(api, event, seatCodes=["S1", "S2", "S3", "S4"])

    assert response.status_code == 409
    assert error_code(response) == "seats_unavailable"
    assert response.json()["error"]["details"] == {"seatCodes": ["S2", "S4"]}
    assert not SeatClaim.objects.filter(seat__code__in=["S1", "S3"]).exists()


def test_an_overdue_hold_never_blocks_and_is_expired_on_the_spot(api):
    event = make_event()
    overdue = overdue_hold(event, ["S1", "S2"])

    response = reserve(api, event, seatCodes=["S2"])

    assert response.status_code == 201
    overdue.refresh_from_db()
    assert overdue.state == "EXPIRED"
    assert set(overdue.claims.values_list("state", flat=True)) == {"EXPIRED"}
    assert AuditEvent.objects.filter(subject_id=str(overdue.pk), event_type="EXPIRED").count() == 1


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "seatCodes"),
        ({"seatCodes": []}, "seatCodes"),
        ({"seatCodes": "S1"}, "seatCodes"),
        ({"seatCodes": [f"S{i}" for i in range(51)]}, "seatCodes"),
        ({"seatCodes": ["S1", "S1"]}, "seatCodes"),
        ({"seatCodes": ["S1"], "quantity": 1}, "seatCodes"),
        ({"quantity": 0}, "quantity"),
        ({"quantity": 51}, "quantity"),
        ({"seatCodes": ["S1"], "userId": "me"}, "userId"),
        ({"seatCodes": ["S1"], "colour": "red"}, "colour"),
        ({"seatCodes": ["S1", "NOPE"]}, "seatCodes"),
    ],
)
def test_invalid_reserve_requests_are_400_per_field(api, body, field):
    response = reserve(api, make_event(), **body)

    assert response.status_code == 400
    assert error_code(response) == "validation_error"
    assert field in response.json()["error"]["details"]["fields"]
    assert not SeatClaim.objects.exists()


def test_reserve_on_a_missing_event_is_404(api):
    response = api.post("/api/events/999999/seats/reserve", {"seatCodes": ["S1"]})

    assert response.status_code == 404


def test_reserve_when_sales_are_closed_is_409(api):
    response = reserve(api, make_event(sales_open=False), seatCodes=["S1"])

    assert response.status_code == 409 and error_code(response) == "sales_closed"


def test_reserve_for_a_past_event_is_409(api):
    response = reserve(api, make_event(event_date=timezone.now() - timedelta(hours=1)), seatCodes=["S1"])

    assert response.status_code == 409 and error_code(response) == "sales_closed"


def test_a_user_cannot_hold_for_someone_else(api, other_user):
    response = reserve(api, make_event(), seatCodes=["S1"], userId=other_user.pk)

    assert response.status_code == 403 and error_code(response) == "forbidden"


def test_staff_hold_on_behalf_of_a_user(staff_api, user):
    response = reserve(staff_api, make_event(), seatCodes=["S1"], userId=user.pk)

    assert response.status_code == 201 and response.json()["userId"] == user.pk


def test_reserve_is_idempotent(api):
    event = make_event()

    first = reserve(api, event, seatCodes=["S1"], requestId="buy-1")
    again = reserve(api, event, seatCodes=["S1"], requestId="buy-1")

    assert first.status_code == again.status_code == 201
    assert again["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert SeatHoldGroup.objects.count() == 1
    assert SeatHoldGroup.objects.get().idempotency_key == "buy-1"


# --- confirm ----------------------------------------------------------------------------------------------


def test_confirm_a_hold(api, user):
    event = make_event()
    hold_id = reserve(api, event, seatCodes=["S1", "S2"]).json()["holdGroupId"]

    response = confirm(api, event, hold_id)

    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True and body["seatCodes"] == ["S1", "S2"]
    assert body["bookingGroupId"] != hold_id
    group = SeatHoldGroup.objects.get(pk=hold_id)
    assert group.state == "CONFIRMED" and str(group.booking_group_id) == body["bookingGroupId"]
    assert api.get(f"/api/events/{event.pk}").json()["confirmedSeats"] == 2
    assert violations(event) == []


def test_confirm_of_someone_elses_hold_is_403(api, client_for, other_user):
    event = make_event()
    hold_id = reserve(client_for(other_user), event, seatCodes=["S1"]).json()["holdGroupId"]

    response = confirm(api, event, hold_id)

    assert response.status_code == 403 and error_code(response) == "not_owner"


def test_confirm_under_another_event_is_400(api):
    event, other = make_event(), make_event()
    hold_id = reserve(api, event, seatCodes=["S1"]).json()["holdGroupId"]

    response = confirm(api, other, hold_id)

    assert response.status_code == 400 and error_code(response) == "event_mismatch"


def test_confirm_of_an_overdue_hold_is_410_and_the_expiry_sticks(api, user):
    event = make_event()
    group = overdue_hold(event, ["S1"], user=user)

    response = confirm(api, event, group.pk)

    assert response.status_code == 410 and error_code(response) == "hold_expired"
    group.refresh_from_db()
    assert group.state == "EXPIRED"
    assert confirm(api, event, group.pk).status_code == 410


def test_confirm_twice_is_409(api):
    event = make_event()
    hold_id = reserve(api, event, seatCodes=["S1"]).json()["holdGroupId"]
    confirm(api, event, hold_id)

    response = confirm(api, event, hold_id)

    assert response.status_code == 409 and error_code(response) == "hold_not_active"


def test_a_drifted_counter_makes_cancel_409_not_500_and_writes_nothing(api, user):
    """Defence in depth: were the booked-seat counter to drift below the confirmed claims (a write
    outside the services), ``event_confirmed_within_total`` refuses the cancel's move; the request is
    a clean 409, counted as a backstop, and the booking stays as it was."""
    event = make_event()
    booking_id = booked(api, event, ["S1", "S2"])
    Event.objects.filter(pk=event.pk).update(confirmed_seats=0)
    before = backstop_hits("event_confirmed_within_total")

    response = api.post(f"/api/events/bookings/{booking_id}/cancel", {}, format="json")

    assert response.status_code == 409 and error_code(response) == "seat_count_conflict"
    assert backstop_hits("event_confirmed_within_total") == before + 1
    group = SeatHoldGroup.objects.get(booking_group_id=booking_id)
    assert group.state == "CONFIRMED" and set(group.claims.values_list("state", flat=True)) == {"CONFIRMED"}
    assert not AuditEvent.objects.filter(subject_id=str(group.pk), event_type="CANCELLED").exists()


def test_a_drifted_counter_makes_confirm_409_not_500_and_writes_nothing(api, user):
    event = make_event(total_seats=3)
    hold_id = reserve(api, event, seatCodes=["S1", "S2"]).json()["holdGroupId"]
    Event.objects.filter(pk=event.pk).update(confirmed_seats=3)  # counter says sold out; claims say not
    before = backstop_hits("event_confirmed_within_total")

    response = confirm(api, event, hold_id)

    assert response.status_code == 409 and error_code(response) == "seat_count_conflict"
    assert backstop_hits("event_confirmed_within_total") == before + 1
    group = SeatHoldGroup.objects.get(pk=hold_id)
    assert group.state == "HELD" and group.booking_group_id is None
    event.refresh_from_db()
    assert event.confirmed_seats == 3


@pytest.mark.parametrize("hold_id", [uuid.uuid4(), "not-a-uuid"])
def test_confirm_of_a_missing_hold(api, hold_id):
    response = confirm(api, make_event(), hold_id)

    assert response.status_code == (404 if isinstance(hold_id, uuid.UUID) else 400)


def test_confirm_on_a_missing_event_is_404(api):
    assert api.post("/api/events/999999/seats/confirm", {"holdGroupId": str(uuid.uuid4())}).status_code == 404


# --- release ----------------------------------------------------------------------------------------------


def test_release_a_hold_frees_its_seats(api, client_for, other_user):
    event = make_event()
    hold_id = reserve(api, event, seatCodes=["S1"]).json()["holdGroupId"]

    response = release(api, event, hold_id)

    assert response.status_code == 200 and response.json()["released"] is True
    assert SeatHoldGroup.objects.get(pk=hold_id).state == "RELEASED"
    assert reserve(client_for(other_user), event, seatCodes=["S1"]).status_code == 201
    assert AuditEvent.objects.filter(subject_id=hold_id, event_type="RELEASED").count() == 1


def test_release_of_someone_elses_hold_is_403(api, client_for, other_user):
    event = make_event()
    hold_id = reserve(client_for(other_user), event, seatCodes=["S1"]).json()["holdGroupId"]

    assert release(api, event, hold_id).status_code == 403


def test_release_of_a_confirmed_hold_is_409(api):
    event = make_event()
    hold_id = reserve(api, event, seatCodes=["S1"]).json()["holdGroupId"]
    confirm(api, event, hold_id)

    response = release(api, event, hold_id)

    assert response.status_code == 409 and error_code(response) == "hold_not_active"


def test_release_of_an_overdue_hold_is_409_expired(api, user):
    event = make_event()
    group = overdue_hold(event, ["S1"], user=user)

    response = release(api, event, group.pk)

    assert response.status_code == 409
    assert response.json()["error"]["details"] == {"state": "EXPIRED"}


def test_release_of_a_missing_hold_is_404(api):
    assert release(api, make_event(), uuid.uuid4()).status_code == 404


# --- bookings -------------------------------------------------------------------------------------------


def test_view_a_booking(api, user):
    event = make_event()
    booking_id = booked(api, event, ["S2", "S1"])

    response = api.get(f"/api/events/bookings/{booking_id}")

    assert response.status_code == 200
    rows = response.json()
    assert [r["seatCode"] for r in rows] == ["S1", "S2"]
    assert rows[0]["status"] == "CONFIRMED" and rows[0]["userId"] == user.pk
    assert rows[0]["name"] == "Coldplay Concert" and rows[0]["eventDate"] and rows[0]["bookingGroupId"] == booking_id


def test_someone_elses_booking_is_403_and_staff_see_it(api, client_for, other_user, staff_api):
    booking_id = booked(client_for(other_user), make_event(), ["S1"])

    assert api.get(f"/api/events/bookings/{booking_id}").status_code == 403
    assert staff_api.get(f"/api/events/bookings/{booking_id}").status_code == 200


def test_missing_booking_is_404(api):
    assert api.get(f"/api/events/bookings/{uuid.uuid4()}").status_code == 404
    assert api.get("/api/events/bookings/not-a-uuid").status_code == 404


def test_cancel_a_booking_frees_its_seats_and_keeps_the_rows(api, client_for, other_user):
    event = make_event()
    booking_id = booked(api, event, ["S1", "S2"])

    response = api.post(f"/api/events/bookings/{booking_id}/cancel", {"reason": "ill"})

    assert response.status_code == 200 and response.json()["cancelled"] is True
    group = SeatHoldGroup.objects.get(booking_group_id=booking_id)
    assert group.state == "CANCELLED" and group.cancelled_at is not None
    assert set(group.claims.values_list("state", flat=True)) == {"CANCELLED"}
    assert api.get(f"/api/events/{event.pk}").json()["availableSeats"] == 10
    assert reserve(client_for(other_user), event, seatCodes=["S1", "S2"]).status_code == 201
    cancelled = AuditEvent.objects.get(subject_id=str(group.pk), event_type="CANCELLED")
    assert (cancelled.from_state, cancelled.to_state, cancelled.metadata["reason"]) == ("CONFIRMED", "CANCELLED", "ill")
    assert violations(event) == []


def test_cancel_twice_is_409(api):
    booking_id = booked(api, make_event(), ["S1"])
    api.post(f"/api/events/bookings/{booking_id}/cancel")

    response = api.post(f"/api/events/bookings/{booking_id}/cancel")

    assert response.status_code == 409 and error_code(response) == "booking_not_active"


def test_cancel_of_someone_elses_booking_is_403(api, client_for, other_user):
    booking_id = booked(client_for(other_user), make_event(), ["S1"])

    assert api.post(f"/api/events/bookings/{booking_id}/cancel").status_code == 403


def test_staff_cancel_any_booking(staff_api, client_for, other_user):
    booking_id = booked(client_for(other_user), make_event(), ["S1"])

    assert staff_api.post(f"/api/events/bookings/{booking_id}/cancel").status_code == 200


def test_cancel_of_a_missing_booking_is_404(api):
    assert api.post(f"/api/events/bookings/{uuid.uuid4()}/cancel").status_code == 404


def test_cancel_refuses_unknown_fields(api):
    booking_id = booked(api, make_event(), ["S1"])

    assert api.post(f"/api/events/bookings/{booking_id}/cancel", {"why": "x"}).status_code == 400


# --- holds and trails -----------------------------------------------------------------------------------


def test_view_a_hold_and_its_trail(api, client_for, other_user):
    event = make_event()
    hold_id = reserve(api, event, seatCodes=["S1"]).json()["holdGroupId"]
    booking_id = confirm(api, event, hold_id).json()["bookingGroupId"]
    api.post(f"/api/events/bookings/{booking_id}/cancel")

    hold = api.get(f"/api/events/holds/{hold_id}").json()
    trail = api.get(f"/api/events/holds/{hold_id}/events").json()["results"]
    booking_trail = api.get(f"/api/events/bookings/{booking_id}/events").json()["results"]

    assert hold["state"] == "CANCELLED" and hold["bookingGroupId"] == booking_id and hold["expiresIn"] == 0
    assert [(e["eventType"], e["fromState"], e["toState"]) for e in trail] == [
        ("CREATED", "", "HELD"),
        ("CONFIRMED", "HELD", "CONFIRMED"),
        ("CANCELLED", "CONFIRMED", "CANCELLED"),
    ]
    assert booking_trail == trail
    assert client_for(other_user).get(f"/api/events/holds/{hold_id}/events").status_code == 403


def test_an_overdue_hold_reads_as_expired(api, user):
    group = overdue_hold(make_event(), ["S1"], user=user)

    assert api.get(f"/api/events/holds/{group.pk}").json()["state"] == "EXPIRED"


def test_event_json_is_camel_case(staff_api):
    event = make_event()

    assert set(staff_api.get(f"/api/events/{event.pk}").json()) == EVENT_FIELDS | {"asOf"}
    assert Event.objects.get(pk=event.pk).confirmed_seats == 0


# --- the cap on the seats one user holds on an event (docs/contract.md §2.7) ------------------------


def limit_details(response) -> dict:
    assert response.status_code == 409, response.content
    assert response.json()["error"]["code"] == "limit_reached"
    return response.json()["error"]["details"]


@pytest.mark.parametrize("second", [{"seatCodes": ["S9", "S10", "S11"]}, {"quantity": 3}])
def test_a_user_holds_at_most_ten_seats_of_an_event_at_once(api, user, second):
    event = make_event(total_seats=20)
    assert reserve(api, event, seatCodes=[f"S{n}" for n in range(1, 9)]).status_code == 201

    response = reserve(api, event, **second)

    assert limit_details(response) == {"rule": "held_seats_per_user_per_event", "limit": 10, "eventId": event.pk}
    assert SeatHoldGroup.objects.filter(event=event, user=user).count() == 1
    assert reserve(api, event, quantity=2).status_code == 201  # up to the limit exactly


def test_one_hold_over_the_cap_is_refused_whole(api):
    event = make_event(total_seats=20)

    response = reserve(api, event, seatCodes=[f"S{n}" for n in range(1, 12)])

    assert limit_details(response)["limit"] == 10
    assert not SeatHoldGroup.objects.filter(event=event).exists()


def test_the_seat_cap_is_per_event_and_counts_only_live_holds(api, user):
    event, other = make_event(total_seats=20), make_event(total_seats=20)
    write_hold(event, ["S1", "S2", "S3"], user=user, state="CONFIRMED")  # bought, not held
    overdue_hold(event, ["S4", "S5", "S6"], user=user)  # overdue: free
    write_hold(other, [f"S{n}" for n in range(1, 11)], user=user)  # another event

    assert reserve(api, event, seatCodes=[f"S{n}" for n in range(4, 14)]).status_code == 201
    assert limit_details(reserve(api, event, seatCodes=["S14"]))["limit"] == 10


def test_released_seats_make_room(api):
    event = make_event(total_seats=20)
    held = reserve(api, event, quantity=10).json()["holdGroupId"]

    assert release(api, event, held).status_code == 200

    assert reserve(api, event, quantity=10).status_code == 201


def test_operators_are_exempt_from_the_seat_cap(staff_api, user):
    event = make_event(total_seats=30)

    assert reserve(staff_api, event, quantity=12).status_code == 201
    assert reserve(staff_api, event, quantity=12, userId=user.pk).status_code == 201
