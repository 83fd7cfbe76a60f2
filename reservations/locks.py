"""The reservations' row lock: the car (3 in the order of core/locking.py)."""

from __future__ import annotations

from core import locking
from reservations.models import Car


def lock_car(car_id: int) -> Car | None:
    """Serializes every write on one car (an edit of its details or status). A hold takes the same lock
    as its claim lock (``claim_lock_sql``), inside its one statement."""
    locking.require_transaction("lock_car")
    return next(iter(locking.lock_rows(Car, [car_id], locking.NO_KEY_UPDATE)), None)
