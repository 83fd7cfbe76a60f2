"""The lean write path (issue "One claim engine with a lean write path", section 2; issue 18): round trips to
PostgreSQL per slot-booking write over HTTP on the cached-token path, counting BEGIN and COMMIT
(``tests.round_trips``). A slot booking is one statement in autocommit (docs/decisions/0022-one-statement-holds.md);
the waiter's fallback (4) is pinned in ``tests/slots/test_concurrency.py``."""

from datetime import timedelta

import pytest
from django.utils import timezone

from core.audit.services import trail
from slots.availability import availability_clean
from slots.models import Slot, SlotBooking
from slots.services import appointments, slots
from tests.factories import UserFactory
from tests.round_trips import round_trips
from tests.slots.factories import HostFactory, SlotBookingFactory, SlotFactory, morning

pytestmark = pytest.mark.django_db(transaction=True)


def overdue_hold(slot: Slot) -> SlotBooking:
    past = timezone.now() - timedelta(hours=1)
    return SlotBookingFactory(slot=slot, status="PENDING", created_at=past, expires_at=past + timedelta(minutes=5))


@pytest.mark.parametrize(("body", "status"), [({}, "CONFIRMED"), ({"hold": True}, "PENDING")])
def test_a_booking_is_one_round_trip(cached_api_of, body, status):
    slot, guest = SlotFactory(), UserFactory()
    api = cached_api_of(guest)

    with round_trips() as trips:
        response = api.post("/api/bookings", {"slotId": slot.pk, **body})

    assert response.status_code == 201, response.content
    assert trips.count == 1, trips.statements  # the statement, in autocommit: no BEGIN, no COMMIT
    booking = SlotBooking.objects.get(pk=response.json()["id"])
    assert booking.status == status
    [created] = trail(booking)
    assert (created.event_type, created.to_state, created.actor_id) == ("CREATED", status, guest.pk)
    slot.refresh_from_db()
    assert slot.booked == 1


def test_a_keyed_booking_is_two_round_trips(cached_api_of):
    """A key's BEGIN, lookup and gate ride in front of the statement, its record's INSERT with the COMMIT
    (ADR 0003): 2, as the car's (docs/decisions/0022-one-statement-holds.md)."""
    slot, api = SlotFactory(), cached_api_of(UserFactory())

    with round_trips() as trips:
        response = api.post("/api/bookings", {"slotId": slot.pk}, HTTP_IDEMPOTENCY_KEY="slot-1")

    assert response.status_code == 201, response.content
    assert trips.count == 2, trips.statements


def test_a_booking_that_expires_an_overdue_hold_first_is_one_round_trip(cached_api_of):
    slot = SlotFactory()
    overdue = overdue_hold(slot)
    api = cached_api_of(UserFactory())

    with round_trips() as trips:
        response = api.post("/api/bookings", {"slotId": slot.pk})

    assert response.status_code == 201, response.content
    assert trips.count == 1, trips.statements
    overdue.refresh_from_db()
    slot.refresh_from_db()
    assert (overdue.status, slot.booked) == ("EXPIRED", 1)
    assert [(e.event_type, e.actor_label) for e in trail(overdue)] == [("EXPIRED", "system:expire_holds")]


def test_a_booking_of_a_full_slot_is_one_round_trip(cached_api_of):
    slot = SlotFactory()
    SlotBookingFactory(slot=slot)
    api = cached_api_of(UserFactory())

    with round_trips() as trips:
        response = api.post("/api/bookings", {"slotId": slot.pk})

    assert response.status_code == 409, response.content
    assert response.json()["error"]["code"] == "slot_full"
    assert trips.count == 1, trips.statements  # refused by its snapshot: no lock taken, nothing written


def test_a_booking_over_the_guests_limit_is_one_round_trip(cached_api_of):
    guest, host = UserFactory(), HostFactory()
    SlotBookingFactory(guest=guest, slot=SlotFactory(host=host))
    slot, api = SlotFactory(host=host), cached_api_of(guest)

    with round_trips() as trips:
        response = api.post("/api/bookings", {"slotId": slot.pk})

    assert response.status_code == 409, response.content
    assert response.json()["error"]["code"] == "limit_reached"
    assert trips.count == 1, trips.statements  # refused by its snapshot: no lock taken, nothing written


@pytest.mark.parametrize(
    ("path", "status", "to_state"), [("confirm", "PENDING", "CONFIRMED"), ("cancel", "CONFIRMED", "CANCELLED")]
)
def test_a_confirm_or_a_cancel_is_one_round_trip(cached_api_of, path, status, to_state):
    guest = UserFactory()
    slot = SlotFactory(start=timezone.now() + timedelta(days=3))
    booking = SlotBookingFactory(guest=guest, slot=slot, status=status, metadata={"note": "window seat"})
    api = cached_api_of(guest)

    with round_trips() as trips:
        response = api.post(f"/api/bookings/{booking.pk}/{path}", {})

    assert response.status_code == 200, response.content
    assert trips.count == 1, trips.statements  # the statement, in autocommit: no BEGIN, no COMMIT
    assert response.json()["metadata"] == booking.metadata and response.json()["status"] == to_state
    assert [(e.event_type, e.from_state, e.actor_id) for e in trail(booking).exclude(event_type="CREATED")] == [
        (to_state, status, guest.pk)
    ]
    booking.slot.refresh_from_db()
    assert booking.slot.booked == (1 if to_state == "CONFIRMED" else 0)


def test_releasing_a_hold_is_one_round_trip(cached_api_of):
    guest = UserFactory()
    hold = SlotBookingFactory(guest=guest, status="PENDING")
    api = cached_api_of(guest)

    with round_trips() as trips:
        response = api.post(f"/api/bookings/{hold.pk}/cancel", {})

    assert response.status_code == 200, response.content
    assert trips.count == 1, trips.statements  # the statement, in autocommit: no BEGIN, no COMMIT
    hold.slot.refresh_from_db()
    assert hold.slot.booked == 0


def test_a_reschedule_is_six_round_trips(cached_api_of):
    """Two claims: BEGIN, the booking's guest and slot (unlocked), the guest and both slots, the booking,
    the move, COMMIT."""
    guest, host = UserFactory(), HostFactory()
    old = SlotBookingFactory(guest=guest, slot=SlotFactory(host=host))
    target = SlotFactory(host=host)
    overdue = overdue_hold(target)
    api = cached_api_of(guest)

    with round_trips() as trips:
        response = api.post(f"/api/bookings/{old.pk}/reschedule", {"slotId": target.pk})

    assert response.status_code == 200, response.content
    assert trips.count <= 6, trips.statements
    moved = SlotBooking.objects.get(pk=response.json()["id"])
    assert (moved.slot_id, moved.status, moved.rescheduled_from_id) == (target.pk, "CONFIRMED", old.pk)
    assert [(e.event_type, e.from_state, e.to_state) for e in trail(old)] == [("RESCHEDULED", "CONFIRMED", "CANCELLED")]
    assert [(e.event_type, e.metadata["rescheduledFromId"]) for e in trail(moved)] == [("CREATED", old.pk)]
    assert [(e.event_type, e.actor_label) for e in trail(overdue)] == [("EXPIRED", "system:expire_holds")]
    old.slot.refresh_from_db()
    target.refresh_from_db()
    assert (old.slot.booked, target.booked) == (0, 1)


def working_host():
    host = HostFactory()
    document = {"timeZone": "UTC", "weekly": [{"weekday": d, "start": "00:00", "end": "24:00"} for d in range(7)]}
    slots.availability_set(
        host=host, fields=availability_clean({**document, "durations": [30]}), actor=host, now=timezone.now()
    )
    return host


def book_interval(api, host, start):
    end = start + timedelta(minutes=30)
    return api.post("/api/bookings", {"hostId": host.pk, "startTime": start.isoformat(), "endTime": end.isoformat()})


def test_an_interval_booking_is_five_round_trips(cached_api_of):
    """BEGIN, the guest's and the host's rows, one read of the host's hours and of every rule (the guest's
    bookings, the host's time, the overdue holds in the way), the slot and the booking with its CREATED event,
    COMMIT."""
    host, guest, start = working_host(), UserFactory(), morning(2)
    api = cached_api_of(guest)

    with round_trips() as trips:
        response = book_interval(api, host, start)

    assert response.status_code == 201, response.content
    assert trips.count <= 5, trips.statements
    booking = SlotBooking.objects.get(pk=response.json()["id"])
    assert [(e.event_type, e.to_state) for e in trail(booking)] == [("CREATED", "CONFIRMED")]


def test_an_interval_booking_over_an_overdue_hold_expires_it_in_three_more(cached_api_of):
    """The five, and the overdue hold's slot locked, the hold locked, expired with its event."""
    host, start = working_host(), morning(2)
    earlier = appointments.appointment_book(
        host_id=host.pk,
        guest=UserFactory(),
        start=start,
        end=start + timedelta(minutes=30),
        now=timezone.now(),
        hold=True,
    )
    past = timezone.now() - timedelta(minutes=1)
    SlotBooking.objects.filter(pk=earlier.pk).update(created_at=past - timedelta(minutes=10), expires_at=past)
    api = cached_api_of(UserFactory())

    with round_trips() as trips:
        response = book_interval(api, host, start)

    assert response.status_code == 201, response.content
    assert trips.count <= 8, trips.statements
    earlier.refresh_from_db()
    assert earlier.status == "EXPIRED"
