"""What must always hold for cars and reservations (core.invariants; the claim-level ones come
from the engine)."""

from core.invariants import one_active_per
from reservations.models import Reservation

INVARIANTS = [
    one_active_per(
        "reservations.one_active_per_car", claims=Reservation, resource="car", blocking=Reservation.BLOCKING_STATES
    ),
]
