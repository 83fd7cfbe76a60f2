"""What must always hold for cars and reservations (booking_site.invariants; the claim-level ones come
from the engine)."""

from booking_site.invariants import one_active_per
from reservations.models import Reservation

INVARIANTS = [
    one_active_per(
        "reservations.one_active_per_car", claims=Reservation, resource="car", blocking=Reservation.BLOCKING_STATES
    ),
]
