"""Every write to slots and slot bookings (SPEC 6).

Lock order. A transaction that takes more than one of these locks takes them in this order, so two
requests never wait for each other in a circle:

1. one user row: the guest's for a booking, a confirm or a reschedule, the host's for creating
   slots. It serializes the rules that count a user's rows: at most
   ``SLOTS_MAX_ACTIVE_BOOKINGS_PER_GUEST`` active bookings per guest, one active booking per guest
   per host, and one host's slots never overlapping. The lock is ``FOR NO KEY UPDATE``, not
   ``FOR UPDATE``: inserting a row with a foreign key to the user (an audit event naming the guest as
   its actor, a booking) takes ``FOR KEY SHARE`` on that row, which ``FOR UPDATE`` would block. A
   request holding a slot would then wait for the guest's row while the guest's new booking, holding
   that row, waited for the slot: a deadlock. ``FOR NO KEY UPDATE`` still excludes every other
   request's user-row lock, so the counting rules stay serialized;
2. slot rows, in primary-key order. They serialize the seats of each slot (the ``booked`` counter);
3. booking rows.

A request that starts from a booking id reads the booking's guest id and slot id first without a
lock. That is safe because a booking never changes its guest or its slot. It then locks (the guest,
when it needs the counting rules,) the slot and then the booking.

Every service judges expiry and writes timestamps with ``locked_now(now)``, taken once its locks are
held: a hold that lapsed while the request waited for a lock is expired, not confirmed (SPEC 2.2).

The expiry job is the one exception to this order. It claims each overdue booking together with its
slot in one ``SKIP LOCKED`` statement (shared ``expire_in_batches``), so a booking whose slot (or
whose own row) a request holds is skipped and left to that request. The job never waits for a lock,
cannot deadlock, and never fetches a skipped booking again in the same run.

PostgreSQL backstops, so that a bug here cannot corrupt data: ``slot_booked_within_capacity``
(check constraint on the counter, which is only ever changed with ``F()``), and
``slot_no_overlap_per_host`` (exclusion constraint). When a backstop fires, the request gets the
same 409 as the lock-and-check would have given, and ``CONSTRAINT_BACKSTOPS`` counts it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timedelta
from itertools import pairwise

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F

from booking_site.accounts.models import User
from booking_site.accounts.services import require_owner
from booking_site.audit import services as audit
from booking_site.errors import (
    Conflict,
    DomainError,
    HoldExpired,
    InvalidStateTransition,
    NotFound,
    NotOwner,
    ValidationFailed,
)
from booking_site.expiry import expire_in_batches, locked_now
from booking_site.metrics import CONSTRAINT_BACKSTOPS, HOLDS_CREATED, HOLDS_EXPIRED, count_on_commit
from slots.models import Slot, SlotBooking

Status = SlotBooking.Status
EXPIRY_ACTOR = "system:expire_holds"


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


# --- locks (tests replace them with non-locking versions to prove they catch a missing lock) -------


def _lock_guest(user_id: int) -> User:
    """Serializes the rules that count a guest's bookings (``FOR NO KEY UPDATE``: see the lock order)."""
    return User.objects.select_for_update(no_key=True).get(pk=user_id)


def _lock_host(user_id: int) -> User:
    """Serializes the creation of one host's slots, no overlap (``FOR NO KEY UPDATE``: see the lock order)."""
    return User.objects.select_for_update(no_key=True).get(pk=user_id)


def _lock_slots(slot_ids: Iterable[int]) -> dict[int, Slot]:
    """Serializes the seats of each slot. Locks in primary-key order; a missing id is simply absent."""
    return {slot.pk: slot for slot in Slot.objects.select_for_update().filter(pk__in=set(slot_ids)).order_by("pk")}


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

    _lock_host(host.pk)
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
        slot = _lock_slots([slot_id]).get(slot_id)
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
        slot = _lock_slots([slot_id]).get(slot_id)
        if slot is None:
            raise NotFound(f"Slot {slot_id} does not exist.")
        if slot.host_id != user.pk and not user.is_staff:
            raise NotOwner(f"Slot {slot_id} belongs to another host.")
        now = locked_now(now)
        if slot.status == Slot.Status.CANCELLED:
            raise InvalidStateTransition(subject=f"Slot {slot_id}", from_state=slot.status, to_state="CANCELLED")
        _expire_overdue_on([slot], now=now)
        booked = SlotBooking.objects.filter(slot=slot).blocking().count()
        if booked:
            raise SlotBooked(f"Slot {slot_id} has {booked} active booking(s).", details={"slotId": slot_id})
        from_state = slot.status
        slot.status, slot.updated_at = Slot.Status.CANCELLED, now
        slot.save(update_fields=["status", "updated_at"])
        audit.record(subject=slot, event="CANCELLED", from_state=from_state, to_state=slot.status, actor=user)
    return slot


# --- bookings ---------------------------------------------------------------------------------------


@transaction.atomic
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
    _lock_guest(guest.pk)
    slot = _lock_slots([slot_id]).get(slot_id)
    if slot is None:
        raise NotFound(f"Slot {slot_id} does not exist.")
    now = locked_now(now)
    _check_bookable(slot, guest=guest, now=now)
    _check_guest_limits(guest=guest, host_id=slot.host_id, now=now)
    _expire_overdue_on([slot], now=now)
    _take_seats(slot, seats=seats)
    status = Status.PENDING if hold else Status.CONFIRMED
    expires_at = now + timedelta(minutes=hold_minutes or hold_minutes_default()) if hold else None
    booking = SlotBooking.objects.create(
        slot=slot,
        guest=guest,
        seats=seats,
        status=status,
        expires_at=expires_at,
        metadata=metadata or {},
        request_id=request_id,
        created_at=now,
        updated_at=now,
    )
    audit.record(
        subject=booking,
        event="CREATED",
        to_state=status,
        actor=actor or guest,
        metadata={"slotId": slot.pk, "seats": seats, "expiresAt": expires_at},
    )
    if hold:
        count_on_commit(HOLDS_CREATED, "slots")
    return booking


def slot_booking_confirm(*, booking_id: int, user: User, now: datetime) -> SlotBooking:
    """PENDING → CONFIRMED for the guest (or an operator). An overdue hold is expired instead, that
    change commits, and the answer is 410; a booking that is not PENDING is a 409.

    Locks the guest's row, then the slot, then the booking. The guest's row serializes the confirm
    with the guest's new bookings: a new booking that counted this hold as lapsed cannot commit
    beside a confirm that still saw it alive (the one-per-host and max-active rules)."""
    with transaction.atomic():
        peek = _peek(booking_id)
        require_owner(user=user, owner_id=peek["guest_id"], what=f"Booking {booking_id}")
        _lock_guest(peek["guest_id"])
        booking, _slot = _lock_booking(booking_id, slot_id=peek["slot_id"])
        now = locked_now(now)
        if booking.is_overdue(now):
            _expire([booking], actor=EXPIRY_ACTOR, now=now)
        elif booking.can_become(Status.CONFIRMED):
            return _apply(booking, Status.CONFIRMED, actor=user, now=now)
    if booking.status == Status.EXPIRED:
        raise HoldExpired(f"Booking {booking_id} expired at {booking.expires_at.isoformat()}.")
    raise BookingNotPending(booking_id=booking_id, status=booking.status)


def slot_booking_cancel(*, booking_id: int, user: User, now: datetime, reason: str = "") -> SlotBooking:
    """Cancel a booking and free its seats. The guest, the slot's host or an operator may cancel. A guest
    cannot cancel a CONFIRMED booking within the cancellation window before the start. The host and
    operators can always cancel, and a PENDING hold can always be released."""
    with transaction.atomic():
        booking, slot = _lock_booking(booking_id)
        if user.pk not in (booking.guest_id, slot.host_id) and not user.is_staff:
            raise NotOwner(f"Booking {booking_id} belongs to another user.")
        now = locked_now(now)
        if booking.is_overdue(now):
            _expire([booking], actor=EXPIRY_ACTOR, now=now)
        elif booking.can_become(Status.CANCELLED):
            if booking.status == Status.CONFIRMED and _guest_only(user, slot):
                _check_cancellation_window(slot, now=now)
            _release_seats(slot, seats=booking.seats)
            return _apply(booking, Status.CANCELLED, actor=user, now=now, reason=reason)
    raise InvalidStateTransition(subject=f"Booking {booking_id}", from_state=booking.status, to_state=Status.CANCELLED)


def slot_booking_expire(*, booking_id: int, user: User, now: datetime) -> SlotBooking:
    """An operator expires a PENDING hold now, overdue or not (admin action)."""
    with transaction.atomic():
        booking, _slot = _lock_booking(booking_id)
        require_owner(user=user, owner_id=booking.guest_id, what=f"Booking {booking_id}")
        now = locked_now(now)
        if booking.status == Status.PENDING:
            _expire([booking], actor=user, now=now)
            return booking
    raise InvalidStateTransition(subject=f"Booking {booking_id}", from_state=booking.status, to_state=Status.EXPIRED)


def slot_booking_reschedule(*, booking_id: int, slot_id: int, user: User, now: datetime) -> SlotBooking:
    """Move an active booking to another slot in one transaction. The seats of the new slot are taken
    before those of the old slot are released. If the new slot cannot take them, nothing changes.

    Returns the new booking (same seats, status, expiry and metadata; ``rescheduled_from`` the old one).
    The old booking becomes CANCELLED. Locks the guest row, then both slot rows, then the booking.
    """
    with transaction.atomic():
        peek = _peek(booking_id)
        require_owner(user=user, owner_id=peek["guest_id"], what=f"Booking {booking_id}")
        if slot_id == peek["slot_id"]:
            raise ValidationFailed.for_field("slotId", "The booking is already on this slot.")
        guest = _lock_guest(peek["guest_id"])
        slots = _lock_slots([peek["slot_id"], slot_id])
        booking = SlotBooking.objects.select_for_update().get(pk=booking_id)
        old_slot, new_slot = slots[booking.slot_id], slots.get(slot_id)
        if new_slot is None:
            raise NotFound(f"Slot {slot_id} does not exist.")
        now = locked_now(now)
        if booking.is_overdue(now):
            _expire([booking], actor=EXPIRY_ACTOR, now=now)
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
    _expire_overdue_on([new_slot], now=now)
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
    (the beat job). Returns how many were expired.

    Each batch locks the overdue bookings together with their slots in one ``FOR UPDATE SKIP LOCKED``
    statement (the join on ``slot`` puts both rows under the lock). A booking whose slot a request in
    flight holds is skipped by the database, not waited for: that request expires the slot's overdue
    holds itself (see the lock order above). So every row a batch returns is expired, and the loop of
    ``expire_in_batches`` moves on instead of fetching the same skipped rows again and again.
    """

    def expire_batch(batch: list[SlotBooking]) -> None:
        _expire(batch, actor=EXPIRY_ACTOR, now=now)

    overdue = SlotBooking.objects.overdue(now=now).select_related("slot")
    return expire_in_batches(overdue=overdue, expire_batch=expire_batch, batch_size=batch_size)


# --- the pieces ------------------------------------------------------------------------------------


def _peek(booking_id: int) -> dict:
    """A booking's ``guest_id`` and ``slot_id``, read without a lock: a booking never changes either,
    so the read stays true while the caller takes its locks in order."""
    peek = SlotBooking.objects.filter(pk=booking_id).values("guest_id", "slot_id").first()
    if peek is None:
        raise NotFound(f"Booking {booking_id} does not exist.")
    return peek


def _lock_booking(booking_id: int, *, slot_id: int | None = None) -> tuple[SlotBooking, Slot]:
    """Lock a booking's slot, then the booking (a booking never changes its slot, so the unlocked read
    of ``slot_id`` stays true)."""
    if slot_id is None:
        slot_id = _peek(booking_id)["slot_id"]
    slot = _lock_slots([slot_id])[slot_id]
    return SlotBooking.objects.select_for_update().get(pk=booking_id), slot


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


def _expire_overdue_on(slots: list[Slot], *, now: datetime) -> None:
    """An overdue hold never blocks, even when no worker has expired it yet (SPEC 2.2). Caller holds
    the slots' row locks."""
    overdue = list(SlotBooking.objects.overdue(now=now).filter(slot__in=slots).select_for_update().order_by("pk"))
    if overdue:
        _expire(overdue, actor=EXPIRY_ACTOR, now=now)
        for slot in slots:
            slot.refresh_from_db(fields=["booked"])


def _expire(bookings: list[SlotBooking], *, actor, now: datetime) -> None:
    """Flip PENDING bookings to EXPIRED and free their seats. Caller holds their rows and slots."""
    if not bookings:
        return
    SlotBooking.objects.filter(pk__in=[b.pk for b in bookings]).update(status=Status.EXPIRED, updated_at=now)
    seats_per_slot = Counter()
    for booking in bookings:
        seats_per_slot[booking.slot_id] += booking.seats
    for slot_id, seats in sorted(seats_per_slot.items()):
        Slot.objects.filter(pk=slot_id).update(booked=F("booked") - seats)
    audit.record_many(
        [
            audit.event(subject=b, event=Status.EXPIRED, from_state=b.status, to_state=Status.EXPIRED, actor=actor)
            for b in bookings
        ]
    )
    for booking in bookings:
        booking.status, booking.updated_at = Status.EXPIRED, now
    count_on_commit(HOLDS_EXPIRED, "slots", amount=len(bookings))


def _apply(booking: SlotBooking, status: str, *, actor, now: datetime, reason: str = "") -> SlotBooking:
    """Write one transition and its audit event. Caller holds the booking's row lock."""
    from_state = booking.status
    booking.status, booking.updated_at = status, now
    fields = ["status", "updated_at"]
    if reason:
        booking.reason = reason
        fields.append("reason")
    booking.save(update_fields=fields)
    audit.record(
        subject=booking,
        event=status,
        from_state=from_state,
        to_state=status,
        actor=actor,
        metadata={"reason": reason} if reason else None,
    )
    return booking
