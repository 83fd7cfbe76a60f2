"""The locking module refuses to lock outside a transaction: the lock would end with its statement."""

import pytest
from django.utils import timezone

from booking_site import locking
from reservations.models import Reservation

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize(
    "lock",
    [
        lambda: locking.lock_user(1),
        lambda: locking.share_event(1),
        lambda: locking.lock_event(1),
        lambda: locking.lock_event_sales(1),
        lambda: locking.lock_car(1),
        lambda: locking.lock_slots([1]),
        lambda: locking.lock_seats(event_id=1, seat_ids=[1]),
        lambda: locking.share_event_lock_seats(1, codes=["S1"], taken_at=timezone.now()),
        lambda: locking.share_event_lock_free_seats(1, quantity=1, window=1, free_at=timezone.now(), skip_locked=True),
        lambda: locking.lock_claim(Reservation, 1),
    ],
)
def test_every_lock_refuses_to_run_outside_a_transaction(lock):
    with pytest.raises(RuntimeError, match="inside a transaction"):
        lock()
