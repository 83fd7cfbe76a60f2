"""When a seat booking is reminded (core.reminders): a confirmed hold group starts with its
event, at the event's date as it is when the reminder is due (a date moved before then moves the
reminder), and was made when it was confirmed (a group written without its confirm time, outside the
services, when it was created)."""

from psycopg import sql

from core.claims import column
from core.reminders import BOOKING, Reminders
from core.statements import table
from events.models import Event, SeatHoldGroup
from events.services.holds import SEAT_HOLDS

REMINDERS = Reminders(
    engine=SEAT_HOLDS,
    starts=sql.SQL("(SELECT {} FROM {} e WHERE {} = {})").format(
        column(Event, "event_date", "e"),
        table(Event),
        column(Event, "id", "e"),
        column(SeatHoldGroup, "event", BOOKING),
    ),
    made=sql.SQL("COALESCE({}, {})").format(
        column(SeatHoldGroup, "confirmed_at", BOOKING), column(SeatHoldGroup, "created_at", BOOKING)
    ),
    metadata={
        "eventId": column(SeatHoldGroup, "event", BOOKING),
        "bookingGroupId": column(SeatHoldGroup, "booking_group_id", BOOKING),
    },
)
