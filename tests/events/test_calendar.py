"""GET /api/events/bookings/{bookingGroupId}/calendar: a seat booking as an RFC 5545 file (docs/contract.md §3.8)."""

from datetime import UTC, timedelta

from django.utils import timezone

from events.services import events, seat_holds
from tests.calendars import read_one
from tests.events.factories import make_event
from tests.factories import UserFactory


def _booking(event, user, codes):
    held = seat_holds.seat_hold(event_id=event.pk, user=user, now=timezone.now(), seat_codes=codes)
    return seat_holds.seat_hold_confirm(event_id=event.pk, hold_group_id=held.pk, user=user, now=timezone.now())


def test_the_booked_seats_are_one_event_lasting_the_configured_duration(api, user, settings):
    settings.CALENDAR_EVENT_DURATION_MINUTES = 150
    event = make_event(layout=(["A"], 2, 3), name="Jazz night", location="Blue Note, Mumbai; gate 3")
    group = _booking(event, user, ["A-2-1", "A-1-3"])

    response = api.get(f"/api/events/bookings/{group.booking_group_id}/calendar", HTTP_ACCEPT="text/calendar")

    assert response.status_code == 200
    assert response["Content-Type"] == "text/calendar; charset=utf-8"
    entry = read_one(response.content)
    assert entry.uid == f"seat-booking-{group.booking_group_id}@booking-site"
    assert entry.start == event.event_date.astimezone(UTC).replace(microsecond=0)  # RFC 5545 has seconds
    assert entry.end == entry.start + timedelta(minutes=150)
    assert (entry.summary, entry.location) == ("Jazz night", "Blue Note, Mumbai; gate 3")
    assert entry.description == f"Booking {group.booking_group_id}\nSeats (2): A-1-3, A-2-1"
    assert (entry.status, entry.sequence) == ("CONFIRMED", 1)  # created, confirmed


def test_moving_the_event_moves_the_entry_and_raises_its_sequence(api, user, staff):
    event = make_event()
    group = _booking(event, user, ["S1"])
    url = f"/api/events/bookings/{group.booking_group_id}/calendar"
    before = read_one(api.get(url).content)

    events.event_update_details(event_id=event.pk, actor=staff, now=timezone.now(), hold_minutes=7)
    unchanged = read_one(api.get(url).content)
    later = event.event_date + timedelta(days=1)
    events.event_update_details(event_id=event.pk, actor=staff, now=timezone.now(), event_date=later)
    moved = read_one(api.get(url).content)
    seat_holds.seat_booking_cancel(booking_group_id=group.booking_group_id, user=user, now=timezone.now())
    cancelled = read_one(api.get(url).content)

    assert unchanged == before  # the hold time is nothing a calendar shows
    assert moved.start == later.astimezone(UTC).replace(microsecond=0)
    assert before.sequence < moved.sequence < cancelled.sequence
    assert before.uid == moved.uid == cancelled.uid
    assert cancelled.status == "CANCELLED"


def test_its_owner_and_operators_may_download_it_and_no_one_else(client_for, user, staff):
    group = _booking(make_event(), user, ["S1"])
    url = f"/api/events/bookings/{group.booking_group_id}/calendar"

    assert client_for(staff).get(url).status_code == 200
    stranger = client_for(UserFactory()).get(url, HTTP_ACCEPT="text/calendar")
    assert (stranger.status_code, stranger.json()["error"]["code"]) == (403, "not_owner")
    anonymous = client_for(None).get(url, HTTP_ACCEPT="text/calendar")
    assert (anonymous.status_code, anonymous["Content-Type"]) == (401, "application/json")


def test_a_hold_has_no_booking_id_and_so_no_calendar_file(api, user):
    event = make_event()
    held = seat_holds.seat_hold(event_id=event.pk, user=user, now=timezone.now(), seat_codes=["S1"])

    response = api.get(f"/api/events/bookings/{held.pk}/calendar", HTTP_ACCEPT="text/calendar")

    assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found")
