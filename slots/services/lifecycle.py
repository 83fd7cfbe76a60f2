"""What every slot booking shares once it exists, a seat of a published slot or an appointment: the slots'
lifecycle (``SlotBookingLifecycle``: its policy, the cap on a guest's bookings, its transitions and expiry),
the pieces of SQL the booking statements share (the slot's overdue holds expired, the seats given back,
the CREATED event), and the checks and refusals the three ways of booking share."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from django.db import IntegrityError
from django.utils import timezone
from psycopg import sql

from core import claims, locking, statements
from core.declarations import Along
from core.engine import ClaimEngine
from core.errors import DomainError, InvalidStateTransition, LimitReached
from core.metrics import CONSTRAINT_BACKSTOPS
from core.middleware import current_request_id
from core.organisations import access
from core.policy import CANCEL, CONFIRM, SEE, Cap, ClaimPolicy
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
)
from web.accounts.models import User


class BookingPolicy(ClaimPolicy[SlotBooking]):
    """The guest acts on their bookings; the slot's host also sees them and may cancel them (confirming
    and rescheduling stay with the guest); operators do anything (contract §2.6)."""

    owner_field, resource_field = "guest", "slot"
    host_may = frozenset({SEE, CANCEL})

    def may(self, user: User, action: str, booking: SlotBooking) -> bool:
        if action in self.host_may and booking.slot.host_id == user.pk:
            return True
        return super().may(user, action, booking)

    def sql(self, action: str) -> sql.Composable:
        if action in self.host_may:  # the slot's host, read with the booking's lock (``reads``)
            return sql.SQL("({} OR l.slot_host = %(user)s)").format(super().sql(action))
        return super().sql(action)


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
        return sql.SQL("AND {}").format(locks.slot_lock_sql(claims.column(_B, "slot", "c"), lock_before=guest))

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
            "NOT (l.{} = {} AND NOT {} AND l.slot_host <> %(user)s AND l.slot_start - l.locked_at <= %(window)s)"
        ).format(claims.column(_B, "status"), sql.Literal(Status.CONFIRMED), self.policy.operator_sql())

    def disallowed(self, booking: SlotBooking, to_state: str, *, now: datetime) -> DomainError:
        return _cancellation_window_closed(booking.slot)

    def changes(self, to_state: str) -> dict[str, sql.Composable]:
        return {"reason": sql.SQL("%(reason)s")} if to_state == Status.CANCELLED else {}

    def along(self, to_state: str) -> Along:
        """A booking that stops blocking gives its seats back to its slot, and an appointment's slot is
        cancelled (the host's time is free again, ADR 0014): one ``UPDATE`` of the slots (their locks are
        held: ``lock_before``, ``due_lock``, or the caller's). A confirm also moves the guest's claim
        sequence (``locking.claim_moved_sql``; the guest's lock is held: ``lock_before``): a booking whose
        snapshot judged the hold lapsed (its ``now`` after the expiry the confirm beat) must not trust
        its count of the guest's bookings (docs/decisions/0022-one-statement-holds.md)."""
        return _CONFIRM_ALONG if to_state == Status.CONFIRMED else _GIVE_BACK_ALONG

    def due_lock(self) -> tuple[sql.Composable, sql.Composable]:
        """The batch locks each booking's slot with it, so a booking whose slot a request holds is skipped."""
        return sql.SQL("JOIN {} s ON s.id = c.{}").format(statements.table(_S), claims.column(_B, "slot")), sql.SQL(
            ", s"
        )

    def refused(self, booking: SlotBooking, to_state: str) -> DomainError:
        if to_state == Status.CONFIRMED:
            return BookingNotPending(booking_id=booking.pk, status=booking.status)
        return InvalidStateTransition(subject=f"Booking {booking.pk}", from_state=booking.status, to_state=to_state)


_B, _S = SlotBooking, Slot


Status_ = SlotBooking.Status


# The names a slot statement's template uses: ``{b_…}`` a booking's table and columns, ``{s_…}`` a slot's.
_NAMES = {**statements.names(_B, "b_"), **statements.names(_S, "s_")}


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


def expire_overdue(when: sql.Composable) -> sql.Composed:
    """The sub-statements that expire the slot ``%(slot)s``'s overdue holds when ``when`` (a condition read
    once, before: ``true``, or the booking's verdict), with their events, and what that gave back
    (``freed``): the booking's statement (``bookings.book_statement``) and MOVE. Caller holds the slot's lock
    (taken earlier in the statement, or by the transaction). Its ``UPDATE`` re-reads a hold that changed
    after the snapshot (EvalPlanQual): one confirmed meanwhile is skipped, so ``freed`` is the truth."""
    return sql.SQL("""
overdue AS (
    UPDATE {b_table} SET {b_status} = {expired}, {b_updated_at} = %(now)s
    WHERE {b_slot} = %(slot)s AND {overdue} AND {when}
    RETURNING id, {b_seats}
), expired_events AS ({expired_events}
), freed AS (
    SELECT count(*) AS holds, coalesce(sum(seats), 0) AS seats FROM overdue
)""").format(
        **_NAMES,
        when=when,
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


# A confirm's: the give-back (which moves nothing: a confirm leaves a blocking state for a blocking
# state), and the guest's claim sequence moved when it confirmed a hold.
_CONFIRM_ALONG = Along(
    ctes=(
        *_GIVE_BACK_ALONG.ctes,
        (
            "guest_moved",
            locking.claim_moved_sql(
                User,
                sql.SQL("(SELECT m.{b_guest} FROM moved m LIMIT 1)").format(**_NAMES),
                when=sql.SQL("EXISTS (SELECT FROM moved m WHERE m.{b_status} = {confirmed})").format(
                    **_NAMES, confirmed=sql.Literal(Status.CONFIRMED)
                ),
            ),
        ),
    )
)


def guest_moved(guest: sql.Composable, *, when: str) -> sql.Composable:
    """A booking statement's ``guest_moved`` sub-statement: the guest's claim sequence moved on when the
    sub-statement ``when`` inserted a booking (``locking.claim_moved_sql``). Every write that raises what a
    slot booking reads under the guest's lock (the guest's bookings: the cap, one per host, the guest's
    time) moves it: a booking, an appointment, a reschedule, a confirm (``_CONFIRM_ALONG``)."""
    return locking.claim_moved_sql(User, guest, when=sql.SQL("EXISTS (SELECT FROM {})").format(sql.Identifier(when)))


# A reschedule to an interval gives the old booking's seats back before it writes the new one.
GIVE_BACK = _slot_statement(
    "UPDATE {s_table} s SET {give_back} WHERE s.id = %(slot)s RETURNING s.id",
    give_back=_give_back(statements.P("seats")),
)


_CREATED_EVENT = _booking_event(
    "created", subject_id="id::text", event_type="CREATED", from_state=sql.Literal(""), metadata="%(metadata)s::jsonb"
)


def _event_params(actor: User) -> dict[str, Any]:
    """The parameters of the audit event a booking statement writes (``_booking_event``) for ``actor``."""
    return {
        "actor": actor.pk,
        "actor_label": f"user:{actor.pk}",
        "occurred_at": timezone.now(),
        "trace_id": current_request_id() or "",
    }


def _written(booking_id: int, slot: Slot, *, now: datetime, **fields: Any) -> SlotBooking:
    """The booking a statement inserted on ``slot`` (``bookings.book_statement``, ``APPOINTMENT``, ``MOVE``),
    as it wrote it: the slot's time, created at ``now``, and ``fields``; returned without reading it back."""
    return SlotBooking(
        pk=booking_id, slot=slot, start=slot.start, end=slot.end, created_at=now, updated_at=now, **fields
    )


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
        cap = SlotBookingLifecycle.cap
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
    return not access.may_act(user, slot.organisation_id) and user.pk != slot.host_id


def _check_cancellation_window(slot: Slot, *, now: datetime) -> None:
    if slot.start - now <= cancellation_window():
        raise _cancellation_window_closed(slot)


def _cancellation_window_closed(slot: Slot) -> CancellationWindowClosed:
    window = cancellation_window()
    return CancellationWindowClosed(
        f"Bookings can be cancelled only more than {window} before the start ({slot.start.isoformat()}).",
        details={"startTime": slot.start, "windowHours": window.total_seconds() / 3600},
    )
