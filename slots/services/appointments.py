"""Appointments: an interval of a host's hours booked whole (ADR 0014)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError
from django.db.models import JSONField, QuerySet
from django.db.models.expressions import RawSQL
from psycopg import sql

from core import locking
from core.errors import NotFound
from core.organisations import access
from slots import locks, selectors
from slots.availability import MAX_BUFFER_MINUTES
from slots.models import Availability, Slot, SlotBooking
from slots.services.bookings import (
    _CREATED_EVENT,
    SLOT_BOOKINGS,
    SlotBookingLifecycle,
    _backstop_refusal,
    _check_guest_limits,
    _check_no_clash,
    _clash,
    _count,
    _event_params,
    _slot_statement,
    _written,
)
from slots.services.rules import (
    OutsideAvailability,
    OwnSlot,
    SlotOverlap,
    Status,
    check_slot_times,
    hold_minutes_default,
)
from web.accounts.models import User


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
    idempotency_key: str = ""
    rescheduled_from: SlotBooking | None = None  # the booking a reschedule moves here: not in its own way


@dataclass
class AppointmentTarget:
    """The host, locked; then what ``check_target`` reads after the locks: their hours, and the overdue holds on
    their appointments in the way (booking id → slot id), which ``expire_in_the_way`` expires."""

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

    def lock_target(self, ask: AppointmentRequest) -> AppointmentTarget:
        host = locking.lock_users([ask.guest.pk, ask.host_id]).get(ask.host_id)
        if host is None or not host.is_host:
            raise NotFound(f"Host {ask.host_id} does not exist.")
        return AppointmentTarget(host=host)

    def check_target(self, target: AppointmentTarget, ask: AppointmentRequest, *, now: datetime) -> None:
        if target.host.pk == ask.guest.pk:
            raise OwnSlot("You cannot book your own time.")
        check_slot_times(ask.start, ask.end, now=now)
        target.availability = hours = _hours_and_rules(target.host.pk, ask, now=now)
        _check_fits(hours, ask, now=now)
        assert hours is not None  # _check_fits refuses a host without hours
        _check_guest_limits(host_id=target.host.pk, active=hours.guest_active, with_host=hours.guest_with_host)
        if hours.guest_clash is not None:  # JSON: its times are ISO 8601 strings
            clash = hours.guest_clash
            _check_no_clash(clash["id"], datetime.fromisoformat(clash["start"]), datetime.fromisoformat(clash["end"]))
        buffer = _buffer(target)
        taken = selectors.in_the_way(_spans(hours.host_time), ask.start, ask.end, buffer=buffer)
        overdue = _spans(hours.overdue_appointments, keys=2)  # (booking id, slot id): an overdue hold's appointment
        target.in_the_way = dict(selectors.in_the_way(overdue, ask.start, ask.end, buffer=buffer))
        moving = ask.rescheduled_from
        if moving is not None and moving.slot.kind == Slot.Kind.APPOINTMENT:
            taken = [pk for pk in taken if pk != moving.slot_id]  # its own time, released with it
        if taken:
            raise SlotOverlap(
                f"Host {target.host.pk} is taken from {ask.start.isoformat()} to {ask.end.isoformat()}"
                f" (with their {buffer} buffer).",
                details={"slotIds": [pk for pk in taken if pk != selectors.AWAY]},  # where the host is a guest: theirs
            )

    def expire_in_the_way(self, target: AppointmentTarget, ask: AppointmentRequest, *, now: datetime) -> None:
        """Expire the overdue holds on the host's appointments in the way of the new one's slot (``check_target``
        found them): nothing to do, and no round trip, when there are none."""
        _expire_in_the_way(target.in_the_way, now=now)

    def create(self, target: AppointmentTarget, ask: AppointmentRequest, *, now: datetime, actor) -> SlotBooking:
        hold_minutes = ask.hold_minutes or hold_minutes_default()
        status = Status.PENDING if ask.hold else Status.CONFIRMED
        expires_at = now + timedelta(minutes=hold_minutes) if ask.hold else None
        if ask.rescheduled_from is not None:  # a moved hold keeps its expiry
            expires_at = ask.rescheduled_from.expires_at if ask.hold else None
        assert target.availability is not None  # check_target refuses a host without hours
        slot = Slot(
            host=target.host,
            organisation_id=target.availability.organisation_id,  # the host's hours' organisation
            kind=Slot.Kind.APPOINTMENT,
            start=ask.start,
            end=ask.end,
            blocked_from=ask.start - _buffer(target),
            blocked_until=ask.end + _buffer(target),
            capacity=1,
            booked=1,
            created_at=now,
            updated_at=now,
        )
        metadata = {"hostId": target.host.pk, "start": ask.start, "end": ask.end, "expiresAt": expires_at}
        if ask.rescheduled_from is not None:
            metadata["rescheduledFromId"] = ask.rescheduled_from.pk
        params = {
            "host": target.host.pk,
            "organisation": slot.organisation_id,
            "guest": ask.guest.pk,
            "start": ask.start,
            "end": ask.end,
            "blocked_from": slot.blocked_from,
            "blocked_until": slot.blocked_until,
            "status": status,
            "expires_at": expires_at,
            "booking_metadata": json.dumps(ask.metadata, cls=DjangoJSONEncoder),
            "booking_idempotency_key": ask.idempotency_key,
            "rescheduled_from": ask.rescheduled_from.pk if ask.rescheduled_from else None,
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
            guest=ask.guest,
            status=status,
            expires_at=expires_at,
            metadata=ask.metadata,
            idempotency_key=ask.idempotency_key,
            rescheduled_from=ask.rescheduled_from,
        )


def _hours_and_rules(host_id: int, ask: AppointmentRequest, *, now: datetime) -> Availability | None:
    """The host's hours (None: they have none), annotated with all an appointment's rules read, in one statement
    after the guest's and the host's locks, so by a snapshot that sees every booking those locks serialize:
    the guest's active bookings (``guest_active``), those with the host (``guest_with_host``), the first one
    overlapping the interval (``guest_clash``), each but the booking a reschedule moves (``BOOK``'s
    ``limits`` and ``clash``); and near the interval what takes the host's time (``host_time``:
    ``selectors.taking_time``) and the overdue holds on their appointments (``overdue_appointments``). Near:
    within the longest buffer a host may have, as theirs is read by the same statement; the caller narrows."""
    reach = timedelta(minutes=MAX_BUFFER_MINUTES)
    begins, ends = ask.start - reach, ask.end + reach
    moving = ask.rescheduled_from.pk if ask.rescheduled_from else 0
    active = SlotBooking.objects.active(now=now).filter(guest=ask.guest.pk).exclude(pk=moving)
    counted = SlotBooking.objects.filter(SLOT_BOOKINGS.cap.counts.q(SlotBooking, now=now), guest=ask.guest.pk)
    annotations = {  # Availability declares them, for their types: a dict keeps django-stubs from redefining them
        "guest_active": _count(counted.exclude(pk=moving)),
        "guest_with_host": _count(active.filter(slot__host_id=host_id)),
        "guest_clash": _clash(active.filter(start__lt=ask.end, end__gt=ask.start)),
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
    INSERT INTO {s_table} ({s_host}, {s_organisation}, {s_kind}, {s_title}, {s_specialization}, {s_start}, {s_end},
                           {s_blocked_from}, {s_blocked_until}, {s_capacity}, {s_booked}, {s_status}, {s_created_at},
                           {s_updated_at})
    VALUES (%(host)s, %(organisation)s, {appointment}, '', '', %(start)s, %(end)s, %(blocked_from)s,
            %(blocked_until)s, 1, 1, {available}, %(now)s, %(now)s)
    RETURNING id
), created AS (
    INSERT INTO {b_table} ({b_slot}, {b_guest}, {b_start}, {b_end}, {b_seats}, {b_status}, {b_expires_at}, {b_reason},
                           {b_metadata}, {b_idempotency_key}, {b_rescheduled_from}, {b_created_at}, {b_updated_at})
    SELECT slot.id, %(guest)s, %(start)s, %(end)s, 1, %(status)s, %(expires_at)s, '', %(booking_metadata)s::jsonb,
           %(booking_idempotency_key)s, %(rescheduled_from)s, %(now)s, %(now)s
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
        locks.lock_slots(in_the_way.values())
        APPOINTMENTS.expire_overdue(list(in_the_way), now=now)


def _buffer(target: AppointmentTarget) -> timedelta:
    return timedelta(minutes=target.availability.buffer_minutes if target.availability else 0)


def _check_fits(availability: Availability | None, ask: AppointmentRequest, *, now: datetime) -> None:
    """The interval is one of the host's durations, inside one window of their hours, and at least their
    minimum notice from ``now``: 400 ``outside_availability`` otherwise."""
    if availability is None:
        raise OutsideAvailability(f"Host {ask.host_id} has no hours.")
    minutes = (ask.end - ask.start) / timedelta(minutes=1)
    if minutes not in availability.durations:
        offered = ", ".join(str(d) for d in availability.durations)
        raise OutsideAvailability(f"Host {ask.host_id} offers {offered} minutes, not {minutes:g}.")
    notice = timedelta(minutes=availability.minimum_notice_minutes)
    if ask.start < now + notice:
        raise OutsideAvailability(f"Host {ask.host_id} takes bookings at least {notice} ahead.")
    windows = selectors.availability_windows(availability, ask.start, ask.end)
    if not any(start <= ask.start and ask.end <= end for start, end in windows):
        raise OutsideAvailability(f"Host {ask.host_id} is not working then (see their availability).")


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
    idempotency_key: str = "",
    actor: User | None = None,
) -> SlotBooking:
    """Book ``start`` to ``end`` of a host's hours (``POST /api/bookings`` with ``hostId``): CONFIRMED at once,
    or with ``hold`` a PENDING hold. Locks the guest's and the host's rows. An operator booking for a guest
    does so inside their organisations only (the host's hours' organisation)."""
    if actor is not None and actor.pk != guest.pk:
        hours = Availability.objects.filter(host_id=host_id).values_list("organisation_id", flat=True)
        access.acting_in(actor, owner_id=guest.pk, organisation=hours.first)
    ask = AppointmentRequest(
        host_id=host_id,
        guest=guest,
        start=start,
        end=end,
        hold=hold,
        hold_minutes=hold_minutes,
        now=now,
        metadata=metadata or {},
        idempotency_key=idempotency_key,
    )
    return APPOINTMENTS.hold(ask, now=now, actor=actor or guest)
