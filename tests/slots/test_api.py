import json
from datetime import timedelta
from urllib.parse import urlencode

import pytest
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from core.audit.models import AuditEvent
from core.metrics import CONSTRAINT_BACKSTOPS
from slots import locks
from slots.api.serializers import SlotBookingIn
from slots.models import Slot, SlotBooking
from tests.factories import UserFactory
from tests.slots.factories import HostFactory, SlotBookingFactory, SlotFactory

pytestmark = pytest.mark.django_db

SLOT_FIELDS = {
    "organisationId",
    "id",
    "hostId",
    "hostName",
    "title",
    "specialization",
    "startTime",
    "endTime",
    "capacity",
    "remainingCapacity",
    "status",
    "createdAt",
    "updatedAt",
}
BOOKING_FIELDS = {
    "id",
    "slotId",
    "userId",
    "hostId",
    "seats",
    "status",
    "startTime",
    "endTime",
    "expiresAt",
    "reason",
    "metadata",
    "rescheduledFromId",
    "requestId",
    "createdAt",
    "updatedAt",
}


def error_code(response) -> str:
    return response.json()["error"]["code"]


def iso(moment) -> str:
    return moment.isoformat()


def future(hours: float = 24):
    return timezone.now().replace(microsecond=0) + timedelta(hours=hours)


def create_slot(client, start, minutes=30, **body):
    return client.post(
        "/api/slots", {"startTime": iso(start), "endTime": iso(start + timedelta(minutes=minutes)), **body}
    )


def book(client, slot, **body):
    return client.post("/api/bookings", {"slotId": slot.pk, **body})


# --- POST /api/slots ------------------------------------------------------------------------------


def test_a_host_publishes_a_slot(host_api, host):
    start = future()

    response = create_slot(host_api, start, capacity=3, title="Check-up", specialization="cardiology")

    assert response.status_code == 201
    body = response.json()
    assert set(body) == SLOT_FIELDS
    assert body["hostId"] == host.pk and body["capacity"] == 3 and body["remainingCapacity"] == 3
    assert body["status"] == "AVAILABLE" and body["specialization"] == "cardiology"
    assert parse_datetime(body["startTime"]) == start
    event = AuditEvent.objects.get(subject_type="slot", subject_id=str(body["id"]))
    assert (event.event_type, event.to_state, event.actor_id) == ("CREATED", "AVAILABLE", host.pk)


def test_capacity_defaults_to_one(host_api):
    assert create_slot(host_api, future()).json()["capacity"] == 1


def test_a_guest_cannot_publish_slots(api):
    response = create_slot(api, future())

    assert response.status_code == 403
    assert error_code(response) == "forbidden"


def test_an_operator_publishes_for_a_host(staff_api, host, staff):
    response = create_slot(staff_api, future(), hostId=host.pk)

    assert response.status_code == 201
    assert response.json()["hostId"] == host.pk


def test_an_operator_cannot_publish_for_a_guest(staff_api, user):
    response = create_slot(staff_api, future(), hostId=user.pk)

    assert response.status_code == 400
    assert response.json()["error"]["details"]["fields"] == {"hostId": [f"User {user.pk} is not a host."]}


def test_a_host_cannot_publish_for_another_host(host_api):
    assert create_slot(host_api, future(), hostId=HostFactory().pk).status_code == 403


def test_a_slot_in_the_past_is_refused(host_api):
    response = create_slot(host_api, future(-1))

    assert response.status_code == 400
    assert error_code(response) == "slot_in_past"


@pytest.mark.parametrize(
    ("start", "end", "field"),
    [
        ("9999-12-31T22:00:00Z", "9999-12-31T23:00:00Z", "startTime"),
        ("9999-12-31T22:00:00-05:00", "9999-12-31T23:00:00-05:00", "startTime"),
        (None, "9999-12-31T23:00:00Z", "endTime"),
        (6 * 365 * 24, 6 * 365 * 24 + 1, "startTime"),
    ],
)
def test_a_slot_more_than_five_years_ahead_is_400(host_api, host, start, end, field):
    """Such a time near year 9999 could not be shown east of UTC: one row would break every listing."""
    if isinstance(start, int):
        start, end = iso(future(start)), iso(future(end))
    body = {"startTime": start or iso(future()), "endTime": end}

    response = host_api.post("/api/slots", body)

    assert response.status_code == 400, response.content
    assert error_code(response) == "validation_error"
    assert field in response.json()["error"]["details"]["fields"]
    assert not Slot.objects.filter(host=host).exists()


def test_a_slot_four_years_ahead_is_fine(host_api):
    assert create_slot(host_api, future(4 * 365 * 24)).status_code == 201


def test_a_slot_must_end_after_it_starts(host_api):
    response = create_slot(host_api, future(), minutes=0)

    assert response.status_code == 400
    assert response.json()["error"]["details"]["fields"] == {"endTime": ["Must be after startTime."]}


def test_unknown_fields_and_bad_values_are_400(host_api):
    start = future()
    assert create_slot(host_api, start, colour="red").status_code == 400
    assert create_slot(host_api, start, capacity=0).status_code == 400
    assert host_api.post("/api/slots", {"startTime": "tomorrow", "endTime": iso(start)}).status_code == 400
    assert host_api.post("/api/slots", [1, 2], format="json").status_code == 400


def test_overlapping_slots_of_one_host_are_refused(host_api, host):
    start = future()
    create_slot(host_api, start, minutes=60)

    response = create_slot(host_api, start + timedelta(minutes=30), minutes=60)

    assert response.status_code == 409
    assert error_code(response) == "slot_overlap"
    assert Slot.objects.filter(host=host).count() == 1


def test_adjacent_slots_and_other_hosts_slots_are_fine(host_api, client_for):
    start = future()
    create_slot(host_api, start)

    assert create_slot(host_api, start + timedelta(minutes=30)).status_code == 201
    assert create_slot(client_for(HostFactory()), start).status_code == 201


def test_publishing_needs_credentials(client_for):
    response = create_slot(client_for(None), future())

    assert response.status_code == 401
    assert error_code(response) == "not_authenticated"


# --- GET /api/slots ---------------------------------------------------------------------------------


def test_the_list_shows_future_available_slots_in_time_order(api):
    later, sooner = SlotFactory(start=future(48)), SlotFactory(start=future(2))
    SlotFactory(start=future(-2), end=future(-1))
    SlotFactory(start=future(3), status=Slot.Status.CANCELLED)

    body = api.get("/api/slots").json()

    assert [s["id"] for s in body["results"]] == [sooner.pk, later.pk]
    assert (body["count"], body["page"], body["limit"]) == (2, 1, 20)


def test_the_list_filters_by_host_specialization_and_dates(api):
    host = HostFactory()
    mine = SlotFactory(host=host, start=future(30), specialization="Dermatology")
    SlotFactory(start=future(30))
    SlotFactory(host=host, start=future(80))

    def ids(**query):
        return [s["id"] for s in api.get("/api/slots", query).json()["results"]]

    assert ids(hostId=host.pk, specialization="dermatology") == [mine.pk]
    assert mine.pk in ids(startDate=iso(future(29)), endDate=iso(future(31)))
    assert mine.pk not in ids(startDate=iso(future(31)))
    assert ids(hostId=host.pk, endDate=(timezone.localdate() + timedelta(days=2)).isoformat()) == [mine.pk]


def test_available_true_hides_full_slots_and_counts_overdue_holds_as_free(api):
    full = SlotFactory(capacity=2)
    SlotBookingFactory(slot=full, seats=2)
    freed = SlotFactory(capacity=2)
    past = timezone.now() - timedelta(hours=1)
    SlotBookingFactory(slot=freed, seats=2, status="PENDING", created_at=past, expires_at=past + timedelta(minutes=10))
    partly = SlotFactory(capacity=3)
    SlotBookingFactory(slot=partly, seats=1, status="PENDING")

    listed = {s["id"]: s["remainingCapacity"] for s in api.get("/api/slots", {"available": "true"}).json()["results"]}

    assert listed == {freed.pk: 2, partly.pk: 2}
    assert [s["id"] for s in api.get("/api/slots", {"available": "false"}).json()["results"]] == [full.pk]


@pytest.mark.parametrize(
    "query",
    [
        {"available": "yes"},
        {"startDate": "soon"},
        {"endDate": "2026-13-01"},
        {"hostId": "x"},
        {"limit": "500"},
        {"hostId": "1.5"},  # not truncated to 1
        {"hostId": "1e3"},
        {"hostId": "99999999999999999999"},
        {"endDate": "9999-12-31"},  # the day's end would overflow
        {"startDate": "9999-12-31T23:59:59"},
        {"startDate": "0001-01-01"},
        {"endDate": "0001-01-01T00:00:00+05:00"},
    ],
)
def test_bad_list_filters_are_400(api, query):
    response = api.get("/api/slots", query)

    assert response.status_code == 400
    assert error_code(response) == "validation_error"


def test_a_fractional_host_id_is_not_truncated_to_a_host(api):
    slot = SlotFactory()

    assert api.get("/api/slots", {"hostId": f"{slot.host_id}.5"}).status_code == 400
    assert api.get("/api/slots", {"hostId": str(slot.host_id)}).json()["count"] == 1


@pytest.mark.parametrize("slot_id", ["1.5", "1e5", "NaN"])
def test_a_booking_filter_on_a_fractional_slot_id_is_400(api, slot_id):
    response = api.get("/api/bookings", {"slotId": slot_id})

    assert response.status_code == 400
    assert error_code(response) == "validation_error"


def test_the_host_lists_their_own_slots_including_cancelled_ones(host_api, host):
    mine = [SlotFactory(host=host), SlotFactory(host=host, status=Slot.Status.CANCELLED)]
    SlotFactory()

    body = host_api.get("/api/slots/host").json()

    assert sorted(s["id"] for s in body["results"]) == sorted(s.pk for s in mine)


def test_a_guest_has_no_slots_to_list(api):
    assert api.get("/api/slots/host").status_code == 403


def test_slot_detail(api):
    slot = SlotFactory(capacity=4)
    SlotBookingFactory(slot=slot, seats=3)

    body = api.get(f"/api/slots/{slot.pk}").json()

    assert body["remainingCapacity"] == 1
    assert api.get("/api/slots/999999").status_code == 404


# --- DELETE /api/slots/{id} -------------------------------------------------------------------------


def test_the_host_withdraws_an_unbooked_slot_and_its_time_is_free_again(host_api, host):
    slot = SlotFactory(host=host)

    response = host_api.delete(f"/api/slots/{slot.pk}")

    assert response.status_code == 200
    assert response.json()["status"] == "CANCELLED"
    assert create_slot(host_api, slot.start).status_code == 201


def test_another_host_cannot_withdraw_the_slot(client_for):
    slot = SlotFactory()

    response = client_for(HostFactory()).delete(f"/api/slots/{slot.pk}")

    assert response.status_code == 403
    assert error_code(response) == "not_owner"


def test_a_booked_slot_cannot_be_withdrawn(host_api, host):
    slot = SlotFactory(host=host)
    SlotBookingFactory(slot=slot)

    response = host_api.delete(f"/api/slots/{slot.pk}")

    assert response.status_code == 409
    assert error_code(response) == "slot_booked"


def test_a_slot_whose_only_hold_is_overdue_can_be_withdrawn(staff_api):
    slot = SlotFactory()
    past = timezone.now() - timedelta(hours=1)
    hold = SlotBookingFactory(slot=slot, status="PENDING", created_at=past, expires_at=past + timedelta(minutes=5))

    assert staff_api.delete(f"/api/slots/{slot.pk}").status_code == 200
    hold.refresh_from_db()
    assert hold.status == "EXPIRED"


# --- POST /api/bookings ------------------------------------------------------------------------------


def test_a_guest_books_a_slot(api, user):
    slot = SlotFactory(capacity=3)

    response = book(api, slot, seats=2, metadata={"title": "Check-up", "location": "Room A"})

    assert response.status_code == 201
    body = response.json()
    assert set(body) == BOOKING_FIELDS
    assert (body["slotId"], body["userId"], body["hostId"]) == (slot.pk, user.pk, slot.host_id)
    assert (body["seats"], body["status"], body["expiresAt"]) == (2, "CONFIRMED", None)
    assert body["metadata"] == {"title": "Check-up", "location": "Room A"}
    slot.refresh_from_db()
    assert slot.booked == 2
    event = AuditEvent.objects.get(subject_type="slotbooking", subject_id=str(body["id"]))
    assert (event.event_type, event.to_state, event.actor_id) == ("CREATED", "CONFIRMED", user.pk)


def test_a_hold_is_pending_until_confirmed(api):
    response = book(api, SlotFactory(), hold=True)

    body = response.json()
    assert body["status"] == "PENDING"
    assert parse_datetime(body["expiresAt"]) > timezone.now() + timedelta(minutes=9)

    confirmed = api.post(f"/api/bookings/{body['id']}/confirm")
    assert confirmed.status_code == 200
    assert confirmed.json()["status"] == "CONFIRMED"


def test_booking_ones_own_slot_is_400(host_api, host):
    response = book(host_api, SlotFactory(host=host))

    assert response.status_code == 400
    assert error_code(response) == "own_slot"


def test_booking_a_past_slot_is_400(api):
    response = book(api, SlotFactory(start=future(-1), end=future(-0.5)))

    assert response.status_code == 400
    assert error_code(response) == "slot_in_past"


def test_booking_a_full_slot_is_409(api):
    slot = SlotFactory(capacity=2)
    SlotBookingFactory(slot=slot)

    response = book(api, slot, seats=2)

    assert response.status_code == 409
    assert error_code(response) == "slot_full"
    assert book(api, slot, seats=1).status_code == 201


@pytest.mark.django_db(transaction=True)  # the booking's transaction is the outermost one, or under a key nested
@pytest.mark.parametrize("headers", [{}, {"HTTP_IDEMPOTENCY_KEY": "backstop-1"}])
def test_a_booking_only_the_constraint_refuses_is_a_clean_409_and_counted(api, monkeypatch, headers):
    slot = SlotFactory(capacity=1)
    SlotBookingFactory(slot=slot)
    lock_slots = locks.lock_slots

    def a_stale_counter(slot_ids, **kwargs):  # as if the lock had not serialized the seats
        slots = lock_slots(slot_ids, **kwargs)
        for locked in slots.values():
            locked.booked = 0
        return slots

    monkeypatch.setattr(locks, "lock_slots", a_stale_counter)
    before = CONSTRAINT_BACKSTOPS.labels("slot_booked_within_capacity")._value.get()

    response = api.post("/api/bookings", {"slotId": slot.pk}, **headers)

    assert response.status_code == 409, response.content
    assert error_code(response) == "slot_full"
    assert CONSTRAINT_BACKSTOPS.labels("slot_booked_within_capacity")._value.get() == before + 1
    slot.refresh_from_db()
    assert (slot.booked, slot.bookings.count()) == (1, 1)


def test_booking_a_withdrawn_slot_is_409(api):
    response = book(api, SlotFactory(status=Slot.Status.CANCELLED))

    assert response.status_code == 409
    assert error_code(response) == "slot_unavailable"


def test_booking_an_unknown_slot_is_404(api):
    assert book(api, SlotFactory.build(pk=987654)).status_code == 404


def test_at_most_five_active_bookings_per_guest(api, user):
    for _ in range(5):
        SlotBookingFactory(guest=user)

    response = book(api, SlotFactory())

    assert response.status_code == 409
    assert error_code(response) == "limit_reached"
    # The shape of every cap (rule, limit), and ``max``: what the first clients read, kept for them.
    assert response.json()["error"]["details"] == {"rule": "max_active", "limit": 5, "max": 5}


def test_cancelled_and_overdue_bookings_do_not_count_towards_the_limit(api, user):
    past = timezone.now() - timedelta(hours=1)
    for _ in range(4):
        SlotBookingFactory(guest=user)
    SlotBookingFactory(guest=user, status="CANCELLED")
    SlotBookingFactory(guest=user, status="PENDING", created_at=past, expires_at=past + timedelta(minutes=5))

    assert book(api, SlotFactory()).status_code == 201


def test_one_active_booking_per_guest_per_host(api, user):
    host = HostFactory()
    SlotBookingFactory(guest=user, slot=SlotFactory(host=host))

    response = book(api, SlotFactory(host=host))

    assert response.status_code == 409
    assert response.json()["error"]["details"]["rule"] == "one_per_host"


def test_an_overdue_hold_never_blocks_and_is_expired_on_the_spot(api):
    slot = SlotFactory()
    past = timezone.now() - timedelta(hours=1)
    overdue = SlotBookingFactory(slot=slot, status="PENDING", created_at=past, expires_at=past + timedelta(minutes=5))

    assert book(api, slot).status_code == 201
    overdue.refresh_from_db()
    slot.refresh_from_db()
    assert overdue.status == "EXPIRED" and slot.booked == 1


def test_a_cancelled_booking_frees_the_slot_for_anyone(api, client_for, user):
    slot = SlotFactory()
    booking_id = book(api, slot).json()["id"]
    api.post(f"/api/bookings/{booking_id}/cancel")

    assert book(client_for(UserFactory()), slot).status_code == 201


def test_a_guest_cannot_book_for_someone_else_but_an_operator_can(api, staff_api, other_user):
    slot = SlotFactory()

    assert book(api, slot, userId=other_user.pk).status_code == 403
    response = book(staff_api, slot, userId=other_user.pk)
    assert response.status_code == 201 and response.json()["userId"] == other_user.pk


def test_bad_booking_bodies_are_400(api):
    slot = SlotFactory()
    assert book(api, slot, seats=0).status_code == 400
    assert book(api, slot, hold="maybe").status_code == 400
    assert book(api, slot, metadata=["x"]).status_code == 400
    assert book(api, slot, room=1).status_code == 400
    assert api.post("/api/bookings", {}).status_code == 400


@pytest.mark.parametrize(
    "metadata",
    [{"note": "a\u0000b"}, {"a\u0000": 1}, {"note": "\ud800"}, {"\udfff": "x"}, {"a": [{"b": ["\u0000"]}]}],
)
def test_metadata_text_postgresql_cannot_store_is_400(api, metadata):
    """NUL cannot be stored in jsonb, a lone surrogate cannot be encoded: a 400, never a 500."""
    slot = SlotFactory()
    body = json.dumps({"slotId": slot.pk, "metadata": metadata})  # ensure_ascii: the escapes reach the parser

    response = api.post("/api/bookings", body, content_type="application/json")

    assert response.status_code == 400
    assert error_code(response) == "validation_error"
    assert not SlotBooking.objects.filter(slot=slot).exists()


@pytest.mark.parametrize(
    "metadata", [{"note": "a\x00b"}, {"a\x00": 1}, {"note": "\ud800"}, {"a": [{"b": ["x", {"c": "\udfff"}]}]}]
)
def test_the_booking_serializer_checks_metadata_text_at_any_depth(metadata):
    """Whatever parser the body came through (a form, a test client), the serializer refuses it too."""
    serializer = SlotBookingIn(data={"slotId": 1, "metadata": metadata})

    assert not serializer.is_valid()
    assert "metadata" in serializer.errors


def test_ordinary_metadata_is_kept(api):
    metadata = {"title": "Check-up", "tags": ["a", {"b": "é 😀"}], "n": 1}

    response = book(api, SlotFactory(), metadata=metadata)

    assert response.status_code == 201 and response.json()["metadata"] == metadata


def test_a_retried_booking_is_replayed_not_repeated(api):
    slot = SlotFactory(capacity=5)

    first = book(api, slot, requestId="try-1")
    again = api.post("/api/bookings", {"slotId": slot.pk, "requestId": "try-1"})

    assert again.status_code == 201 and again["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert SlotBooking.objects.filter(slot=slot).count() == 1


# --- confirm ---------------------------------------------------------------------------------------


def test_confirming_an_overdue_hold_is_410_and_the_hold_stays_expired(api, user):
    slot = SlotFactory()
    past = timezone.now() - timedelta(hours=1)
    hold = SlotBookingFactory(
        slot=slot, guest=user, status="PENDING", created_at=past, expires_at=past + timedelta(minutes=5)
    )

    response = api.post(f"/api/bookings/{hold.pk}/confirm")

    assert response.status_code == 410
    assert error_code(response) == "hold_expired"
    hold.refresh_from_db()
    slot.refresh_from_db()
    assert hold.status == "EXPIRED" and slot.booked == 0


def test_confirming_twice_or_someone_elses_hold(api, client_for, user):
    hold = SlotBookingFactory(guest=user, status="PENDING")
    api.post(f"/api/bookings/{hold.pk}/confirm")

    again = api.post(f"/api/bookings/{hold.pk}/confirm")
    assert again.status_code == 409 and error_code(again) == "booking_not_pending"
    assert client_for(UserFactory()).post(f"/api/bookings/{hold.pk}/confirm").status_code == 403
    assert api.post("/api/bookings/999999/confirm").status_code == 404


def test_confirming_a_cancelled_booking_is_409_booking_not_pending(api, user):
    booking = SlotBookingFactory(guest=user, status="CANCELLED")

    response = api.post(f"/api/bookings/{booking.pk}/confirm")

    assert response.status_code == 409
    assert error_code(response) == "booking_not_pending"
    assert response.json()["error"]["details"] == {"fromState": "CANCELLED", "toState": "CONFIRMED"}


# --- cancel ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["post", "delete"])
def test_the_guest_cancels_with_a_reason_and_the_seat_is_freed(api, user, method):
    booking = SlotBookingFactory(guest=user, slot=SlotFactory(capacity=2), seats=2)
    url = f"/api/bookings/{booking.pk}" + ("/cancel" if method == "post" else "")

    response = getattr(api, method)(url, {"reason": "Schedule conflict"})

    assert response.status_code == 200
    assert (response.json()["status"], response.json()["reason"]) == ("CANCELLED", "Schedule conflict")
    booking.slot.refresh_from_db()
    assert booking.slot.booked == 0
    event = AuditEvent.objects.filter(subject_type="slotbooking", subject_id=str(booking.pk)).last()
    assert (event.from_state, event.to_state) == ("CONFIRMED", "CANCELLED")
    assert event.metadata == {"reason": "Schedule conflict"}


def test_a_guest_cannot_cancel_within_the_window(api, user):
    booking = SlotBookingFactory(guest=user, slot=SlotFactory(start=future(0.5), end=future(1)))

    response = api.post(f"/api/bookings/{booking.pk}/cancel")

    assert response.status_code == 400
    assert error_code(response) == "cancellation_window_closed"


def test_the_window_is_a_setting(api, user, settings):
    settings.SLOTS_CANCELLATION_WINDOW_HOURS = 3
    booking = SlotBookingFactory(guest=user, slot=SlotFactory(start=future(2), end=future(3)))

    assert error_code(api.post(f"/api/bookings/{booking.pk}/cancel")) == "cancellation_window_closed"


def test_the_host_and_operators_may_always_cancel(client_for, staff_api):
    slot = SlotFactory(start=future(0.5), end=future(1), capacity=2)
    first, second = SlotBookingFactory(slot=slot), SlotBookingFactory(slot=slot)

    assert client_for(slot.host).post(f"/api/bookings/{first.pk}/cancel").status_code == 200
    assert staff_api.post(f"/api/bookings/{second.pk}/cancel").status_code == 200


def test_a_stranger_cannot_cancel(client_for):
    booking = SlotBookingFactory()

    assert client_for(UserFactory()).post(f"/api/bookings/{booking.pk}/cancel").status_code == 403


def test_cancelling_twice_is_400(api, user):
    booking = SlotBookingFactory(guest=user, status="CANCELLED")

    assert error_code(api.post(f"/api/bookings/{booking.pk}/cancel")) == "invalid_state_transition"


# --- reschedule --------------------------------------------------------------------------------------


def test_rescheduling_moves_the_booking_in_one_go(api, user):
    host = HostFactory()
    old = SlotBookingFactory(guest=user, slot=SlotFactory(host=host), metadata={"title": "x"})
    target = SlotFactory(host=host)

    response = api.post(f"/api/bookings/{old.pk}/reschedule", {"slotId": target.pk})

    assert response.status_code == 200
    body = response.json()
    assert (body["slotId"], body["status"], body["rescheduledFromId"], body["metadata"]) == (
        target.pk,
        "CONFIRMED",
        old.pk,
        {"title": "x"},
    )
    old.refresh_from_db()
    old.slot.refresh_from_db()
    target.refresh_from_db()
    assert old.status == "CANCELLED" and old.slot.booked == 0 and target.booked == 1
    assert AuditEvent.objects.filter(subject_type="slotbooking", subject_id=str(old.pk), event_type="RESCHEDULED")


def test_rescheduling_to_a_full_slot_changes_nothing(api, user):
    old = SlotBookingFactory(guest=user)
    target = SlotFactory()
    SlotBookingFactory(slot=target)

    response = api.post(f"/api/bookings/{old.pk}/reschedule", {"slotId": target.pk})

    assert response.status_code == 409 and error_code(response) == "slot_full"
    old.refresh_from_db()
    old.slot.refresh_from_db()
    assert old.status == "CONFIRMED" and old.slot.booked == 1


def test_rescheduling_to_a_host_the_guest_already_books_is_409(api, user):
    other_host = HostFactory()
    SlotBookingFactory(guest=user, slot=SlotFactory(host=other_host))
    old = SlotBookingFactory(guest=user)

    response = api.post(f"/api/bookings/{old.pk}/reschedule", {"slotId": SlotFactory(host=other_host).pk})

    assert error_code(response) == "limit_reached"


def test_rescheduling_errors(api, client_for, user):
    old = SlotBookingFactory(guest=user)

    assert api.post(f"/api/bookings/{old.pk}/reschedule", {"slotId": 999999}).status_code == 404
    assert api.post(f"/api/bookings/{old.pk}/reschedule", {"slotId": old.slot_id}).status_code == 400
    stranger = client_for(UserFactory())
    assert stranger.post(f"/api/bookings/{old.pk}/reschedule", {"slotId": SlotFactory().pk}).status_code == 403
    cancelled = SlotBookingFactory(guest=user, status="CANCELLED")
    response = api.post(f"/api/bookings/{cancelled.pk}/reschedule", {"slotId": SlotFactory().pk})
    assert error_code(response) == "invalid_state_transition"


# --- GET /api/bookings -----------------------------------------------------------------------------


def test_guests_list_their_own_bookings_and_operators_all(api, staff_api, user):
    mine = SlotBookingFactory(guest=user)
    past = timezone.now() - timedelta(hours=1)
    lapsed = SlotBookingFactory(guest=user, status="PENDING", created_at=past, expires_at=past + timedelta(minutes=5))
    SlotBookingFactory()

    assert [b["id"] for b in api.get("/api/bookings").json()["results"]] == [lapsed.pk, mine.pk]
    assert [b["id"] for b in api.get("/api/bookings", {"status": "EXPIRED"}).json()["results"]] == [lapsed.pk]
    assert staff_api.get("/api/bookings").json()["count"] == 3


def test_a_booking_is_visible_to_its_guest_its_host_and_operators(api, client_for, staff_api, user):
    booking = SlotBookingFactory(guest=user)
    url = f"/api/bookings/{booking.pk}"

    assert api.get(url).json()["id"] == booking.pk
    assert client_for(booking.slot.host).get(url).status_code == 200
    assert staff_api.get(url).status_code == 200
    assert client_for(UserFactory()).get(url).status_code == 403
    assert api.get("/api/bookings/999999").status_code == 404


def test_the_audit_trail_of_a_booking(api):
    booking_id = book(api, SlotFactory(), hold=True).json()["id"]
    api.post(f"/api/bookings/{booking_id}/confirm")

    events = api.get(f"/api/bookings/{booking_id}/events").json()["results"]

    assert [(e["eventType"], e["toState"]) for e in events] == [("CREATED", "PENDING"), ("CONFIRMED", "CONFIRMED")]


# --- operators -------------------------------------------------------------------------------------


def test_expire_pending_runs_every_domain_and_is_staff_only(api, staff_api):
    past = timezone.now() - timedelta(hours=1)
    for _ in range(2):
        SlotBookingFactory(status="PENDING", created_at=past, expires_at=past + timedelta(minutes=5))
    SlotBookingFactory(status="PENDING")

    assert api.post("/api/admin/expire-pending").status_code == 403
    response = staff_api.post("/api/admin/expire-pending")

    assert response.status_code == 200
    assert response.json() == {"expired": 2}
    assert SlotBooking.objects.filter(status="EXPIRED").count() == 2
    assert staff_api.post("/api/admin/expire-pending").json() == {"expired": 0}


def test_analytics_is_staff_only_and_needs_both_dates(api, staff_api):
    today = timezone.localdate().isoformat()

    assert api.get("/api/admin/analytics", {"start_date": today, "end_date": today}).status_code == 403
    assert staff_api.get("/api/admin/analytics", {"start_date": today}).status_code == 400
    assert staff_api.get("/api/admin/analytics", {"start_date": today, "end_date": "2000-01-01"}).status_code == 400
    assert staff_api.get("/api/admin/analytics", {"start_date": "x", "end_date": today}).status_code == 400


@pytest.mark.parametrize(
    ("start", "end"), [("9999-01-01", "9999-12-31"), ("9998-12-01", "9998-12-31"), ("0001-01-01", "0001-01-02")]
)
def test_analytics_at_the_ends_of_the_calendar_is_400(staff_api, start, end):
    response = staff_api.get("/api/admin/analytics", {"start_date": start, "end_date": end})

    assert response.status_code == 400
    assert error_code(response) == "validation_error"


def test_analytics_over_an_empty_range(staff_api):
    response = staff_api.get("/api/admin/analytics", {"start_date": "2020-01-01", "end_date": "2020-01-02"})

    assert response.status_code == 200
    assert response.json() == {
        "totalBookings": 0,
        "cancellationRate": 0.0,
        "bookingsPerDay": [{"date": "2020-01-01", "count": 0}, {"date": "2020-01-02", "count": 0}],
        "topHosts": [],
    }


def test_analytics_counts_rates_days_and_top_hosts(staff_api):
    now = timezone.now()
    yesterday = now - timedelta(days=1)
    busy, quiet = HostFactory(name="Alice"), HostFactory(name="Bob")
    for _ in range(3):
        SlotBookingFactory(slot=SlotFactory(host=busy), created_at=now)
    SlotBookingFactory(slot=SlotFactory(host=quiet), created_at=yesterday)
    SlotBookingFactory(slot=SlotFactory(host=quiet), created_at=yesterday, status="CANCELLED")
    SlotBookingFactory(created_at=now - timedelta(days=40))
    today = timezone.localdate(now)
    start = timezone.localdate(yesterday)

    query = {"start_date": start.isoformat(), "end_date": today.isoformat()}

    body = staff_api.get("/api/admin/analytics", query).json()

    assert body["totalBookings"] == 5
    assert body["cancellationRate"] == 20.0
    assert sum(day["count"] for day in body["bookingsPerDay"]) == 5
    assert body["bookingsPerDay"][-1] == {"date": today.isoformat(), "count": 3 if start != today else 5}
    assert body["topHosts"] == [
        {"hostId": busy.pk, "hostName": "Alice", "bookingCount": 3},
        {"hostId": quiet.pk, "hostName": "Bob", "bookingCount": 1},
    ]


def test_form_encoded_metadata_is_parsed_as_json(api):
    slot = SlotFactory()
    form = urlencode({"slotId": slot.pk, "metadata": json.dumps({"a": 1, "note": "é"})})

    response = api.post("/api/bookings", form, content_type="application/x-www-form-urlencoded")

    assert response.status_code == 201, response.content
    assert SlotBooking.objects.get(slot=slot).metadata == {"a": 1, "note": "é"}


@pytest.mark.parametrize(
    "text", ["not json", "[1, 2]", '"a string"', json.dumps({"note": "x" * 5000}), '{"a": "\\u0000"}', "\x00"]
)
def test_form_encoded_metadata_that_cannot_be_stored_is_400_never_dropped(api, text):
    slot = SlotFactory()
    form = urlencode({"slotId": slot.pk, "metadata": text})

    response = api.post("/api/bookings", form, content_type="application/x-www-form-urlencoded")

    assert response.status_code == 400 and "metadata" in response.json()["error"]["details"]["fields"]
    assert not SlotBooking.objects.filter(slot=slot).exists()


# --- a guest is never in two places at once (docs/contract.md §2.1) -----------------------------------


def backstops(constraint: str) -> float:
    return CONSTRAINT_BACKSTOPS.labels(constraint)._value.get()


def overlapping(booking: SlotBooking, minutes: int = 15) -> Slot:
    """A slot of another host starting ``minutes`` into ``booking``."""
    return SlotFactory(start=booking.start + timedelta(minutes=minutes), end=booking.end + timedelta(minutes=minutes))


def test_booking_a_time_the_guest_already_has_with_another_host_is_409_naming_that_booking(api, user):
    mine = SlotBookingFactory(guest=user)
    before = backstops("slotbooking_guest_no_overlap")

    response = book(api, overlapping(mine))

    assert response.status_code == 409 and error_code(response) == "guest_overlap"
    details = response.json()["error"]["details"]
    assert details["bookingId"] == mine.pk
    assert (parse_datetime(details["startTime"]), parse_datetime(details["endTime"])) == (mine.start, mine.end)
    assert SlotBooking.objects.filter(guest=user).count() == 1
    assert backstops("slotbooking_guest_no_overlap") == before  # the check under the guest's lock refused it


def test_back_to_back_bookings_and_others_at_the_same_time_are_fine(api, user):
    mine = SlotBookingFactory(guest=user)

    assert book(api, SlotFactory(start=mine.end, end=mine.end + timedelta(minutes=30))).status_code == 201
    assert book(api, SlotFactory(start=mine.start - timedelta(minutes=30), end=mine.start)).status_code == 201
    assert book(api, SlotFactory(start=mine.start, end=mine.end, capacity=2)).status_code == 409
    SlotBookingFactory(slot=overlapping(mine))  # another guest at the same time: nothing to do with this one


def test_a_live_hold_blocks_its_guest_but_an_overdue_or_cancelled_one_does_not(api, user):
    hold = SlotBookingFactory(guest=user, status="PENDING")
    assert error_code(book(api, overlapping(hold))) == "guest_overlap"

    past = timezone.now() - timedelta(hours=1)
    SlotBooking.objects.filter(pk=hold.pk).update(created_at=past, expires_at=past + timedelta(minutes=10))
    assert book(api, overlapping(hold, minutes=5)).status_code == 201

    cancelled = SlotBookingFactory(guest=user, status="CANCELLED")
    assert book(api, overlapping(cancelled)).status_code == 201


def test_a_booking_the_guest_is_refused_for_changes_nothing_even_when_it_would_expire_holds(api, user):
    mine = SlotBookingFactory(guest=user)
    target = overlapping(mine)
    past = timezone.now() - timedelta(hours=1)
    stale = SlotBookingFactory(slot=target, status="PENDING", created_at=past, expires_at=past + timedelta(minutes=5))

    assert error_code(book(api, target)) == "guest_overlap"

    stale.refresh_from_db()
    target.refresh_from_db()
    assert (stale.status, target.booked) == ("PENDING", 1)  # refused before the write, nothing expired


def test_rescheduling_onto_a_time_overlapping_the_booking_itself_is_fine(api, user):
    old = SlotBookingFactory(guest=user)
    target = overlapping(old)

    response = api.post(f"/api/bookings/{old.pk}/reschedule", {"slotId": target.pk})

    assert response.status_code == 200, response.content
    body = response.json()
    assert (parse_datetime(body["startTime"]), parse_datetime(body["endTime"])) == (target.start, target.end)


def test_rescheduling_onto_a_time_of_another_of_the_guests_bookings_is_409_and_changes_nothing(api, user):
    other = SlotBookingFactory(guest=user)
    old = SlotBookingFactory(guest=user)

    response = api.post(f"/api/bookings/{old.pk}/reschedule", {"slotId": overlapping(other).pk})

    assert response.status_code == 409 and error_code(response) == "guest_overlap"
    assert response.json()["error"]["details"]["bookingId"] == other.pk
    old.refresh_from_db()
    assert old.status == "CONFIRMED"
    assert SlotBooking.objects.filter(guest=user).count() == 2
