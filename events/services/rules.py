"""An event's limits and its refusals (the DomainErrors its writes raise)."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta

from core.audit import services as audit
from core.errors import Conflict, DomainError
from events.models import SeatHoldGroup, WaitlistEntry

State = SeatHoldGroup.State


Entry = WaitlistEntry.State


# What a hold group's transition makes of the waiting-list entry it was offered to.
ENTRY_STATE_OF = {State.CONFIRMED: Entry.ACCEPTED, State.RELEASED: Entry.EXPIRED, State.EXPIRED: Entry.EXPIRED}


FREEING_STATES = (State.RELEASED, State.EXPIRED, State.CANCELLED)  # transitions whose seats are free again


OFFER_ACTOR = "system:waitlist"  # the actor of an offer's hold: the waiting list made it


# An offer judges a seat by its stored rows: a hold, even an overdue one, still has it (until it is expired).
OFFER_FREE_AT = datetime.min.replace(tzinfo=UTC)


MAX_SEATS_PER_EVENT = 100_000


MAX_SEATS_PER_HOLD = 50


PICK_ATTEMPTS = 20  # best-available: how often to pick again when the seats locked came up short


PICK_SLACK = 4  # best-available: candidates locked beyond the quantity, so a run can still be found


logger = logging.getLogger(__name__)


SECTION_NAME = re.compile(r"^[A-Za-z0-9]{1,20}$")


HOLD_MINUTES_RANGE = (1, 60)


ADMITTED_PER_MINUTE_RANGE = (1, 10_000)  # event_admitted_per_minute_range


ADMISSION_WINDOW_RANGE = (1, 120)  # event_admission_window_range


# How far ahead an event may be scheduled. Ten years is past any real on-sale window, and keeps every
# event date far from datetime's year-9999 edge, where rendering it in a time zone east of UTC (or
# reading a naive date in one west of it) overflows.
MAX_EVENT_DATE_AHEAD = timedelta(days=3653)


class SeatsUnavailable(Conflict):
    code = "seats_unavailable"


class SalesClosed(Conflict):
    code = "sales_closed"


class HoldNotActive(Conflict):
    code = "hold_not_active"


class WaitlistActive(Conflict):
    """A public hold on an event whose waiting list has someone WAITING: freed seats are theirs first."""

    code = "waitlist_active"


class SeatsAvailable(Conflict):
    """Joining the waiting list while that many seats are free and nobody waits: hold them instead."""

    code = "seats_available"


class WaitlistClosed(Conflict):
    code = "waitlist_closed"


class AlreadyWaiting(Conflict):
    code = "already_waiting"


class EntryNotWaiting(Conflict):
    code = "waitlist_entry_not_waiting"


class BookingNotActive(Conflict):
    code = "booking_not_active"


class NotAdmitted(DomainError):
    """The event's sale is behind its admission queue, and the hold brought no ``X-Queue-Token`` of an
    entry of its user admitted now (docs/decisions/0017-admission-queue.md)."""

    status, code = 403, "not_admitted"


class EventMismatch(DomainError):
    status, code = 400, "event_mismatch"


class SeatCountConflict(Conflict):
    """The event's booked-seat counter refused a move (``event_confirmed_within_total``): the counter
    and the claims disagree. Nothing is written; the request may be retried once an operator has
    looked (the log says which event)."""

    code = "seat_count_conflict"


HOLD_SUBJECT, ENTRY_SUBJECT = "seat_hold_group", "waitlist_entry"  # the audit subjects of a hold group, an entry


def hold_subject(group: SeatHoldGroup) -> audit.Subject:
    """A hold group's whole life (held, confirmed as a booking, cancelled) is one audit subject."""
    return audit.Subject(type=HOLD_SUBJECT, id=group.pk)


def event_date_problem(event_date: datetime, *, now: datetime) -> str | None:
    """Why ``event_date`` cannot be an event's date, or None. An event is scheduled in the future, at
    most ``MAX_EVENT_DATE_AHEAD`` from now (the API, the admin forms and the services all ask this)."""
    if event_date <= now:
        return "The event date must be in the future."
    if event_date > now + MAX_EVENT_DATE_AHEAD:
        return f"The event date must be at most {MAX_EVENT_DATE_AHEAD.days // 365} years ahead."
    return None
