"""Every write to slots and slot bookings (docs/contract.md §6).

The booking lifecycle is ``booking_site.engine``'s and the locks are ``booking_site.locking``'s (the
order is written there: the guest's or host's user row, then slot rows, then booking rows). This
module declares what is the slots' own: a booking locks its guest (the rules that count a guest's
bookings: at most ``SLOTS_MAX_ACTIVE_BOOKINGS_PER_GUEST``, one per host) and its slot (the seats of
the slot: its ``booked`` counter, moved by one ``UPDATE`` under that lock); the slot's host may cancel
its bookings; a guest's cancellation window; a reschedule; and the slots' errors.

The write path is lean (``SlotBookings``; ADR 0007, the slots): a booking, a confirm, a cancel is
BEGIN, one statement that takes the locks, one that checks and writes, COMMIT. A transition finds
the booking's guest and slot through the booking's row in its lock statement; a reschedule reads
them first without a lock (``_peek``). Both are safe because a booking never changes its guest or
its slot.

PostgreSQL backstops, so that a bug here cannot corrupt data: ``slot_booked_within_capacity``
(check constraint on the counter), ``slot_no_overlap_per_host`` and ``slot_buffer_before_per_host``
(exclusion constraints: a host's time, an appointment's buffer after and before it), and
``slotbooking_guest_no_overlap`` (a guest's time). When a
backstop fires, the request gets the same 409 as the lock-and-check would have given, and
``CONSTRAINT_BACKSTOPS`` counts it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any, TypedDict

import psycopg
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, transaction
from django.db.models import (
    IntegerField,
    JSONField,
    QuerySet,
    Subquery,
)
from django.db.models.expressions import RawSQL
from django.db.models.functions import Coalesce, JSONObject
from django.utils import timezone
from psycopg import sql

from booking_site import claims, locking, statements
from booking_site.accounts.models import User
from booking_site.audit import services as audit
from booking_site.engine import (
    CANCEL,
    CONFIRM,
    EXPIRE,
    EXPIRY_ACTOR,
    RESCHEDULE,
    SEE,
    Along,
    Cap,
    ClaimEngine,
    ClaimPolicy,
)
from booking_site.errors import (
    Conflict,
    DomainError,
    HoldExpired,
    InvalidStateTransition,
    LimitReached,
    NotFound,
    ValidationFailed,
    bounded,
)
from booking_site.expiry import locked_now
from booking_site.metrics import CONSTRAINT_BACKSTOPS, HOLDS_EXPIRED, count_on_commit
from booking_site.middleware import current_request_id
from slots import selectors
from slots.availability import MAX_BUFFER_MINUTES, AvailabilityFields, document_of
from slots.models import Availability, Slot, SlotBooking

Status = SlotBooking.Status


# --- settings (SLOTS_* in booking_site/settings.py, read from the environment) --------------------

MAX_CAPACITY = 10_000  # seats of one slot (the API, the admin forms and the services agree)
SLOT_HORIZON = timedelta(days=5 * 365 + 1)  # a slot ends at most five years from now (SLOT_HORIZON_TEXT)
SLOT_HORIZON_TEXT = "five years"
GUEST_NO_OVERLAP = "slotbooking_guest_no_overlap"  # the constraint behind the guest's rule (ADR 0014)
HOST_NO_OVERLAP = "slot_no_overlap_per_host"  # and the host's: published slots, appointments with the buffer after
HOST_BUFFER_BEFORE = "slot_buffer_before_per_host"  # and with the buffer before (ADR 0014)


def cancellation_window() -> timedelta:
    return timedelta(hours=settings.SLOTS_CANCELLATION_WINDOW_HOURS)


def hold_minutes_default() -> int:
    return settings.SLOTS_HOLD_MINUTES_DEFAULT


# --- errors ---------------------------------------------------------------------------------------


class SlotFull(Conflict):
    code = "slot_full"

    def __init__(self, *, slot_id: int, seats: int, remaining: int | None = None):
        tail = f" ({remaining} left)" if remaining is not None else ""
        super().__init__(
            f"Slot {slot_id} has not {seats} seat(s) left{tail}.", details={"slotId": slot_id, "seats": seats}
        )


class SlotOverlap(Conflict):
    code = "slot_overlap"


class SlotUnavailable(Conflict):
    code = "slot_unavailable"


class SlotBooked(Conflict):
    code = "slot_booked"


class GuestOverlap(Conflict):
    """The guest already has an active booking at that time, with any host (docs/contract.md §2.1)."""

    code = "guest_overlap"

    def __init__(self, *, booking_id: int | None = None, start: datetime | None = None, end: datetime | None = None):
        if booking_id is None or start is None or end is None:
            # Refused by the constraint: the clashing row is not read back (the statement failed).
            super().__init__("You already have an active booking overlapping this time.")
            return
        super().__init__(
            f"You already have booking {booking_id} from {start.isoformat()} to {end.isoformat()}.",
            details={"bookingId": booking_id, "startTime": start, "endTime": end},
        )


class OutsideAvailability(DomainError):
    status, code = 400, "outside_availability"


class OwnSlot(DomainError):
    status, code, message = 400, "own_slot", "You cannot book your own slot."


class SlotInPast(DomainError):
    status, code, message = 400, "slot_in_past", "The slot has already started."


class CancellationWindowClosed(DomainError):
    status, code = 400, "cancellation_window_closed"


class BookingNotPending(Conflict):
    """Confirming a booking that is not a PENDING hold (already confirmed, cancelled) is a 409 (docs/contract.md §6)."""

    code = "booking_not_pending"

    def __init__(self, *, booking_id: int, status: str):
        super().__init__(
            f"Booking {booking_id} is {status}; only a PENDING hold can be confirmed.",
            details={"fromState": status, "toState": Status.CONFIRMED},
        )


class NotAHost(DomainError):
    status, code, message = 403, "forbidden", "Only hosts publish slots."


# --- slots ------------------------------------------------------------------------------------------


def slot_create(
    *,
    host: User,
    start: datetime,
    end: datetime,
    now: datetime,
    actor: User,
    capacity: int = 1,
    title: str = "",
    specialization: str = "",
) -> Slot:
    return slots_create_many(
        host=host,
        ranges=[(start, end)],
        now=now,
        actor=actor,
        capacity=capacity,
        title=title,
        specialization=specialization,
    )[0]


@transaction.atomic
def slots_create_many(
    *,
    host: User,
    ranges: list[tuple[datetime, datetime]],
    now: datetime,
    actor: User,
    capacity: int = 1,
    title: str = "",
    specialization: str = "",
) -> list[Slot]:
    """Create one host's slots, all or none (the admin's bulk form and ``POST /api/slots``).

    Refuses a slot in the past, a slot ending more than ``SLOT_HORIZON`` (five years) from now, a
    range that ends before it starts, and any overlap among the new slots or with the host's AVAILABLE
    slots. Adjacent slots (one ends when the next starts) are fine.
    """
    if not host.is_host:
        raise ValidationFailed.for_field("hostId", f"User {host.pk} is not a host.")
    bounded(capacity, "capacity", 1, MAX_CAPACITY)
    if not ranges:
        raise ValidationFailed("No slots to create.")
    ranges = sorted(ranges)
    for start, end in ranges:
        check_slot_times(start, end, now=now)
    for (_, end), (next_start, _) in pairwise(ranges):
        if next_start < end:
            raise SlotOverlap(f"The new slots overlap each other at {next_start.isoformat()}.")

    locking.lock_user(host.pk)  # serializes the creation of one host's slots: no overlap
    now = locked_now(now)
    for start, _ in ranges:
        if start <= now:
            raise SlotInPast(f"A slot starting at {start.isoformat()} is in the past.")
    _expire_overdue_appointments(host.pk, ranges, now=now)
    clashes = _overlapping(host=host, ranges=ranges)
    if clashes:
        listed = ", ".join(f"#{s.pk} {s.start.isoformat()} to {s.end.isoformat()}" for s in clashes[:10])
        raise SlotOverlap(
            f"Host {host.pk} already has slot(s) overlapping: {listed}.", details={"slotIds": [s.pk for s in clashes]}
        )
    rows = [
        Slot(
            host=host,
            title=title,
            specialization=specialization,
            start=start,
            end=end,
            capacity=capacity,
            created_at=now,
            updated_at=now,
        )
        for start, end in ranges
    ]
    try:
        with transaction.atomic():  # savepoint: the exclusion constraint is the backstop
            created = Slot.objects.bulk_create(rows)
    except IntegrityError as error:
        CONSTRAINT_BACKSTOPS.labels(_constraint_of(error) or HOST_NO_OVERLAP).inc()
        raise SlotOverlap(f"Host {host.pk} already has a slot overlapping these times.") from None
    audit.record_many(
        [
            audit.event(
                subject=slot,
                event="CREATED",
                to_state=slot.status,
                actor=actor,
                metadata={"hostId": host.pk, "start": slot.start, "end": slot.end, "capacity": slot.capacity},
            )
            for slot in created
        ]
    )
    return created


def check_slot_times(start: datetime, end: datetime, *, now: datetime) -> None:
    """A slot ends after it starts, has not started, and ends within ``SLOT_HORIZON`` of ``now``.

    The horizon keeps every stored time far from the end of the calendar: a time near 9999-12-31
    could not be shown in a time zone east of UTC (Python's datetime stops at year 9999), so one such
    row would break every page listing it.
    """
    if end <= start:
        raise ValidationFailed.for_field("endTime", "Must be after startTime.")
    if start <= now:
        raise SlotInPast(f"A slot starting at {start.isoformat()} is in the past.")
    if end > now + SLOT_HORIZON:
        raise ValidationFailed.for_field(
            "endTime", f"A slot must end within {SLOT_HORIZON_TEXT} from now ({(now + SLOT_HORIZON).date()})."
        )


def slot_update_details(*, slot_id: int, title: str, specialization: str, actor: User, now: datetime) -> Slot:
    """Change what a slot is called; its time, host and capacity stay as booked against."""
    with transaction.atomic():
        slot = locking.lock_slots([slot_id]).get(slot_id)
        if slot is None:
            raise NotFound(f"Slot {slot_id} does not exist.")
        now = locked_now(now)
        audit.record_update(
            slot, {"title": title, "specialization": specialization}, actor=actor, now=now, state_field="status"
        )
    return slot


def _overlapping(*, host: User, ranges: list[tuple[datetime, datetime]]) -> list[Slot]:
    """The host's AVAILABLE slots whose time overlaps one of ``ranges``, an appointment's with its buffer."""
    found: dict[int, Slot] = {}
    existing = Slot.objects.filter(host=host, status=Slot.Status.AVAILABLE).alias(
        taken_from=Coalesce("blocked_from", "start"), taken_until=Coalesce("blocked_until", "end")
    )
    for start, end in ranges:
        for slot in existing.filter(taken_from__lt=end, taken_until__gt=start):
            found[slot.pk] = slot
    return sorted(found.values(), key=lambda s: s.start)


def slot_cancel(*, slot_id: int, user: User, now: datetime) -> Slot:
    """The host (or an operator) withdraws a slot nobody holds a seat in (``DELETE /api/slots/{id}``).

    The row stays, CANCELLED, so its history and audit trail remain; its time is free again.
    """
    with transaction.atomic():
        slot = locking.lock_slots([slot_id]).get(slot_id)
        if slot is None:
            raise NotFound(f"Slot {slot_id} does not exist.")
        SLOT_BOOKINGS.policy.require_owner(user, slot.host_id, what=f"Slot {slot_id}", owner="host")
        now = locked_now(now)
        if slot.status == Slot.Status.CANCELLED:
            raise InvalidStateTransition(subject=f"Slot {slot_id}", from_state=slot.status, to_state="CANCELLED")
        overdue = SlotBooking.objects.overdue(now=now).filter(slot=slot).values_list("pk", flat=True)
        SLOT_BOOKINGS.expire_overdue(list(overdue), now=now)
        booked = SlotBooking.objects.filter(slot=slot).blocking().count()
        if booked:
            raise SlotBooked(f"Slot {slot_id} has {booked} active booking(s).", details={"slotId": slot_id})
        from_state = slot.status
        slot.status, slot.updated_at = Slot.Status.CANCELLED, now
        slot.save(update_fields=["status", "updated_at"])
        audit.record(subject=slot, event="CANCELLED", from_state=from_state, to_state=slot.status, actor=user)
    return slot


# --- availability (docs/contract.md §6, ADR 0014; the document is checked by slots.availability) ----------


def availability_set(*, host: User, fields: AvailabilityFields, actor: User, now: datetime) -> Availability:
    """Replace ``host``'s availability with ``fields``, a document ``availability_clean`` checked (``PUT
    /api/hosts/me/availability``, the admin). Locks the host's row: a booking of the host judges their hours
    under the same lock."""
    if not host.is_host:
        raise NotAHost(f"User {host.pk} is not a host.")
    with transaction.atomic():
        locking.lock_user(host.pk)
        now = locked_now(now)
        current = Availability.objects.filter(host=host).first()
        if current is None:
            availability = Availability.objects.create(host=host, updated_at=now, **fields)
            audit.record(subject=availability, event="CREATED", actor=actor, metadata=dict(document_of(availability)))
            return availability
        audit.record_update(current, dict(fields), actor=actor, now=now)
        return current


# --- bookings ---------------------------------------------------------------------------------------


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
        return sql.SQL("AND {}").format(locking.slot_lock_sql(claims.column(_B, "slot", "c"), after=guest))

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

    def lock_target(self, request: SlotBookingRequest) -> Slot:
        # Read from the statement's snapshot, taken before any lock wait: fair to refuse, never to grant
        # (``create`` counts again after the locks). The slot's own columns are its latest version.
        slot = locking.lock_slots(
            [request.slot_id], owner=request.guest.pk, reads=_BOOKING_READS, guest=request.guest.pk, now=request.now
        ).get(request.slot_id)
        if slot is None:
            raise NotFound(f"Slot {request.slot_id} does not exist.")
        return slot

    def check_target(self, slot: Slot, request: SlotBookingRequest, *, now: datetime) -> None:
        _check_bookable(slot, guest=request.guest.pk, now=now)
        _check_guest_limits(host_id=slot.host_id, active=slot.guest_active, with_host=slot.guest_with_host)
        if slot.guest_clash is not None:  # JSON: its times are ISO 8601 strings
            clash = slot.guest_clash
            _check_no_clash(clash["id"], datetime.fromisoformat(clash["start"]), datetime.fromisoformat(clash["end"]))
        _check_seats(slot, seats=request.seats, freed=slot.overdue_seats)

    def create(self, slot: Slot, request: SlotBookingRequest, *, now: datetime, actor) -> SlotBooking:
        hold_minutes = request.hold_minutes or hold_minutes_default()
        status = Status.PENDING if request.hold else Status.CONFIRMED
        expires_at = now + timedelta(minutes=hold_minutes) if request.hold else None
        params = {
            "slot": slot.pk,
            "booking": 0,  # no booking is this one's own
            "start": slot.start,
            "end": slot.end,
            "capacity": slot.capacity,
            "booked": slot.booked,
            "host": slot.host_id,
            "guest": request.guest.pk,
            "seats": request.seats,
            "max_active": self.cap.limit,
            "status": status,
            "expires_at": expires_at,
            "booking_metadata": json.dumps(request.metadata, cls=DjangoJSONEncoder),
            "booking_request_id": request.request_id,
            "now": now,
            "expiry_actor": EXPIRY_ACTOR,
            **_event_params(actor),
            "metadata": json.dumps(
                {"slotId": slot.pk, "seats": request.seats, "expiresAt": expires_at}, cls=DjangoJSONEncoder
            ),
        }
        try:
            expired, freed, active, with_host, remaining, *clash, booking_id = BOOK.fetchone(params)
        except IntegrityError as error:  # the transaction is aborted: the caller's atomic block rolls it back
            raise _backstop_refusal(error, slot=slot, seats=request.seats) from None
        count_on_commit(HOLDS_EXPIRED, self.domain, amount=expired)
        if booking_id is None:
            _check_guest_limits(host_id=slot.host_id, active=active, with_host=with_host)
            _check_no_clash(*clash)
            raise SlotFull(slot_id=slot.pk, seats=request.seats, remaining=remaining)
        slot.booked += request.seats - freed
        return _written(
            booking_id,
            slot,
            now=now,
            guest=request.guest,
            seats=request.seats,
            status=status,
            expires_at=expires_at,
            metadata=request.metadata,
            request_id=request.request_id,
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
    request = SlotBookingRequest(
        slot_id=slot_id,
        guest=guest,
        seats=seats,
        hold=hold,
        hold_minutes=hold_minutes,
        metadata=metadata or {},
        request_id=request_id,
        now=now,
    )
    return SLOT_BOOKINGS.hold(request, now=now, actor=actor or guest)


# --- appointments: booking an interval of a host's hours (seeds/003; docs/contract.md §6, ADR 0014) ---------


@dataclass(frozen=True)
class AppointmentRequest:
    host_id: int
    guest: User
    start: datetime
    end: datetime
    hold: bool
    hold_minutes: int | None
    now: datetime
    metadata: dict = field(default_factory=dict)
    request_id: str = ""
    rescheduled_from: SlotBooking | None = None  # the booking a reschedule moves here: not in its own way


@dataclass
class AppointmentTarget:
    """The host, locked; then what ``check_target`` reads after the locks: their hours, and the overdue holds on
    their appointments in the way (booking id → slot id), which ``make_free`` expires."""

    host: User
    availability: Availability | None = None
    in_the_way: dict[int, int] = field(default_factory=dict)


class Appointments(SlotBookingLifecycle):
    """An interval booking is a slot booking on a slot of its own (kind APPOINTMENT): the appointment's time,
    with the host's buffer before and after it (``blocked_from``, ``blocked_until``), so the host's
    ``slot_no_overlap_per_host`` and ``slot_buffer_before_per_host`` are its backstops, and the booking's
    ``slotbooking_guest_no_overlap`` the guest's. A host who is a guest elsewhere at that time is not free
    either: no constraint backstops that rule (it compares a slot's host with a booking's guest, rows of two
    tables; an exclusion constraint compares rows of one table by the same expressions), so it is kept
    under the host's row lock, which every booking of the host as a guest takes too. Confirm, cancel,
    expiry and audit are the slot bookings' (a booking that stops blocking cancels its appointment's slot:
    ``along``).

    The hold locks the guest's and the host's rows (``lock_users``, id order), then reads, after the
    locks and in one statement (``_hours_and_rules``): the host's hours, the guest's bookings, the host's
    time, the overdue holds in the way. Such a hold is expired before the write, under its slot's lock (the
    host's constraints count it until then)."""

    def lock_target(self, request: AppointmentRequest) -> AppointmentTarget:
        host = locking.lock_users([request.guest.pk, request.host_id]).get(request.host_id)
        if host is None or not host.is_host:
            raise NotFound(f"Host {request.host_id} does not exist.")
        return AppointmentTarget(host=host)

    def check_target(self, target: AppointmentTarget, request: AppointmentRequest, *, now: datetime) -> None:
        if target.host.pk == request.guest.pk:
            raise OwnSlot("You cannot book your own time.")
        check_slot_times(request.start, request.end, now=now)
        target.availability = hours = _hours_and_rules(target.host.pk, request, now=now)
        _check_fits(hours, request, now=now)
        assert hours is not None  # _check_fits refuses a host without hours
        _check_guest_limits(host_id=target.host.pk, active=hours.guest_active, with_host=hours.guest_with_host)
        if hours.guest_clash is not None:  # JSON: its times are ISO 8601 strings
            clash = hours.guest_clash
            _check_no_clash(clash["id"], datetime.fromisoformat(clash["start"]), datetime.fromisoformat(clash["end"]))
        buffer = _buffer(target)
        taken = selectors.in_the_way(_spans(hours.host_time), request.start, request.end, buffer=buffer)
        overdue = _spans(hours.overdue_appointments, keys=2)  # (booking id, slot id): an overdue hold's appointment
        target.in_the_way = dict(selectors.in_the_way(overdue, request.start, request.end, buffer=buffer))
        moving = request.rescheduled_from
        if moving is not None and moving.slot.kind == Slot.Kind.APPOINTMENT:
            taken = [pk for pk in taken if pk != moving.slot_id]  # its own time, released with it
        if taken:
            raise SlotOverlap(
                f"Host {target.host.pk} is taken from {request.start.isoformat()} to {request.end.isoformat()}"
                f" (with their {buffer} buffer).",
                details={"slotIds": [pk for pk in taken if pk != selectors.AWAY]},  # where the host is a guest: theirs
            )

    def make_free(self, target: AppointmentTarget, request: AppointmentRequest, *, now: datetime) -> None:
        """Expire the overdue holds on the host's appointments in the way of the new one's slot (``check_target``
        found them): nothing to do, and no round trip, when there are none."""
        _expire_in_the_way(target.in_the_way, now=now)

    def create(self, target: AppointmentTarget, request: AppointmentRequest, *, now: datetime, actor) -> SlotBooking:
        hold_minutes = request.hold_minutes or hold_minutes_default()
        status = Status.PENDING if request.hold else Status.CONFIRMED
        expires_at = now + timedelta(minutes=hold_minutes) if request.hold else None
        if request.rescheduled_from is not None:  # a moved hold keeps its expiry
            expires_at = request.rescheduled_from.expires_at if request.hold else None
        slot = Slot(
            host=target.host,
            kind=Slot.Kind.APPOINTMENT,
            start=request.start,
            end=request.end,
            blocked_from=request.start - _buffer(target),
            blocked_until=request.end + _buffer(target),
            capacity=1,
            booked=1,
            created_at=now,
            updated_at=now,
        )
        metadata = {"hostId": target.host.pk, "start": request.start, "end": request.end, "expiresAt": expires_at}
        if request.rescheduled_from is not None:
            metadata["rescheduledFromId"] = request.rescheduled_from.pk
        params = {
            "host": target.host.pk,
            "guest": request.guest.pk,
            "start": request.start,
            "end": request.end,
            "blocked_from": slot.blocked_from,
            "blocked_until": slot.blocked_until,
            "status": status,
            "expires_at": expires_at,
            "booking_metadata": json.dumps(request.metadata, cls=DjangoJSONEncoder),
            "booking_request_id": request.request_id,
            "rescheduled_from": request.rescheduled_from.pk if request.rescheduled_from else None,
            "now": now,
            **_event_params(actor),
            "metadata": json.dumps(metadata, cls=DjangoJSONEncoder),
        }
        try:
            slot.pk, booking_id = APPOINTMENT.fetchone(params)
        except IntegrityError as error:  # the transaction is aborted: the caller's atomic block rolls it back
            raise _backstop_refusal(error, slot=slot, seats=1) from None
        return _written(
            booking_id,
            slot,
            now=now,
            guest=request.guest,
            status=status,
            expires_at=expires_at,
            metadata=request.metadata,
            request_id=request.request_id,
            rescheduled_from=request.rescheduled_from,
        )


def _hours_and_rules(host_id: int, request: AppointmentRequest, *, now: datetime) -> Availability | None:
    """The host's hours (None: they have none), annotated with all an appointment's rules read, in one statement
    after the guest's and the host's locks, so by a snapshot that sees every booking those locks serialize:
    the guest's active bookings (``guest_active``), those with the host (``guest_with_host``), the first one
    overlapping the interval (``guest_clash``), each but the booking a reschedule moves (``BOOK``'s
    ``limits`` and ``clash``); and near the interval what takes the host's time (``host_time``:
    ``selectors.taking_time``) and the overdue holds on their appointments (``overdue_appointments``). Near:
    within the longest buffer a host may have, as theirs is read by the same statement; the caller narrows."""
    reach = timedelta(minutes=MAX_BUFFER_MINUTES)
    begins, ends = request.start - reach, request.end + reach
    moving = request.rescheduled_from.pk if request.rescheduled_from else 0
    active = SlotBooking.objects.active(now=now).filter(guest=request.guest.pk).exclude(pk=moving)
    counted = SlotBooking.objects.filter(SLOT_BOOKINGS.cap.counts.q(SlotBooking, now=now), guest=request.guest.pk)
    annotations = {  # Availability declares them, for their types: a dict keeps django-stubs from redefining them
        "guest_active": _count(counted.exclude(pk=moving)),
        "guest_with_host": _count(active.filter(slot__host_id=host_id)),
        "guest_clash": _clash(active.filter(start__lt=request.end, end__gt=request.start)),
        "host_time": _json_rows(selectors.taking_time(host_id, begins, ends, now=now), width=5),
        "overdue_appointments": _json_rows(_overdue_spans(host_id, begins, ends, now=now), width=6),
    }
    return Availability.objects.filter(host_id=host_id).annotate(**annotations).first()


def _json_rows(rows: QuerySet, *, width: int) -> RawSQL:
    """``rows`` (a ``values_list`` of ``width`` columns) as one JSON array of arrays, for a bigger statement."""
    sql, params = rows.query.sql_with_params()
    columns = ", ".join(f"c{n}" for n in range(width))
    return RawSQL(
        f"(SELECT coalesce(jsonb_agg(jsonb_build_array({columns})), '[]') FROM ({sql}) AS t ({columns}))",
        params,
        output_field=JSONField(),
    )


def _spans(rows: list[list], *, keys: int = 1) -> list[tuple]:
    """JSON rows of ``keys`` key columns then four instants (ISO 8601 strings), as ``(key, instant, …)``: the
    spans ``selectors.in_the_way`` reads."""
    spans = []
    for row in rows:
        key = row[0] if keys == 1 else tuple(row[:keys])
        spans.append((key, *(datetime.fromisoformat(instant) for instant in row[keys:])))
    return spans


# The appointment's slot, its booking and the CREATED event, in one statement (the booking reads the slot's
# RETURNING, so it is written after it). ``slot_no_overlap_per_host``, ``slot_buffer_before_per_host`` and
# ``slotbooking_guest_no_overlap`` are the backstops: each refuses the statement, and the caller counts it.
APPOINTMENT = _slot_statement(
    """
WITH slot AS (
    INSERT INTO {s_table} ({s_host}, {s_kind}, {s_title}, {s_specialization}, {s_start}, {s_end}, {s_blocked_from},
                           {s_blocked_until}, {s_capacity}, {s_booked}, {s_status}, {s_created_at}, {s_updated_at})
    VALUES (%(host)s, {appointment}, '', '', %(start)s, %(end)s, %(blocked_from)s, %(blocked_until)s, 1, 1, {available},
            %(now)s, %(now)s)
    RETURNING id
), created AS (
    INSERT INTO {b_table} ({b_slot}, {b_guest}, {b_start}, {b_end}, {b_seats}, {b_status}, {b_expires_at}, {b_reason},
                           {b_metadata}, {b_request_id}, {b_rescheduled_from}, {b_created_at}, {b_updated_at})
    SELECT slot.id, %(guest)s, %(start)s, %(end)s, 1, %(status)s, %(expires_at)s, '', %(booking_metadata)s::jsonb,
           %(booking_request_id)s, %(rescheduled_from)s, %(now)s, %(now)s
    FROM slot
    RETURNING id
), created_event AS ({created_event}
)
SELECT (SELECT id FROM slot), (SELECT id FROM created)
""",
    appointment=sql.Literal(Slot.Kind.APPOINTMENT),
    available=sql.Literal(Slot.Status.AVAILABLE),
    created_event=_CREATED_EVENT,
)


def _overdue_spans(host_id: int, begins: datetime, ends: datetime, *, now: datetime) -> QuerySet:
    """The overdue holds on the host's appointments whose slots, with their buffers, overlap ``begins`` to ``ends``,
    as ``(booking id, slot id, start, end, blocked from, blocked until)``."""
    overdue = SlotBooking.objects.overdue(now=now).filter(
        slot__host_id=host_id,
        slot__kind=Slot.Kind.APPOINTMENT,
        slot__status=Slot.Status.AVAILABLE,
        slot__blocked_from__lt=ends,
        slot__blocked_until__gt=begins,
    )
    return overdue.values_list("pk", "slot_id", "start", "end", "slot__blocked_from", "slot__blocked_until")


def _expire_overdue_appointments(host_id: int, ranges: list[tuple[datetime, datetime]], *, now: datetime) -> None:
    """Expire the overdue holds on the host's appointments in the way of new published slots (``ranges``, which
    have no buffer). Caller holds the host's row lock."""
    rows = _overdue_spans(host_id, min(start for start, _ in ranges), max(end for _, end in ranges), now=now)
    spans = [((pk, slot_id), *times) for pk, slot_id, *times in rows]
    in_the_way = [key for start, end in ranges for key in selectors.in_the_way(spans, start, end, buffer=timedelta(0))]
    _expire_in_the_way(dict(in_the_way), now=now)


def _expire_in_the_way(in_the_way: dict[int, int], *, now: datetime) -> None:
    """Expire these overdue holds (booking id → its appointment's slot id) under their slots' locks, so that the
    host's constraints (which count an appointment's slot until its booking ends) never make an overdue hold
    block (docs/contract.md §2.2). Caller holds the host's row lock."""
    if in_the_way:
        locking.lock_slots(in_the_way.values())
        APPOINTMENTS.expire_overdue(list(in_the_way), now=now)


def _buffer(target: AppointmentTarget) -> timedelta:
    return timedelta(minutes=target.availability.buffer_minutes if target.availability else 0)


def _check_fits(availability: Availability | None, request: AppointmentRequest, *, now: datetime) -> None:
    """The interval is one of the host's durations, inside one window of their hours, and at least their
    minimum notice from ``now``: 400 ``outside_availability`` otherwise."""
    if availability is None:
        raise OutsideAvailability(f"Host {request.host_id} has no hours.")
    minutes = (request.end - request.start) / timedelta(minutes=1)
    if minutes not in availability.durations:
        offered = ", ".join(str(d) for d in availability.durations)
        raise OutsideAvailability(f"Host {request.host_id} offers {offered} minutes, not {minutes:g}.")
    notice = timedelta(minutes=availability.minimum_notice_minutes)
    if request.start < now + notice:
        raise OutsideAvailability(f"Host {request.host_id} takes bookings at least {notice} ahead.")
    windows = selectors.availability_windows(availability, request.start, request.end)
    if not any(start <= request.start and request.end <= end for start, end in windows):
        raise OutsideAvailability(f"Host {request.host_id} is not working then (see their availability).")


APPOINTMENTS = Appointments()


def appointment_book(
    *,
    host_id: int,
    guest: User,
    start: datetime,
    end: datetime,
    now: datetime,
    hold: bool = False,
    hold_minutes: int | None = None,
    metadata: dict | None = None,
    request_id: str = "",
    actor: User | None = None,
) -> SlotBooking:
    """Book ``start`` to ``end`` of a host's hours (``POST /api/bookings`` with ``hostId``): CONFIRMED at once,
    or with ``hold`` a PENDING hold. Locks the guest's and the host's rows."""
    request = AppointmentRequest(
        host_id=host_id,
        guest=guest,
        start=start,
        end=end,
        hold=hold,
        hold_minutes=hold_minutes,
        now=now,
        metadata=metadata or {},
        request_id=request_id,
    )
    return APPOINTMENTS.hold(request, now=now, actor=actor or guest)


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
        old_slot = locking.lock_slots([peek["slot_id"]])[peek["slot_id"]]
        booking = locking.lock_claim(SlotBooking, booking_id)
        assert booking is not None  # found above, and a booking is never deleted (PROTECT)
        booking.slot, booking.guest = old_slot, users[peek["guest_id"]]
        SLOT_BOOKINGS.policy.require(user, RESCHEDULE, booking, what=f"Booking {booking_id}")
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
    request = AppointmentRequest(
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
    APPOINTMENTS.check_target(target, request, now=now)
    APPOINTMENTS.make_free(target, request, now=now)
    # The old booking gives back its seats (and its appointment's time) first: the new one may overlap it.
    fields = {"status": Status.CANCELLED, "reason": "rescheduled", "updated_at": now}
    from_state = booking.status
    GIVE_BACK.fetchall({"slot": booking.slot_id, "seats": booking.seats})
    SlotBooking.objects.filter(pk=booking.pk).update(**fields)
    moved = APPOINTMENTS.create(target, request, now=now, actor=user)
    audit.record(
        subject=booking,
        event="RESCHEDULED",
        from_state=from_state,
        to_state=Status.CANCELLED,
        actor=user,
        metadata={"toBookingId": moved.pk, "toSlotId": moved.slot_id},
    )
    return moved


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
        slots = locking.lock_slots([peek["slot_id"], slot_id], owner=peek["guest_id"])
        old_slot, new_slot = slots[peek["slot_id"]], slots.get(slot_id)
        host = new_slot.host_id if new_slot is not None else None
        booking = locking.lock_claim(SlotBooking, booking_id, reads=_WITH_HOST, host=host, now=locked_now(now))
        assert booking is not None  # _peek found it, and a booking is never deleted (PROTECT)
        booking.slot = old_slot
        SLOT_BOOKINGS.policy.require(user, RESCHEDULE, booking, what=f"Booking {booking_id}")
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


# The move after every lock (``_move``): like ``BOOK``, one snapshot taken once the locks are held,
# ``slot`` the new slot. ``overdue`` expires its overdue holds; ``free`` judges its seats; ``moving`` is the seats
# that move (none when they do not fit: the caller then rolls everything back); ``taken`` moves both
# counters in one UPDATE (the backstop as in BOOK); ``cancelled`` ends the old booking, ``created``
# inserts the new one, ``rescheduled_event`` and ``created_event`` record RESCHEDULED and CREATED.
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
                           {b_metadata}, {b_rescheduled_from}, {b_request_id}, {b_created_at}, {b_updated_at})
    SELECT %(slot)s, %(guest)s, %(start)s, %(end)s, %(seats)s, %(status)s, %(expires_at)s, '',
           %(booking_metadata)s::jsonb, %(booking)s, '', %(now)s, %(now)s
    FROM cancelled
    RETURNING id
), rescheduled_event AS ({rescheduled_event}
), created_event AS ({created_event}
)
SELECT freed.holds, seats.remaining, clash.id, clash.start, clash."end", (SELECT id FROM created)
FROM freed, seats LEFT JOIN clash ON true
""",
    expire_overdue=_EXPIRE_OVERDUE,
    clash=_CLASH,
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


def slot_bookings_expire_due(*, now: datetime, batch_size: int | None = None) -> int:
    """Flip every PENDING hold overdue at ``now`` to EXPIRED and free its seats, one audit event each
    (the beat job). Returns how many were expired."""
    return SLOT_BOOKINGS.expire_due(now=now, batch_size=batch_size)


# --- the pieces ------------------------------------------------------------------------------------


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
