"""Reads of cars and reservations that know about time: an overdue hold counts as free (docs/contract.md §2.2)."""

from __future__ import annotations

from datetime import datetime

from django.db.models import Exists, OuterRef, Q, QuerySet

from core.claims import ClaimQuerySet
from reservations.models import Car, Reservation
from reservations.services import RESERVATIONS
from web.accounts.models import User


def cars_with_availability(*, now: datetime) -> QuerySet[Car]:
    """Cars annotated with ``available``: ACTIVE and no active reservation at ``now``."""
    busy = Reservation.objects.active(now=now).filter(car=OuterRef("pk"))
    return Car.objects.annotate(available=Q(status=Car.Status.ACTIVE) & ~Exists(busy))


def reservations_with_effective_state(*, now: datetime) -> ClaimQuerySet[Reservation]:
    """Reservations annotated with ``effective_state``: an overdue HELD reads as EXPIRED before the
    expiry job has caught up with it."""
    return Reservation.objects.with_effective_state(now=now)


def reservations_visible_to(user: User, *, now: datetime) -> QuerySet[Reservation]:
    """A user sees their own reservations; operators see all (docs/contract.md §2.6: the reservations' policy)."""
    return RESERVATIONS.policy.visible(reservations_with_effective_state(now=now), user)


def car_current_reservation(*, car_id: int, now: datetime) -> Reservation | None:
    return reservations_with_effective_state(now=now).active(now=now).filter(car_id=car_id).first()
