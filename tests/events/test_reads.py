"""The reads everyone polls when sales open: an event's counts and its seat map (issue "Fast when sales
open", section 3). Round trips are pinned here; speed is measured by bench/, never in a test."""

from datetime import timedelta

import pytest
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from events import selectors
from events.api import views
from events.api.serializers import SeatMapOut
from events.models import Seat
from tests.conftest import Clock
from tests.events.factories import EventFactory, make_event, overdue_hold, write_hold

pytestmark = pytest.mark.django_db


@pytest.fixture
def clock(monkeypatch):
    return Clock.patched_into(views, monkeypatch)


def counts(body) -> tuple[int, int, int, int]:
    return body["totalSeats"], body["confirmedSeats"], body["heldSeats"], body["availableSeats"]


def old_seat_map(event) -> dict:
    """The seat map as the view built it before it came from one statement: the shape clients know."""
    seats = selectors.seat_map(event=event, now=timezone.now())
    held = sum(s["status"] == "HELD" for s in seats)
    booked = sum(s["status"] == "BOOKED" for s in seats)
    return SeatMapOut(
        {
            "eventId": event.pk,
            "totalSeats": len(seats),
            "confirmedSeats": booked,
            "heldSeats": held,
            "availableSeats": len(seats) - held - booked,
            "seats": seats,
            "asOf": timezone.now(),
        }
    ).data


# --- counts ------------------------------------------------------------------------------------------


def test_counts_at_zero_percent(api):
    event = make_event(total_seats=20)

    body = api.get(f"/api/events/{event.pk}").json()

    assert counts(body) == (20, 0, 0, 20)
    assert counts(api.get(f"/api/events/{event.pk}/seats").json()) == (20, 0, 0, 20)


def test_counts_with_holds_confirms_and_overdue_holds_add_up_in_both_reads(api, user):
    event = make_event(total_seats=12)
    write_hold(event, ["S1", "S2", "S3"], state="CONFIRMED", user=user)
    write_hold(event, ["S4", "S5"], user=user)
    overdue_hold(event, ["S6", "S7"])  # not flipped to EXPIRED yet: available all the same
    write_hold(event, ["S8"], state="RELEASED")

    detail = api.get(f"/api/events/{event.pk}").json()
    seat_map = api.get(f"/api/events/{event.pk}/seats").json()

    assert counts(detail) == counts(seat_map) == (12, 3, 2, 7)
    assert [s["status"] for s in seat_map["seats"]][:8] == ["BOOKED"] * 3 + ["HELD"] * 2 + ["AVAILABLE"] * 3


def test_every_count_read_says_as_of_when(api):
    event = make_event(total_seats=3)
    before = timezone.now()

    detail = api.get(f"/api/events/{event.pk}").json()
    seat_map = api.get(f"/api/events/{event.pk}/seats").json()

    assert before <= parse_datetime(detail["asOf"]) <= parse_datetime(seat_map["asOf"]) <= timezone.now()


def test_a_counts_read_is_served_for_less_than_a_second_then_read_again(api, user, clock, recent_reads):
    event = make_event(total_seats=10)
    first = api.get(f"/api/events/{event.pk}").json()
    write_hold(event, ["S1", "S2"], user=user)

    clock.advance(0.999)
    kept = api.get(f"/api/events/{event.pk}").json()
    clock.advance(0.001)
    fresh = api.get(f"/api/events/{event.pk}").json()

    assert kept == first and kept["heldSeats"] == 0
    assert fresh["heldSeats"] == 2 and counts(fresh) == (10, 0, 2, 8)
    assert parse_datetime(fresh["asOf"]) == clock.moment


def test_a_kept_count_is_what_the_database_said_at_as_of(api, user, clock, recent_reads):
    """A hold live at ``asOf`` is held in the kept value even once it lapses; one overdue at ``asOf``
    was counted available from the start."""
    event = make_event(total_seats=4)
    write_hold(event, ["S1"], user=user, expires_at=clock.moment + timedelta(milliseconds=500))
    write_hold(event, ["S2"], user=user, created_at=clock.moment - timedelta(minutes=5), expires_at=clock.moment)

    at_as_of = api.get(f"/api/events/{event.pk}").json()
    clock.advance(0.6)  # S1 has lapsed; the kept value is still the one read at asOf
    kept = api.get(f"/api/events/{event.pk}").json()
    clock.advance(0.4)
    fresh = api.get(f"/api/events/{event.pk}").json()

    assert counts(at_as_of) == counts(kept) == (4, 0, 1, 3) and kept["asOf"] == at_as_of["asOf"]
    assert counts(fresh) == (4, 0, 0, 4)


def test_a_seat_map_is_kept_for_less_than_a_second(api, user, clock, recent_reads):
    event = make_event(total_seats=3)
    first = api.get(f"/api/events/{event.pk}/seats").json()
    write_hold(event, ["S2"], user=user)

    clock.advance(0.5)
    kept = api.get(f"/api/events/{event.pk}/seats").json()
    clock.advance(0.5)
    fresh = api.get(f"/api/events/{event.pk}/seats").json()

    assert kept == first and [s["status"] for s in kept["seats"]] == ["AVAILABLE"] * 3
    assert [s["status"] for s in fresh["seats"]] == ["AVAILABLE", "HELD", "AVAILABLE"]
    assert parse_datetime(fresh["asOf"]) == clock.moment


def test_a_missing_event_is_404_in_both_reads(api, recent_reads):
    assert api.get("/api/events/999999").status_code == 404
    assert api.get("/api/events/999999/seats").status_code == 404


# --- the seat map's shape -----------------------------------------------------------------------------


def test_the_seat_map_is_the_shape_it_always_was(api, user):
    event = make_event(layout=(("B", "A", "VIP"), 3, 12))  # sections in layout order, rows 1-3, 1-12 in each
    write_hold(event, ["A-1-3", "B-2-10"], state="CONFIRMED", user=user)
    write_hold(event, ["VIP-3-12"], user=user)
    overdue_hold(event, ["A-1-4"])

    body = api.get(f"/api/events/{event.pk}/seats").json()

    expected = old_seat_map(event)
    assert list(body) == list(expected) and body["seats"] == expected["seats"]
    assert counts(body) == counts(expected) == (108, 2, 1, 105)
    assert body["seats"][0] == {"code": "A-1-1", "section": "A", "row": 1, "number": 1, "status": "AVAILABLE"}


def test_the_seat_map_escapes_any_code_as_json_would(api, user):
    event = EventFactory(total_seats=2)
    Seat.objects.create(event=event, code='Q"\\é\u0001', section="", row=1, number=1)
    Seat.objects.create(event=event, code="S2", section="", row=1, number=2)

    response = api.get(f"/api/events/{event.pk}/seats")

    assert response["Content-Type"] == "application/json"
    assert response.json()["seats"] == old_seat_map(event)["seats"]
    assert response.json()["seats"][0]["code"] == 'Q"\\é\u0001'


def test_an_event_without_seats_has_an_empty_seat_map(api):
    event = EventFactory(total_seats=1)  # written directly: no seats generated

    body = api.get(f"/api/events/{event.pk}/seats").json()

    assert counts(body) == (0, 0, 0, 0) and body["seats"] == []


def test_the_browsable_api_shows_the_seat_map_too(client, staff):
    client.force_login(staff)
    event = make_event(total_seats=2)

    response = client.get(f"/api/events/{event.pk}/seats", HTTP_ACCEPT="text/html")

    assert response.status_code == 200 and b"S2" in response.content


# --- round trips --------------------------------------------------------------------------------------


def test_the_counts_are_one_statement_and_none_while_kept(signed_in, user, django_assert_num_queries, recent_reads):
    event = make_event(total_seats=50)
    write_hold(event, ["S1", "S2"], state="CONFIRMED", user=user)
    overdue_hold(event, ["S3"])

    with django_assert_num_queries(1):
        assert signed_in.get(f"/api/events/{event.pk}").status_code == 200
    with django_assert_num_queries(0):
        assert signed_in.get(f"/api/events/{event.pk}").status_code == 200


def test_the_seat_map_is_one_statement_and_none_while_kept(
    signed_in, user, clock, django_assert_num_queries, recent_reads
):
    event = make_event(layout=(("A", "B"), 10, 10))
    write_hold(event, ["A-1-1", "B-2-2"], state="CONFIRMED", user=user)
    write_hold(event, ["A-3-3"], user=user)

    with django_assert_num_queries(2):  # the statuses, and the layout (read once per process)
        assert signed_in.get(f"/api/events/{event.pk}/seats").status_code == 200
    with django_assert_num_queries(0):
        assert signed_in.get(f"/api/events/{event.pk}/seats").status_code == 200
    clock.advance(1)
    with django_assert_num_queries(1):
        assert counts(signed_in.get(f"/api/events/{event.pk}/seats").json()) == (200, 2, 1, 197)


def test_the_schema_documents_as_of(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()["components"]["schemas"]

    assert "asOf" in schema["EventCountsOut"]["properties"] and "asOf" in schema["SeatMapOut"]["properties"]
    assert "asOf" not in schema["EventOut"]["properties"]
