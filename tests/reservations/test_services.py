from datetime import timedelta

import pytest
from django.utils import timezone

from core.audit.services import trail
from core.errors import Forbidden, InvalidStateTransition
from reservations import services
from reservations.models import Reservation
from tests.reservations.factories import CarFactory, ReservationFactory

pytestmark = pytest.mark.django_db


def test_expire_due_flips_only_overdue_holds_in_batches():
    now = timezone.now()
    past = now - timedelta(hours=1)
    overdue = [ReservationFactory(created_at=past, expires_at=past + timedelta(minutes=1)) for _ in range(5)]
    running = ReservationFactory()
    confirmed = ReservationFactory(state="CONFIRMED", created_at=past, expires_at=past + timedelta(minutes=1))

    assert services.reservations_expire_due(now=now, batch_size=2) == 5

    assert set(Reservation.objects.filter(pk__in=[r.pk for r in overdue]).values_list("state", flat=True)) == {
        "EXPIRED"
    }
    for reservation in overdue:
        assert [(e.event_type, e.actor_label) for e in trail(reservation)] == [("EXPIRED", "system:expire_holds")]
    running.refresh_from_db()
    confirmed.refresh_from_db()
    assert (running.state, confirmed.state) == ("HELD", "CONFIRMED")
    assert services.reservations_expire_due(now=now) == 0


def test_an_operator_expires_a_running_hold(staff):
    reservation = ReservationFactory()

    services.reservation_expire(reservation_id=reservation.pk, user=staff, now=timezone.now())

    reservation.refresh_from_db()
    assert reservation.state == "EXPIRED"
    assert [(e.event_type, e.actor_id) for e in trail(reservation)] == [("EXPIRED", staff.pk)]


def test_expire_a_confirmed_reservation_is_refused(staff):
    reservation = ReservationFactory(state="CONFIRMED")

    with pytest.raises(InvalidStateTransition):
        services.reservation_expire(reservation_id=reservation.pk, user=staff, now=timezone.now())


def test_a_new_hold_after_a_cancellation(user):
    car = CarFactory()
    first = services.reservation_hold(car_id=car.pk, buyer=user, hold_minutes=5, now=timezone.now())
    services.reservation_cancel(reservation_id=first.pk, user=user, now=timezone.now())

    second = services.reservation_hold(car_id=car.pk, buyer=user, hold_minutes=5, now=timezone.now())

    assert second.state == "HELD" and second.pk != first.pk


def test_only_an_operator_expires_a_hold_now(user):
    reservation = ReservationFactory(buyer=user)

    with pytest.raises(Forbidden):
        services.reservation_expire(reservation_id=reservation.pk, user=user, now=timezone.now())

    reservation.refresh_from_db()
    assert reservation.state == "HELD"
    assert not trail(reservation).exists()
