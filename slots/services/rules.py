"""A slot's limits and its refusals (the DomainErrors its writes raise)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from django.conf import settings

from core.errors import Conflict, DomainError, ValidationFailed
from slots.models import SlotBooking

if TYPE_CHECKING:
    from web.accounts.models import User

Status = SlotBooking.Status


MAX_CAPACITY = 10_000  # seats of one slot (the API, the admin forms and the services agree)


SLOT_HORIZON = timedelta(days=5 * 365 + 1)  # a slot ends at most five years from now (SLOT_HORIZON_TEXT)


SLOT_HORIZON_TEXT = "five years"


GUEST_NO_OVERLAP = "slotbooking_guest_no_overlap"  # the constraint behind the guest's rule (ADR 0014)


HOST_NO_OVERLAP = "slot_no_overlap_per_host"  # and the host's: published slots, appointments with the buffer after


HOST_BUFFER_BEFORE = "slot_buffer_before_per_host"  # and with the buffer before (ADR 0014)


def cancellation_window() -> timedelta:
    return timedelta(hours=settings.SLOTS_CANCELLATION_WINDOW_HOURS)


def hold_minutes_default() -> int:
    return settings.SLOTS_HOLD_MINUTES_DEFAULT


class SlotFull(Conflict):
    code = "slot_full"

    def __init__(self, *, slot_id: int, seats: int, remaining: int | None = None):
        tail = f" ({remaining} left)" if remaining is not None else ""
        super().__init__(
            f"Slot {slot_id} has not {seats} seat(s) left{tail}.", details={"slotId": slot_id, "seats": seats}
        )


class SlotOverlap(Conflict):
    code = "slot_overlap"


class SlotUnavailable(Conflict):
    code = "slot_unavailable"


class SlotBooked(Conflict):
    code = "slot_booked"


class GuestOverlap(Conflict):
    """The guest already has an active booking at that time, with any host (docs/contract.md §2.1)."""

    code = "guest_overlap"

    def __init__(self, *, booking_id: int | None = None, start: datetime | None = None, end: datetime | None = None):
        if booking_id is None or start is None or end is None:
            # Refused by the constraint: the clashing row is not read back (the statement failed).
            super().__init__("You already have an active booking overlapping this time.")
            return
        super().__init__(
            f"You already have booking {booking_id} from {start.isoformat()} to {end.isoformat()}.",
            details={"bookingId": booking_id, "startTime": start, "endTime": end},
        )


class OutsideAvailability(DomainError):
    status, code = 400, "outside_availability"


class OwnSlot(DomainError):
    status, code, message = 400, "own_slot", "You cannot book your own slot."


class SlotInPast(DomainError):
    status, code, message = 400, "slot_in_past", "The slot has already started."


class CancellationWindowClosed(DomainError):
    status, code = 400, "cancellation_window_closed"


class BookingNotPending(Conflict):
    """Confirming a booking that is not a PENDING hold (already confirmed, cancelled) is a 409 (docs/contract.md §6)."""

    code = "booking_not_pending"

    def __init__(self, *, booking_id: int, status: str):
        super().__init__(
            f"Booking {booking_id} is {status}; only a PENDING hold can be confirmed.",
            details={"fromState": status, "toState": Status.CONFIRMED},
        )


class NotAHost(DomainError):
    status, code, message = 403, "forbidden", "Only hosts publish slots."


def require_host(user: User) -> None:
    """Refuse ``user`` (403) unless they are a host: only a host sets their hours. The API asks it before it
    reads the document sent (permission before validation), ``availability_set`` again for every door."""
    if not user.is_host:
        raise NotAHost(f"User {user.pk} is not a host.")


def check_slot_times(start: datetime, end: datetime, *, now: datetime) -> None:
    """A slot ends after it starts, has not started, and ends within ``SLOT_HORIZON`` of ``now``.

    The horizon keeps every stored time far from the end of the calendar: a time near 9999-12-31
    could not be shown in a time zone east of UTC (Python's datetime stops at year 9999), so one such
    row would break every page listing it.
    """
    if end <= start:
        raise ValidationFailed.for_field("endTime", "Must be after startTime.")
    if start <= now:
        raise SlotInPast(f"A slot starting at {start.isoformat()} is in the past.")
    if end > now + SLOT_HORIZON:
        raise ValidationFailed.for_field(
            "endTime", f"A slot must end within {SLOT_HORIZON_TEXT} from now ({(now + SLOT_HORIZON).date()})."
        )
