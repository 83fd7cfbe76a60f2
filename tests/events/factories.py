import uuid
from datetime import timedelta

import factory
from django.db.models import Count
from django.utils import timezone

from events import selectors
from events.models import Event, Seat, SeatClaim, SeatHoldGroup
from events.services import events
from tests.factories import UserFactory, house


def make_event(*, total_seats: int | None = 10, layout: tuple | None = None, **fields) -> Event:
    """An event with its seats, created the way operators do (the service). An ``event_date`` in the
    past, which the service refuses, is written directly afterwards: an event that has taken place."""
    fields.setdefault("name", "Coldplay Concert")
    fields.setdefault("event_date", timezone.now() + timedelta(days=30))
    fields.setdefault("location", "Mumbai")
    fields.setdefault("organisation_id", house().pk)
    event_date = fields["event_date"]
    if event_date <= timezone.now():
        fields["event_date"] = timezone.now() + timedelta(days=30)
    seat_layout = events.SeatLayout(*layout) if layout else None
    event = events.event_create(
        total_seats=None if layout else total_seats, layout=seat_layout, now=timezone.now(), **fields
    )
    if event.event_date != event_date:
        Event.objects.filter(pk=event.pk).update(event_date=event_date)
        event.event_date = event_date
    return event


class EventFactory(factory.django.DjangoModelFactory):
    """An event row written directly, without seats (for constraint tests)."""

    class Meta:
        model = Event

    name = factory.Sequence(lambda n: f"Event {n}")
    event_date = factory.LazyFunction(lambda: timezone.now() + timedelta(days=30))
    location = "Mumbai"
    organisation = factory.LazyFunction(house)
    total_seats = 10
    created_at = factory.LazyFunction(timezone.now)
    updated_at = factory.SelfAttribute("created_at")


def write_hold(event: Event, codes: list[str], *, user=None, state="HELD", expires_at=None, created_at=None):
    """A hold group and its claims written directly (bypassing the services), e.g. one already overdue."""
    created_at = created_at or timezone.now()
    expires_at = expires_at or created_at + timedelta(minutes=5)
    seats = list(Seat.objects.filter(event=event, code__in=codes))
    group = SeatHoldGroup.objects.create(
        event=event,
        user=user or UserFactory(),
        state=state,
        seat_count=len(seats),
        expires_at=expires_at,
        created_at=created_at,
        updated_at=created_at,
        booking_group_id=uuid.uuid4() if state in ("CONFIRMED", "CANCELLED") else None,
    )
    SeatClaim.objects.bulk_create(
        [SeatClaim(group=group, event=event, seat=s, state=state, expires_at=expires_at) for s in seats]
    )
    if state == "CONFIRMED":
        Event.objects.filter(pk=event.pk).update(confirmed_seats=event.confirmed_seats + len(seats))
        event.refresh_from_db()
    return group


def overdue_hold(event: Event, codes: list[str], *, user=None):
    past = timezone.now() - timedelta(hours=1)
    return write_hold(event, codes, user=user, created_at=past, expires_at=past + timedelta(minutes=5))


def violations(event: Event) -> list[str]:
    """Every way the seat claims of ``event`` could be wrong; empty when all is well."""
    found = []
    doubles = (
        SeatClaim.objects.filter(event=event, state__in=["HELD", "CONFIRMED"])
        .values("seat_id")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
    )
    found += [f"seat {d['seat_id']} in {d['n']} active claims" for d in doubles]
    for group in SeatHoldGroup.objects.filter(event=event):
        states = set(group.claims.values_list("state", flat=True))
        # A booking's seats cancelled on their own (a partial cancel) are CANCELLED claims, out of its count.
        alone = {"CANCELLED"} if group.state in ("CONFIRMED", "CANCELLED") else set()
        in_state = group.claims.filter(state=group.state).count()
        counted = in_state >= group.seat_count if group.state == "CANCELLED" else in_state == group.seat_count
        if not states - alone <= {group.state} <= states or not counted:
            found.append(f"group {group.pk} is {group.state} but its claims are {states}")
    event.refresh_from_db()
    confirmed = SeatClaim.objects.filter(event=event, state="CONFIRMED").count()
    if event.confirmed_seats != confirmed:
        found.append(f"counter says {event.confirmed_seats} booked, claims say {confirmed}")
    counted = selectors.event_with_counts(event_id=event.pk, now=timezone.now())
    parts = (counted.confirmed_seats, counted.held_seats, counted.available_seats)
    if sum(parts) != counted.total_seats or min(parts) < 0:
        found.append(f"counts {parts} do not add up to {counted.total_seats}")
    return found
