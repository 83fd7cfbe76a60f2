"""Bookings of a slot: the slots' ClaimEngine, its statements and checks; book, confirm, cancel, expire."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypedDict

import psycopg
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError
from django.db.models import IntegerField, JSONField, Subquery
from django.db.models.functions import JSONObject
from django.utils import timezone
from psycopg import sql

from core import claims, locking, statements
from core.declarations import Along
from core.engine import EXPIRY_ACTOR, ClaimEngine
from core.errors import DomainError, InvalidStateTransition, LimitReached, NotFound, ValidationFailed
from core.metrics import CONSTRAINT_BACKSTOPS, HOLDS_EXPIRED, count_on_commit
from core.middleware import current_request_id
from core.policy import CANCEL, CONFIRM, EXPIRE, SEE, Cap, ClaimPolicy
from slots import locks
from slots.models import Slot, SlotBooking
from slots.services.rules import (
    GUEST_NO_OVERLAP,
    HOST_BUFFER_BEFORE,
    HOST_NO_OVERLAP,
    BookingNotPending,
    CancellationWindowClosed,
    GuestOverlap,
    OwnSlot,
    SlotFull,
    SlotInPast,
    SlotOverlap,
    SlotUnavailable,
    Status,
    cancellation_window,
    hold_minutes_default,
)
from web.accounts.models import User


class BookingPolicy(ClaimPolicy[SlotBooking]):
    """The guest acts on their bookings; the slot's host also sees them and may cancel them (confirming
    and rescheduling stay with the guest); operators do anything (contract §2.6)."""

    owner_field = "guest"
    host_may = frozenset({SEE, CANCEL})

    def may(self, user: User, action: str, booking: SlotBooking) -> bool:
        if action in self.host_may and booking.slot.host_id == user.pk:
            return True
        return super().may(user, action, booking)

    def sql(self, action: str) -> sql.Composable:
        if action in self.host_may:  # the slot's host, read with the booking's lock (``reads``)
            return sql.SQL("({} OR l.slot_host = %(user)s)").format(super().sql(action))
        return super().sql(action)


@dataclass(frozen=True)
class SlotBookingRequest:
    slot_id: int
    guest: User
    seats: int
    hold: bool
    hold_minutes: int | None
    now: datetime  # when it was asked: the snapshot's reads judge expiry by it
    metadata: dict = field(default_factory=dict)
    request_id: str = ""


class SlotBookingLifecycle(ClaimEngine[SlotBooking]):
    """What every slot booking shares once it exists, a seat of a published slot or an appointment: its
    transitions (a booking that stops blocking gives its seats back, and its appointment's slot is
    cancelled: ``along``), its policy, its errors, its expiry batches."""

    model, domain, policy = SlotBooking, "slots", BookingPolicy()
    # A rule of the product about the guest (docs/contract.md §6), whoever books: operators are not
    # exempt. ``details.max`` repeats the limit for the clients that read it before ``details.limit``.
    cap = Cap(
        rule="max_active",
        setting="SLOTS_MAX_ACTIVE_BOOKINGS_PER_GUEST",
        message="You already have {count} bookings that count toward the limit; a guest may have at most {limit}.",
        summary="A guest has at most {limit} bookings at once.",
        counts=claims.ACTIVE,
        operators_exempt=False,
    )

    def lock_before(self, action: str) -> sql.Composable:
        """The slot, and for a confirm the guest first (a new booking that counted this hold as lapsed
        cannot commit beside a confirm that still saw it alive): found through the booking's row, which a
        booking never changes."""
        guest = locking.user_lock_sql(claims.column(_B, "guest", "c")) if action == CONFIRM else None
        return sql.SQL("AND {}").format(locks.slot_lock_sql(claims.column(_B, "slot", "c"), after=guest))

    def lock_seams(self) -> tuple:
        return (locks.slot_lock_sql,)

    def reads(self) -> dict[str, sql.Composable]:
        slot = sql.SQL("(SELECT s.{} FROM {} s WHERE s.id = c.{})")
        return {
            "slot_host": slot.format(claims.column(_S, "host"), statements.table(_S), claims.column(_B, "slot")),
            "slot_start": slot.format(claims.column(_S, "start"), statements.table(_S), claims.column(_B, "slot")),
        }

    def loaded(self, booking: SlotBooking, reads: dict[str, Any], returns: tuple) -> None:
        booking.slot = Slot(pk=booking.slot_id, host_id=reads["slot_host"], start=reads["slot_start"])

    def allowed(self, to_state: str) -> sql.Composable:
        """A guest (not the slot's host, not an operator) cancels a CONFIRMED booking only outside the
        cancellation window before its start (``%(window)s``)."""
        if to_state != Status.CANCELLED:
            return sql.SQL("true")
        return sql.SQL(
            "NOT (l.{} = {} AND NOT %(staff)s AND l.slot_host <> %(user)s AND l.slot_start - l.locked_at <= %(window)s)"
        ).format(claims.column(_B, "status"), sql.Literal(Status.CONFIRMED))

    def disallowed(self, booking: SlotBooking, to_state: str, *, now: datetime) -> DomainError:
        return _cancellation_window_closed(booking.slot)

    def changes(self, to_state: str) -> dict[str, sql.Composable]:
        return {"reason": sql.SQL("%(reason)s")} if to_state == Status.CANCELLED else {}

    def along(self, to_state: str) -> Along:
        """A booking that stops blocking gives its seats back to its slot, and an appointment's slot is
        cancelled (the host's time is free again, ADR 0014): one ``UPDATE`` of the slots (their locks are
        held: ``lock_before``, ``due_lock``, or the caller's)."""
        return _GIVE_BACK_ALONG

    def due_lock(self) -> tuple[sql.Composable, sql.Composable]:
        """The batch locks each booking's slot with it, so a booking whose slot a request holds is skipped."""
        return sql.SQL("JOIN {} s ON s.id = c.{}").format(statements.table(_S), claims.column(_B, "slot")), sql.SQL(
            ", s"
        )

    def refused(self, booking: SlotBooking, to_state: str) -> DomainError:
        if to_state == Status.CONFIRMED:
            return BookingNotPending(booking_id=booking.pk, status=booking.status)
        return InvalidStateTransition(subject=f"Booking {booking.pk}", from_state=booking.status, to_state=to_state)


class SlotBookings(SlotBookingLifecycle):
    """A booking takes ``seats`` of one slot, CONFIRMED at once or as a PENDING hold.

    The lean write path (ADR 0007, the slots): a booking is two statements between BEGIN and COMMIT.
    ``lock_target`` locks the guest, then the slot, in one statement (``lock_slots(owner=guest)``)
    that also reads, from its snapshot, the guest's active bookings and the slot's overdue seats: a
    request those refuse costs BEGIN, that statement, ROLLBACK. ``create`` is one statement after both
    locks are held, so it reads with a fresh snapshot: it expires the slot's overdue holds (with their
    audit events), counts the guest's bookings again, checks the seats, moves ``booked``, inserts the
    booking and its CREATED event. A transition is one statement in autocommit (ADR 0023): it locks the
    guest (for a confirm), the slot and the booking (``lock_before``), and writes the booking, its audit
    event and the slot's counter (``along``).
    """

    def lock_target(self, ask: SlotBookingRequest) -> Slot:
        # Read from the statement's snapshot, taken before any lock wait: fair to refuse, never to grant
        # (``create`` counts again after the locks). The slot's own columns are its latest version.
        slot = locks.lock_slots(
            [ask.slot_id], owner=ask.guest.pk, reads=_BOOKING_READS, guest=ask.guest.pk, now=ask.now
        ).get(ask.slot_id)
        if slot is None:
            raise NotFound(f"Slot {ask.slot_id} does not exist.")
        return slot

    def check_target(self, slot: Slot, ask: SlotBookingRequest, *, now: datetime) -> None:
        _check_bookable(slot, guest=ask.guest.pk, now=now)
        _check_guest_limits(host_id=slot.host_id, active=slot.guest_active, with_host=slot.guest_with_host)
        if slot.guest_clash is not None:  # JSON: its times are ISO 8601 strings
            clash = slot.guest_clash
            _check_no_clash(clash["id"], datetime.fromisoformat(clash["start"]), datetime.fromisoformat(clash["end"]))
        _check_seats(slot, seats=ask.seats, freed=slot.overdue_seats)

    def create(self, slot: Slot, ask: SlotBookingRequest, *, now: datetime, actor) -> SlotBooking:
        hold_minutes = ask.hold_minutes or hold_minutes_default()
        status = Status.PENDING if ask.hold else Status.CONFIRMED
        expires_at = now + timedelta(minutes=hold_minutes) if ask.hold else None
        params = {
            "slot": slot.pk,
            "booking": 0,  # no booking is this one's own
            "start": slot.start,
            "end": slot.end,
            "capacity": slot.capacity,
            "booked": slot.booked,
            "host": slot.host_id,
            "guest": ask.guest.pk,
            "seats": ask.seats,
            "max_active": self.cap.limit,
            "status": status,
            "expires_at": expires_at,
            "booking_metadata": json.dumps(ask.metadata, cls=DjangoJSONEncoder),
            "booking_request_id": ask.request_id,
            "now": now,
            "expiry_actor": EXPIRY_ACTOR,
            **_event_params(actor),
            "metadata": json.dumps(
                {"slotId": slot.pk, "seats": ask.seats, "expiresAt": expires_at}, cls=DjangoJSONEncoder
            ),
        }
        try:
            expired, freed, active, with_host, remaining, *clash, booking_id = BOOK.fetchone(params)
        except IntegrityError as error:  # the transaction is aborted: the caller's atomic block rolls it back
            raise _backstop_refusal(error, slot=slot, seats=ask.seats) from None
        count_on_commit(HOLDS_EXPIRED, self.domain, amount=expired)
        if booking_id is None:
            _check_guest_limits(host_id=slot.host_id, active=active, with_host=with_host)
            _check_no_clash(*clash)
            raise SlotFull(slot_id=slot.pk, seats=ask.seats, remaining=remaining)
        slot.booked += ask.seats - freed
        return _written(
            booking_id,
            slot,
            now=now,
            guest=ask.guest,
            seats=ask.seats,
            status=status,
            expires_at=expires_at,
            metadata=ask.metadata,
            request_id=ask.request_id,
        )


class _Count(Subquery):
    template, output_field = "(SELECT count(*) FROM (%(subquery)s) _rows)", IntegerField()


def _count(rows) -> _Count:
    return _Count(rows.order_by().values("pk"))


def _clash(rows) -> Subquery:
    """The first of ``rows`` (a guest's active bookings overlapping a time) as ``{id, start, end}``, or None."""
    first = rows.order_by("start").values(json=JSONObject(id="pk", start="start", end="end"))[:1]
    return Subquery(first, output_field=JSONField())


# The booking after the guest's and the slot's locks (``SlotBookings.create``): one statement, so one
# snapshot, taken once both locks are held; its sub-statements do not see each other's writes.
# ``overdue`` expires the slot's overdue holds (nobody else can move them: their slot is locked) and
# ``expired_events`` records them. ``limits`` counts the guest's active bookings by that snapshot, in
# which an overdue hold is not active (docs/contract.md §2.2). ``seats`` and ``free`` judge the seats by the
# counter as the slot's lock read it (a locked row is read at its latest version, and nobody moves
# it while the lock is held) plus the seats ``overdue`` gave back, and the rules; ``taken`` moves the
# counter by both (``slot_booked_within_capacity`` stays the backstop: it would refuse the statement,
# and the caller counts it); ``created`` inserts the booking when ``free`` let it, and
# ``created_event`` records it.
_B, _S = SlotBooking, Slot


Status_ = SlotBooking.Status


# The names a slot statement's template uses: ``{b_…}`` a booking's table and columns, ``{s_…}`` a slot's.
_NAMES = {**statements.names(_B, "b_"), **statements.names(_S, "s_")}


def _booking_reads() -> locking.Reads:
    """What a booking's lock statement reads of its guest (``%(guest)s``) at ``%(now)s`` for the slot
    it locks (``s``): the bookings the cap counts, the active ones with the slot's host, the first active
    one overlapping the slot (JSON ``{id, start, end}``), and the slot's overdue seats."""
    b, bs = statements.names(_B, "", "b"), statements.names(_S, "", "bs")
    s = {f.name: claims.column(_S, f.name, "s") for f in _S._meta.concrete_fields}
    guests = sql.SQL("FROM {} b WHERE {} = %(guest)s AND {}").format(b["table"], b["guest"], claims.ACTIVE.sql(_B, "b"))
    return locking.Reads(
        loads={"guest_clash": json.loads},
        guest_active=sql.SQL("(SELECT count(*) FROM {} b WHERE {} = %(guest)s AND {})").format(
            b["table"], b["guest"], SlotBookingLifecycle.cap.counted(_B, "b")
        ),
        guest_with_host=sql.SQL("(SELECT count(*) {} AND EXISTS (SELECT FROM {} bs WHERE {} = {} AND {} = {}))").format(
            guests, bs["table"], bs["id"], b["slot"], bs["host"], s["host"]
        ),
        guest_clash=sql.SQL("(SELECT jsonb_build_object('id', {}, 'start', {}, 'end', {}) {} {} LIMIT 1)").format(
            b["id"],
            b["start"],
            b["end"],
            guests,
            sql.SQL("AND {} < {} AND {} > {} ORDER BY {}").format(
                b["start"], s["end"], b["end"], s["start"], b["start"]
            ),
        ),
        overdue_seats=sql.SQL("COALESCE((SELECT sum({}) FROM {} b WHERE {} = {} AND {}), 0)").format(
            b["seats"], b["table"], b["slot"], s["id"], claims.OVERDUE.sql(_B, "b")
        ),
    )


_BOOKING_READS = _booking_reads()


# What a reschedule's lock statement reads of the booking (``c``) after the guest's lock: the guest's other
# active bookings with the new slot's host (``%(host)s``) at ``%(now)s`` (``one_per_host``).
_WITH_HOST = locking.Reads(
    with_host=sql.SQL(
        "(SELECT count(*) FROM {b_table} b JOIN {s_table} s ON s.id = b.{b_slot} "
        "WHERE b.{b_guest} = c.{b_guest} AND b.id <> c.id AND s.{s_host} = %(host)s AND {active})"
    ).format(**_NAMES, active=claims.ACTIVE.sql(_B, "b"))
)


def _slot_statement(template: str, **parts: sql.Composable) -> statements.Statement:
    return statements.Statement(sql.SQL(template).format(**_NAMES, **parts))


def _booking_event(
    source: str, *, subject_id: str, event_type: str, from_state: sql.Composable, metadata: str
) -> sql.Composed:
    """The audit event of a booking a statement writes, one per row of ``source``, by the request's actor
    (``_event_params``), ``subject_id`` and ``metadata`` SQL over that row."""
    return statements.audit_rows(
        source=sql.Identifier(source),
        occurred_at=statements.P("occurred_at"),
        actor=statements.P("actor"),
        actor_label=statements.P("actor_label"),
        subject_type=sql.Literal(_B._meta.model_name),
        subject_id=sql.SQL(subject_id),
        event_type=sql.Literal(event_type),
        from_state=from_state,
        to_state=statements.P("status"),
        metadata=sql.SQL(metadata),
        request_id=statements.P("trace_id"),
    )


# The slot's overdue holds expired with their events, and what that gave back (BOOK, MOVE).
_EXPIRE_OVERDUE = sql.SQL("""
overdue AS (
    UPDATE {b_table} SET {b_status} = {expired}, {b_updated_at} = %(now)s WHERE {b_slot} = %(slot)s AND {overdue}
    RETURNING id, {b_seats}
), expired_events AS ({expired_events}
), freed AS (
    SELECT count(*) AS holds, coalesce(sum(seats), 0) AS seats FROM overdue
)""").format(
    **_NAMES,
    expired=sql.Literal(Status_.EXPIRED),
    overdue=claims.OVERDUE.sql(_B),
    expired_events=statements.expiry_events(_B, rows="overdue"),
)


def _give_back(seats: sql.Composable) -> sql.Composable:
    """What a booking that stops blocking gives back to its slot ``s``: its ``seats``, and an appointment's
    slot is cancelled (the host's time is free again, ADR 0014)."""
    return sql.SQL(
        "{s_booked} = s.{s_booked} - {seats}, {s_status} = CASE WHEN s.{s_kind} = {appointment} THEN {cancelled} "
        "ELSE s.{s_status} END"
    ).format(
        **_NAMES,
        seats=seats,
        appointment=sql.Literal(Slot.Kind.APPOINTMENT),
        cancelled=sql.Literal(Slot.Status.CANCELLED),
    )


_BLOCKING = sql.SQL(", ").join(map(sql.Literal, claims.BLOCKING.states(_B)))


# A transition's or an expiry's give-back (``SlotBookingLifecycle.along``): the seats of the bookings it
# moved out of a blocking state, per slot.
_GIVE_BACK_ALONG = Along(
    ctes=(
        (
            "given_back",
            sql.SQL("""
    UPDATE {s_table} s SET {give_back} FROM (
        SELECT m.{b_slot} AS slot_id, sum(m.{b_seats}) AS seats FROM moved m
        WHERE m.from_state IN ({blocking}) AND m.{b_status} NOT IN ({blocking}) GROUP BY m.{b_slot}
    ) x
    WHERE s.id = x.slot_id""").format(**_NAMES, give_back=_give_back(sql.SQL("x.seats")), blocking=_BLOCKING),
        ),
    )
)


# A reschedule to an interval gives the old booking's seats back before it writes the new one.
GIVE_BACK = _slot_statement(
    "UPDATE {s_table} s SET {give_back} WHERE s.id = %(slot)s RETURNING s.id",
    give_back=_give_back(statements.P("seats")),
)


# The guest's active bookings but %(booking)s (a reschedule's own): how many the cap counts
# (``SlotBookings.cap.counts``), and how many are with %(host)s (``one_per_host``).
_LIMITS = sql.SQL("""limits AS (
    SELECT count(*) FILTER (WHERE {counted}) AS active, count(*) FILTER (WHERE s.{s_host} = %(host)s AND {active})
           AS with_host
    FROM {b_table} b JOIN {s_table} s ON s.id = b.{b_slot}
    WHERE b.{b_guest} = %(guest)s AND b.id <> %(booking)s AND ({counted} OR {active})
)""").format(**_NAMES, counted=SlotBookings.cap.counted(_B, "b"), active=claims.ACTIVE.sql(_B, "b"))


# The guest's first active booking overlapping %(start)s to %(end)s, but %(booking)s (a reschedule's own): read
# after the guest's lock, so it is the truth (ADR 0014). On the guest's bookings, which are few.
_CLASH = sql.SQL("""clash AS (
    SELECT b.id, b.{b_start} AS start, b.{b_end} AS "end" FROM {b_table} b
    WHERE b.{b_guest} = %(guest)s AND b.id <> %(booking)s AND {active}
      AND b.{b_start} < %(end)s AND b.{b_end} > %(start)s
    ORDER BY b.{b_start} LIMIT 1
)""").format(**_NAMES, active=claims.ACTIVE.sql(_B, "b"))


_CREATED_EVENT = _booking_event(
    "created", subject_id="id::text", event_type="CREATED", from_state=sql.Literal(""), metadata="%(metadata)s::jsonb"
)


BOOK = _slot_statement(
    """
WITH {expire_overdue}, {limits}, {clash}, seats AS (
    SELECT %(capacity)s - %(booked)s + freed.seats AS remaining FROM freed
), free AS (
    SELECT FROM seats, limits
    WHERE seats.remaining >= %(seats)s AND limits.with_host = 0 AND limits.active < %(max_active)s
      AND NOT EXISTS (SELECT FROM clash)
), taken AS (
    UPDATE {s_table} SET {s_booked} = {s_booked} - freed.seats
                                      + CASE WHEN EXISTS (SELECT FROM free) THEN %(seats)s ELSE 0 END
    FROM freed
    WHERE id = %(slot)s AND (freed.seats > 0 OR EXISTS (SELECT FROM free))
), created AS (
    INSERT INTO {b_table} ({b_slot}, {b_guest}, {b_start}, {b_end}, {b_seats}, {b_status}, {b_expires_at}, {b_reason},
                           {b_metadata}, {b_request_id}, {b_created_at}, {b_updated_at})
    SELECT %(slot)s, %(guest)s, %(start)s, %(end)s, %(seats)s, %(status)s, %(expires_at)s, '',
           %(booking_metadata)s::jsonb, %(booking_request_id)s, %(now)s, %(now)s
    FROM free
    RETURNING id
), created_event AS ({created_event}
)
SELECT freed.holds, freed.seats, limits.active, limits.with_host, seats.remaining, clash.id, clash.start, clash."end",
       (SELECT id FROM created)
FROM freed, limits, seats LEFT JOIN clash ON true
""",
    expire_overdue=_EXPIRE_OVERDUE,
    limits=_LIMITS,
    clash=_CLASH,
    created_event=_CREATED_EVENT,
)


SLOT_BOOKINGS = SlotBookings()


def slot_booking_create(
    *,
    slot_id: int,
    guest: User,
    now: datetime,
    seats: int = 1,
    hold: bool = False,
    hold_minutes: int | None = None,
    metadata: dict | None = None,
    request_id: str = "",
    actor: User | None = None,
) -> SlotBooking:
    """Book ``seats`` of a slot: CONFIRMED at once, or with ``hold`` a PENDING hold to confirm before
    it expires. Locks the guest row, then the slot row."""
    if seats < 1:
        raise ValidationFailed.for_field("seats", "Must be at least 1.")
    ask = SlotBookingRequest(
        slot_id=slot_id,
        guest=guest,
        seats=seats,
        hold=hold,
        hold_minutes=hold_minutes,
        metadata=metadata or {},
        request_id=request_id,
        now=now,
    )
    return SLOT_BOOKINGS.hold(ask, now=now, actor=actor or guest)


def slot_booking_confirm(*, booking_id: int, user: User, now: datetime) -> SlotBooking:
    """PENDING → CONFIRMED for the guest (or an operator). An overdue hold is expired instead, that
    change commits, and the answer is 410; a booking that is not PENDING is a 409.

    Locks the guest's row, then the slot, then the booking. The guest's row serializes the confirm
    with the guest's new bookings: a new booking that counted this hold as lapsed cannot commit
    beside a confirm that still saw it alive (the one-per-host and max-active rules)."""
    return _transition(booking_id, Status.CONFIRMED, action=CONFIRM, user=user, now=now)


def slot_booking_cancel(*, booking_id: int, user: User, now: datetime, reason: str = "") -> SlotBooking:
    """Cancel a booking and free its seats. The guest, the slot's host or an operator may cancel. A guest
    cannot cancel a CONFIRMED booking within the cancellation window before the start. The host and
    operators can always cancel, and a PENDING hold can always be released."""
    metadata = {"reason": reason} if reason else None
    return _transition(
        booking_id, Status.CANCELLED, action=CANCEL, user=user, now=now, metadata=metadata, reason=reason
    )


def slot_booking_expire(*, booking_id: int, user: User, now: datetime) -> SlotBooking:
    """An operator expires a PENDING hold now, overdue or not (admin action)."""
    return _transition(booking_id, Status.EXPIRED, action=EXPIRE, user=user, now=now)


def _transition(booking_id: int, to_state: str, *, reason: str = "", **kwargs) -> SlotBooking:
    """One statement in autocommit (``ClaimEngine.transition``): the locks (the guest's for a confirm, the
    slot's, the booking's: ``SlotBookingLifecycle.lock_before``), the policy, the expiry of an overdue
    hold, the cancellation window, the write, the slot's seats and the audit event."""
    return SLOT_BOOKINGS.transition(
        claim_id=booking_id,
        what=f"Booking {booking_id}",
        to_state=to_state,
        params={"reason": reason, "window": cancellation_window()},
        **kwargs,
    )


def slot_bookings_expire_due(*, now: datetime, batch_size: int | None = None) -> int:
    """Flip every PENDING hold overdue at ``now`` to EXPIRED and free its seats, one audit event each
    (the beat job). Returns how many were expired."""
    return SLOT_BOOKINGS.expire_due(now=now, batch_size=batch_size)


def _event_params(actor: User) -> dict[str, Any]:
    """The parameters of the audit event a booking statement writes (``_booking_event``) for ``actor``."""
    return {
        "actor": actor.pk,
        "actor_label": f"user:{actor.pk}",
        "occurred_at": timezone.now(),
        "trace_id": current_request_id() or "",
    }


def _written(booking_id: int, slot: Slot, *, now: datetime, **fields: Any) -> SlotBooking:
    """The booking a statement inserted on ``slot`` (``BOOK``, ``APPOINTMENT``, ``MOVE``), as it wrote
    it: the slot's time, created at ``now``, and ``fields``; returned without reading it back."""
    return SlotBooking(
        pk=booking_id, slot=slot, start=slot.start, end=slot.end, created_at=now, updated_at=now, **fields
    )


class _Peek(TypedDict):
    guest_id: int
    slot_id: int


def _peek(booking_id: int) -> _Peek:
    """A booking's ``guest_id`` and ``slot_id``, read without a lock: a booking never changes either,
    so the read stays true while the caller takes its locks in order."""
    peek = SlotBooking.objects.filter(pk=booking_id).values("guest_id", "slot_id").first()
    if peek is None:
        raise NotFound(f"Booking {booking_id} does not exist.")
    return peek


def _check_bookable(slot: Slot, *, guest: int, now: datetime) -> None:
    if slot.kind == Slot.Kind.APPOINTMENT:
        raise SlotUnavailable(f"Slot {slot.pk} is another booking's appointment.", details={"slotId": slot.pk})
    if slot.status != Slot.Status.AVAILABLE:
        raise SlotUnavailable(f"Slot {slot.pk} was cancelled by its host.", details={"slotId": slot.pk})
    if slot.host_id == guest:
        raise OwnSlot(f"Slot {slot.pk} is your own.")
    if slot.start <= now:
        raise SlotInPast(f"Slot {slot.pk} started at {slot.start.isoformat()}.")


def _check_guest_limits(*, host_id: int, active: int | None, with_host: int) -> None:
    """The guest's count rules, given how many active bookings the guest has (``active``; None: the
    maximum does not apply) and how many of them are with ``host_id``. Counts read under the guest's row
    lock are the truth; counts from a snapshot older than the lock only ever refuse fairly."""
    if with_host:
        raise LimitReached(
            f"You already have an active booking with host {host_id}.", details={"rule": "one_per_host", "limit": 1}
        )
    if active is not None:
        cap = SLOT_BOOKINGS.cap
        cap.check(count=active, asked=1, limit=cap.limit, max=cap.limit)


def _check_no_clash(clash_id: int | None, start: datetime | None, end: datetime | None) -> None:
    """The guest's rule, given the first active booking of theirs overlapping the time asked (if any)."""
    if clash_id is not None:
        raise GuestOverlap(booking_id=clash_id, start=start, end=end)


def _constraint_of(error: IntegrityError) -> str | None:
    cause = error.__cause__
    return cause.diag.constraint_name if isinstance(cause, psycopg.Error) else None


def _backstop_refusal(error: IntegrityError, *, slot: Slot, seats: int) -> DomainError:
    """The 409 a constraint's refusal of a booking statement means, counted (docs/contract.md §2.1)."""
    constraint = _constraint_of(error)
    if constraint == GUEST_NO_OVERLAP:
        CONSTRAINT_BACKSTOPS.labels(GUEST_NO_OVERLAP).inc()
        return GuestOverlap()
    if constraint in (HOST_NO_OVERLAP, HOST_BUFFER_BEFORE):
        CONSTRAINT_BACKSTOPS.labels(constraint).inc()
        return SlotOverlap(f"Host {slot.host_id} is taken at that time.")
    CONSTRAINT_BACKSTOPS.labels("slot_booked_within_capacity").inc()
    return SlotFull(slot_id=slot.pk, seats=seats)


def _check_seats(slot: Slot, *, seats: int, freed: int = 0) -> None:
    """``seats`` fit in the slot once the holds giving back ``freed`` seats are expired."""
    remaining = slot.capacity - slot.booked + freed
    if seats > remaining:
        raise SlotFull(slot_id=slot.pk, seats=seats, remaining=remaining)


def _guest_only(user: User, slot: Slot) -> bool:
    return not user.is_staff and user.pk != slot.host_id


def _check_cancellation_window(slot: Slot, *, now: datetime) -> None:
    if slot.start - now <= cancellation_window():
        raise _cancellation_window_closed(slot)


def _cancellation_window_closed(slot: Slot) -> CancellationWindowClosed:
    window = cancellation_window()
    return CancellationWindowClosed(
        f"Bookings can be cancelled only more than {window} before the start ({slot.start.isoformat()}).",
        details={"startTime": slot.start, "windowHours": window.total_seconds() / 3600},
    )
