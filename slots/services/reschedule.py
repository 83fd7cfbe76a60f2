"""Moving a booking: to another slot, or an appointment to another interval."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, TypedDict

from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, transaction
from psycopg import sql

from core import claims, locking, statements
from core.audit import services as audit
from core.engine import EXPIRY_ACTOR
from core.errors import HoldExpired, InvalidStateTransition, NotFound, ValidationFailed
from core.expiry import locked_now
from core.metrics import HOLDS_EXPIRED, count_on_commit
from core.policy import RESCHEDULE
from slots import locks
from slots.models import Slot, SlotBooking
from slots.services.appointments import APPOINTMENTS, AppointmentRequest, AppointmentTarget
from slots.services.bookings import SLOT_BOOKINGS
from slots.services.lifecycle import (
    _B,
    _NAMES,
    GIVE_BACK,
    Status_,
    _backstop_refusal,
    _booking_event,
    _check_bookable,
    _check_cancellation_window,
    _check_guest_limits,
    _check_no_clash,
    _event_params,
    _guest_only,
    _slot_statement,
    _written,
    expire_overdue,
    guest_moved,
)
from slots.services.rules import SlotFull, Status
from web.accounts.models import User


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


# What a reschedule's lock statement reads of the booking (``c``) after the guest's lock: the guest's other
# active bookings with the new slot's host (``%(host)s``) at ``%(now)s`` (``one_per_host``).
_WITH_HOST = locking.Reads(
    with_host=sql.SQL(
        "(SELECT count(*) FROM {b_table} b JOIN {s_table} s ON s.id = b.{b_slot} "
        "WHERE b.{b_guest} = c.{b_guest} AND b.id <> c.id AND s.{s_host} = %(host)s AND {active})"
    ).format(**_NAMES, active=claims.ACTIVE.sql(_B, "b"))
)


# The guest's first active booking overlapping %(start)s to %(end)s, but %(booking)s (a reschedule's own): read
# after the guest's lock, so it is the truth (ADR 0014). On the guest's bookings, which are few.
_CLASH = sql.SQL("""clash AS (
    SELECT b.id, b.{b_start} AS start, b.{b_end} AS "end" FROM {b_table} b
    WHERE b.{b_guest} = %(guest)s AND b.id <> %(booking)s AND {active}
      AND b.{b_start} < %(end)s AND b.{b_end} > %(start)s
    ORDER BY b.{b_start} LIMIT 1
)""").format(**_NAMES, active=claims.ACTIVE.sql(_B, "b"))


def appointment_reschedule(
    *, booking_id: int, start: datetime, end: datetime, user: User, now: datetime
) -> SlotBooking:
    """Move an active booking (an appointment, or seats of a published slot) to ``start`` to ``end`` of its
    host's hours, in one transaction: the new appointment passes the booking rules (the booking itself not
    in its own way) and, for a guest moving a CONFIRMED booking, the old time's cancellation window
    applies; the old booking is CANCELLED (reason ``rescheduled``, audit ``RESCHEDULED``) and its seats and
    appointment released before the new one is written, or, if anything refuses, nothing changes.

    Returns the new booking (status, expiry and metadata kept; ``rescheduled_from`` the old one). Locks the
    guest's and the host's rows, the old slot, then the booking."""
    with transaction.atomic():
        peek = SlotBooking.objects.filter(pk=booking_id).values("guest_id", "slot_id", "slot__host_id").first()
        if peek is None:
            raise NotFound(f"Booking {booking_id} does not exist.")
        users = locking.lock_users([peek["guest_id"], peek["slot__host_id"]])
        old_slot = locks.lock_slots([peek["slot_id"]])[peek["slot_id"]]
        booking = locking.lock_claim(SlotBooking, booking_id)
        assert booking is not None  # found above, and a booking is never deleted (PROTECT)
        booking.slot, booking.guest = old_slot, users[peek["guest_id"]]
        SLOT_BOOKINGS.policy.require(user, RESCHEDULE, booking, what=f"Booking {booking_id}")
        SLOT_BOOKINGS.policy.require_member(
            user, booking.guest_id, lambda: old_slot.organisation_id, what=f"Booking {booking_id}"
        )
        now = locked_now(now)
        if booking.is_overdue(now):
            SLOT_BOOKINGS.expire_overdue([booking.pk], now=now)
            booking.status = Status.EXPIRED
        elif booking.is_active(now):
            return _move_to_interval(booking, users[peek["slot__host_id"]], start=start, end=end, user=user, now=now)
    if booking.status == Status.EXPIRED:
        assert booking.expires_at is not None  # it was a PENDING hold, which has an expiry
        raise HoldExpired(f"Booking {booking_id} expired at {booking.expires_at.isoformat()}.")
    raise InvalidStateTransition(subject=f"Booking {booking_id}", from_state=booking.status, to_state="RESCHEDULED")


def _move_to_interval(booking: SlotBooking, host: User, *, start: datetime, end: datetime, user: User, now: datetime):
    """Caller holds the guest's and the host's rows, the old slot's and the booking's."""
    if booking.seats != 1:
        raise ValidationFailed.for_field("startTime", "An appointment is one seat; this booking has more.")
    if booking.status == Status.CONFIRMED and _guest_only(user, booking.slot):
        _check_cancellation_window(booking.slot, now=now)
    ask = AppointmentRequest(
        host_id=host.pk,
        guest=booking.guest,
        start=start,
        end=end,
        hold=booking.status == Status.PENDING,
        hold_minutes=None,
        now=now,
        metadata=booking.metadata,
        rescheduled_from=booking,
    )
    target = AppointmentTarget(host=host)
    APPOINTMENTS.check_target(target, ask, now=now)
    APPOINTMENTS.expire_in_the_way(target, ask, now=now)
    # The old booking gives back its seats (and its appointment's time) first: the new one may overlap it.
    fields = {"status": Status.CANCELLED, "reason": "rescheduled", "updated_at": now}
    from_state = booking.status
    GIVE_BACK.fetchall({"slot": booking.slot_id, "seats": booking.seats})
    SlotBooking.objects.filter(pk=booking.pk).update(**fields)
    moved = APPOINTMENTS.create(target, ask, now=now, actor=user)
    audit.record(
        subject=booking,
        event="RESCHEDULED",
        from_state=from_state,
        to_state=Status.CANCELLED,
        actor=user,
        metadata={"toBookingId": moved.pk, "toSlotId": moved.slot_id},
    )
    return moved


def slot_booking_reschedule(*, booking_id: int, slot_id: int, user: User, now: datetime) -> SlotBooking:
    """Move an active booking to another slot in one transaction. The seats of the new slot are taken
    and those of the old slot released by one statement. If the new slot cannot take them, nothing
    changes.

    Returns the new booking (same seats, status, expiry and metadata; ``rescheduled_from`` the old one).
    The old booking becomes CANCELLED. Locks the guest row and both slot rows (one statement), then the
    booking, which reads the guest's other bookings with the new slot's host after the guest's lock.

    A transaction, not one statement (ADR 0023): the move's checks read the guest's bookings with a
    snapshot taken after the guest's lock, which a statement that takes that lock cannot (its snapshot
    is from before the wait). Pinned by ``test_a_reschedule_is_six_round_trips``.
    """
    with transaction.atomic():
        peek = _peek(booking_id)
        if slot_id == peek["slot_id"]:
            raise ValidationFailed.for_field("slotId", "The booking is already on this slot.")
        slots = locks.lock_slots([peek["slot_id"], slot_id], owner=peek["guest_id"])
        old_slot, new_slot = slots[peek["slot_id"]], slots.get(slot_id)
        host = new_slot.host_id if new_slot is not None else None
        booking = locking.lock_claim(SlotBooking, booking_id, reads=_WITH_HOST, host=host, now=locked_now(now))
        assert booking is not None  # _peek found it, and a booking is never deleted (PROTECT)
        booking.slot = old_slot
        SLOT_BOOKINGS.policy.require(user, RESCHEDULE, booking, what=f"Booking {booking_id}")
        SLOT_BOOKINGS.policy.require_member(
            user, booking.guest_id, lambda: old_slot.organisation_id, what=f"Booking {booking_id}"
        )
        if new_slot is None:
            raise NotFound(f"Slot {slot_id} does not exist.")
        now = locked_now(now)
        if booking.is_overdue(now):
            SLOT_BOOKINGS.expire_overdue([booking.pk], now=now)
            booking.status = Status.EXPIRED
        elif booking.is_active(now):
            return _move(booking, old_slot=old_slot, new_slot=new_slot, user=user, now=now)
    if booking.status == Status.EXPIRED:
        assert booking.expires_at is not None  # it was a PENDING hold, which has an expiry
        raise HoldExpired(f"Booking {booking_id} expired at {booking.expires_at.isoformat()}.")
    raise InvalidStateTransition(subject=f"Booking {booking_id}", from_state=booking.status, to_state="RESCHEDULED")


def _move(booking: SlotBooking, *, old_slot: Slot, new_slot: Slot, user: User, now: datetime) -> SlotBooking:
    """Caller holds the guest row, both slot rows and the booking row (annotated ``with_host``: the
    guest's other active bookings with the new slot's host, read after the guest's lock)."""
    if booking.status == Status.CONFIRMED and _guest_only(user, old_slot):
        _check_cancellation_window(old_slot, now=now)
    _check_bookable(new_slot, guest=booking.guest_id, now=now)
    _check_guest_limits(host_id=new_slot.host_id, active=None, with_host=booking.with_host)
    params: dict[str, Any] = {
        "booking": booking.pk,
        "old_slot": old_slot.pk,
        "slot": new_slot.pk,
        "start": new_slot.start,
        "end": new_slot.end,
        "capacity": new_slot.capacity,
        "booked": new_slot.booked,
        "guest": booking.guest_id,
        "seats": booking.seats,
        "status": booking.status,
        "expires_at": booking.expires_at,
        "booking_metadata": json.dumps(booking.metadata, cls=DjangoJSONEncoder),
        "now": now,
        "expiry_actor": EXPIRY_ACTOR,
        **_event_params(user),
    }
    try:
        expired, remaining, *clash, moved_id = MOVE.fetchone(params)
    except IntegrityError as error:  # the transaction is aborted: the caller's atomic block rolls it back
        raise _backstop_refusal(error, slot=new_slot, seats=booking.seats) from None
    if moved_id is None:
        _check_no_clash(*clash)
        raise SlotFull(slot_id=new_slot.pk, seats=booking.seats, remaining=remaining)
    count_on_commit(HOLDS_EXPIRED, SLOT_BOOKINGS.domain, amount=expired)
    return _written(
        moved_id,
        new_slot,
        now=now,
        guest_id=booking.guest_id,
        seats=booking.seats,
        status=booking.status,
        expires_at=booking.expires_at,
        metadata=booking.metadata,
        rescheduled_from_id=booking.pk,
    )


# The move after every lock (``_move``): one snapshot taken once the locks are held,
# ``slot`` the new slot. ``overdue`` expires its overdue holds; ``free`` judges its seats; ``moving`` is the seats
# that move (none when they do not fit: the caller then rolls everything back); ``taken`` moves both
# counters in one UPDATE (the backstop as in the booking's statement); ``cancelled`` ends the old booking, ``created``
# inserts the new one, ``rescheduled_event`` and ``created_event`` record RESCHEDULED and CREATED, and
# ``guest_moved`` moves the guest's claim sequence (the guest's lock is held: ``lock_slots(owner=…)``).
MOVE = _slot_statement(
    """
WITH {expire_overdue}, {clash}, seats AS (
    SELECT %(capacity)s - %(booked)s + freed.seats AS remaining FROM freed
), free AS (
    SELECT FROM seats WHERE seats.remaining >= %(seats)s AND NOT EXISTS (SELECT FROM clash)
), moving AS (
    SELECT CASE WHEN EXISTS (SELECT FROM free) THEN %(seats)s ELSE 0 END AS seats
), taken AS (
    UPDATE {s_table}
    SET {s_booked} = {s_booked} + CASE WHEN id = %(slot)s THEN moving.seats - freed.seats ELSE -moving.seats END,
        {s_status} = CASE WHEN id = %(old_slot)s AND {s_kind} = {appointment} AND moving.seats > 0 THEN {slot_cancelled}
                          ELSE {s_status} END
    FROM freed, moving
    WHERE id IN (%(old_slot)s, %(slot)s)
), cancelled AS (
    UPDATE {b_table} SET {b_status} = {cancelled}, {b_reason} = 'rescheduled', {b_updated_at} = %(now)s
    WHERE id = %(booking)s AND EXISTS (SELECT FROM free)
    RETURNING id
), created AS (
    INSERT INTO {b_table} ({b_slot}, {b_guest}, {b_start}, {b_end}, {b_seats}, {b_status}, {b_expires_at}, {b_reason},
                           {b_metadata}, {b_rescheduled_from}, {b_idempotency_key}, {b_created_at}, {b_updated_at})
    SELECT %(slot)s, %(guest)s, %(start)s, %(end)s, %(seats)s, %(status)s, %(expires_at)s, '',
           %(booking_metadata)s::jsonb, %(booking)s, '', %(now)s, %(now)s
    FROM cancelled
    RETURNING id
), rescheduled_event AS ({rescheduled_event}
), created_event AS ({created_event}
), guest_moved AS ({guest_moved}
)
SELECT freed.holds, seats.remaining, clash.id, clash.start, clash."end", (SELECT id FROM created)
FROM freed, seats LEFT JOIN clash ON true
""",
    expire_overdue=expire_overdue(sql.SQL("true")),
    clash=_CLASH,
    guest_moved=guest_moved(statements.P("guest"), when="created"),
    appointment=sql.Literal(Slot.Kind.APPOINTMENT),
    slot_cancelled=sql.Literal(Slot.Status.CANCELLED),
    cancelled=sql.Literal(Status_.CANCELLED),
    # The old booking's RESCHEDULED (from its state, %(status)s, to CANCELLED) and the new one's CREATED.
    rescheduled_event=statements.audit_rows(
        source=sql.Identifier("created"),
        occurred_at=statements.P("occurred_at"),
        actor=statements.P("actor"),
        actor_label=statements.P("actor_label"),
        subject_type=sql.Literal(_B._meta.model_name),
        subject_id=sql.SQL("%(booking)s::text"),
        event_type=sql.Literal("RESCHEDULED"),
        from_state=statements.P("status"),
        to_state=sql.Literal(Status_.CANCELLED),
        metadata=sql.SQL("jsonb_build_object('toBookingId', id, 'toSlotId', %(slot)s)"),
        request_id=statements.P("trace_id"),
    ),
    created_event=_booking_event(
        "created",
        subject_id="id::text",
        event_type="CREATED",
        from_state=sql.Literal(""),
        metadata="jsonb_build_object('slotId', %(slot)s, 'seats', %(seats)s, 'rescheduledFromId', %(booking)s)",
    ),
)
