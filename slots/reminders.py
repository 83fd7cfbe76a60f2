"""When a slot booking is reminded (booking_site.reminders): a booking, on a published slot or an
appointment, starts at its own ``start`` and was made when it was created (a reschedule makes a new
booking, made then, with the new start)."""

from booking_site.claims import column
from booking_site.reminders import BOOKING, Reminders
from slots.models import SlotBooking
from slots.services import SLOT_BOOKINGS

REMINDERS = Reminders(
    engine=SLOT_BOOKINGS,
    starts=column(SlotBooking, "start", BOOKING),
    made=column(SlotBooking, "created_at", BOOKING),
    metadata={"slotId": column(SlotBooking, "slot", BOOKING)},
)
