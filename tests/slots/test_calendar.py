"""GET /api/bookings/{id}/calendar: a slot booking or an appointment as an RFC 5545 file (docs/contract.md §3.8)."""

from datetime import UTC, timedelta

import pytest
from django.utils import timezone

from slots.models import SlotBooking
from slots.services import bookings, slots
from tests.calendars import read_one
from tests.factories import UserFactory
from tests.slots.factories import SlotBookingFactory, SlotFactory


def _booked(guest, **slot_fields):
    """A booking made by the service, so its audit trail is the one production writes."""
    slot = SlotFactory(**slot_fields)
    return bookings.slot_booking_create(
        slot_id=slot.pk, guest=guest, now=timezone.now(), metadata={"location": "Room 4, floor 2; east wing"}
    )


def test_a_confirmed_booking_is_one_event_in_utc_with_what_the_guest_needs(api, user):
    booking = _booked(user, title="Check-up")

    response = api.get(f"/api/bookings/{booking.pk}/calendar", HTTP_ACCEPT="text/calendar")

    assert response.status_code == 200
    assert response["Content-Type"] == "text/calendar; charset=utf-8"
    assert response.content.startswith(b"BEGIN:VCALENDAR\r\n")  # CRLF lines (RFC 5545 §3.1)
    event = read_one(response.content)
    assert event.uid == f"slot-booking-{booking.pk}@booking-site"
    assert (event.start, event.end) == (booking.start.astimezone(UTC), booking.end.astimezone(UTC))
    assert b"DTSTART:" + booking.start.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ").encode() in response.content
    host = booking.slot.host
    assert event.summary == f"Check-up with {host.name}"
    assert event.location == "Room 4, floor 2; east wing"  # the booking's metadata.location
    assert f"Booking {booking.pk}" in event.description
    assert "Seats: 1" in event.description
    assert host.email in event.description
    assert (event.status, event.sequence) == ("CONFIRMED", 0)


def test_long_names_and_locations_with_commas_semicolons_and_newlines_read_back_exactly(api, user):
    title = "Consultation, follow-up; bring the X-ray\nand the referral letter " + "é" * 80
    booking = _booked(user, title=title)
    location = "Clinic 3, Building B; Floor 2\nRing twice, " + "long " * 30
    SlotBooking.objects.filter(pk=booking.pk).update(metadata={"location": location})

    response = api.get(f"/api/bookings/{booking.pk}/calendar")

    event = read_one(response.content)  # both parsers agree
    assert event.summary == f"{title} with {booking.slot.host.name}"
    assert event.location == location
    lines = response.content.split(b"\r\n")
    assert max(len(line) for line in lines) <= 75  # folded at 75 octets (RFC 5545 §3.1), é is two
    assert any(line.startswith(b" ") for line in lines)
    assert b"Clinic 3\\, Building B\\; Floor 2\\nRing twice\\," in response.content.replace(b"\r\n ", b"")


def test_the_uid_stays_and_the_sequence_grows_with_each_change(api, user, staff):
    booking = _booked(user)
    first = read_one(api.get(f"/api/bookings/{booking.pk}/calendar").content)

    slots.slot_update_details(
        slot_id=booking.slot_id, title="Renamed", specialization="", actor=staff, now=timezone.now()
    )
    renamed = read_one(api.get(f"/api/bookings/{booking.pk}/calendar").content)
    api.post(f"/api/bookings/{booking.pk}/cancel", {"reason": "ill"}, format="json")
    cancelled = read_one(api.get(f"/api/bookings/{booking.pk}/calendar").content)

    assert first.uid == renamed.uid == cancelled.uid
    assert first.sequence < renamed.sequence < cancelled.sequence
    assert first.stamp <= renamed.stamp <= cancelled.stamp
    assert renamed.summary.startswith("Renamed with ")
    assert (renamed.status, cancelled.status) == ("CONFIRMED", "CANCELLED")


def test_an_unchanged_booking_gives_the_same_bytes(api, user):
    booking = _booked(user)

    assert (
        api.get(f"/api/bookings/{booking.pk}/calendar").content
        == api.get(f"/api/bookings/{booking.pk}/calendar").content
    )


def test_a_pending_hold_has_no_calendar_file_yet(api, user):
    booking = SlotBookingFactory(guest=user, status=SlotBooking.Status.PENDING)

    response = api.get(f"/api/bookings/{booking.pk}/calendar", HTTP_ACCEPT="text/calendar")

    assert response.status_code == 409
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "booking_not_confirmed"
    assert response.json()["error"]["details"] == {"status": "PENDING"}


def test_a_lapsed_hold_never_had_one(api, user):
    booking = SlotBookingFactory(
        guest=user, status=SlotBooking.Status.PENDING, created_at=timezone.now() - timedelta(hours=1)
    )

    response = api.get(f"/api/bookings/{booking.pk}/calendar")

    assert response.status_code == 409
    assert response.json()["error"]["details"] == {"status": "EXPIRED"}


def test_the_slots_host_and_operators_may_download_it(client_for, user, staff):
    booking = _booked(user)

    assert client_for(booking.slot.host).get(f"/api/bookings/{booking.pk}/calendar").status_code == 200
    assert client_for(staff).get(f"/api/bookings/{booking.pk}/calendar").status_code == 200


@pytest.mark.parametrize("accept", ["text/calendar", "application/json", "*/*"])
def test_refusals_answer_in_the_json_envelope_whatever_was_accepted(client_for, user, accept):
    booking = _booked(user)

    stranger = client_for(UserFactory()).get(f"/api/bookings/{booking.pk}/calendar", HTTP_ACCEPT=accept)
    anonymous = client_for(None).get(f"/api/bookings/{booking.pk}/calendar", HTTP_ACCEPT=accept)
    missing = client_for(user).get("/api/bookings/999999/calendar", HTTP_ACCEPT=accept)

    for response, status, code in [
        (stranger, 403, "not_owner"),
        (anonymous, 401, "not_authenticated"),
        (missing, 404, "not_found"),
    ]:
        assert response.status_code == status
        assert response["Content-Type"] == "application/json"
        assert response.json()["error"]["code"] == code


def test_an_accept_it_cannot_render_is_a_json_406(api, user):
    booking = _booked(user)

    response = api.get(f"/api/bookings/{booking.pk}/calendar", HTTP_ACCEPT="image/png")

    assert response.status_code == 406
    assert response.json()["error"]["code"] == "not_acceptable"
