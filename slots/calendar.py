"""Slot bookings and appointments in calendars (docs/contract.md §3.8): the file of one booking, and the
bookings of one user's feed, as its guest and as the host of their slots (``web.ical``)."""

from __future__ import annotations

from datetime import datetime

from django.db.models import Q, QuerySet

from core.audit.services import subject_key
from core.errors import NotFound
from core.policy import SEE
from slots.models import Slot, SlotBooking
from slots.services.bookings import SLOT_BOOKINGS
from web import ical
from web.accounts.models import User

Status = SlotBooking.Status
SHOWN_SLOT_FIELDS = ("title", "specialization")  # a slot's changes the calendar shows; its time never changes
IN_CALENDAR = (Status.CONFIRMED, Status.CANCELLED)


def _bookings() -> QuerySet[SlotBooking]:
    return SlotBooking.objects.select_related("slot__host", "guest")


def booking_calendar(*, booking_id: int, user: User, now: datetime) -> bytes:
    """The calendar file of a booking, for whoever may see it (its guest, the slot's host, operators)."""
    booking = _bookings().filter(pk=booking_id).first()
    if booking is None:
        raise NotFound(f"Booking {booking_id} does not exist.")
    SLOT_BOOKINGS.policy.require(user, SEE, booking, what=f"Booking {booking_id}")
    state = booking.state_at(now)  # an overdue hold reads EXPIRED (docs/contract.md §2.2)
    if state not in IN_CALENDAR:
        raise ical.BookingNotConfirmed(what=f"Booking {booking_id}", state=state)
    return ical.document(_entries([booking]))


def feed_entries(user: User, window: ical.Window) -> list[ical.Entry]:
    """The user's bookings as a guest and their slots' bookings as a host, confirmed or recently cancelled."""
    bookings = (
        _bookings()
        .filter(Q(guest=user) | Q(slot__host=user), start__gte=window.since, start__lte=window.until)
        .filter(Q(status=Status.CONFIRMED) | Q(status=Status.CANCELLED, updated_at__gte=window.cancelled_since))
        .order_by("start", "id")
    )
    return _entries(list(bookings))


def _entries(bookings: list[SlotBooking]) -> list[ical.Entry]:
    found = ical.revisions(
        claims={SlotBooking._meta.model_name or "": [str(b.pk) for b in bookings]},
        places={Slot._meta.model_name or "": {str(b.slot_id) for b in bookings}},
        place_fields=SHOWN_SLOT_FIELDS,
    )
    return [_entry(booking, found) for booking in bookings]


def _entry(booking: SlotBooking, found: dict[tuple[str, str], ical.Revision]) -> ical.Entry:
    slot, host, guest = booking.slot, booking.slot.host, booking.guest
    sequence, stamp = ical.revised(
        found.get(subject_key(booking)), found.get(subject_key(slot)), since=booking.updated_at
    )
    what = slot.title or slot.specialization or ("Appointment" if slot.kind == Slot.Kind.APPOINTMENT else "Booking")
    location = booking.metadata.get("location") if isinstance(booking.metadata, dict) else None
    lines = [
        f"Booking {booking.pk}",
        f"Seats: {booking.seats}",
        f"Host: {host.name or host.email} <{host.email}>",
        f"Guest: {guest.name or guest.email} <{guest.email}>",
    ]
    if booking.reason and booking.status == Status.CANCELLED:
        lines.append(f"Cancelled: {booking.reason}")
    return ical.Entry(
        uid=ical.uid("slot-booking", booking.pk),
        start=booking.start,
        end=booking.end,
        summary=f"{what} with {host.name or host.email}",
        location=location if isinstance(location, str) else "",
        description="\n".join(lines),
        cancelled=booking.status == Status.CANCELLED,
        sequence=sequence,
        stamp=stamp,
    )
