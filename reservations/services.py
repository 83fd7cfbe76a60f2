"""Every write to cars and reservations (docs/contract.md §4). The lifecycle is ``booking_site.engine``'s; this
module declares what is the cars' own: the car row is what a hold locks, one active reservation per
car is its capacity rule, and ``car_unavailable`` its refusal. Locks: ``booking_site.locking``."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.utils import timezone
from psycopg import sql

from booking_site import claims, locking, statements
from booking_site.accounts.models import User
from booking_site.audit import services as audit
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
    car = locking.lock_car(car_id, taken_at=timezone.now())
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
        summary="A buyer holds at most {limit} cars at once.",
        counts=claims.LIVE_HOLDS,
    )

    def lock_target(self, request: CarHold) -> Car:
        # Judged when the request was made (the caller's clock, not the database's): an active
        # reservation then is a fair refusal. "Not taken" may be stale when the lock was waited for:
        # ``create`` checks again after the lock. The buyer's lock (the cap) is taken first, by the
        # same statement.
        owner = self.cap.locked_owner(request.buyer.pk, request.actor)
        car = locking.lock_car(request.car_id, taken_at=request.now, owner=owner)
        if car is None:
            raise NotFound(f"Car {request.car_id} does not exist.")
        return car

    def check_target(self, car: Car, request: CarHold, *, now: datetime) -> None:
        if car.status != Car.Status.ACTIVE:
            raise CarUnavailable(car_id=car.pk, reason="is not available for reservation")
        if car.taken:
            raise CarUnavailable(car_id=car.pk)

    def create(self, car: Car, request: CarHold, *, now: datetime, actor) -> Reservation:
        expires_at = now + timedelta(minutes=request.hold_minutes)
        limit = self.cap.limit_for(request.actor)
        expired, free, held, reservation_id, contended = HOLD.fetchone(
            {
                "car": car.pk,
                "buyer": request.buyer.pk,
                "limit": limit,
                "actor": actor.pk,
                "actor_label": f"user:{actor.pk}",
                "expiry_actor": EXPIRY_ACTOR,
                "now": now,
                "expires_at": expires_at,
                "request_id": request.request_id,
                "occurred_at": timezone.now(),
                "trace_id": current_request_id() or "",
                "metadata": json.dumps({"carId": car.pk, "expiresAt": expires_at}, cls=DjangoJSONEncoder),
            }
        )
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


def _hold_statement() -> statements.Statement:
    P, R = statements.P, Reservation
    c = functools.partial(claims.column, R)
    held, expired = sql.Literal(R.HELD), sql.Literal(State.EXPIRED)
    on_car = sql.SQL("{} = {}").format(c("car"), P("car"))
    # Order 3 kinds of locks never waited for here: the car's lock is held (``lock_target``).
    return statements.Statement(
        sql.SQL("""
WITH overdue AS (
    UPDATE {table} SET {state} = {expired}, {updated_at} = %(now)s WHERE {on_car} AND {overdue}
    RETURNING id
), expired_events AS ({expired_events}
), free AS (
    SELECT (SELECT count(*) FROM overdue) AS expired
    WHERE NOT EXISTS (SELECT FROM {table} WHERE {on_car} AND {active})
), held AS (
    SELECT count(*) AS holds FROM {table}
    WHERE %(limit)s::bigint IS NOT NULL AND {buyer} = %(buyer)s AND {counted}
), created AS (
    INSERT INTO {table} ({car}, {buyer}, {state}, {expires_at}, {request_id}, {created_at}, {updated_at})
    SELECT %(car)s, %(buyer)s, {held}, %(expires_at)s, %(request_id)s, %(now)s, %(now)s FROM free, held
    WHERE %(limit)s::bigint IS NULL OR held.holds < %(limit)s::bigint
    ON CONFLICT ({car}) WHERE {blocking} DO NOTHING
    RETURNING id
), created_event AS ({created_event}
)
SELECT
    (SELECT count(*) FROM overdue),
    EXISTS (SELECT FROM free),
    (SELECT holds FROM held),
    (SELECT id FROM created),
    (SELECT count(*) FROM {table} WHERE {on_car} AND {overdue} AND id NOT IN (SELECT id FROM overdue))
""").format(
            table=statements.table(R),
            state=c(R.STATE_FIELD),
            car=c("car"),
            buyer=c("buyer"),
            expires_at=c("expires_at"),
            request_id=c("request_id"),
            created_at=c("created_at"),
            updated_at=c("updated_at"),
            held=held,
            expired=expired,
            on_car=on_car,
            overdue=claims.OVERDUE.sql(R),
            active=claims.ACTIVE.sql(R),
            counted=Reservations.cap.counted(R),
            # The partial unique index ``reservation_one_active_per_car``, named by its predicate.
            blocking=claims.BLOCKING.sql(R),
            expired_events=statements.expiry_events(R, rows="overdue"),
            created_event=statements.audit_rows(
                source=sql.Identifier("created"),
                occurred_at=P("occurred_at"),
                actor=P("actor"),
                actor_label=P("actor_label"),
                subject_type=sql.Literal(R._meta.model_name),
                subject_id=sql.SQL("id::text"),
                event_type=sql.Literal("CREATED"),
                from_state=sql.Literal(""),
                to_state=held,
                metadata=sql.SQL("%(metadata)s::jsonb"),
                request_id=P("trace_id"),
            ),
        )
    )


# The car hold after the car's lock (``Reservations.create``). The sub-statements of one statement share
# its snapshot and do not see each other's writes. ``overdue`` expires the car's overdue holds; its
# UPDATE waits for a request holding one of them and skips a row that request changed. ``free`` judges
# by the snapshot, where an overdue hold is free (docs/contract.md §2.2), and reads ``overdue`` so that UPDATE has
# run before ``created`` inserts. When a hold overdue in the snapshot was confirmed meanwhile (its
# confirm judged it before its expiry), the unique index refuses the insert: the last column counts
# such rows, so that refusal is the confirm's win, not a backstop. ``held`` counts the buyer's claims
# the cap counts (``Reservations.cap.counts``): read under the buyer's lock, taken by the lock statement
# (none when the cap does not apply: ``limit`` is then NULL).
HOLD = _hold_statement()


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
    """One statement in autocommit (``ClaimEngine.transition``): the reservation's lock, the policy, the
    expiry of an overdue hold, the write and its audit event."""
    return RESERVATIONS.transition(
        claim_id=reservation_id,
        what=f"Reservation {reservation_id}",
        to_state=to_state,
        **kwargs,
    )


def reservations_expire_due(*, now: datetime, batch_size: int | None = None) -> int:
    """Flip every hold overdue at ``now`` to EXPIRED, one audit event each (the beat job)."""
    return RESERVATIONS.expire_due(now=now, batch_size=batch_size)
