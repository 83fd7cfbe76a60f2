"""Every write to cars and reservations (SPEC 4). Lock order: car row, then reservation row."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import IntegrityError, transaction

from booking_site.accounts.models import User
from booking_site.accounts.services import require_owner
from booking_site.audit import services as audit
from booking_site.errors import Conflict, HoldExpired, InvalidStateTransition, NotFound
from booking_site.expiry import expire_in_batches, locked_now
from booking_site.metrics import CONSTRAINT_BACKSTOPS, HOLDS_CREATED, HOLDS_EXPIRED, count_on_commit
from reservations.models import Car, Reservation

State = Reservation.State
EXPIRY_ACTOR = "system:expire_holds"


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
    car = _lock_car(car_id)
    if car is None:
        raise NotFound(f"Car {car_id} does not exist.")
    audit.record_update(car, fields, actor=actor, state_field="status")
    return car


def _lock_car(car_id: int) -> Car | None:
    """Serializes every claim on one car. (Tests replace it to prove they catch a missing lock.)"""
    return Car.objects.select_for_update(no_key=True).filter(pk=car_id).first()


@transaction.atomic
def reservation_hold(
    *, car_id: int, buyer: User, hold_minutes: int, now: datetime, request_id: str = ""
) -> Reservation:
    car = _lock_car(car_id)
    if car is None:
        raise NotFound(f"Car {car_id} does not exist.")
    if car.status != Car.Status.ACTIVE:
        raise CarUnavailable(car_id=car_id, reason="is not available for reservation")
    now = locked_now(now)
    # An overdue hold never blocks, even when no worker has expired it yet (SPEC 2.2). Its row is locked
    # (car, then reservation): a confirm that got there first has made it CONFIRMED, and it is skipped.
    for overdue in Reservation.objects.overdue(now=now).filter(car=car).select_for_update(no_key=True):
        _apply(overdue, State.EXPIRED, actor=EXPIRY_ACTOR, now=now)
    if Reservation.objects.blocking().filter(car=car).exists():
        raise CarUnavailable(car_id=car_id)
    try:
        with transaction.atomic():  # savepoint: the partial unique constraint is the backstop
            reservation = Reservation.objects.create(
                car=car,
                buyer=buyer,
                state=State.HELD,
                expires_at=now + timedelta(minutes=hold_minutes),
                request_id=request_id,
                created_at=now,
                updated_at=now,
            )
    except IntegrityError:
        CONSTRAINT_BACKSTOPS.labels("reservation_one_active_per_car").inc()
        raise CarUnavailable(car_id=car_id) from None
    audit.record(
        subject=reservation,
        event="CREATED",
        to_state=State.HELD,
        actor=buyer,
        metadata={"carId": car_id, "expiresAt": reservation.expires_at},
    )
    count_on_commit(HOLDS_CREATED, "reservations")
    return reservation


def reservation_confirm(*, reservation_id: int, user: User, now: datetime) -> Reservation:
    return _transition(reservation_id=reservation_id, to_state=State.CONFIRMED, user=user, now=now)


def reservation_cancel(*, reservation_id: int, user: User, now: datetime, reason: str = "") -> Reservation:
    metadata = {"reason": reason} if reason else None
    return _transition(reservation_id=reservation_id, to_state=State.CANCELLED, user=user, now=now, metadata=metadata)


def reservation_expire(*, reservation_id: int, user: User, now: datetime) -> Reservation:
    """An operator expires a hold now, overdue or not."""
    return _transition(reservation_id=reservation_id, to_state=State.EXPIRED, user=user, now=now)


def _transition(
    *, reservation_id: int, to_state: str, user: User, now: datetime, metadata: dict | None = None
) -> Reservation:
    """Move one reservation to ``to_state`` under its row lock, for its buyer or an operator.

    An overdue hold is expired first and stays expired: that change commits even though the
    request is then refused (410 for a confirm, 400 for a cancel).
    """
    with transaction.atomic():
        reservation = Reservation.objects.select_for_update(no_key=True).filter(pk=reservation_id).first()
        if reservation is None:
            raise NotFound(f"Reservation {reservation_id} does not exist.")
        now = locked_now(now)
        require_owner(user=user, owner_id=reservation.buyer_id, what=f"Reservation {reservation_id}")
        overdue = reservation.is_overdue(now)
        if reservation.can_become(to_state) and (not overdue or to_state == State.EXPIRED):
            return _apply(reservation, to_state, actor=user, now=now, metadata=metadata)
        if overdue:
            _apply(reservation, State.EXPIRED, actor=EXPIRY_ACTOR, now=now)
    if reservation.state == State.EXPIRED and to_state == State.CONFIRMED:
        raise HoldExpired(f"Reservation {reservation_id} expired at {reservation.expires_at.isoformat()}.")
    raise InvalidStateTransition(
        subject=f"Reservation {reservation_id}", from_state=reservation.state, to_state=to_state
    )


def _apply(
    reservation: Reservation, to_state: str, *, actor, now: datetime, metadata: dict | None = None
) -> Reservation:
    """Write one transition and its audit event. Caller holds the reservation's row lock (or the car's)."""
    from_state = reservation.state
    reservation.state, reservation.updated_at = to_state, now
    reservation.save(update_fields=["state", "updated_at"])
    audit.record(
        subject=reservation, event=to_state, from_state=from_state, to_state=to_state, actor=actor, metadata=metadata
    )
    if to_state == State.EXPIRED:
        count_on_commit(HOLDS_EXPIRED, "reservations")
    return reservation


def reservations_expire_due(*, now: datetime, batch_size: int | None = None) -> int:
    """Flip every hold overdue at ``now`` to EXPIRED, one audit event each (the beat job)."""

    def expire_batch(batch: list[Reservation]) -> None:
        Reservation.objects.filter(pk__in=[r.pk for r in batch]).update(state=State.EXPIRED, updated_at=now)
        audit.record_many(
            [
                audit.event(
                    subject=r, event=State.EXPIRED, from_state=State.HELD, to_state=State.EXPIRED, actor=EXPIRY_ACTOR
                )
                for r in batch
            ]
        )
        count_on_commit(HOLDS_EXPIRED, "reservations", amount=len(batch))

    return expire_in_batches(
        overdue=Reservation.objects.overdue(now=now), expire_batch=expire_batch, batch_size=batch_size
    )
