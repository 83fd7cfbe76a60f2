"""Every write to cars and reservations (SPEC 4). The lifecycle is ``booking_site.engine``'s; this
module declares what is the cars' own: the car row is what a hold locks, one active reservation per
car is its capacity rule, and ``car_unavailable`` its refusal. Locks: ``booking_site.locking``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction

from booking_site import locking
from booking_site.accounts.models import User
from booking_site.audit import services as audit
from booking_site.engine import CANCEL, CONFIRM, EXPIRE, ClaimEngine, ClaimPolicy
from booking_site.errors import Conflict, InvalidStateTransition, NotFound
from reservations.models import Car, Reservation

State = Reservation.State


class CarUnavailable(Conflict):
    code = "car_unavailable"

    def __init__(self, *, car_id: int, reason: str = "already has an active reservation"):
        super().__init__(f"Car {car_id} {reason}.", details={"carId": car_id})


CAR_FIELDS = ("dealer_id", "label", "make", "model", "status")


@transaction.atomic
def car_create(
    *,
    dealer_id: int,
    label: str,
    make: str = "",
    model: str = "",
    status: str = Car.Status.ACTIVE,
    actor: User | None = None,
) -> Car:
    car = Car.objects.create(dealer_id=dealer_id, label=label, make=make, model=model, status=status)
    audit.record(subject=car, event="CREATED", to_state=car.status, actor=actor)
    return car


@transaction.atomic
def car_update(*, car_id: int, actor: User | None = None, **fields) -> Car:
    """Change some of a car's ``CAR_FIELDS`` or status under its row lock, recording what changed. A car taken out of
    service (INACTIVE) keeps its current reservation; it only cannot be held again."""
    car = locking.lock_car(car_id)
    if car is None:
        raise NotFound(f"Car {car_id} does not exist.")
    audit.record_update(car, fields, actor=actor, state_field="status")
    return car


@dataclass(frozen=True)
class CarHold:
    """What a car hold asks for."""

    car_id: int
    buyer: User
    hold_minutes: int
    request_id: str


class ReservationPolicy(ClaimPolicy):
    owner_field = "buyer"


class Reservations(ClaimEngine):
    """A reservation holds one car (``reservation_one_active_per_car``)."""

    model, domain, policy = Reservation, "reservations", ReservationPolicy()
    backstop = ("reservation_one_active_per_car", lambda car, request: CarUnavailable(car_id=car.pk))

    def lock_target(self, request: CarHold) -> Car:
        car = locking.lock_car(request.car_id)
        if car is None:
            raise NotFound(f"Car {request.car_id} does not exist.")
        return car

    def check_target(self, car: Car, request: CarHold, *, now: datetime) -> None:
        if car.status != Car.Status.ACTIVE:
            raise CarUnavailable(car_id=car.pk, reason="is not available for reservation")

    def overdue_on(self, car: Car, *, now: datetime):
        return Reservation.objects.overdue(now=now).filter(car=car)

    def check_free(self, car: Car, request: CarHold, *, now: datetime, expired: list) -> None:
        if Reservation.objects.blocking().filter(car=car).exists():
            raise CarUnavailable(car_id=car.pk)

    def insert(self, car: Car, request: CarHold, *, now: datetime) -> Reservation:
        return Reservation.objects.create(
            car=car,
            buyer=request.buyer,
            state=State.HELD,
            expires_at=now + timedelta(minutes=request.hold_minutes),
            request_id=request.request_id,
            created_at=now,
            updated_at=now,
        )

    def created_metadata(self, reservation: Reservation, car: Car, request: CarHold) -> dict:
        return {"carId": car.pk, "expiresAt": reservation.expires_at}

    def refused(self, reservation: Reservation, to_state: str) -> InvalidStateTransition:
        return InvalidStateTransition(
            subject=f"Reservation {reservation.pk}", from_state=reservation.state, to_state=to_state
        )


RESERVATIONS = Reservations()


def reservation_hold(
    *, car_id: int, buyer: User, hold_minutes: int, now: datetime, request_id: str = ""
) -> Reservation:
    request = CarHold(car_id=car_id, buyer=buyer, hold_minutes=hold_minutes, request_id=request_id)
    return RESERVATIONS.hold(request, now=now, actor=buyer)


def reservation_confirm(*, reservation_id: int, user: User, now: datetime) -> Reservation:
    return _transition(reservation_id, State.CONFIRMED, action=CONFIRM, user=user, now=now)


def reservation_cancel(*, reservation_id: int, user: User, now: datetime, reason: str = "") -> Reservation:
    metadata = {"reason": reason} if reason else None
    return _transition(reservation_id, State.CANCELLED, action=CANCEL, user=user, now=now, metadata=metadata)


def reservation_expire(*, reservation_id: int, user: User, now: datetime) -> Reservation:
    """An operator expires a hold now, overdue or not."""
    return _transition(reservation_id, State.EXPIRED, action=EXPIRE, user=user, now=now)


def _transition(reservation_id: int, to_state: str, **kwargs) -> Reservation:
    return RESERVATIONS.transition(
        claims=Reservation.objects.filter(pk=reservation_id),
        what=f"Reservation {reservation_id}",
        to_state=to_state,
        **kwargs,
    )


def reservations_expire_due(*, now: datetime, batch_size: int | None = None) -> int:
    """Flip every hold overdue at ``now`` to EXPIRED, one audit event each (the beat job)."""
    return RESERVATIONS.expire_due(now=now, batch_size=batch_size)
