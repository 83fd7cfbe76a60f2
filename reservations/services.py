"""Every write to cars and reservations (docs/contract.md §4). The lifecycle is ``core.engine``'s; this
module declares what is the cars' own: the car row is what a hold locks, one active reservation per
car is its capacity rule, and ``car_unavailable`` its refusal. Locks: ``core.locking``."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.utils import timezone
from psycopg import sql

from core import claims, locking, statements
from core.audit import services as audit
from core.engine import EXPIRY_ACTOR, ClaimEngine
from core.errors import Conflict, InvalidStateTransition, NotFound
from core.metrics import CONSTRAINT_BACKSTOPS, HOLDS_EXPIRED, count_on_commit
from core.middleware import current_request_id
from core.organisations import access
from core.organisations.roles import Role
from core.policy import CANCEL, CONFIRM, EXPIRE, Cap, ClaimPolicy
from reservations import locks
from reservations.models import Car, Reservation
from web.accounts.models import User

State = Reservation.State


class CarUnavailable(Conflict):
    code = "car_unavailable"

    def __init__(self, *, car_id: int, reason: str = "already has an active reservation"):
        super().__init__(f"Car {car_id} {reason}.", details={"carId": car_id})


CAR_FIELDS = ("dealer_id", "label", "make", "model", "status")


@transaction.atomic
def car_create(
    *,
    organisation_id: int,
    dealer_id: int,
    label: str,
    make: str = "",
    model: str = "",
    status: str = Car.Status.ACTIVE,
    actor: User | None = None,
) -> Car:
    """A car of ``organisation_id``, for ``actor``, a manager there (their membership locked:
    ``access.require_member``)."""
    access.require_member(actor, organisation_id, Role.MANAGER, what=f"Organisation {organisation_id}")
    car = Car.objects.create(
        organisation_id=organisation_id, dealer_id=dealer_id, label=label, make=make, model=model, status=status
    )
    audit.record(subject=car, event="CREATED", to_state=car.status, actor=actor)
    return car


@transaction.atomic
def car_update(*, car_id: int, actor: User | None = None, **fields) -> Car:
    """Change some of a car's ``CAR_FIELDS`` or status under its row lock, recording what changed. A car taken out of
    service (INACTIVE) keeps its current reservation; it only cannot be held again."""
    car = locks.lock_car(car_id)
    if car is None:
        raise NotFound(f"Car {car_id} does not exist.")
    access.require_member(actor, car.organisation_id, Role.MANAGER, what=f"Car {car_id}")
    audit.record_update(car, fields, actor=actor, state_field="status")
    return car


@dataclass(frozen=True)
class CarHold:
    """What a car hold asks for."""

    car_id: int
    buyer: User
    actor: User  # who asks: the buyer, or an operator for them (exempt from the cap)
    hold_minutes: int
    idempotency_key: str
    now: datetime  # when it was asked


class ReservationPolicy(ClaimPolicy[Reservation]):
    owner_field, resource_field = "buyer", "car"


class Reservations(ClaimEngine[Reservation]):
    """A reservation holds one car (``reservation_one_active_per_car``).

    The hold is one statement in autocommit (``decide``, docs/decisions/0022-one-statement-holds.md): it
    takes the buyer's lock and the car's (``locking.claim_lock_sql``), expires the car's overdue holds,
    checks that no other reservation blocks the car and the cap on the buyer's holds, inserts the new one
    (``ON CONFLICT DO NOTHING`` on the partial unique index: the arbiter between holds in flight, and the
    constraint stays the backstop), writes the audit events of both, and moves the buyer's and the car's
    claim sequences. When a hold of the same buyer committed after the statement's snapshot, its count
    of the buyer's holds may be stale: it writes nothing and the engine runs it again in a transaction
    (``hold_decided``).
    """

    model, domain, policy = Reservation, "reservations", ReservationPolicy()
    one_statement = True
    cap = Cap(
        rule="active_car_holds_per_buyer",
        setting="RESERVATION_MAX_ACTIVE_HOLDS_PER_BUYER",
        message="You already hold {count} cars; a buyer may hold at most {limit} at once.",
        summary="A buyer holds at most {limit} cars at once.",
        counts=claims.LIVE_HOLDS,
    )

    def organisation_of(self, ask: CarHold) -> int | None:
        return access.organisation_of(Car, ask.car_id)

    def decide(self, ask: CarHold, *, now: datetime, actor) -> Reservation | None:
        expires_at = now + timedelta(minutes=ask.hold_minutes)
        organisation_id = self.acting_organisation(ask, owner_id=ask.buyer.pk)
        limit = self.cap.limit_for(ask.actor, organisation_id)
        row = hold_statement().fetchone(
            {
                "car": ask.car_id,
                "owner": self.cap.locked_owner(ask.buyer.pk, ask.actor, organisation_id),
                "buyer": ask.buyer.pk,
                "limit": limit,
                "actor": actor.pk,
                "actor_label": f"user:{actor.pk}",
                "expiry_actor": EXPIRY_ACTOR,
                "now": now,
                "expires_at": expires_at,
                "idempotency_key": ask.idempotency_key,
                "occurred_at": timezone.now(),
                "trace_id": current_request_id() or "",
                "metadata": json.dumps({"carId": ask.car_id, "expiresAt": expires_at}, cls=DjangoJSONEncoder),
            }
        )
        found, available, owner_fresh, car_fresh, expired, free, held, reservation_id, confirmed = row
        if not found:
            raise NotFound(f"Car {ask.car_id} does not exist.")
        if not available:
            raise CarUnavailable(car_id=ask.car_id, reason="is not available for reservation")
        if not owner_fresh:
            return None  # the count of the buyer's holds may be stale: it wrote nothing
        count_on_commit(HOLDS_EXPIRED, self.domain, amount=expired)
        if not free:
            raise CarUnavailable(car_id=ask.car_id)  # taken by the snapshot: it was taken when we asked
        self.cap.check(count=held, asked=1, limit=limit)
        if reservation_id is None:
            # The unique index refused it. The arbiter when a hold committed under the car's lock after
            # the snapshot, or a confirm won a hold overdue in it (``confirmed``); otherwise a backstop.
            if car_fresh and not confirmed:
                CONSTRAINT_BACKSTOPS.labels("reservation_one_active_per_car").inc()
            raise CarUnavailable(car_id=ask.car_id)
        return Reservation(
            pk=reservation_id,
            car_id=ask.car_id,
            buyer=ask.buyer,
            state=State.HELD,
            expires_at=expires_at,
            idempotency_key=ask.idempotency_key,
            created_at=now,
            updated_at=now,
        )

    def refused(self, reservation: Reservation, to_state: str) -> InvalidStateTransition:
        return InvalidStateTransition(
            subject=f"Reservation {reservation.pk}", from_state=reservation.state, to_state=to_state
        )


@functools.cache
def _hold_statement(
    claim_lock: Callable[..., sql.Composable], fresh: Callable[..., sql.Composable]
) -> statements.Statement:
    """The car hold's one statement, composed once per (claim lock, freshness check): the seams a race
    control replaces (``locking.claim_lock_sql``, ``locking.fresh_sql``)."""
    P, R = statements.P, Reservation
    c = functools.partial(claims.column, R)
    held, expired = sql.Literal(R.HELD), sql.Literal(State.EXPIRED)
    on_car = sql.SQL("{} = {}").format(c("car"), P("car"))
    return statements.Statement(
        sql.SQL("""
WITH seen AS MATERIALIZED (
    SELECT {seen_owner} AS owner, {seen_car} AS car,
           (SELECT {status} FROM {car_table} WHERE {car_id} = %(car)s) AS status,
           NOT EXISTS (SELECT FROM {table} WHERE {on_car} AND {active}) AS free,
           (SELECT count(*) FROM {table} WHERE %(limit)s::bigint IS NOT NULL AND {buyer} = %(buyer)s AND {counted})
           AS holds
), wanted AS (
    SELECT FROM seen WHERE status IS NOT NULL AND free AND (%(limit)s::bigint IS NULL OR holds < %(limit)s::bigint)
), owner AS MATERIALIZED ({owner_lock}
), car AS MATERIALIZED ({car_lock}
), judged AS MATERIALIZED (
    SELECT COALESCE(car.{status}, seen.status) = {active_car} AS available,
           car.{seq} IS NULL OR %(owner)s::bigint IS NULL OR {owner_fresh} AS owner_fresh,
           {car_fresh} AS car_fresh
    FROM seen LEFT JOIN car ON true LEFT JOIN owner ON true
    WHERE seen.status IS NOT NULL OR car.{seq} IS NOT NULL
), go AS (
    SELECT FROM judged, car WHERE available AND owner_fresh
), overdue AS (
    UPDATE {table} SET {state} = {expired}, {updated_at} = %(now)s
    WHERE {on_car} AND {overdue} AND EXISTS (SELECT FROM go)
    RETURNING id
), expired_events AS ({expired_events}
), free AS (
    SELECT (SELECT count(*) FROM overdue) AS expired FROM go
), held AS (
    SELECT holds FROM seen
), created AS (
    INSERT INTO {table} ({car}, {buyer}, {state}, {expires_at}, {idempotency_key}, {created_at}, {updated_at})
    SELECT %(car)s, %(buyer)s, {held}, %(expires_at)s, %(idempotency_key)s, %(now)s, %(now)s FROM free, held
    WHERE %(limit)s::bigint IS NULL OR held.holds < %(limit)s::bigint
    ON CONFLICT ({car}) WHERE {blocking} DO NOTHING
    RETURNING id
), created_event AS ({created_event}
), owner_moved AS ({owner_moved}
), car_moved AS ({car_moved}
)
SELECT
    EXISTS (SELECT FROM judged),
    COALESCE((SELECT available FROM judged), false),
    COALESCE((SELECT owner_fresh FROM judged), false),
    COALESCE((SELECT car_fresh FROM judged), false),
    (SELECT count(*) FROM overdue),
    COALESCE((SELECT free FROM seen), false),
    (SELECT holds FROM seen),
    (SELECT id FROM created),
    (SELECT count(*) FROM {table} WHERE {on_car} AND {overdue} AND id NOT IN (SELECT id FROM overdue))
""").format(
            seen_owner=locking.seen_sql(User, P("owner")),
            seen_car=locking.seen_sql(Car, P("car")),
            # Order 1, then 3: the car's UPDATE reads the buyer's (when the cap applies), so that lock is
            # held before the car's is asked for; the overdue holds (4) after both (``go`` reads them).
            owner_lock=claim_lock(User, P("owner"), lock_before=sql.SQL("EXISTS (SELECT FROM wanted)")),
            car_lock=claim_lock(
                Car,
                P("car"),
                lock_before=sql.SQL(
                    "EXISTS (SELECT FROM wanted) AND (%(owner)s::bigint IS NULL OR EXISTS (SELECT FROM owner))"
                ),
                returning=("status",),
            ),
            car_table=statements.table(Car),
            car_id=claims.column(Car, "id"),
            seq=sql.Identifier(locking.CLAIM_SEQ),
            owner_moved=locking.claim_moved_sql(User, P("owner"), when=sql.SQL("EXISTS (SELECT FROM created)")),
            car_moved=locking.claim_moved_sql(Car, P("car"), when=sql.SQL("EXISTS (SELECT FROM created)")),
            owner_fresh=fresh(sql.SQL("seen.owner"), sql.SQL("owner.{}").format(sql.Identifier(locking.CLAIM_SEQ))),
            car_fresh=fresh(sql.SQL("seen.car"), sql.SQL("car.{}").format(sql.Identifier(locking.CLAIM_SEQ))),
            status=claims.column(Car, "status"),
            active_car=sql.Literal(Car.Status.ACTIVE),
            table=statements.table(R),
            state=c(R.STATE_FIELD),
            car=c("car"),
            buyer=c("buyer"),
            expires_at=c("expires_at"),
            idempotency_key=c("idempotency_key"),
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


def hold_statement() -> statements.Statement:
    """The car hold (``Reservations.decide``), composed once.

    The sub-statements of one statement share its snapshot, taken when it starts, and do not see each
    other's writes. ``seen`` reads from it the buyer's and the car's claim sequences, the car's status,
    whether an active reservation holds the car (where an overdue hold is free: docs/contract.md §2.2) and
    the buyer's claims the cap counts (``Reservations.cap.counts``; none when the cap does not apply:
    ``limit`` and ``owner`` are then NULL). A hold those refuse was refused by what was true when it was
    asked, and takes no lock: it writes nothing, so it commits nothing to wait for (``wanted``).
    Otherwise ``owner`` and ``car`` take their locks (``locking.claim_lock_sql``), the car's after the
    buyer's, and return the rows' newest versions: the car's status is the truth. ``judged``: the
    snapshot's reads under a lock are the truth when no hold committed under it after the snapshot
    (``locking.fresh_sql``: the sequences are the snapshot's).
    Only then, and with the car in service, does anything else run (``go``). ``overdue`` expires the
    car's overdue holds; its UPDATE waits for a request holding one of them and skips a row that request
    changed. ``free`` reads ``overdue`` so that UPDATE has run before ``created`` inserts, by ``seen``'s
    count (fresh when ``owner_fresh``). ``created`` inserts with ``ON CONFLICT DO NOTHING`` on
    the partial unique index: a hold that committed after the snapshot (the car's lock was waited for)
    or is in flight wins there. When a hold overdue in the snapshot was confirmed meanwhile (its confirm
    judged it before its expiry), the index refuses too: the last column counts such rows, so that
    refusal is the confirm's win, not a backstop. ``owner_moved`` and ``car_moved`` move both sequences
    when ``created`` inserted (``locking.claim_moved_sql``): a refused hold writes nothing, so 200
    buyers at one car leave one new version of its row, not 200."""
    return _hold_statement(locking.claim_lock_sql, locking.fresh_sql)


hold_statement()  # composed at import


RESERVATIONS = Reservations()


def reservation_hold(
    *, car_id: int, buyer: User, hold_minutes: int, now: datetime, idempotency_key: str = "", actor: User | None = None
) -> Reservation:
    """Hold a car for ``buyer``, asked by ``actor`` (the buyer, or an operator for them)."""
    actor = actor or buyer
    ask = CarHold(
        car_id=car_id, buyer=buyer, actor=actor, hold_minutes=hold_minutes, idempotency_key=idempotency_key, now=now
    )
    return RESERVATIONS.hold(ask, now=now, actor=actor)


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
