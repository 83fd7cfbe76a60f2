"""When a slot booking is reminded (core.reminders): a booking, on a published slot or an
appointment, starts at its own ``start`` and was made when it was created (a reschedule makes a new
booking, made then, with the new start)."""

from core.claims import column
from core.reminders import BOOKING, Reminders
from slots.models import SlotBooking
from slots.services.bookings import SLOT_BOOKINGS

REMINDERS = Reminders(
    engine=SLOT_BOOKINGS,
    starts=column(SlotBooking, "start", BOOKING),
    made=column(SlotBooking, "created_at", BOOKING),
    metadata={"slotId": column(SlotBooking, "slot", BOOKING)},
)
