"""Cancelling part of a seat booking: POST /api/events/bookings/{bookingGroupId}/cancel with seatCodes
(docs/contract.md §5)."""

import pytest
from django.utils import timezone

from core import errors
from core.audit.services import trail
from events import selectors
from events.models import Event, SeatHoldGroup, WaitlistEntry
from events.services import rules, seat_holds, waitlist
from tests.calendars import read_one
from tests.events.factories import make_event, violations, write_hold
from tests.factories import UserFactory, house
from web.webhooks import services as webhooks
from web.webhooks.catalogue import EVENT_TYPES, event_type
from web.webhooks.services import webhooks_deliver

pytestmark = pytest.mark.django_db


def booked(event, user, codes) -> SeatHoldGroup:
    held = seat_holds.seat_hold(event_id=event.pk, user=user, now=timezone.now(), seat_codes=codes)
    return seat_holds.seat_hold_confirm(event_id=event.pk, hold_group_id=held.pk, user=user, now=timezone.now())


def cancel(group, user, codes=None, reason=""):
    return seat_holds.seat_booking_cancel(
        booking_group_id=group.booking_group_id, user=user, now=timezone.now(), reason=reason, seat_codes=codes
    )


def url(group) -> str:
    return f"/api/events/bookings/{group.booking_group_id}/cancel"


def test_the_named_seats_are_freed_and_the_rest_stay_booked(user):
    event = make_event(total_seats=4)
    group = booked(event, user, ["S1", "S2", "S3"])

    left = cancel(group, user, ["S3", "S1"], reason="two could not come")

    group.refresh_from_db()
    event.refresh_from_db()
    assert (left.state, left.seat_codes) == ("CONFIRMED", ["S2"])
    assert (group.state, group.seat_count) == ("CONFIRMED", 1)
    assert selectors.group_seat_codes(group) == ["S2"]
    assert event.confirmed_seats == 1
    again = seat_holds.seat_hold(event_id=event.pk, user=UserFactory(), now=timezone.now(), seat_codes=["S1", "S3"])
    assert again.state == "HELD"  # free again
    assert violations(event) == []
    [partial] = trail(rules.hold_subject(group)).filter(event_type=seat_holds.SEATS_CANCELLED)
    assert (partial.from_state, partial.to_state, partial.actor_id) == ("CONFIRMED", "CONFIRMED", user.pk)
    assert partial.metadata == {
        "eventId": event.pk,
        "bookingGroupId": str(group.booking_group_id),
        "seatCodes": ["S1", "S3"],
        "seatCount": 1,
        "reason": "two could not come",
    }
    assert event_type(partial) == "seat_hold.seats_cancelled" and event_type(partial) in EVENT_TYPES


def test_cancelling_its_last_seats_cancels_the_booking(user):
    event = make_event(total_seats=3)
    group = booked(event, user, ["S1", "S2"])
    cancel(group, user, ["S1"])

    last = cancel(group, user, ["S2"])

    event.refresh_from_db()
    assert last.state == "CANCELLED" and last.cancelled_at is not None
    assert event.confirmed_seats == 0
    assert list(trail(rules.hold_subject(group)).values_list("event_type", flat=True)) == [
        "CREATED",
        "CONFIRMED",
        seat_holds.SEATS_CANCELLED,
        "CANCELLED",
    ]
    assert violations(event) == []


def test_without_seat_codes_everything_is_cancelled_as_before(user):
    event = make_event(total_seats=3)
    group = booked(event, user, ["S1", "S2", "S3"])
    cancel(group, user, ["S2"])

    whole = cancel(group, user)

    event.refresh_from_db()
    assert whole.state == "CANCELLED" and event.confirmed_seats == 0
    assert violations(event) == []


@pytest.mark.parametrize("codes", [["S9"], ["S3"], ["S1", "S1"], []])
def test_a_seat_not_booked_in_it_is_refused_and_nothing_changes(user, codes):
    event = make_event(total_seats=4)
    group = booked(event, user, ["S1", "S2"])
    write_hold(event, ["S3"], state="CONFIRMED")  # another's booking

    with pytest.raises(errors.ValidationFailed) as refused:
        cancel(group, user, codes)

    assert "seatCodes" in refused.value.details["fields"]
    group.refresh_from_db()
    assert group.seat_count == 2 and selectors.group_seat_codes(group) == ["S1", "S2"]


def test_a_seat_cancelled_already_is_refused(api, user):
    group = booked(make_event(total_seats=3), user, ["S1", "S2", "S3"])
    cancel(group, user, ["S2"])

    response = api.post(url(group), {"seatCodes": ["S1", "S2"]}, format="json")

    assert response.status_code == 400
    body = response.json()
    assert body["error"]["code"] == "validation_error"
    assert body["error"]["details"]["seatCodes"] == ["S2"]


def test_a_cancelled_booking_and_another_users_booking_are_refused(client_for, user, other_user):
    event = make_event(total_seats=4)
    group = booked(event, user, ["S1", "S2"])

    assert client_for(other_user).post(url(group), {"seatCodes": ["S1"]}, format="json").status_code == 403
    cancel(group, user)
    response = client_for(user).post(url(group), {"seatCodes": ["S1"]}, format="json")
    assert response.status_code == 409 and response.json()["error"]["code"] == "booking_not_active"


def test_the_api_answers_the_seats_still_booked_and_replays_by_idempotency_key(api, user):
    event = make_event(total_seats=4)
    group = booked(event, user, ["S1", "S2", "S3"])

    first = api.post(url(group), {"seatCodes": ["S2"]}, format="json", HTTP_IDEMPOTENCY_KEY="part-1")
    retry = api.post(url(group), {"seatCodes": ["S2"]}, format="json", HTTP_IDEMPOTENCY_KEY="part-1")

    assert first.status_code == retry.status_code == 200
    assert first.json() == {
        "cancelled": False,
        "bookingGroupId": str(group.booking_group_id),
        "seatCodes": ["S1", "S3"],
    }
    assert retry["Idempotent-Replayed"] == "true" and retry.json() == first.json()
    event.refresh_from_db()
    assert event.confirmed_seats == 2
    assert trail(rules.hold_subject(group)).filter(event_type=seat_holds.SEATS_CANCELLED).count() == 1
    whole = api.post(url(group), {}, format="json").json()
    assert whole == {"cancelled": True, "bookingGroupId": str(group.booking_group_id), "seatCodes": []}


def test_a_seat_freed_while_people_wait_is_offered_to_the_head(user):
    event = make_event(total_seats=3)
    group = booked(event, user, ["S1", "S2", "S3"])
    Event.objects.filter(pk=event.pk).update(waitlist_enabled=True)
    head = waitlist.waitlist_join(event_id=event.pk, user=UserFactory(), quantity=1, now=timezone.now())

    cancel(group, user, ["S2"])

    head = WaitlistEntry.objects.select_related("hold_group").get(pk=head.pk)
    assert head.state == "OFFERED" and selectors.group_seat_codes(head.hold_group) == ["S2"]
    event.refresh_from_db()
    assert (event.confirmed_seats, event.waiting_count) == (2, 0)
    assert violations(event) == []


def test_the_calendar_file_lists_only_the_seats_still_booked_and_its_sequence_grows(api, user):
    group = booked(make_event(total_seats=3), user, ["S1", "S2", "S3"])
    calendar = f"/api/events/bookings/{group.booking_group_id}/calendar"
    before = read_one(api.get(calendar).content)

    cancel(group, user, ["S1", "S3"])
    after = read_one(api.get(calendar).content)

    assert after.description == f"Booking {group.booking_group_id}\nSeats (1): S2"
    assert after.status == "CONFIRMED" and after.sequence > before.sequence and after.uid == before.uid
    cancel(group, user)
    cancelled = read_one(api.get(calendar).content)
    assert cancelled.status == "CANCELLED" and cancelled.sequence > after.sequence
    assert cancelled.description == f"Booking {group.booking_group_id}\nSeats (3): S1, S2, S3"  # all it had


def test_the_partial_cancel_reaches_webhook_subscribers(receiver, user):
    webhooks.webhook_endpoint_create(
        organisation_id=house().pk, url=receiver.url, description="test receiver", now=timezone.now()
    )
    group = booked(make_event(total_seats=3), user, ["S1", "S2"])
    cancel(group, user, ["S1"])

    webhooks_deliver()

    bodies = [b for b in receiver.bodies() if b"seats_cancelled" in b]
    assert len(bodies) == 1 and str(group.pk).encode() in bodies[0]
