"""Every write to events, seats and seat claims (SPEC 5).

Lock order, everywhere: seat rows (primary-key order) → hold group rows (primary-key order) → the
event row (only to move its ``confirmed_seats`` counter, last, so it is held for the shortest time; an
edit of the event's details or its sales switch locks the event row alone). Nothing locks an earlier
kind of row while holding a later one, so overlapping requests never deadlock.

Seat and event rows are locked ``FOR NO KEY UPDATE`` (``select_for_update(no_key=True)``): their keys
never change, and other transactions insert rows that reference them (a hold's group and claims take
``FOR KEY SHARE`` on the event and seat rows). ``FOR UPDATE`` would make those inserts wait on, and
so possibly deadlock with, a request that only moves the counter or edits the event's details; ``FOR NO
KEY UPDATE`` does not conflict with ``FOR KEY SHARE`` (the counter's ``UPDATE`` takes that mode by
itself, as it changes no key). Nothing in events locks user rows. Hold group rows keep ``FOR UPDATE``: a confirm
sets ``booking_group_id``, a unique key.

Each service judges expiry, and stamps what it writes, with ``locked_now(now)`` taken once its locks
are held: a request's ``now`` is from before it waited for them (SPEC 2.2).
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import IntegrityError, connection, transaction
from django.db.models import F

from booking_site.accounts.models import User
from booking_site.accounts.services import require_owner
from booking_site.audit import services as audit
from booking_site.errors import Conflict, DomainError, HoldExpired, NotFound, ValidationFailed
from booking_site.expiry import expire_in_batches, locked_now
from booking_site.metrics import CONSTRAINT_BACKSTOPS, HOLDS_CREATED, HOLDS_EXPIRED, count_on_commit
from events import selectors
from events.models import Event, Seat, SeatClaim, SeatHoldGroup

State = SeatHoldGroup.State
EXPIRY_ACTOR = "system:expire_holds"
MAX_SEATS_PER_EVENT = 100_000
MAX_SEATS_PER_HOLD = 50
PICK_ATTEMPTS = 20  # best-available: how often to pick again when racing holds took the picked seats
logger = logging.getLogger(__name__)
SECTION_NAME = re.compile(r"^[A-Za-z0-9]{1,20}$")
HOLD_MINUTES_RANGE = (1, 60)
# How far ahead an event may be scheduled. Ten years is past any real on-sale window, and keeps every
# event date far from datetime's year-9999 edge, where rendering it in a time zone east of UTC (or
# reading a naive date in one west of it) overflows.
MAX_EVENT_DATE_AHEAD = timedelta(days=3653)


class SeatsUnavailable(Conflict):
    code = "seats_unavailable"


class SalesClosed(Conflict):
    code = "sales_closed"


class HoldNotActive(Conflict):
    code = "hold_not_active"


class BookingNotActive(Conflict):
    code = "booking_not_active"


class EventMismatch(DomainError):
    status, code = 400, "event_mismatch"


class SeatCountConflict(Conflict):
    """The event's booked-seat counter refused a move (``event_confirmed_within_total``): the counter
    and the claims disagree. Nothing is written; the request may be retried once an operator has
    looked (the log says which event)."""

    code = "seat_count_conflict"


def hold_subject(group: SeatHoldGroup) -> audit.Subject:
    """A hold group's whole life (held, confirmed as a booking, cancelled) is one audit subject."""
    return audit.Subject(type="seat_hold_group", id=group.pk)


# --- events and their seats ---------------------------------------------------------------------------


def event_date_problem(event_date: datetime, *, now: datetime) -> str | None:
    """Why ``event_date`` cannot be an event's date, or None. An event is scheduled in the future, at
    most ``MAX_EVENT_DATE_AHEAD`` from now (the API, the admin forms and the services all ask this)."""
    if event_date <= now:
        return "The event date must be in the future."
    if event_date > now + MAX_EVENT_DATE_AHEAD:
        return f"The event date must be at most {MAX_EVENT_DATE_AHEAD.days // 365} years ahead."
    return None


def _check_hold_minutes(hold_minutes: int) -> None:
    low, high = HOLD_MINUTES_RANGE
    if not low <= hold_minutes <= high:
        raise ValidationFailed.for_field("holdMinutes", f"Must be between {low} and {high}.")


@dataclass(frozen=True)
class SeatLayout:
    """Sections x rows x seats per row, giving codes like ``A-3-12``."""

    sections: tuple[str, ...]
    rows: int
    seats_per_row: int

    @property
    def total(self) -> int:
        return len(self.sections) * self.rows * self.seats_per_row

    def validate(self) -> None:
        if not self.sections or len(set(self.sections)) != len(self.sections):
            raise ValidationFailed.for_field("layout", "Sections must be given, each once.")
        bad = [s for s in self.sections if not SECTION_NAME.match(s)]
        if bad:
            raise ValidationFailed.for_field("layout", f"Section names are 1-20 letters or digits: {bad}.")
        if self.rows < 1 or self.seats_per_row < 1:
            raise ValidationFailed.for_field("layout", "Rows and seats per row must be at least 1.")


def event_create(
    *,
    name: str,
    event_date: datetime,
    location: str,
    now: datetime,
    total_seats: int | None = None,
    layout: SeatLayout | None = None,
    hold_minutes: int = 5,
    sales_open: bool = True,
    actor: User | None = None,
) -> Event:
    """Create an event and all its seats: plain ``S1…Sn`` from ``total_seats``, or ``layout``.

    The seats are generated by PostgreSQL in one ``INSERT … SELECT generate_series`` statement: 20,000
    seats are one round trip.
    """
    if layout is not None:
        layout.validate()
        if total_seats is not None and total_seats != layout.total:
            raise ValidationFailed.for_field("totalSeats", f"The layout has {layout.total} seats, not {total_seats}.")
        total_seats = layout.total
    if total_seats is None or not 1 <= total_seats <= MAX_SEATS_PER_EVENT:
        raise ValidationFailed.for_field("totalSeats", f"Must be between 1 and {MAX_SEATS_PER_EVENT}.")
    problem = event_date_problem(event_date, now=now)
    if problem:
        raise ValidationFailed.for_field("date", problem)
    _check_hold_minutes(hold_minutes)
    with transaction.atomic():
        event = Event.objects.create(
            name=name,
            event_date=event_date,
            location=location,
            total_seats=total_seats,
            hold_minutes=hold_minutes,
            sales_open=sales_open,
            created_at=now,
            updated_at=now,
        )
        _generate_seats(event, layout)
        audit.record(
            subject=event,
            event="CREATED",
            to_state="OPEN" if sales_open else "CLOSED",
            actor=actor,
            metadata={"totalSeats": total_seats, "layout": layout and layout.__dict__},
        )
    return event


def _generate_seats(event: Event, layout: SeatLayout | None) -> None:
    table = Seat._meta.db_table
    with connection.cursor() as cursor:
        if layout is None:
            cursor.execute(
                f"INSERT INTO {table} (event_id, code, section, row, number) "
                "SELECT %s, 'S' || n, '', 1, n FROM generate_series(1, %s) AS n ORDER BY n",
                [event.pk, event.total_seats],
            )
        else:
            cursor.execute(
                f"INSERT INTO {table} (event_id, code, section, row, number) "
                "SELECT %s, s.name || '-' || r || '-' || n, s.name, r, n "
                "FROM unnest(%s::text[]) WITH ORDINALITY AS s(name, position), "
                "generate_series(1, %s) AS r, generate_series(1, %s) AS n "
                "ORDER BY s.position, r, n",
                [event.pk, list(layout.sections), layout.rows, layout.seats_per_row],
            )


def _lock_event(event_id: int) -> Event:
    event = Event.objects.select_for_update(no_key=True).filter(pk=event_id).first()
    if event is None:
        raise NotFound(f"Event {event_id} does not exist.")
    return event


def event_update_details(
    *,
    event_id: int,
    actor: User | None,
    now: datetime,
    name: str | None = None,
    event_date: datetime | None = None,
    location: str | None = None,
    hold_minutes: int | None = None,
) -> Event:
    """Change an event's name, date, location or hold length (``None``: leave it as it is).

    Only these columns are written, under the event's row lock: the ``confirmed_seats`` counter and
    ``sales_open``, which confirms, cancels and the sales actions move meanwhile, are never written back
    from an earlier read. One ``UPDATED`` audit event lists what changed; nothing changed writes nothing.
    A new ``hold_minutes`` applies to holds granted from now on. A new date must pass
    ``event_date_problem``; an unchanged one (an event already past, say) may stay.
    """
    wanted = {"name": name, "event_date": event_date, "location": location, "hold_minutes": hold_minutes}
    wanted = {field: value for field, value in wanted.items() if value is not None}
    if hold_minutes is not None:
        _check_hold_minutes(hold_minutes)
    with transaction.atomic():
        event = _lock_event(event_id)
        now = locked_now(now)
        if event_date is not None and event_date != event.event_date:
            problem = event_date_problem(event_date, now=now)
            if problem:
                raise ValidationFailed.for_field("date", problem)
        audit.record_update(event, wanted, actor=actor, now=now)
    return event


def event_sales_set(*, event_id: int, sales_open: bool, actor: User | None, now: datetime) -> Event:
    """Open or close sales. Closing stops new holds; holds already granted may still be confirmed."""
    with transaction.atomic():
        event = _lock_event(event_id)
        if event.sales_open == sales_open:
            return event
        now = locked_now(now)
        event.sales_open, event.updated_at = sales_open, now
        event.save(update_fields=["sales_open", "updated_at"])
        states = ("CLOSED", "OPEN") if sales_open else ("OPEN", "CLOSED")
        audit.record(
            subject=event,
            event="SALES_OPENED" if sales_open else "SALES_CLOSED",
            from_state=states[0],
            to_state=states[1],
            actor=actor,
        )
    return event


# --- holds ----------------------------------------------------------------------------------------------


def _lock_seats(*, event_id: int, seat_ids: list[int] | None = None, codes: list[str] | None = None) -> list[Seat]:
    """Lock the named seats of one event in primary-key order; returns the seats that exist.
    (Tests replace it to prove they catch a missing lock.)"""
    seats = Seat.objects.select_for_update(no_key=True).filter(event_id=event_id)
    seats = seats.filter(pk__in=seat_ids) if seat_ids is not None else seats.filter(code__in=codes)
    return list(seats.order_by("pk"))


@transaction.atomic
def seats_hold(
    *,
    event_id: int,
    user: User,
    now: datetime,
    seat_codes: list[str] | None = None,
    quantity: int | None = None,
    request_id: str = "",
) -> SeatHoldGroup:
    """Hold the named seats, or ``quantity`` best-available ones, all or nothing, for one user."""
    if (seat_codes is None) == (quantity is None):
        raise ValidationFailed.for_field("seatCodes", "Give either seatCodes or quantity.")
    count = len(seat_codes) if seat_codes is not None else quantity
    if not 1 <= count <= MAX_SEATS_PER_HOLD:
        raise ValidationFailed.for_field("seatCodes", f"Hold 1 to {MAX_SEATS_PER_HOLD} seats at a time.")
    event = Event.objects.filter(pk=event_id).first()
    if event is None:
        raise NotFound(f"Event {event_id} does not exist.")
    if not event.sales_open:
        raise SalesClosed(f"Sales for event {event_id} are closed.")
    if event.event_date <= now:
        raise SalesClosed(f"Event {event_id} has already taken place.")

    if seat_codes is not None:
        if len(set(seat_codes)) != len(seat_codes):
            raise ValidationFailed.for_field("seatCodes", "A seat code is given twice.")
        seats = _lock_seats(event_id=event_id, codes=seat_codes)
        now = locked_now(now)
        unknown = sorted(set(seat_codes) - {s.code for s in seats})
        if unknown:
            raise ValidationFailed(
                f"Event {event_id} has no seats {', '.join(unknown)}.",
                details={"fields": {"seatCodes": [f"Unknown seat codes: {', '.join(unknown)}."]}, "seatCodes": unknown},
            )
        _claim(event, seats, now=now)
    else:
        seats, now = _hold_best_available(event, quantity, now=now)
    return _create_group(event, seats, user=user, now=now, request_id=request_id)


def _hold_best_available(event: Event, quantity: int, *, now: datetime) -> tuple[list[Seat], datetime]:
    """Pick ``quantity`` free seats, lock and claim them; when a racing hold took some of them in the
    meantime, undo this attempt (a savepoint, which also drops its row locks) and pick again. Returns
    the seats and the time the claim was judged at (``locked_now``, once their locks were held)."""
    for _ in range(PICK_ATTEMPTS):
        seat_ids = selectors.best_available_seat_ids(event_id=event.pk, quantity=quantity, now=now)
        if len(seat_ids) < quantity:
            raise SeatsUnavailable(
                f"Event {event.pk} has {len(seat_ids)} seats available, not {quantity}.",
                details={"requested": quantity, "available": len(seat_ids), "seatCodes": []},
            )
        try:
            with transaction.atomic():
                seats = _lock_seats(event_id=event.pk, seat_ids=seat_ids)
                locked_at = locked_now(now)
                _claim(event, seats, now=locked_at)
                return seats, locked_at
        except SeatsUnavailable:
            continue
    raise SeatsUnavailable(
        f"The seats of event {event.pk} are selling too fast; try again.",
        details={"requested": quantity, "seatCodes": []},
    )


def _claim(event: Event, seats: list[Seat], *, now: datetime) -> None:
    """Refuse when any of ``seats`` has an active claim. Caller holds the seats' row locks, and ``now``
    is ``locked_now`` from after it took them.

    Overdue holds on these seats are expired first, whole groups at a time: they never block (SPEC 2.2).
    """
    seat_ids = [s.pk for s in seats]
    overdue = SeatClaim.objects.filter(seat_id__in=seat_ids, state=State.HELD, expires_at__lte=now)
    group_ids = set(overdue.values_list("group_id", flat=True))
    if group_ids:
        groups = list(SeatHoldGroup.objects.select_for_update().filter(pk__in=group_ids).order_by("pk"))
        _expire_groups([g for g in groups if g.is_overdue(now)], now=now)
    taken = set(
        SeatClaim.objects.filter(seat_id__in=seat_ids, state__in=SeatHoldGroup.BLOCKING_STATES).values_list(
            "seat_id", flat=True
        )
    )
    if taken:
        codes = [s.code for s in seats if s.pk in taken]
        raise SeatsUnavailable(f"Seats {', '.join(codes)} of event {event.pk} are taken.", details={"seatCodes": codes})


def _create_group(event: Event, seats: list[Seat], *, user: User, now: datetime, request_id: str) -> SeatHoldGroup:
    expires_at = now + timedelta(minutes=event.hold_minutes)
    try:
        with transaction.atomic():  # savepoint: the partial unique index on active claims is the backstop
            group = SeatHoldGroup.objects.create(
                event=event,
                user=user,
                state=State.HELD,
                seat_count=len(seats),
                expires_at=expires_at,
                request_id=request_id,
                created_at=now,
                updated_at=now,
            )
            SeatClaim.objects.bulk_create(
                [SeatClaim(group=group, event=event, seat=s, state=State.HELD, expires_at=expires_at) for s in seats]
            )
    except IntegrityError:
        CONSTRAINT_BACKSTOPS.labels("seat_claim_one_active_per_seat").inc()
        raise SeatsUnavailable(
            f"Some of the seats of event {event.pk} were just taken.", details={"seatCodes": [s.code for s in seats]}
        ) from None
    group.seats = seats
    audit.record(
        subject=hold_subject(group),
        event="CREATED",
        to_state=State.HELD,
        actor=user,
        metadata={"eventId": event.pk, "seatCodes": [s.code for s in seats], "expiresAt": expires_at},
    )
    count_on_commit(HOLDS_CREATED, "events")
    return group


# --- confirm, release, cancel ----------------------------------------------------------------------------


def seats_confirm(*, event_id: int, hold_group_id: uuid.UUID, user: User, now: datetime) -> SeatHoldGroup:
    """Turn a live hold into a booking. An overdue hold is expired instead — that commits — and 410."""
    with transaction.atomic():
        group = _lock_group(event_id=event_id, user=user, hold_group_id=hold_group_id)
        now = locked_now(now)
        if group.state == State.HELD and not group.is_overdue(now):
            group.booking_group_id = uuid.uuid4()
            group.confirmed_at = now
            _apply(group, State.CONFIRMED, actor=user, now=now, fields=["booking_group_id", "confirmed_at"])
            _count_confirmed(group.event_id, +group.seat_count)
            return group
        if group.is_overdue(now):
            _expire_groups([group], now=now)
    if group.state == State.EXPIRED:
        raise HoldExpired(f"Hold {hold_group_id} expired at {group.expires_at.isoformat()}.")
    raise HoldNotActive(f"Hold {hold_group_id} is {group.state}.", details={"state": group.state})


def seats_release(*, event_id: int, hold_group_id: uuid.UUID, user: User, now: datetime) -> SeatHoldGroup:
    """Give a live hold back. An overdue hold is already free: it is expired, and the release refused."""
    with transaction.atomic():
        group = _lock_group(event_id=event_id, user=user, hold_group_id=hold_group_id)
        now = locked_now(now)
        if group.state == State.HELD and not group.is_overdue(now):
            return _apply(group, State.RELEASED, actor=user, now=now)
        if group.is_overdue(now):
            _expire_groups([group], now=now)
    raise HoldNotActive(f"Hold {hold_group_id} is {group.state}.", details={"state": group.state})


def booking_cancel(*, booking_group_id: uuid.UUID, user: User, now: datetime, reason: str = "") -> SeatHoldGroup:
    """Soft-cancel a booking: its rows stay, as CANCELLED, and its seats are free again."""
    with transaction.atomic():
        group = SeatHoldGroup.objects.select_for_update().filter(booking_group_id=booking_group_id).first()
        if group is None:
            raise NotFound(f"Booking {booking_group_id} does not exist.")
        require_owner(user=user, owner_id=group.user_id, what=f"Booking {booking_group_id}")
        if group.state != State.CONFIRMED:
            raise BookingNotActive(f"Booking {booking_group_id} is {group.state}.", details={"state": group.state})
        now = locked_now(now)
        group.cancelled_at = now
        _apply(group, State.CANCELLED, actor=user, now=now, fields=["cancelled_at"], metadata={"reason": reason})
        _count_confirmed(group.event_id, -group.seat_count)
    return group


def hold_expire(*, hold_group_id: uuid.UUID, user: User, now: datetime) -> SeatHoldGroup:
    """An operator expires a hold now, overdue or not."""
    with transaction.atomic():
        group = SeatHoldGroup.objects.select_for_update().filter(pk=hold_group_id).first()
        if group is None:
            raise NotFound(f"Hold {hold_group_id} does not exist.")
        if group.state != State.HELD:
            raise HoldNotActive(f"Hold {hold_group_id} is {group.state}.", details={"state": group.state})
        return _apply(group, State.EXPIRED, actor=user, now=locked_now(now))


def _lock_group(*, event_id: int, user: User, hold_group_id: uuid.UUID) -> SeatHoldGroup:
    if not Event.objects.filter(pk=event_id).exists():
        raise NotFound(f"Event {event_id} does not exist.")
    group = SeatHoldGroup.objects.select_for_update().filter(pk=hold_group_id).first()
    if group is None:
        raise NotFound(f"Hold {hold_group_id} does not exist.")
    require_owner(user=user, owner_id=group.user_id, what=f"Hold {hold_group_id}")
    if group.event_id != event_id:
        raise EventMismatch(
            f"Hold {hold_group_id} belongs to event {group.event_id}, not {event_id}.",
            details={"eventId": group.event_id},
        )
    return group


def _apply(
    group: SeatHoldGroup,
    to_state: str,
    *,
    actor,
    now: datetime,
    fields: list[str] | None = None,
    metadata: dict | None = None,
) -> SeatHoldGroup:
    """Move a group and its claims to ``to_state`` with one audit event. Caller holds the group's lock."""
    from_state = group.state
    group.state, group.updated_at = to_state, now
    group.save(update_fields=["state", "updated_at", *(fields or [])])
    SeatClaim.objects.filter(group=group).update(state=to_state)
    audit.record(
        subject=hold_subject(group),
        event=to_state,
        from_state=from_state,
        to_state=to_state,
        actor=actor,
        metadata={"eventId": group.event_id, "bookingGroupId": group.booking_group_id, **(metadata or {})},
    )
    if to_state == State.EXPIRED:
        count_on_commit(HOLDS_EXPIRED, "events")
    return group


def _count_confirmed(event_id: int, delta: int) -> None:
    """Move the event's booked-seat counter. Last in the transaction: the event row is the hot one.

    The services keep the counter equal to the confirmed claims, so ``event_confirmed_within_total``
    should never refuse; if a counter has drifted anyway (a write outside the services), the constraint
    refuses the move and the request gets a 409 instead of a 500, with nothing written.
    """
    try:
        with transaction.atomic():  # savepoint: the check constraint is the backstop
            Event.objects.filter(pk=event_id).update(confirmed_seats=F("confirmed_seats") + delta)
    except IntegrityError:
        CONSTRAINT_BACKSTOPS.labels("event_confirmed_within_total").inc()
        logger.error("The booked-seat counter of event %s refused to move by %+d: it has drifted", event_id, delta)
        raise SeatCountConflict(
            f"The seat counts of event {event_id} are out of step; the change was not made.",
            details={"eventId": event_id},
        ) from None


# --- expiry ------------------------------------------------------------------------------------------------


def _expire_groups(groups: list[SeatHoldGroup], *, now: datetime) -> None:
    """Flip overdue HELD groups and their claims to EXPIRED, one audit event per group. Caller holds
    the groups' row locks."""
    if not groups:
        return
    ids = [g.pk for g in groups]
    SeatHoldGroup.objects.filter(pk__in=ids).update(state=State.EXPIRED, updated_at=now)
    SeatClaim.objects.filter(group_id__in=ids).update(state=State.EXPIRED)
    audit.record_many(
        [
            audit.event(
                subject=hold_subject(g),
                event=State.EXPIRED,
                from_state=State.HELD,
                to_state=State.EXPIRED,
                actor=EXPIRY_ACTOR,
                metadata={"eventId": g.event_id},
            )
            for g in groups
        ]
    )
    for g in groups:
        g.state, g.updated_at = State.EXPIRED, now
    count_on_commit(HOLDS_EXPIRED, "events", amount=len(groups))


def events_expire_due(*, now: datetime, batch_size: int | None = None) -> int:
    """Flip every hold group overdue at ``now`` to EXPIRED, one audit event each (the beat job)."""
    return expire_in_batches(
        overdue=SeatHoldGroup.objects.overdue(now=now),
        expire_batch=lambda batch: _expire_groups(batch, now=locked_now(now)),
        batch_size=batch_size,
    )
