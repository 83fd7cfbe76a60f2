"""Slots and a host's hours: create, edit, cancel, set availability."""

from __future__ import annotations

from datetime import datetime
from itertools import pairwise

from django.db import IntegrityError, transaction
from django.db.models.functions import Coalesce

from core import locking
from core.audit import services as audit
from core.errors import InvalidStateTransition, NotFound, ValidationFailed, bounded
from core.expiry import locked_now
from core.metrics import CONSTRAINT_BACKSTOPS
from core.organisations import access
from slots import locks
from slots.availability import AvailabilityFields, document_of
from slots.models import Availability, Slot, SlotBooking
from slots.services.appointments import _expire_overdue_appointments
from slots.services.bookings import SLOT_BOOKINGS, _constraint_of
from slots.services.rules import (
    HOST_NO_OVERLAP,
    MAX_CAPACITY,
    SlotBooked,
    SlotInPast,
    SlotOverlap,
    check_slot_times,
    require_host,
)
from web.accounts.models import User


def slot_create(
    *,
    host: User,
    start: datetime,
    end: datetime,
    now: datetime,
    actor: User,
    organisation_id: int | None = None,
    capacity: int = 1,
    title: str = "",
    specialization: str = "",
) -> Slot:
    return slots_create_many(
        host=host,
        organisation_id=organisation_id,
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
    organisation_id: int | None = None,
    capacity: int = 1,
    title: str = "",
    specialization: str = "",
) -> list[Slot]:
    """Create one host's slots, all or none (the admin's bulk form and ``POST /api/slots``), in the host's
    organisation (``organisation_id``, or their one: ``access.host_organisation``), by the host or a
    manager there.

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

    hours = Availability.objects.filter(host=host).values_list("organisation_id", flat=True).first()
    organisation_id = access.host_organisation(host, organisation_id, actor=actor, hours=hours)
    locking.lock_user(host.pk)  # serializes the creation of one host's slots: no overlap
    access.require_host_or_member(actor, host.pk, organisation_id, what=f"Organisation {organisation_id}")
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
            organisation_id=organisation_id,
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


def slot_update_details(*, slot_id: int, title: str, specialization: str, actor: User, now: datetime) -> Slot:
    """Change what a slot is called; its time, host and capacity stay as booked against."""
    with transaction.atomic():
        slot = locks.lock_slots([slot_id]).get(slot_id)
        if slot is None:
            raise NotFound(f"Slot {slot_id} does not exist.")
        access.require_host_or_member(actor, slot.host_id, slot.organisation_id, what=f"Slot {slot_id}")
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
        slot = locks.lock_slots([slot_id]).get(slot_id)
        if slot is None:
            raise NotFound(f"Slot {slot_id} does not exist.")
        access.require_host_or_member(user, slot.host_id, slot.organisation_id, what=f"Slot {slot_id}")
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


def availability_set(
    *, host: User, fields: AvailabilityFields, actor: User, now: datetime, organisation_id: int | None = None
) -> Availability:
    """Replace ``host``'s availability with ``fields``, a document ``availability_clean`` checked (``PUT
    /api/hosts/me/availability``, the admin), in its organisation (new hours: ``organisation_id``, or
    ``access.host_organisation``'s). Locks the host's row: a booking of the host judges their hours under
    the same lock."""
    require_host(host)
    with transaction.atomic():
        locking.lock_user(host.pk)
        now = locked_now(now)
        current = Availability.objects.filter(host=host).first()
        if current is not None:
            organisation_id = current.organisation_id
        else:
            organisation_id = access.host_organisation(host, organisation_id, actor=actor)
        access.require_host_or_member(actor, host.pk, organisation_id, what=f"The hours of host {host.pk}")
        if current is None:
            availability = Availability.objects.create(
                host=host, organisation_id=organisation_id, updated_at=now, **fields
            )
            audit.record(subject=availability, event="CREATED", actor=actor, metadata=dict(document_of(availability)))
            return availability
        audit.record_update(current, dict(fields), actor=actor, now=now)
        return current
