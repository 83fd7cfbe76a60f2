"""A seat hold's lifecycle as services: hold, confirm, release, expire, and cancelling a confirmed
booking's seats, all or some (docs/contract.md §2.4)."""

from __future__ import annotations

import uuid
from datetime import datetime

from django.db import transaction
from django.utils import timezone
from psycopg import sql

from core import locking, statements
from core.errors import NotFound, NotOwner, ValidationFailed
from core.expiry import locked_now
from core.middleware import current_request_id
from core.policy import CANCEL, CONFIRM, EXPIRE, RELEASE
from events import selectors
from events.models import Event, SeatHoldGroup
from events.services.hold_statement import _NAMES
from events.services.holds import SEAT_HOLDS, SeatHold, _counter_backstop, waitlist_offer
from events.services.rules import HOLD_SUBJECT, MAX_SEATS_PER_HOLD, EventMismatch, State
from web.accounts.models import User


def seat_hold(
    *,
    event_id: int,
    user: User,
    now: datetime,
    seat_codes: list[str] | None = None,
    quantity: int | None = None,
    idempotency_key: str = "",
    actor: User | None = None,
    queue_token: str | None = None,
) -> SeatHoldGroup:
    """Hold the named seats, or ``quantity`` best-available ones, all or nothing, for one user, asked by
    ``actor`` (the user, or an operator for them). While the event's queue is on, ``queue_token`` must
    be an entry of the user admitted now, unless the actor is an operator."""
    if (seat_codes is None) == (quantity is None):
        raise ValidationFailed.for_field("seatCodes", "Give either seatCodes or quantity.")
    count = len(seat_codes) if seat_codes is not None else quantity
    if count is None or not 1 <= count <= MAX_SEATS_PER_HOLD:  # (None: given neither, refused above)
        raise ValidationFailed.for_field("seatCodes", f"Hold 1 to {MAX_SEATS_PER_HOLD} seats at a time.")
    if seat_codes is not None and len(set(seat_codes)) != len(seat_codes):
        raise ValidationFailed.for_field("seatCodes", "A seat code is given twice.")
    actor = actor or user
    ask = SeatHold(
        event_id=event_id,
        user=user,
        actor=actor,
        seat_codes=seat_codes,
        quantity=quantity,
        idempotency_key=idempotency_key,
        queue_token=queue_token,
    )
    return SEAT_HOLDS.hold(ask, now=now, actor=actor)


def seat_hold_confirm(*, event_id: int, hold_group_id: uuid.UUID, user: User, now: datetime) -> SeatHoldGroup:
    """Turn a live hold into a booking. An overdue hold is expired instead — that commits — and 410."""
    return _hold_transition(event_id, hold_group_id, State.CONFIRMED, action=CONFIRM, user=user, now=now)


def seat_hold_release(*, event_id: int, hold_group_id: uuid.UUID, user: User, now: datetime) -> SeatHoldGroup:
    """Give a live hold back. An overdue hold is already free: it is expired, and the release refused."""
    return _hold_transition(event_id, hold_group_id, State.RELEASED, action=RELEASE, user=user, now=now)


def seat_hold_expire(*, hold_group_id: uuid.UUID, user: User, now: datetime) -> SeatHoldGroup:
    """An operator expires a hold now, overdue or not."""
    return _hold_transition(None, hold_group_id, State.EXPIRED, action=EXPIRE, user=user, now=now)


SEATS_CANCELLED = "SEATS_CANCELLED"  # the audit event of a partial cancel: the booking stays CONFIRMED


# A partial cancel, once the booking's row is locked and the seats checked (``seat_booking_cancel``): the
# seats' claims, the booking's seat count, the event's booked-seat counter (its row lock, the transaction's
# last, ADR 0001 row 5, as a whole cancel takes it) and the audit event, in one statement. The seats freed
# are counted from the claims the statement moved, so the booking and the counter move by the same number.
# Returns how many seats were freed (the caller checked every one under the booking's lock: all of them)
# and the event's waiting count once its lock is held.
PARTIAL_CANCEL = statements.Statement(
    sql.SQL("""
WITH cancelled AS (
    UPDATE {c_table} c SET {c_state} = {cancelled} FROM {s_table} s
    WHERE c.{c_group} = %(group)s AND c.{c_state} = {confirmed} AND s.id = c.{c_seat}
      AND s.{s_code} = ANY(%(codes)s::text[])
    RETURNING s.{s_code} AS code, s.{s_section} AS section, s.{s_row} AS row, s.{s_number} AS number
), freed AS (
    SELECT COUNT(*) AS seats, jsonb_agg(code ORDER BY section, row, number) AS codes FROM cancelled
), regrouped AS (
    UPDATE {g_table} g SET {g_seat_count} = g.{g_seat_count} - f.seats, {g_updated_at} = %(now)s FROM freed f
    WHERE g.id = %(group)s AND f.seats > 0
    RETURNING g.{g_seat_count} AS seats_left
), counted AS (
    UPDATE {e_table} e SET {e_confirmed_seats} = e.{e_confirmed_seats} - f.seats FROM freed f
    WHERE e.id = %(event)s AND f.seats > 0
    RETURNING e.{e_waiting_count} AS waiting
), recorded AS ({recorded}
)
SELECT (SELECT seats FROM freed), (SELECT waiting FROM counted)
""").format(
        **_NAMES,
        **statements.names(Event, "e_"),
        cancelled=sql.Literal(State.CANCELLED),
        confirmed=sql.Literal(State.CONFIRMED),
        recorded=statements.request_events(
            source=sql.SQL("freed f, regrouped g"),
            subject_type=sql.Literal(HOLD_SUBJECT),
            subject_id=sql.SQL("%(group)s::text"),
            event_type=sql.Literal(SEATS_CANCELLED),
            from_state=sql.Literal(State.CONFIRMED),
            to_state=sql.Literal(State.CONFIRMED),
            metadata=sql.SQL("""jsonb_build_object(
               'eventId', %(event)s::bigint, 'bookingGroupId', %(booking)s::text, 'seatCodes', f.codes,
               'seatCount', g.seats_left, 'reason', %(reason)s::text)"""),
        ),
    )
)


def seat_booking_cancel(
    *, booking_group_id: uuid.UUID, user: User, now: datetime, reason: str = "", seat_codes: list[str] | None = None
) -> SeatHoldGroup:
    """Soft-cancel a booking: its rows stay, as CANCELLED, and its seats are free again. ``seat_codes``:
    only those seats (each booked in it now, else 400), the rest stay booked; the last seats cancel the
    booking. Seats freed while people wait are offered to the waiting list, as any freed seat is.

    A whole cancel is one statement in autocommit (``_booking_cancel``). A partial cancel keeps a
    transaction (ADR 0023): the codes are judged against the booking's seats under its lock, with the 400
    naming the unknown ones, then ``PARTIAL_CANCEL`` and the offer; pinned by
    ``test_a_partial_cancel_is_five_round_trips``."""
    what = f"Booking {booking_group_id}"
    if seat_codes is None:
        return _booking_cancel(booking_group_id, user=user, now=now, reason=reason)
    if not seat_codes:
        raise ValidationFailed.for_field("seatCodes", "Name at least one seat to cancel, or leave seatCodes out.")
    if len(set(seat_codes)) != len(seat_codes):
        raise ValidationFailed.for_field("seatCodes", "A seat code is given twice.")
    with transaction.atomic():
        # The booking's seats change only under its lock (a whole cancel takes it too).
        group = locking.lock_claim(SeatHoldGroup, booking_group_id, by="booking_group_id")
        if group is None:
            raise NotFound(f"{what} does not exist.")
        SEAT_HOLDS.policy.require(user, CANCEL, group, what=what)
        SEAT_HOLDS.policy.require_member(
            user, group.user_id, lambda: SEAT_HOLDS.policy.organisation_id(group), what=what
        )
        if group.state != State.CONFIRMED:
            raise SEAT_HOLDS.refused(group, State.CANCELLED)
        now = locked_now(now)
        booked = selectors.group_seat_codes(group)
        unknown = sorted(set(seat_codes) - set(booked))
        if unknown:
            raise ValidationFailed(
                f"Seats {', '.join(unknown)} are not booked in {what}.",
                details={
                    "fields": {"seatCodes": [f"Not booked in this booking: {', '.join(unknown)}."]},
                    "seatCodes": unknown,
                },
            )
        if len(seat_codes) == len(booked):  # its last seats: the booking is cancelled, whole
            return _booking_cancel(booking_group_id, user=user, now=now, reason=reason)
        with _counter_backstop(group.event_id):
            freed, waiting = PARTIAL_CANCEL.fetchone(
                {
                    "group": group.pk,
                    "booking": str(group.booking_group_id),
                    "event": group.event_id,
                    "codes": seat_codes,
                    "now": now,
                    "reason": reason,
                    "occurred_at": timezone.now(),
                    "actor": user.pk,
                    "actor_label": f"user:{user.pk}",
                    "trace_id": current_request_id() or "",
                }
            )
        if freed != len(seat_codes):  # checked under the booking's lock: a lock is missing
            raise RuntimeError(f"the seats of booking {booking_group_id} changed under its lock")
        if waiting:
            waitlist_offer(event_id=group.event_id, now=now)  # the statement holds the event's lock
        group.seat_count, group.updated_at = group.seat_count - freed, now
        group.seat_codes = [code for code in booked if code not in seat_codes]
    return group


def _booking_cancel(booking_group_id: uuid.UUID, *, user: User, now: datetime, reason: str) -> SeatHoldGroup:
    """A whole booking cancelled: one statement (``SeatHolds.transition``), in autocommit unless its seats
    free while people wait (then in a transaction, with the offer)."""
    return SEAT_HOLDS.transition(
        claim_id=booking_group_id,
        by="booking_group_id",
        what=f"Booking {booking_group_id}",
        to_state=State.CANCELLED,
        action=CANCEL,
        user=user,
        now=now,
        metadata={"reason": reason},
        params={"event": None},
    )


def _hold_transition(event_id: int | None, hold_group_id: uuid.UUID, to_state: str, **kwargs) -> SeatHoldGroup:
    """``event_id``: the event the request names (None: any), checked against the hold's. A missing
    event is 404 before the hold's own refusals (404, 403), as if asked first: that is asked only once
    the request is refused, so a transition that goes through never pays for it."""

    def event_missing() -> bool:
        return event_id is not None and not Event.objects.filter(pk=event_id).exists()

    def same_event(group: SeatHoldGroup) -> None:
        if event_id is not None and group.event_id != event_id:
            if event_missing():
                raise NotFound(f"Event {event_id} does not exist.")
            raise EventMismatch(
                f"Hold {hold_group_id} belongs to event {group.event_id}, not {event_id}.",
                details={"eventId": group.event_id},
            )

    try:
        return SEAT_HOLDS.transition(
            claim_id=hold_group_id,
            what=f"Hold {hold_group_id}",
            to_state=to_state,
            check=same_event,
            params={"event": event_id, "booking_group": uuid.uuid4()},
            **kwargs,
        )
    except (NotFound, NotOwner):
        if event_missing():
            raise NotFound(f"Event {event_id} does not exist.") from None
        raise


def seat_holds_expire_due(*, now: datetime, batch_size: int | None = None) -> int:
    """Flip every hold group overdue at ``now`` to EXPIRED, one audit event each (the beat job)."""
    return SEAT_HOLDS.expire_due(now=now, batch_size=batch_size)
