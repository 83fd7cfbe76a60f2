"""When a slot booking is reminded (booking_site.reminders): a booking, on a published slot or an
appointment, starts at its own ``start`` and was made when it was created (a reschedule makes a new
booking, made then, with the new start)."""

from django.db.models import F

from booking_site.reminders import Reminders
from slots.services import SLOT_BOOKINGS

REMINDERS = Reminders(engine=SLOT_BOOKINGS, starts=F("start"), made=F("created_at"), metadata={"slotId": F("slot_id")})
