"""Booking an interval of a host's hours (``POST /api/bookings`` with ``hostId``, ``startTime``, ``endTime``:
seeds/003), and the issue's "done means": a host's week, a guest's search, booking, and never two places."""

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from core.audit.services import trail
from core.metrics import CONSTRAINT_BACKSTOPS
from slots import selectors
from slots.availability import availability_clean
from slots.models import Slot, SlotBooking
from slots.services import bookings, rules, slots
from tests.factories import UserFactory
from tests.slots.factories import HostFactory, SlotBookingFactory, SlotFactory

pytestmark = pytest.mark.django_db

BERLIN = ZoneInfo("Europe/Berlin")
NINE_TO_FIVE = [{"weekday": day, "start": "09:00", "end": "17:00"} for day in range(5)]


def next_monday():
    today = timezone.now().astimezone(BERLIN).date()
    return today + timedelta(days=7 - today.weekday())


def at(day, hour, minute=0) -> datetime:
    return datetime.combine(day, time(hour, minute), tzinfo=BERLIN)


def host_with(**document):
    host = HostFactory()
    slots.availability_set(
        host=host,
        fields=availability_clean({"timeZone": "Europe/Berlin", "weekly": NINE_TO_FIVE, "durations": [30], **document}),
        actor=host,
        now=timezone.now(),
    )
    return host


def book(api, host, start, minutes=30, **body):
    end = start + timedelta(minutes=minutes)
    return api.post(
        "/api/bookings",
        {"hostId": host.pk, "startTime": start.isoformat(), "endTime": end.isoformat(), **body},
        format="json",
    )


def free(api, host, day) -> list[datetime]:
    response = api.get(f"/api/users/{host.pk}/slots", {"startDate": day, "endDate": day, "slotDuration": 30})
    assert response.status_code == 200, response.content
    return [parse_datetime(s["startTime"]) for s in response.json()["slots"]]


def error_code(response) -> str:
    return response.json()["error"]["code"]


def free_in_the_week(api, host, monday) -> list[datetime]:
    week = {"startDate": monday, "endDate": monday + timedelta(days=4), "slotDuration": 30}
    response = api.get(f"/api/users/{host.pk}/slots", week)
    assert response.status_code == 200, response.content
    return [parse_datetime(s["startTime"]) for s in response.json()["slots"]]


def test_done_means_a_week_set_a_time_found_booked_gone_no_second_place_moved_and_drawn(
    client_for, api, user, admin_client
):
    host = HostFactory()
    host_api = client_for(host)
    week = {"timeZone": "Europe/Berlin", "weekly": NINE_TO_FIVE, "durations": [30]}
    assert host_api.put("/api/hosts/me/availability", week, format="json").status_code == 200
    monday = next_monday()
    found = free_in_the_week(api, host, monday)
    assert len(found) == 5 * 16 and found[0] == at(monday, 9) and found[-1] == at(monday + timedelta(days=4), 16, 30)

    response = book(api, host, at(monday, 10))

    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["hostId"], body["userId"], body["status"], body["expiresAt"]) == (host.pk, user.pk, "CONFIRMED", None)
    assert parse_datetime(body["startTime"]) == at(monday, 10)
    assert parse_datetime(body["endTime"]) == at(monday, 10, 30)
    found = free_in_the_week(api, host, monday)
    assert at(monday, 10) not in found and len(found) == 5 * 16 - 1
    other = host_with()
    assert error_code(book(api, other, at(monday, 10, 0))) == "guest_overlap"
    assert error_code(book(api, other, at(monday, 9, 45))) == "guest_overlap"
    published = SlotFactory(start=at(monday, 10, 15), end=at(monday, 10, 45))
    assert api.post("/api/bookings", {"slotId": published.pk}).json()["error"]["code"] == "guest_overlap"

    tuesday = monday + timedelta(days=1)
    moved = reschedule(api, body["id"], at(tuesday, 14))

    assert moved.status_code == 200, moved.content
    assert (moved.json()["rescheduledFromId"], parse_datetime(moved.json()["startTime"])) == (
        body["id"],
        at(tuesday, 14),
    )
    found = free_in_the_week(api, host, monday)
    assert at(monday, 10) in found and at(tuesday, 14) not in found
    assert book(api, other, at(monday, 10, 0)).status_code == 201  # the old time is free for the guest again
    page = admin_client.get(f"/admin/slots/availability/{host.pk}/change/?week={monday}")
    assert page.status_code == 200
    assert "hours 09:00 to 17:00" in page.content.decode()
    assert f"booking #{moved.json()['id']} 14:00 to 14:30" in page.content.decode()


def test_an_interval_booking_is_a_slot_booking_on_an_appointment_slot_with_the_buffer(api, user):
    host = host_with(bufferMinutes=10)
    monday = next_monday()

    booking = SlotBooking.objects.get(pk=book(api, host, at(monday, 9)).json()["id"])

    assert (booking.start, booking.end, booking.guest_id) == (at(monday, 9), at(monday, 9, 30), user.pk)
    slot = booking.slot
    assert (slot.kind, slot.host_id, slot.start, slot.end, slot.booked) == (
        "APPOINTMENT",
        host.pk,
        at(monday, 9),
        at(monday, 9, 30),
        1,
    )
    assert (slot.blocked_from, slot.blocked_until) == (at(monday, 8, 50), at(monday, 9, 40))
    [created] = trail(booking)
    assert (created.event_type, created.to_state, created.actor_id) == ("CREATED", "CONFIRMED", user.pk)
    assert not api.get("/api/slots").json()["results"]  # an appointment is nobody else's to book
    assert api.post("/api/bookings", {"slotId": slot.pk}).json()["error"]["code"] == "slot_unavailable"


@pytest.mark.parametrize(
    ("day_offset", "hour", "minute", "minutes"),
    [(0, 8, 30, 30), (0, 16, 45, 30), (0, 11, 0, 45), (5, 10, 0, 30), (0, 12, 0, 20)],
)
def test_outside_the_hosts_hours_or_durations_is_400_outside_availability(api, day_offset, hour, minute, minutes):
    host = host_with()
    day = next_monday() + timedelta(days=day_offset)

    response = book(api, host, at(day, hour, minute), minutes=minutes)

    assert response.status_code == 400 and error_code(response) == "outside_availability", response.content


def test_a_day_off_and_the_minimum_notice_are_outside_availability(api):
    monday = next_monday()
    host = host_with(overrides=[{"date": monday.isoformat(), "windows": []}], minimumNoticeMinutes=14 * 24 * 60)

    assert error_code(book(api, host, at(monday, 10))) == "outside_availability"
    assert error_code(book(api, host, at(monday + timedelta(days=1), 10))) == "outside_availability"


def test_the_host_taken_is_409_slot_overlap_with_their_buffer(api, client_for):
    host = host_with(bufferMinutes=10)
    monday = next_monday()
    assert book(client_for(UserFactory()), host, at(monday, 10)).status_code == 201
    SlotFactory(host=host, start=at(monday, 14), end=at(monday, 14, 30))

    for start in (at(monday, 10), at(monday, 10, 30), at(monday, 9, 30), at(monday, 13, 30), at(monday, 14, 30)):
        response = book(api, host, start)
        assert response.status_code == 409 and error_code(response) == "slot_overlap", start
    assert book(api, host, at(monday, 15)).status_code == 201


def test_a_host_cannot_publish_a_slot_in_the_buffer_before_or_after_an_appointment(api, client_for):
    host = host_with(bufferMinutes=10)
    monday = next_monday()
    assert book(api, host, at(monday, 10)).status_code == 201
    host_api = client_for(host)

    def publish(start, end):
        return host_api.post("/api/slots", {"startTime": start.isoformat(), "endTime": end.isoformat()}, format="json")

    assert error_code(publish(at(monday, 9), at(monday, 9, 55))) == "slot_overlap"
    assert error_code(publish(at(monday, 10, 35), at(monday, 11))) == "slot_overlap"
    assert publish(at(monday, 9), at(monday, 9, 50)).status_code == 201
    assert publish(at(monday, 10, 40), at(monday, 11)).status_code == 201


@pytest.mark.django_db(transaction=True)  # the booking's transaction is the outermost one
@pytest.mark.parametrize(("published", "start"), [((9, 0), (9, 35)), ((10, 35), (10, 0))])
def test_without_the_check_the_constraints_keep_the_buffer_on_both_sides(api, monkeypatch, published, start):
    host = host_with(bufferMinutes=10)
    monday = next_monday()
    SlotFactory(host=host, start=at(monday, *published), end=at(monday, *published) + timedelta(minutes=30))
    monkeypatch.setattr(selectors, "in_the_way", lambda *args, **kwargs: [])  # as if nothing were there
    constraint = rules.HOST_BUFFER_BEFORE if start > published else rules.HOST_NO_OVERLAP
    before = CONSTRAINT_BACKSTOPS.labels(constraint)._value.get()

    response = book(api, host, at(monday, *start))

    assert response.status_code == 409 and error_code(response) == "slot_overlap", response.content
    assert CONSTRAINT_BACKSTOPS.labels(constraint)._value.get() == before + 1
    assert not SlotBooking.objects.exists()


def test_an_appointment_keeps_the_buffer_it_was_booked_with_when_the_host_shortens_it(api, client_for):
    host = host_with(bufferMinutes=30)
    monday = next_monday()
    assert book(client_for(UserFactory()), host, at(monday, 12)).status_code == 201
    document = {"timeZone": "Europe/Berlin", "weekly": NINE_TO_FIVE, "durations": [30], "bufferMinutes": 0}
    assert client_for(host).put("/api/hosts/me/availability", document, format="json").status_code == 200
    before = CONSTRAINT_BACKSTOPS.labels(rules.HOST_NO_OVERLAP)._value.get()

    found = free(api, host, monday)

    assert at(monday, 11) in found and at(monday, 13) in found
    assert not {at(monday, 11, 30), at(monday, 12), at(monday, 12, 30)} & set(found)
    assert error_code(book(api, host, at(monday, 12, 30))) == "slot_overlap"  # refused by the check
    assert CONSTRAINT_BACKSTOPS.labels(rules.HOST_NO_OVERLAP)._value.get() == before
    assert book(api, host, at(monday, 13)).status_code == 201


def test_a_host_booked_as_a_guest_elsewhere_is_not_free_then(api, client_for):
    host, elsewhere = host_with(bufferMinutes=10), host_with()
    monday = next_monday()
    host_as_guest = client_for(host)
    assert book(host_as_guest, elsewhere, at(monday, 11)).status_code == 201
    published = SlotFactory(start=at(monday, 14), end=at(monday, 14, 30))
    assert host_as_guest.post("/api/bookings", {"slotId": published.pk}).status_code == 201

    found = free(api, host, monday)

    assert not {at(monday, 10, 30), at(monday, 11), at(monday, 11, 30), at(monday, 14)} & set(found)
    assert {at(monday, 10), at(monday, 12), at(monday, 13), at(monday, 15)} <= set(found)
    for start in (at(monday, 11), at(monday, 11, 30), at(monday, 13, 30), at(monday, 14)):
        response = book(api, host, start)
        assert response.status_code == 409 and error_code(response) == "slot_overlap", start
        assert response.json()["error"]["details"]["slotIds"] == []  # another host's slots are not named
    assert book(api, host, at(monday, 12)).status_code == 201


def test_a_hosts_overdue_hold_as_a_guest_elsewhere_leaves_them_free(api, client_for):
    host, elsewhere = host_with(), host_with()
    monday = next_monday()
    body = book(client_for(host), elsewhere, at(monday, 11), hold=True).json()
    past = timezone.now() - timedelta(minutes=1)
    SlotBooking.objects.filter(pk=body["id"]).update(created_at=past - timedelta(minutes=10), expires_at=past)

    assert at(monday, 11) in free(api, host, monday)
    assert book(api, host, at(monday, 11)).status_code == 201


def test_a_hold_is_pending_confirmed_like_any_booking_and_a_cancel_frees_the_hosts_time(api, user):
    host = host_with()
    monday = next_monday()

    body = book(api, host, at(monday, 11), hold=True).json()

    assert body["status"] == "PENDING" and body["expiresAt"]
    assert api.post(f"/api/bookings/{body['id']}/confirm").json()["status"] == "CONFIRMED"
    assert at(monday, 11) not in free(api, host, monday)
    assert api.post(f"/api/bookings/{body['id']}/cancel", {"reason": "clash"}).status_code == 200
    assert at(monday, 11) in free(api, host, monday)
    assert SlotBooking.objects.get(pk=body["id"]).slot.status == Slot.Status.CANCELLED
    assert book(api, host, at(monday, 11)).status_code == 201


def test_an_overdue_hold_is_free_in_the_search_and_a_booking_over_it_expires_it(api, client_for):
    host = host_with()
    monday = next_monday()
    body = book(client_for(UserFactory()), host, at(monday, 12), hold=True).json()
    past = timezone.now() - timedelta(minutes=1)
    SlotBooking.objects.filter(pk=body["id"]).update(created_at=past - timedelta(minutes=10), expires_at=past)

    assert at(monday, 12) in free(api, host, monday)
    assert book(api, host, at(monday, 12)).status_code == 201

    overdue = SlotBooking.objects.get(pk=body["id"])
    assert (overdue.status, overdue.slot.status, overdue.slot.booked) == ("EXPIRED", "CANCELLED", 0)
    assert [e.event_type for e in trail(overdue)] == ["CREATED", "EXPIRED"]


def test_the_expiry_job_frees_an_appointment_hold_and_its_hosts_time(api):
    host = host_with()
    monday = next_monday()
    body = book(api, host, at(monday, 13), hold=True).json()

    bookings.slot_bookings_expire_due(now=timezone.now() + timedelta(hours=1))

    booking = SlotBooking.objects.get(pk=body["id"])
    assert (booking.status, booking.slot.status, booking.slot.booked) == ("EXPIRED", "CANCELLED", 0)


def test_booking_ones_own_time_a_non_host_or_the_past_is_refused(client_for, api, user):
    host = host_with()
    monday = next_monday()

    assert error_code(book(client_for(host), host, at(monday, 10))) == "own_slot"
    assert book(api, user, at(monday, 10)).status_code == 404
    yesterday = timezone.now() - timedelta(days=1)
    assert error_code(book(api, host, yesterday.replace(minute=0, second=0, microsecond=0))) == "slot_in_past"


@pytest.mark.parametrize(
    "body",
    [
        {"slotId": 1, "hostId": 1},
        {"hostId": 1, "startTime": "2030-01-07T10:00:00+01:00"},
        {"hostId": 1, "startTime": "2030-01-07T10:00:00+01:00", "endTime": "2030-01-07T09:00:00+01:00"},
        {"hostId": 1, "startTime": "2030-01-07T10:00:00+01:00", "endTime": "2030-01-07T10:30:00+01:00", "seats": 2},
        {},
    ],
)
def test_a_booking_body_is_a_slot_or_an_interval(api, body):
    response = api.post("/api/bookings", body, format="json")

    assert response.status_code == 400 and error_code(response) == "validation_error", response.content


def test_an_interval_booking_counts_towards_the_guests_limits(api, user):
    host = host_with()
    monday = next_monday()
    SlotBookingFactory(guest=user, slot=SlotFactory(host=host))

    response = book(api, host, at(monday, 10))

    assert response.status_code == 409 and response.json()["error"]["details"]["rule"] == "one_per_host"


# --- rescheduling to an interval ------------------------------------------------------------------


def reschedule(api, booking_id, start, minutes=30):
    body = {"startTime": start.isoformat(), "endTime": (start + timedelta(minutes=minutes)).isoformat()}
    return api.post(f"/api/bookings/{booking_id}/reschedule", body, format="json")


def test_rescheduling_takes_the_new_interval_and_releases_the_old_one_in_one_go(api, user):
    host = host_with()
    monday = next_monday()
    old = book(api, host, at(monday, 10), metadata={"title": "x"}).json()

    response = reschedule(api, old["id"], at(monday, 10, 30))

    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["status"], body["rescheduledFromId"], body["metadata"], body["hostId"]) == (
        "CONFIRMED",
        old["id"],
        {"title": "x"},
        host.pk,
    )
    assert parse_datetime(body["startTime"]) == at(monday, 10, 30)
    previous = SlotBooking.objects.get(pk=old["id"])
    assert (previous.status, previous.reason, previous.slot.status, previous.slot.booked) == (
        "CANCELLED",
        "rescheduled",
        "CANCELLED",
        0,
    )
    assert [e.event_type for e in trail(previous)] == ["CREATED", "RESCHEDULED"]
    assert trail(previous)[1].metadata["toBookingId"] == body["id"]
    found = free(api, host, monday)
    assert at(monday, 10) in found and at(monday, 10, 30) not in found


def test_rescheduling_a_hold_onto_a_time_overlapping_itself_keeps_it_a_hold_with_its_expiry(api):
    host = host_with(durations=[60])
    monday = next_monday()
    old = book(api, host, at(monday, 10), minutes=60, hold=True).json()

    body = reschedule(api, old["id"], at(monday, 10, 30), minutes=60).json()

    assert (body["status"], body["expiresAt"]) == ("PENDING", old["expiresAt"])


def test_a_seat_in_a_published_slot_can_move_to_an_interval_of_its_host(api, user):
    host = host_with()
    monday = next_monday()
    seat = SlotBookingFactory(guest=user, slot=SlotFactory(host=host, start=at(monday, 15), end=at(monday, 15, 30)))

    body = reschedule(api, seat.pk, at(monday, 11)).json()

    seat.refresh_from_db()
    seat.slot.refresh_from_db()
    assert body["rescheduledFromId"] == seat.pk and seat.status == "CANCELLED" and seat.slot.booked == 0
    assert seat.slot.status == "AVAILABLE"  # a published slot stays, its seat free again


def test_a_refused_reschedule_changes_nothing(api, user, client_for):
    host = host_with()
    monday = next_monday()
    old = book(api, host, at(monday, 10)).json()
    book(client_for(UserFactory()), host, at(monday, 12))
    mine_elsewhere = book(api, host_with(), at(monday, 14)).json()

    assert error_code(reschedule(api, old["id"], at(monday, 12))) == "slot_overlap"
    assert error_code(reschedule(api, old["id"], at(monday, 14, 15))) == "guest_overlap"
    assert error_code(reschedule(api, old["id"], at(monday, 18))) == "outside_availability"
    assert mine_elsewhere["id"]
    previous = SlotBooking.objects.get(pk=old["id"])
    assert (previous.status, previous.slot.status) == ("CONFIRMED", "AVAILABLE")
    assert SlotBooking.objects.filter(rescheduled_from=previous).count() == 0


def test_rescheduling_an_overdue_hold_is_410_and_a_cancelled_booking_400(api):
    host = host_with()
    monday = next_monday()
    hold = book(api, host, at(monday, 10), hold=True).json()
    past = timezone.now() - timedelta(minutes=1)
    SlotBooking.objects.filter(pk=hold["id"]).update(created_at=past - timedelta(minutes=5), expires_at=past)

    assert reschedule(api, hold["id"], at(monday, 11)).status_code == 410
    assert SlotBooking.objects.get(pk=hold["id"]).slot.status == "CANCELLED"  # expired on the spot
    cancelled = book(api, host, at(monday, 12)).json()
    api.post(f"/api/bookings/{cancelled['id']}/cancel")
    assert error_code(reschedule(api, cancelled["id"], at(monday, 11))) == "invalid_state_transition"


def test_only_the_guest_or_an_operator_reschedules(api, client_for):
    host = host_with()
    monday = next_monday()
    old = book(api, host, at(monday, 10)).json()

    assert reschedule(client_for(UserFactory()), old["id"], at(monday, 11)).status_code == 403
    assert reschedule(client_for(host), old["id"], at(monday, 11)).status_code == 403
    assert reschedule(api, 999999, at(monday, 11)).status_code == 404
    body = {"slotId": 1, "startTime": at(monday, 11).isoformat()}
    assert api.post(f"/api/bookings/{old['id']}/reschedule", body, format="json").status_code == 400


def test_a_host_may_publish_a_slot_over_an_overdue_appointment_hold(api, client_for):
    host = host_with()
    monday = next_monday()
    body = book(api, host, at(monday, 9), hold=True).json()
    past = timezone.now() - timedelta(minutes=1)
    SlotBooking.objects.filter(pk=body["id"]).update(created_at=past - timedelta(minutes=5), expires_at=past)
    slot = {"startTime": at(monday, 9).isoformat(), "endTime": at(monday, 10).isoformat()}

    assert client_for(host).post("/api/slots", slot, format="json").status_code == 201
    assert SlotBooking.objects.get(pk=body["id"]).status == "EXPIRED"


def test_an_interval_booking_retried_with_its_idempotency_key_is_booked_once(api, user):
    host = host_with()
    start = at(next_monday(), 10)
    body = {"hostId": host.pk, "startTime": start.isoformat(), "endTime": (start + timedelta(minutes=30)).isoformat()}

    first = api.post("/api/bookings", body, format="json", HTTP_IDEMPOTENCY_KEY="appt-1")
    again = api.post("/api/bookings", body, format="json", HTTP_IDEMPOTENCY_KEY="appt-1")

    assert (first.status_code, again.status_code) == (201, 201)
    assert first.json() == again.json()
    assert SlotBooking.objects.filter(guest=user).count() == 1
    assert SlotBooking.objects.get(guest=user).idempotency_key == "appt-1"
