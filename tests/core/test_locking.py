"""The locking module refuses to lock outside a transaction: the lock would end with its statement."""

import pytest

from core import locking
from events import locks
from reservations import locks as reservations_locks
from reservations.models import Reservation
from slots import locks as slots_locks

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize(
    "lock",
    [
        lambda: locking.lock_user(1),
        lambda: locks.lock_event(1),
        lambda: locks.lock_event_sales(1),
        lambda: reservations_locks.lock_car(1),
        lambda: slots_locks.lock_slots([1]),
        lambda: locking.lock_claim(Reservation, 1),
    ],
)
def test_every_lock_refuses_to_run_outside_a_transaction(lock):
    with pytest.raises(RuntimeError, match="inside a transaction"):
        lock()
