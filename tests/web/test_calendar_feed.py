"""The private calendar feed (docs/contract.md §3.8): POST/DELETE /api/users/me/calendar-feed, and
GET /api/calendar/<secret>.ics, which a calendar app subscribes to without any header."""

import hashlib
from datetime import timedelta

import pytest
from django.utils import timezone

from events.services import seat_holds
from slots.models import SlotBooking
from slots.services import bookings
from tests.calendars import read_both
from tests.events.factories import make_event
from tests.slots.factories import HostFactory, SlotBookingFactory, SlotFactory
from web.accounts.models import CalendarFeed


def _path(url: str) -> str:
    assert url.startswith("http://testserver/api/calendar/") and url.endswith(".ics")
    return url.removeprefix("http://testserver")


@pytest.fixture
def feed(api):
    response = api.post("/api/users/me/calendar-feed")
    assert response.status_code == 201
    return _path(response.json()["url"])


@pytest.fixture
def app(client_for):
    """A calendar app: no credentials."""
    return client_for(None)


def _uids(response) -> set[str]:
    return {event.uid for event in read_both(response.content)}


def test_the_feed_lists_what_the_user_has_as_guest_and_as_host_confirmed_or_recently_cancelled(api, user, feed, app):
    user.roles = ["GUEST", "HOST"]
    user.save()
    now = timezone.now()
    as_guest = SlotBookingFactory(guest=user)
    of_my_slot = SlotBookingFactory(slot=SlotFactory(host=user))
    recently_cancelled = SlotBookingFactory(guest=user, status=SlotBooking.Status.CANCELLED)
    long_cancelled = SlotBookingFactory(
        guest=user, status=SlotBooking.Status.CANCELLED, updated_at=now - timedelta(days=40)
    )
    pending = SlotBookingFactory(guest=user, status=SlotBooking.Status.PENDING)
    beyond_a_year = SlotBookingFactory(
        guest=user, slot=SlotFactory(start=now + timedelta(days=400), end=now + timedelta(days=400, hours=1))
    )
    someone_elses = SlotBookingFactory()
    event = make_event()
    seats = seat_holds.seat_hold(event_id=event.pk, user=user, now=now, seat_codes=["S1", "S2"])
    seats = seat_holds.seat_hold_confirm(event_id=event.pk, hold_group_id=seats.pk, user=user, now=now)
    seat_holds.seat_hold(event_id=event.pk, user=user, now=now, seat_codes=["S3"])  # a hold: not in a calendar

    response = app.get(feed)

    assert response.status_code == 200
    assert response["Content-Type"] == "text/calendar; charset=utf-8"
    assert _uids(response) == {
        f"slot-booking-{as_guest.pk}@booking-site",
        f"slot-booking-{of_my_slot.pk}@booking-site",
        f"slot-booking-{recently_cancelled.pk}@booking-site",
        f"seat-booking-{seats.booking_group_id}@booking-site",
    }
    statuses = {event.uid: event.status for event in read_both(response.content)}
    assert statuses[f"slot-booking-{recently_cancelled.pk}@booking-site"] == "CANCELLED"
    left_out = [long_cancelled, pending, beyond_a_year, someone_elses]
    assert not {f"slot-booking-{booking.pk}@booking-site" for booking in left_out} & _uids(response)


def test_the_secret_is_stored_hashed(api, user):
    url = api.post("/api/users/me/calendar-feed").json()["url"]
    secret = url.rsplit("/", 1)[1].removesuffix(".ics")

    stored = CalendarFeed.objects.get(user=user)
    assert stored.secret_sha256 == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in str(CalendarFeed.objects.filter(user=user).values().get())


def test_a_new_secret_kills_the_old_one_at_once_and_delete_turns_the_feed_off(api, feed, app):
    newer = _path(api.post("/api/users/me/calendar-feed").json()["url"])

    assert newer != feed
    old = app.get(feed, HTTP_ACCEPT="text/calendar")
    assert (old.status_code, old["Content-Type"], old.json()["error"]["code"]) == (404, "application/json", "not_found")
    assert app.get(newer).status_code == 200

    assert api.delete("/api/users/me/calendar-feed").status_code == 204
    assert app.get(newer).status_code == 404
    assert api.delete("/api/users/me/calendar-feed").status_code == 204  # off already: still off


def test_an_unknown_secret_is_404(db, app):
    response = app.get("/api/calendar/not-a-secret.ics")

    assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found")


def test_the_feed_of_a_deactivated_user_is_404(api, user, feed, app):
    user.is_active = False
    user.save()

    assert app.get(feed).status_code == 404


def test_an_unchanged_feed_answers_if_none_match_with_304_and_a_change_changes_its_etag(api, user, feed, app):
    booking = bookings.slot_booking_create(slot_id=SlotFactory().pk, guest=user, now=timezone.now())
    first = app.get(feed)

    again = app.get(feed, HTTP_IF_NONE_MATCH=first["ETag"])
    assert (again.status_code, again.content, again["ETag"]) == (304, b"", first["ETag"])
    assert first["Cache-Control"] == "private, no-cache"

    bookings.slot_booking_cancel(booking_id=booking.pk, user=user, now=timezone.now())
    changed = app.get(feed, HTTP_IF_NONE_MATCH=first["ETag"])
    assert changed.status_code == 200
    assert changed["ETag"] != first["ETag"]
    [entry] = read_both(changed.content)
    assert (entry.status, entry.sequence) == ("CANCELLED", 1)


def test_a_retried_post_with_its_key_replays_the_same_url(api):
    first = api.post("/api/users/me/calendar-feed", HTTP_IDEMPOTENCY_KEY="feed-1")
    retry = api.post("/api/users/me/calendar-feed", HTTP_IDEMPOTENCY_KEY="feed-1")

    assert retry.json() == first.json()
    assert retry["Idempotent-Replayed"] == "true"
    assert CalendarFeed.objects.count() == 1


def test_only_a_signed_in_user_gets_a_feed(client_for):
    response = client_for(None).post("/api/users/me/calendar-feed")

    assert (response.status_code, response.json()["error"]["code"]) == (401, "not_authenticated")


def test_a_host_sees_their_appointments(client_for, user):
    host = HostFactory()
    slot = SlotFactory(host=host)
    booking = bookings.slot_booking_create(slot_id=slot.pk, guest=user, now=timezone.now())
    host_api = client_for(host)

    path = _path(host_api.post("/api/users/me/calendar-feed").json()["url"])

    assert _uids(client_for(None).get(path)) == {f"slot-booking-{booking.pk}@booking-site"}


def test_the_schema_and_the_api_root_list_the_calendar_endpoints(api):
    schema = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()

    paths = schema["paths"]
    assert "text/calendar" in paths["/api/bookings/{booking_id}/calendar"]["get"]["responses"]["200"]["content"]
    conflict = paths["/api/bookings/{booking_id}/calendar"]["get"]["responses"]["409"]
    assert "booking_not_confirmed" in conflict["description"]
    assert set(conflict["content"]) == {"application/json"}  # refusals are JSON, whatever was accepted
    assert "get" in paths["/api/events/bookings/{booking_group_id}/calendar"]
    assert {"post", "delete"} <= set(paths["/api/users/me/calendar-feed"])
    assert "304" in paths["/api/calendar/{secret}.ics"]["get"]["responses"]
    assert api.get("/api/").json()["calendar-feed"] == "http://testserver/api/users/me/calendar-feed"
