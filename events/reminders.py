"""When a seat booking is reminded (booking_site.reminders): a confirmed hold group starts with its
event, at the event's date as it is when the reminder is due (a date moved before then moves the
reminder), and was made when it was confirmed (a group written without its confirm time, outside the
services, when it was created)."""

from django.db.models import F
from django.db.models.functions import Coalesce

from booking_site.reminders import Reminders
from events.services import SEAT_HOLDS

REMINDERS = Reminders(
    engine=SEAT_HOLDS,
    starts=F("event__event_date"),
    made=Coalesce(F("confirmed_at"), F("created_at")),
    metadata={"eventId": F("event_id"), "bookingGroupId": F("booking_group_id")},
)
