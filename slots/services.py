"""Every write to slots and slot bookings (SPEC 6).

The booking lifecycle is ``booking_site.engine``'s and the locks are ``booking_site.locking``'s (the
order is written there: the guest's or host's user row, then slot rows, then booking rows). This
module declares what is the slots' own: a booking locks its guest (the rules that count a guest's
bookings: at most ``SLOTS_MAX_ACTIVE_BOOKINGS_PER_GUEST``, one per host) and its slot (the seats of
the slot: its ``booked`` counter, moved with ``F()`` under that lock); the slot's host may cancel its
bookings; a guest's cancellation window; a reschedule; and the slots' errors.

A request that starts from a booking id reads the booking's guest id and slot id first without a
lock (``_peek``). That is safe because a booking never changes its guest or its slot.

PostgreSQL backstops, so that a bug here cannot corrupt data: ``slot_booked_within_capacity``
(check constraint on the counter), and ``slot_no_overlap_per_host`` (exclusion constraint). When a
backstop fires, the request gets the same 409 as the lock-and-check would have given, and
``CONSTRAINT_BACKSTOPS`` counts it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import pairwise

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F

from booking_site import locking
from booking_site.accounts.models import User
from booking_site.audit import services as audit
from booking_site.engine import CANCEL, CONFIRM, EXPIRE, EXPIRY_ACTOR, RESCHEDULE, SEE, ClaimEngine, ClaimPolicy
from booking_site.errors import (
    Conflict,
    DomainError,
    HoldExpired,
    InvalidStateTransition,
    NotFound,
    NotOwner,
    ValidationFailed,
)
from booking_site.expiry import locked_now
from booking_site.metrics import CONSTRAINT_BACKSTOPS
from slots.models import Slot, SlotBooking

Status = SlotBooking.Status


# --- settings (SLOTS_* in booking_site/settings.py, read from the environment) --------------------

MAX_CAPACITY = 10_000  # seats of one slot (the API, the admin forms and the services agree)
SLOT_HORIZON = timedelta(days=5 * 365 + 1)  # a slot ends at most five years from now (SLOT_HORIZON_TEXT)
SLOT_HORIZON_TEXT = "five years"


def cancellation_window() -> timedelta:
    return timedelta(hours=settings.SLOTS_CANCELLATION_WINDOW_HOURS)


def max_active_bookings_per_guest() -> int:
    return settings.SLOTS_MAX_ACTIVE_BOOKINGS_PER_GUEST


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


class LimitReached(Conflict):
    code = "limit_reached"


class OwnSlot(DomainError):
    status, code, message = 400, "own_slot", "You cannot book your own slot."


class SlotInPast(DomainError):
    status, code, message = 400, "slot_in_past", "The slot has already started."


class CancellationWindowClosed(DomainError):
    status, code = 400, "cancellation_window_closed"


class BookingNotPending(Conflict):
    """Confirming a booking that is not a PENDING hold (already confirmed, cancelled): SPEC 6 answers 409."""

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
    if not 1 <= capacity <= MAX_CAPACITY:
        raise ValidationFailed.for_field("capacity", f"Must be between 1 and {MAX_CAPACITY}.")
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
    except IntegrityError:
        CONSTRAINT_BACKSTOPS.labels("slot_no_overlap_per_host").inc()
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
    found: dict[int, Slot] = {}
    existing = Slot.objects.filter(host=host, status=Slot.Status.AVAILABLE)
    for start, end in ranges:
        for slot in existing.filter(start__lt=end, end__gt=start):
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
        if slot.host_id != user.pk and not user.is_staff:
            raise NotOwner(f"Slot {slot_id} belongs to another host.")
        now = locked_now(now)
        if slot.status == Slot.Status.CANCELLED:
            raise InvalidStateTransition(subject=f"Slot {slot_id}", from_state=slot.status, to_state="CANCELLED")
        SLOT_BOOKINGS.expire_overdue(SlotBooking.objects.overdue(now=now).filter(slot=slot), now=now)
        booked = SlotBooking.objects.filter(slot=slot).blocking().count()
        if booked:
            raise SlotBooked(f"Slot {slot_id} has {booked} active booking(s).", details={"slotId": slot_id})
        from_state = slot.status
        slot.status, slot.updated_at = Slot.Status.CANCELLED, now
        slot.save(update_fields=["status", "updated_at"])
        audit.record(subject=slot, event="CANCELLED", from_state=from_state, to_state=slot.status, actor=user)
    return slot


# --- bookings ---------------------------------------------------------------------------------------


class BookingPolicy(ClaimPolicy):
    """The guest acts on their bookings; the slot's host also sees them and may cancel them (confirming
    and rescheduling stay with the guest); operators do anything (contract §2.6)."""

    owner_field = "guest"
    host_may = frozenset({SEE, CANCEL})

    def may(self, user: User, action: str, booking: SlotBooking) -> bool:
        if action in self.host_may and booking.slot.host_id == user.pk:
            return True
        return super().may(user, action, booking)


@dataclass(frozen=True)
class SlotBookingRequest:
    slot_id: int
    guest: User
    seats: int
    hold: bool
    hold_minutes: int | None
    metadata: dict = field(default_factory=dict)
    request_id: str = ""


class SlotBookings(ClaimEngine):
    """A booking takes ``seats`` of one slot, CONFIRMED at once or as a PENDING hold."""

    model, domain, policy = SlotBooking, "slots", BookingPolicy()
    backstop = (
        "slot_booked_within_capacity",
        lambda slot, request: SlotFull(slot_id=slot.pk, seats=request.seats),
    )

    def lock_target(self, request: SlotBookingRequest) -> Slot:
        locking.lock_user(request.guest.pk)
        slot = locking.lock_slots([request.slot_id]).get(request.slot_id)
        if slot is None:
            raise NotFound(f"Slot {request.slot_id} does not exist.")
        return slot

    def check_target(self, slot: Slot, request: SlotBookingRequest, *, now: datetime) -> None:
        _check_bookable(slot, guest=request.guest, now=now)
        _check_guest_limits(guest=request.guest, host_id=slot.host_id, now=now)

    def overdue_on(self, slot: Slot, *, now: datetime):
        return SlotBooking.objects.overdue(now=now).filter(slot=slot)

    def check_free(self, slot: Slot, request: SlotBookingRequest, *, now: datetime, expired: list) -> None:
        if expired:
            slot.refresh_from_db(fields=["booked"])  # the expiry of its overdue holds moved the counter
        remaining = slot.capacity - slot.booked
        if request.seats > remaining:
            raise SlotFull(slot_id=slot.pk, seats=request.seats, remaining=remaining)

    def insert(self, slot: Slot, request: SlotBookingRequest, *, now: datetime) -> SlotBooking:
        Slot.objects.filter(pk=slot.pk).update(booked=F("booked") + request.seats)
        hold_minutes = request.hold_minutes or hold_minutes_default()
        return SlotBooking.objects.create(
            slot=slot,
            guest=request.guest,
            seats=request.seats,
            status=Status.PENDING if request.hold else Status.CONFIRMED,
            expires_at=now + timedelta(minutes=hold_minutes) if request.hold else None,
            metadata=request.metadata,
            request_id=request.request_id,
            created_at=now,
            updated_at=now,
        )

    def created_metadata(self, booking: SlotBooking, slot: Slot, request: SlotBookingRequest) -> dict:
        return {"slotId": slot.pk, "seats": booking.seats, "expiresAt": booking.expires_at}

    def changes(self, booking: SlotBooking, to_state: str, *, now: datetime, metadata: dict | None) -> dict:
        return {"reason": metadata["reason"]} if metadata else {}

    def check_transition(self, booking: SlotBooking, to_state: str, *, user: User, now: datetime) -> None:
        if to_state == Status.CANCELLED and booking.status == Status.CONFIRMED and _guest_only(user, booking.slot):
            _check_cancellation_window(booking.slot, now=now)

    def on_write(self, bookings: list[SlotBooking], *, from_states: list[str], to_state: str, now: datetime) -> None:
        """A booking that stops blocking gives its seats back to its slot."""
        if to_state in SlotBooking.BLOCKING_STATES:
            return
        seats_per_slot = Counter()
        for booking, from_state in zip(bookings, from_states, strict=True):
            if from_state in SlotBooking.BLOCKING_STATES:
                seats_per_slot[booking.slot_id] += booking.seats
        for slot_id, seats in sorted(seats_per_slot.items()):
            Slot.objects.filter(pk=slot_id).update(booked=F("booked") - seats)

    def refused(self, booking: SlotBooking, to_state: str) -> DomainError:
        if to_state == Status.CONFIRMED:
            return BookingNotPending(booking_id=booking.pk, status=booking.status)
        return InvalidStateTransition(subject=f"Booking {booking.pk}", from_state=booking.status, to_state=to_state)

    def due(self, *, now: datetime):
        """With their slots: the batch locks both, so a booking whose slot a request holds is skipped."""
        return SlotBooking.objects.overdue(now=now).select_related("slot")


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
    )
    return SLOT_BOOKINGS.hold(request, now=now, actor=actor or guest)


def slot_booking_confirm(*, booking_id: int, user: User, now: datetime) -> SlotBooking:
    """PENDING → CONFIRMED for the guest (or an operator). An overdue hold is expired instead, that
    change commits, and the answer is 410; a booking that is not PENDING is a 409.

    Locks the guest's row, then the slot, then the booking. The guest's row serializes the confirm
    with the guest's new bookings: a new booking that counted this hold as lapsed cannot commit
    beside a confirm that still saw it alive (the one-per-host and max-active rules)."""
    return _transition(booking_id, Status.CONFIRMED, action=CONFIRM, user=user, now=now, lock_guest=True)


def slot_booking_cancel(*, booking_id: int, user: User, now: datetime, reason: str = "") -> SlotBooking:
    """Cancel a booking and free its seats. The guest, the slot's host or an operator may cancel. A guest
    cannot cancel a CONFIRMED booking within the cancellation window before the start. The host and
    operators can always cancel, and a PENDING hold can always be released."""
    metadata = {"reason": reason} if reason else None
    return _transition(booking_id, Status.CANCELLED, action=CANCEL, user=user, now=now, metadata=metadata)


def slot_booking_expire(*, booking_id: int, user: User, now: datetime) -> SlotBooking:
    """An operator expires a PENDING hold now, overdue or not (admin action)."""
    return _transition(booking_id, Status.EXPIRED, action=EXPIRE, user=user, now=now)


def _transition(booking_id: int, to_state: str, *, lock_guest: bool = False, **kwargs) -> SlotBooking:
    """Locks (the guest,) the slot, then the booking: its guest and slot are read first, unlocked."""

    def before() -> None:
        peek = _peek(booking_id)
        if lock_guest:
            locking.lock_user(peek["guest_id"])
        locking.lock_slots([peek["slot_id"]])

    return SLOT_BOOKINGS.transition(
        claims=SlotBooking.objects.filter(pk=booking_id).select_related("slot"),  # the slot: locked already
        what=f"Booking {booking_id}",
        to_state=to_state,
        before=before,
        **kwargs,
    )


def slot_booking_reschedule(*, booking_id: int, slot_id: int, user: User, now: datetime) -> SlotBooking:
    """Move an active booking to another slot in one transaction. The seats of the new slot are taken
    before those of the old slot are released. If the new slot cannot take them, nothing changes.

    Returns the new booking (same seats, status, expiry and metadata; ``rescheduled_from`` the old one).
    The old booking becomes CANCELLED. Locks the guest row, then both slot rows, then the booking.
    """
    with transaction.atomic():
        peek = _peek(booking_id)
        if slot_id == peek["slot_id"]:
            raise ValidationFailed.for_field("slotId", "The booking is already on this slot.")
        guest = locking.lock_user(peek["guest_id"])
        slots = locking.lock_slots([peek["slot_id"], slot_id])
        booking = locking.lock_claim(SlotBooking.objects.filter(pk=booking_id))
        SLOT_BOOKINGS.policy.require(user, RESCHEDULE, booking, what=f"Booking {booking_id}")
        old_slot, new_slot = slots[booking.slot_id], slots.get(slot_id)
        if new_slot is None:
            raise NotFound(f"Slot {slot_id} does not exist.")
        now = locked_now(now)
        if booking.is_overdue(now):
            SLOT_BOOKINGS.write([booking], Status.EXPIRED, actor=EXPIRY_ACTOR, now=now)
        elif booking.is_active(now):
            return _move(booking, old_slot=old_slot, new_slot=new_slot, guest=guest, user=user, now=now)
    if booking.status == Status.EXPIRED:
        raise HoldExpired(f"Booking {booking_id} expired at {booking.expires_at.isoformat()}.")
    raise InvalidStateTransition(subject=f"Booking {booking_id}", from_state=booking.status, to_state="RESCHEDULED")


def _move(booking: SlotBooking, *, old_slot: Slot, new_slot: Slot, guest: User, user: User, now: datetime):
    """Caller holds the guest row, both slot rows and the booking row."""
    if booking.status == Status.CONFIRMED and _guest_only(user, old_slot):
        _check_cancellation_window(old_slot, now=now)
    _check_bookable(new_slot, guest=guest, now=now)
    _check_guest_limits(guest=guest, host_id=new_slot.host_id, now=now, excluding=booking)
    SLOT_BOOKINGS.expire_overdue(SlotBooking.objects.overdue(now=now).filter(slot=new_slot), now=now)
    _take_seats(new_slot, seats=booking.seats)
    _release_seats(old_slot, seats=booking.seats)
    from_state = booking.status
    booking.status, booking.reason, booking.updated_at = Status.CANCELLED, "rescheduled", now
    booking.save(update_fields=["status", "reason", "updated_at"])
    moved = SlotBooking.objects.create(
        slot=new_slot,
        guest=guest,
        seats=booking.seats,
        status=from_state,
        expires_at=booking.expires_at,
        metadata=booking.metadata,
        rescheduled_from=booking,
        created_at=now,
        updated_at=now,
    )
    audit.record_many(
        [
            audit.event(
                subject=booking,
                event="RESCHEDULED",
                from_state=from_state,
                to_state=Status.CANCELLED,
                actor=user,
                metadata={"toBookingId": moved.pk, "toSlotId": new_slot.pk},
            ),
            audit.event(
                subject=moved,
                event="CREATED",
                to_state=from_state,
                actor=user,
                metadata={"slotId": new_slot.pk, "seats": moved.seats, "rescheduledFromId": booking.pk},
            ),
        ]
    )
    return moved


def slot_bookings_expire_due(*, now: datetime, batch_size: int | None = None) -> int:
    """Flip every PENDING hold overdue at ``now`` to EXPIRED and free its seats, one audit event each
    (the beat job). Returns how many were expired."""
    return SLOT_BOOKINGS.expire_due(now=now, batch_size=batch_size)


# --- the pieces ------------------------------------------------------------------------------------


def _peek(booking_id: int) -> dict:
    """A booking's ``guest_id`` and ``slot_id``, read without a lock: a booking never changes either,
    so the read stays true while the caller takes its locks in order."""
    peek = SlotBooking.objects.filter(pk=booking_id).values("guest_id", "slot_id").first()
    if peek is None:
        raise NotFound(f"Booking {booking_id} does not exist.")
    return peek


def _check_bookable(slot: Slot, *, guest: User, now: datetime) -> None:
    if slot.status != Slot.Status.AVAILABLE:
        raise SlotUnavailable(f"Slot {slot.pk} was cancelled by its host.", details={"slotId": slot.pk})
    if slot.host_id == guest.pk:
        raise OwnSlot(f"Slot {slot.pk} is your own.")
    if slot.start <= now:
        raise SlotInPast(f"Slot {slot.pk} started at {slot.start.isoformat()}.")


def _check_guest_limits(*, guest: User, host_id: int, now: datetime, excluding: SlotBooking | None = None) -> None:
    """Caller holds the guest's row lock: the counts cannot change under us."""
    active = SlotBooking.objects.active(now=now).filter(guest=guest)
    if excluding is not None:
        active = active.exclude(pk=excluding.pk)
    if active.filter(slot__host_id=host_id).exists():
        raise LimitReached(f"You already have an active booking with host {host_id}.", details={"rule": "one_per_host"})
    limit = max_active_bookings_per_guest()
    if excluding is None and active.count() >= limit:
        raise LimitReached(f"You already have {limit} active bookings.", details={"rule": "max_active", "max": limit})


def _guest_only(user: User, slot: Slot) -> bool:
    return not user.is_staff and user.pk != slot.host_id


def _check_cancellation_window(slot: Slot, *, now: datetime) -> None:
    window = cancellation_window()
    if slot.start - now <= window:
        raise CancellationWindowClosed(
            f"Bookings can be cancelled only more than {window} before the start ({slot.start.isoformat()}).",
            details={"startTime": slot.start, "windowHours": window.total_seconds() / 3600},
        )


def _take_seats(slot: Slot, *, seats: int) -> None:
    """Caller holds the slot's row lock and has expired its overdue holds."""
    remaining = slot.capacity - slot.booked
    if seats > remaining:
        raise SlotFull(slot_id=slot.pk, seats=seats, remaining=remaining)
    try:
        with transaction.atomic():  # savepoint: the check constraint is the backstop
            Slot.objects.filter(pk=slot.pk).update(booked=F("booked") + seats)
    except IntegrityError:
        CONSTRAINT_BACKSTOPS.labels("slot_booked_within_capacity").inc()
        raise SlotFull(slot_id=slot.pk, seats=seats) from None
    slot.refresh_from_db(fields=["booked"])


def _release_seats(slot: Slot, *, seats: int) -> None:
    Slot.objects.filter(pk=slot.pk).update(booked=F("booked") - seats)
    slot.refresh_from_db(fields=["booked"])
