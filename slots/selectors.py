"""Reads of slots and bookings that know about time (an overdue hold counts as free, docs/contract.md §2.2), and the
operators' analytics, computed in the database with aggregate queries."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo

from django.db import connection
from django.db.models import Case, Count, F, IntegerField, OuterRef, Q, QuerySet, Subquery, Sum, Value, When
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone

from core.errors import ValidationFailed
from slots.models import Availability, Slot, SlotBooking
from web.accounts.models import User

Status = SlotBooking.Status


def slots_with_remaining(*, now: datetime) -> QuerySet[Slot]:
    """Slots annotated with ``remaining_capacity``: capacity minus the seats of active bookings. The
    ``booked`` counter still includes overdue holds nobody has expired yet; they are added back."""
    overdue_seats = (
        SlotBooking.objects.overdue(now=now)
        .filter(slot=OuterRef("pk"))
        .order_by()
        .values("slot")
        .annotate(total=Sum("seats"))
        .values("total")
    )
    return Slot.objects.select_related("host").annotate(
        remaining_capacity=Case(
            When(status=Slot.Status.CANCELLED, then=Value(0)),
            default=F("capacity") - F("booked") + Coalesce(Subquery(overdue_seats, output_field=IntegerField()), 0),
            output_field=IntegerField(),
        )
    )


def slots_listed(*, now: datetime) -> QuerySet[Slot]:
    """What guests browse: AVAILABLE slots that have not started yet, soonest first."""
    published = slots_with_remaining(now=now).filter(kind=Slot.Kind.PUBLISHED)
    return published.filter(status=Slot.Status.AVAILABLE, start__gt=now).order_by("start", "id")


def slots_of_host(host: User, *, now: datetime) -> QuerySet[Slot]:
    """The host's published slots (an appointment's slot is its booking's: ``GET /api/bookings``)."""
    return slots_with_remaining(now=now).filter(host=host, kind=Slot.Kind.PUBLISHED).order_by("start", "id")


def slot_bookings_with_effective_state(*, now: datetime) -> QuerySet[SlotBooking]:
    """Bookings annotated with ``effective_state``: an overdue PENDING reads as EXPIRED before the
    expiry job has caught up with it."""
    return SlotBooking.objects.select_related("slot").with_effective_state(now=now)


# --- analytics ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Analytics:
    total_bookings: int
    cancellation_rate: float
    bookings_per_day: list[dict]
    top_hosts: list[dict]


def booking_days(start_date: date, end_date: date, tz: tzinfo) -> tuple[datetime, datetime]:
    """The moments ``booking_analytics`` counts bookings made in: from the start of ``start_date`` to
    the end of ``end_date`` in ``tz`` (the admin's list links to the same window)."""
    since = datetime.combine(start_date, time.min, tzinfo=tz)
    return since, datetime.combine(end_date + timedelta(days=1), time.min, tzinfo=tz)


def booking_analytics(
    *, start_date: date, end_date: date, organisations: list[int] | None, tz: tzinfo | None = None, top: int = 10
) -> Analytics:
    """Bookings made from ``start_date`` to ``end_date`` (inclusive, days in the operator's time zone), on
    the slots of ``organisations`` (None: all).

    A booking that was rescheduled counts once: its successor counts, the superseded row does not.
    ``cancellationRate`` is the percentage of those bookings that are CANCELLED (0 on an empty range).
    ``bookingsPerDay`` has every day of the range, zeros included. ``topHosts`` ranks hosts by the
    bookings on their slots that are neither cancelled nor expired. ``organisations``: only the bookings of
    those organisations' slots (None: every organisation's).
    """
    tz = tz or timezone.get_current_timezone()
    since, until = booking_days(start_date, end_date, tz)
    bookings = SlotBooking.objects.filter(created_at__gte=since, created_at__lt=until, rescheduled_as__isnull=True)
    if organisations is not None:  # the caller's organisations (None: every one, a superuser's)
        bookings = bookings.filter(slot__organisation_id__in=organisations)

    totals = bookings.aggregate(total=Count("id"), cancelled=Count("id", filter=Q(status=Status.CANCELLED)))
    total, cancelled = totals["total"], totals["cancelled"]
    rate = round(100.0 * cancelled / total, 2) if total else 0.0

    per_day = dict(
        bookings.annotate(day=TruncDate("created_at", tzinfo=tz))
        .order_by()
        .values("day")
        .annotate(count=Count("id"))
        .values_list("day", "count")
    )
    days = [start_date + timedelta(days=n) for n in range((end_date - start_date).days + 1)]
    bookings_per_day = [{"date": day.isoformat(), "count": per_day.get(day, 0)} for day in days]

    hosts = (
        bookings.exclude(status__in=[Status.CANCELLED, Status.EXPIRED])
        .order_by()
        .values("slot__host_id", "slot__host__name", "slot__host__email")
        .annotate(count=Count("id"))
        .order_by("-count", "slot__host_id")[:top]
    )
    top_hosts = [
        {
            "hostId": h["slot__host_id"],
            "hostName": h["slot__host__name"] or h["slot__host__email"],
            "bookingCount": h["count"],
        }
        for h in hosts
    ]
    return Analytics(total, rate, bookings_per_day, top_hosts)


# --- a host's free times (seeds/003's "Get Available Slots"; docs/contract.md §6, ADR 0014) ------------------

MAX_SEARCH_DAYS = 62


def availability_of(host_id: int) -> Availability | None:
    return Availability.objects.filter(host_id=host_id).first()


def search_range(availability: Availability, start: date | datetime, end: date | datetime) -> tuple[datetime, datetime]:
    """The instants a search covers: a datetime as it is; a date from the start of that day in the host's
    time zone (``startDate``) or to the end of it (``endDate``, so a date range includes both days). At most
    ``MAX_SEARCH_DAYS`` days; ValidationFailed naming the field otherwise."""
    zone = ZoneInfo(availability.time_zone)
    begins = start if isinstance(start, datetime) else datetime.combine(start, time(0), tzinfo=zone)
    ends = end if isinstance(end, datetime) else datetime.combine(end + timedelta(days=1), time(0), tzinfo=zone)
    if ends <= begins:
        raise ValidationFailed.for_field("endDate", "Must be after startDate.")
    if ends - begins > timedelta(days=MAX_SEARCH_DAYS):
        raise ValidationFailed.for_field("endDate", f"The range may span at most {MAX_SEARCH_DAYS} days.")
    return begins.astimezone(UTC), ends.astimezone(UTC)


def free_times(
    *, host_id: int, start: date | datetime, end: date | datetime, minutes: int, now: datetime
) -> list[tuple[datetime, datetime]]:
    """Every appointment of ``minutes`` the host can take between ``start`` and ``end``: stepped by its
    length from the start of each window of the host's hours (weekly, or the date's override), in the
    host's time zone, so across a DST change a window keeps its wall-clock bounds and lasts what it really
    lasts; at least the minimum notice after ``now``; and clear of everything that takes the host's time
    (``in_the_way``'s rule: their published slots, their active appointments, their own active bookings as a
    guest; an overdue hold is free). ValidationFailed for a length the host does not offer."""
    availability = availability_of(host_id)
    if availability is None or minutes not in availability.durations:
        offered = ", ".join(str(d) for d in availability.durations) if availability else "none"
        raise ValidationFailed.for_field("slotDuration", f"Host {host_id} offers {offered} (minutes).")
    begins, ends = search_range(availability, start, end)
    length, buffer = timedelta(minutes=minutes), timedelta(minutes=availability.buffer_minutes)
    earliest = max(begins, now + timedelta(minutes=availability.minimum_notice_minutes))
    busy = _busy(host_id, begins - buffer - length, ends + buffer + length, now=now, buffer=buffer)
    found = []
    for window_start, window_end in availability_windows(availability, begins, ends):
        moment = window_start
        while moment + length <= window_end:
            end = moment + length
            if moment >= earliest and end <= ends and not _overlaps(busy, moment.timestamp(), end.timestamp()):
                found.append((moment, end))
            moment += length
    return found


def availability_windows(
    availability: Availability, begins: datetime, ends: datetime
) -> list[tuple[datetime, datetime]]:
    """The host's hours that touch ``begins`` to ``ends``, as UTC instants in time order: each date of the host's
    time zone, its override's windows or its weekday's. A wall-clock bound that a DST change skips that day
    is read with the offset before the change; one it repeats, as its first occurrence."""
    zone = ZoneInfo(availability.time_zone)
    weekly: dict[int, list[dict]] = {}
    for window in availability.weekly:
        weekly.setdefault(window["weekday"], []).append(window)
    overrides = {o["date"]: o["windows"] for o in availability.overrides}
    day, last = begins.astimezone(zone).date() - timedelta(days=1), ends.astimezone(zone).date()
    found = []
    while day <= last:
        windows = overrides.get(day.isoformat(), weekly.get(day.weekday(), []))
        for window in windows:
            start, end = _wall(day, window["start"], zone), _wall(day, window["end"], zone)
            if start < ends and end > begins:
                found.append((start, end))
        day += timedelta(days=1)
    return found


def _wall(day: date, clock: str, zone: ZoneInfo) -> datetime:
    """``clock`` (HH:MM, or 24:00: the next midnight) on ``day`` in ``zone``, as a UTC instant."""
    if clock == "24:00":
        return datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone).astimezone(UTC)
    hours, minutes = map(int, clock.split(":"))
    return datetime.combine(day, time(hours, minutes), tzinfo=zone).astimezone(UTC)


AWAY = 0  # ``in_the_way``'s slot id for the host's own booking as a guest (another host's slot, not theirs to name)


def taking_time(host_id: int, begins: datetime, ends: datetime, *, now: datetime) -> QuerySet:
    """What takes the host's time between ``begins`` and ``ends`` (with its buffers), as ``(slot id, start, end,
    blocked from, blocked until)``: their published AVAILABLE slots; their appointments whose booking is active
    (an overdue hold is free, §2.2), with the buffer they were booked with; and their own active bookings as a
    guest of another host (slot id ``AWAY``): a host is not in two places at once either."""
    published = (
        Slot.objects.filter(
            host_id=host_id, kind=Slot.Kind.PUBLISHED, status=Slot.Status.AVAILABLE, start__lt=ends, end__gt=begins
        )
        .annotate(taken_from=F("start"), taken_until=F("end"))
        .values_list("pk", "start", "end", "taken_from", "taken_until")
    )
    active = SlotBooking.objects.active(now=now)
    appointments = (
        active.filter(
            slot__host_id=host_id,
            slot__kind=Slot.Kind.APPOINTMENT,
            slot__blocked_from__lt=ends,
            slot__blocked_until__gt=begins,
        )
        .annotate(taken_from=F("slot__blocked_from"), taken_until=F("slot__blocked_until"))
        .values_list("slot_id", "start", "end", "taken_from", "taken_until")
    )
    away = (
        active.filter(guest_id=host_id, start__lt=ends, end__gt=begins)
        .annotate(away=Value(AWAY), taken_from=F("start"), taken_until=F("end"))
        .values_list("away", "start", "end", "taken_from", "taken_until")
    )
    published, appointments, away = published.order_by(), appointments.order_by(), away.order_by()  # for a union
    return published.union(appointments, away, all=True)


def in_the_way(spans: Iterable[tuple], start: datetime, end: datetime, *, buffer: timedelta) -> list:
    """The keys of ``spans`` (``(key, start, end, blocked from, blocked until)``, as ``taking_time`` reads them; a
    key is a slot id, ``AWAY`` a booking of the host's as a guest) that keep the host from ``start`` to ``end``
    with their ``buffer`` around it: whose time, widened by ``buffer`` on each side or by the buffer an
    appointment was booked with when that is larger, overlaps it; touching is fine. The rule the host's two
    constraints keep between their slots (``slot_no_overlap_per_host``, ``slot_buffer_before_per_host``)."""
    return sorted(
        key
        for key, taken_start, taken_end, taken_from, taken_until in spans
        if min(taken_start - buffer, taken_from) < end and max(taken_end + buffer, taken_until) > start
    )


def _busy(host_id: int, begins: datetime, ends: datetime, *, now: datetime, buffer: timedelta) -> list[tuple]:
    """What takes the host's time between ``begins`` and ``ends``, each widened as ``in_the_way`` widens it,
    merged by PostgreSQL (``range_agg``) and in time order, as POSIX seconds: a busy month is some hundred
    spans, and parsing two timestamps each would cost more than the search."""
    inner, params = taking_time(host_id, begins, ends, now=now).query.sql_with_params()
    sql = f"""
        SELECT extract(epoch FROM lower(r))::float8, extract(epoch FROM upper(r))::float8
        FROM unnest((SELECT range_agg(tstzrange(least(t.start - %s * interval '1 second', t.taken_from),
                                                greatest(t."end" + %s * interval '1 second', t.taken_until)))
                     FROM ({inner}) AS t (pk, start, "end", taken_from, taken_until))) AS r
        ORDER BY 1"""
    with connection.cursor() as cursor:
        cursor.execute(sql, [buffer.total_seconds(), buffer.total_seconds(), *params])
        return cursor.fetchall()


def _overlaps(busy: list[tuple], start: float, end: float) -> bool:
    """Whether ``start`` to ``end`` (POSIX seconds) overlaps a span of ``busy`` (merged, in time order);
    touching is fine."""
    index = bisect.bisect_right(busy, (start, math.inf))
    return (index > 0 and busy[index - 1][1] > start) or (index < len(busy) and busy[index][0] < end)


@dataclass(frozen=True)
class WeekBlock:
    """One thing on a host's week picture (the admin): its kind, what it is, and when in its day, as hours
    since the day's local midnight in real time (a day has 23 or 25 of them across a daylight-saving change)."""

    kind: str  # "hours", "slot", "booking", or "away" (the host's own booking as a guest of another host)
    number: int | None  # the slot's or the booking's id; None for hours
    begins: str  # local wall-clock times, "10:00"
    ends: str
    start: float
    end: float

    @property
    def label(self) -> str:
        """What it is and when, in words: "slot #12 10:00 to 10:30", "away: booking #3 12:00 to 12:30"."""
        name = {"hours": "hours", "slot": f"slot #{self.number}", "booking": f"booking #{self.number}"}.get(
            self.kind, f"away: booking #{self.number}"
        )
        return f"{name} {self.begins} to {self.ends}"


def host_week(availability: Availability, *, first_day: date, now: datetime) -> list[tuple[date, list[WeekBlock]]]:
    """The seven days from ``first_day`` in the host's time zone: their hours, their published slots, their
    active bookings (in those slots, and appointments) and their own active bookings as a guest elsewhere
    (time they are not free either), each cut to its day."""
    zone = ZoneInfo(availability.time_zone)
    begins = datetime.combine(first_day, time(0), tzinfo=zone).astimezone(UTC)
    ends = datetime.combine(first_day + timedelta(days=7), time(0), tzinfo=zone).astimezone(UTC)
    spans: list[tuple[str, int | None, datetime, datetime]] = [
        ("hours", None, s, e) for s, e in availability_windows(availability, begins, ends)
    ]
    slots = Slot.objects.filter(
        host_id=availability.host_id,
        kind=Slot.Kind.PUBLISHED,
        status=Slot.Status.AVAILABLE,
        start__lt=ends,
        end__gt=begins,
    )
    spans += [("slot", s.pk, s.start, s.end) for s in slots]
    bookings = SlotBooking.objects.active(now=now).filter(
        slot__host_id=availability.host_id, start__lt=ends, end__gt=begins
    )
    spans += [("booking", b.pk, b.start, b.end) for b in bookings]
    away = SlotBooking.objects.active(now=now).filter(guest_id=availability.host_id, start__lt=ends, end__gt=begins)
    spans += [("away", b.pk, b.start, b.end) for b in away]
    week = []
    for offset in range(7):
        day = first_day + timedelta(days=offset)
        day_start = datetime.combine(day, time(0), tzinfo=zone)
        day_end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone)
        origin, blocks = day_start.astimezone(UTC), []  # real hours, not wall-clock ones
        for kind, number, start, end in spans:
            start, end = max(start, day_start), min(end, day_end)
            if start < end:
                blocks.append(
                    WeekBlock(
                        kind=kind,
                        number=number,
                        begins=f"{start.astimezone(zone):%H:%M}",
                        ends="24:00" if end == day_end else f"{end.astimezone(zone):%H:%M}",
                        start=(start - origin).total_seconds() / 3600,
                        end=(end - origin).total_seconds() / 3600,
                    )
                )
        week.append((day, blocks))
    return week
