"""Reads of slots and bookings that know about time (an overdue hold counts as free, docs/contract.md §2.2), and the
operators' analytics, computed in the database with aggregate queries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo

from django.db.models import Case, Count, F, IntegerField, OuterRef, Q, QuerySet, Subquery, Sum, Value, When
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone

from booking_site.accounts.models import User
from slots.models import Slot, SlotBooking

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
    return slots_with_remaining(now=now).filter(status=Slot.Status.AVAILABLE, start__gt=now).order_by("start", "id")


def slots_of_host(host: User, *, now: datetime) -> QuerySet[Slot]:
    return slots_with_remaining(now=now).filter(host=host).order_by("start", "id")


def slot_bookings_with_effective_state(*, now: datetime) -> QuerySet[SlotBooking]:
    """Bookings annotated with ``effective_state``: an overdue PENDING reads as EXPIRED before the
    expiry job has caught up with it."""
    return SlotBooking.objects.select_related("slot").with_effective_state(now=now)


def slot_bookings_visible_to(user: User, *, now: datetime) -> QuerySet[SlotBooking]:
    """A guest sees their own bookings; operators see all (docs/contract.md §2.6)."""
    bookings = slot_bookings_with_effective_state(now=now)
    return bookings if user.is_staff else bookings.filter(guest=user)


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


def booking_analytics(*, start_date: date, end_date: date, tz: tzinfo | None = None, top: int = 10) -> Analytics:
    """Bookings made from ``start_date`` to ``end_date`` (inclusive, days in the operator's time zone).

    A booking that was rescheduled counts once: its successor counts, the superseded row does not.
    ``cancellationRate`` is the percentage of those bookings that are CANCELLED (0 on an empty range).
    ``bookingsPerDay`` has every day of the range, zeros included. ``topHosts`` ranks hosts by the
    bookings on their slots that are neither cancelled nor expired.
    """
    tz = tz or timezone.get_current_timezone()
    since, until = booking_days(start_date, end_date, tz)
    bookings = SlotBooking.objects.filter(created_at__gte=since, created_at__lt=until, rescheduled_as__isnull=True)

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
