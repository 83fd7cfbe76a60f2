"""Every write to cars and reservations (docs/contract.md §4). The lifecycle is ``booking_site.engine``'s; this
module declares what is the cars' own: the car row is what a hold locks, one active reservation per
car is its capacity rule, and ``car_unavailable`` its refusal. Locks: ``booking_site.locking``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from booking_site import locking
from booking_site.accounts.models import User
from booking_site.audit import services as audit
from booking_site.audit.models import AuditEvent
from booking_site.engine import CANCEL, CONFIRM, EXPIRE, EXPIRY_ACTOR, Cap, ClaimEngine, ClaimPolicy
from booking_site.errors import Conflict, InvalidStateTransition, NotFound
from booking_site.metrics import CONSTRAINT_BACKSTOPS, HOLDS_EXPIRED, count_on_commit
from booking_site.middleware import current_request_id
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
    actor: User  # who asks: the buyer, or an operator for them (exempt from the cap)
    hold_minutes: int
    request_id: str
    now: datetime  # when it was asked: the lock statement judges "taken" by it


class ReservationPolicy(ClaimPolicy[Reservation]):
    owner_field = "buyer"


class Reservations(ClaimEngine[Reservation]):
    """A reservation holds one car (``reservation_one_active_per_car``).

    The hold is the lean write path: two statements between BEGIN and COMMIT. ``lock_target`` locks
    the car and, in the same statement, reads whether an active reservation holds it (so a request
    refused at once costs BEGIN, that statement, ROLLBACK). ``create`` is one statement after the lock
    is held, so it reads with a fresh snapshot: it expires the car's overdue holds, checks that no other
    reservation blocks the car, inserts the new one (``ON CONFLICT DO NOTHING`` on the partial unique
    index: the constraint stays the backstop), and writes the audit events of both.
    """

    model, domain, policy = Reservation, "reservations", ReservationPolicy()
    cap = Cap(
        rule="active_car_holds_per_buyer",
        setting="RESERVATION_MAX_ACTIVE_HOLDS_PER_BUYER",
        message="You already hold {count} cars; a buyer may hold at most {limit} at once.",
        summary="A buyer holds at most {limit} cars at once; confirmed reservations do not count.",
    )

    def lock_target(self, request: CarHold) -> Car:
        # Judged when the request was made (the caller's clock, not the database's): an active
        # reservation then is a fair refusal. "Not taken" may be stale when the lock was waited for:
        # ``create`` checks again after the lock. The buyer's lock (the cap) is taken first, by the
        # same statement.
        taken = Exists(Reservation.objects.active(now=request.now).filter(car=OuterRef("pk")))
        after = self.cap.lock(request.buyer.pk, request.actor)
        car = locking.lock_car(request.car_id, after=after, taken=taken)
        if car is None:
            raise NotFound(f"Car {request.car_id} does not exist.")
        return car

    def check_target(self, car: Car, request: CarHold, *, now: datetime) -> None:
        if car.status != Car.Status.ACTIVE:
            raise CarUnavailable(car_id=car.pk, reason="is not available for reservation")
        if car.taken:
            raise CarUnavailable(car_id=car.pk)

    def make_free(self, car: Car, request: CarHold, *, now: datetime) -> None:
        """Nothing to do before ``create``: its statement expires the overdue holds and checks."""

    def create(self, car: Car, request: CarHold, *, now: datetime, actor) -> Reservation:
        expires_at = now + timedelta(minutes=request.hold_minutes)
        limit = self.cap.limit_for(request.actor)
        with connection.cursor() as cursor:
            cursor.execute(
                HOLD_SQL,
                {
                    "car": car.pk,
                    "buyer": request.buyer.pk,
                    "limit": limit,
                    "actor": actor.pk,
                    "actor_label": f"user:{actor.pk}",
                    "subject_type": Reservation._meta.model_name,
                    "expiry_actor": EXPIRY_ACTOR,
                    "now": now,
                    "expires_at": expires_at,
                    "request_id": request.request_id,
                    "occurred_at": timezone.now(),
                    "trace_id": current_request_id() or "",
                    "metadata": json.dumps({"carId": car.pk, "expiresAt": expires_at}, cls=DjangoJSONEncoder),
                },
            )
            expired, free, held, reservation_id, contended = cursor.fetchone()
        count_on_commit(HOLDS_EXPIRED, self.domain, amount=expired)
        if not free:
            raise CarUnavailable(car_id=car.pk)
        self.cap.check(count=held, asked=1, limit=limit)
        if reservation_id is None:
            if not contended:
                CONSTRAINT_BACKSTOPS.labels("reservation_one_active_per_car").inc()
            raise CarUnavailable(car_id=car.pk)
        return Reservation(
            pk=reservation_id,
            car=car,
            buyer=request.buyer,
            state=State.HELD,
            expires_at=expires_at,
            request_id=request.request_id,
            created_at=now,
            updated_at=now,
        )

    def refused(self, reservation: Reservation, to_state: str) -> InvalidStateTransition:
        return InvalidStateTransition(
            subject=f"Reservation {reservation.pk}", from_state=reservation.state, to_state=to_state
        )


# The car hold after the car's lock (``Reservations.create``). The sub-statements of one statement share
# its snapshot and do not see each other's writes. ``overdue`` expires the car's overdue holds; its
# UPDATE waits for a request holding one of them and skips a row that request changed. ``free`` judges
# by the snapshot, where an overdue hold is free (docs/contract.md §2.2), and reads ``overdue`` so that UPDATE has
# run before ``created`` inserts. When a hold overdue in the snapshot was confirmed meanwhile (its
# confirm judged it before its expiry), the unique index refuses the insert: ``contended`` counts
# such rows, so that refusal is the confirm's win, not a backstop. ``held`` counts the buyer's live
# holds (the cap, ``Reservations.cap``): read under the buyer's lock, taken by the lock statement
# (none when the cap does not apply: ``limit`` is then NULL). A hold overdue in the snapshot is not live.
_RESERVATION, _AUDIT, _AUDIT_COLUMNS = Reservation._meta.db_table, AuditEvent._meta.db_table, audit.SQL_COLUMNS
HOLD_SQL = f"""
WITH overdue AS (
    UPDATE {_RESERVATION} SET state = 'EXPIRED', updated_at = %(now)s
    WHERE car_id = %(car)s AND state = 'HELD' AND expires_at <= %(now)s
    RETURNING id
), expired_events AS ({audit.expiry_events_sql(rows="overdue", from_state="HELD")}
), free AS (
    SELECT (SELECT count(*) FROM overdue) AS expired
    WHERE NOT EXISTS (
        SELECT FROM {_RESERVATION}
        WHERE car_id = %(car)s AND (state = 'CONFIRMED' OR (state = 'HELD' AND expires_at > %(now)s))
    )
), held AS (
    SELECT count(*) AS holds FROM {_RESERVATION}
    WHERE %(limit)s::int IS NOT NULL AND buyer_id = %(buyer)s AND state = 'HELD' AND expires_at > %(now)s
), created AS (
    INSERT INTO {_RESERVATION} (car_id, buyer_id, state, expires_at, request_id, created_at, updated_at)
    SELECT %(car)s, %(buyer)s, 'HELD', %(expires_at)s, %(request_id)s, %(now)s, %(now)s FROM free, held
    WHERE %(limit)s::int IS NULL OR held.holds < %(limit)s::int
    ON CONFLICT (car_id) WHERE state IN ('HELD', 'CONFIRMED') DO NOTHING
    RETURNING id
), created_event AS (
    INSERT INTO {_AUDIT} ({_AUDIT_COLUMNS})
    SELECT %(occurred_at)s, %(actor)s, %(actor_label)s, %(subject_type)s, id::text, 'CREATED', '', 'HELD',
           %(metadata)s::jsonb, %(trace_id)s
    FROM created
)
SELECT
    (SELECT count(*) FROM overdue),
    EXISTS (SELECT FROM free),
    (SELECT holds FROM held),
    (SELECT id FROM created),
    (SELECT count(*) FROM {_RESERVATION}
     WHERE car_id = %(car)s AND state = 'HELD' AND expires_at <= %(now)s AND id NOT IN (SELECT id FROM overdue))
"""


RESERVATIONS = Reservations()


def reservation_hold(
    *, car_id: int, buyer: User, hold_minutes: int, now: datetime, request_id: str = "", actor: User | None = None
) -> Reservation:
    """Hold a car for ``buyer``, asked by ``actor`` (the buyer, or an operator for them)."""
    actor = actor or buyer
    request = CarHold(
        car_id=car_id, buyer=buyer, actor=actor, hold_minutes=hold_minutes, request_id=request_id, now=now
    )
    return RESERVATIONS.hold(request, now=now, actor=actor)


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
