"""What must always hold for slots and their bookings (core.invariants; the claim-level ones come
from the engine)."""

from core.invariants import Invariant, table
from slots.models import Slot, SlotBooking

_SLOT, _BOOKING = table(Slot), table(SlotBooking)
# The seats of a slot's PENDING and CONFIRMED bookings, overdue holds included (they stay counted until
# expired): a range of slotbooking_slot_status_idx (slot, status) per slot.
_CLAIMED = f"""(SELECT COALESCE(SUM(b.seats), 0) FROM {_BOOKING} b
                WHERE b.slot_id = s.id AND b.status IN ('PENDING', 'CONFIRMED'))"""

INVARIANTS = [
    Invariant(
        name="slots.booked_counted",
        holds="Each slot's booked equals the seats of its PENDING and CONFIRMED bookings.",
        sql=f"SELECT s.id FROM {_SLOT} s WHERE s.booked <> {_CLAIMED}",
        model=Slot,
    ),
    Invariant(
        name="slots.within_capacity",
        holds="No slot has more seats booked (PENDING or CONFIRMED) than its capacity.",
        sql=f"SELECT s.id FROM {_SLOT} s WHERE s.booked > s.capacity OR {_CLAIMED} > s.capacity",
        model=Slot,
    ),
]
