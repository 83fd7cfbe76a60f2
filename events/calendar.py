"""Seat bookings in calendars (docs/contract.md §3.8): the file of one booking group, and the user's
booked seats in their feed (``web.ical``). An event has a start only: its entry lasts
``CALENDAR_EVENT_DURATION_MINUTES``."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from uuid import UUID

from django.db.models import F, Q

from core.audit.services import subject_key
from core.errors import NotFound
from core.policy import SEE
from events.models import Event, SeatClaim, SeatHoldGroup
from events.services.holds import SEAT_HOLDS
from events.services.rules import hold_subject
from web import ical
from web.accounts.models import User

State = SeatHoldGroup.State
SHOWN_EVENT_FIELDS = ("name", "event_date", "location")  # an event's changes the calendar shows


def booking_calendar(*, booking_group_id: UUID, user: User, now: datetime) -> bytes:
    """The calendar file of a seat booking, for its owner and operators. Only a confirmed (or since
    cancelled) hold group has a booking id, so every booking found has a file."""
    group = SeatHoldGroup.objects.select_related("event").filter(booking_group_id=booking_group_id).first()
    if group is None:
        raise NotFound(f"Booking {booking_group_id} does not exist.")
    SEAT_HOLDS.policy.require(user, SEE, group, what=f"Booking {booking_group_id}")
    return ical.document(_entries([group]))


def feed_entries(user: User, window: ical.Window) -> list[ical.Entry]:
    """The user's seat bookings, confirmed or recently cancelled."""
    groups = (
        SeatHoldGroup.objects.select_related("event")
        .filter(user=user, event__event_date__gte=window.since, event__event_date__lte=window.until)
        .filter(Q(state=State.CONFIRMED) | Q(state=State.CANCELLED, cancelled_at__gte=window.cancelled_since))
        .order_by("event__event_date", "id")
    )
    return _entries(list(groups))


def _entries(groups: list[SeatHoldGroup]) -> list[ical.Entry]:
    codes: defaultdict[UUID, list[str]] = defaultdict(list)
    seats = (
        # A claim in its group's state: a booking's seats cancelled on their own are no longer its seats.
        SeatClaim.objects.filter(group__in=[g.pk for g in groups], state=F("group__state"))
        .order_by("group", "seat__section", "seat__row", "seat__number")
        .values_list("group", "seat__code")
    )
    for group_id, code in seats:
        codes[group_id].append(code)
    found = ical.revisions(
        claims={hold_subject(groups[0]).type: [str(g.pk) for g in groups]} if groups else {},
        places={Event._meta.model_name or "": {str(g.event_id) for g in groups}},
        place_fields=SHOWN_EVENT_FIELDS,
    )
    return [_entry(group, codes[group.pk], found) for group in groups]


def _entry(group: SeatHoldGroup, codes: list[str], found: dict[tuple[str, str], ical.Revision]) -> ical.Entry:
    event = group.event
    sequence, stamp = ical.revised(
        found.get(subject_key(hold_subject(group))), found.get(subject_key(event)), since=group.updated_at
    )
    lines = [f"Booking {group.booking_group_id}", f"Seats ({len(codes)}): {', '.join(codes)}"]
    return ical.Entry(
        uid=ical.uid("seat-booking", group.booking_group_id),
        start=event.event_date,
        end=ical.event_end(event.event_date),
        summary=event.name,
        location=event.location,
        description="\n".join(lines),
        cancelled=group.state == State.CANCELLED,
        sequence=sequence,
        stamp=stamp,
    )
