from django.conf import settings
from django.contrib.postgres.constraints import ExclusionConstraint
from django.contrib.postgres.fields import RangeOperators
from django.db import models
from django.db.models import Case, F, Func, Q, Value, When
from django.db.models.functions import Coalesce, Least

from core.claims import Claim, ClaimQuerySet
from core.organisations.models import Organisation


class Int8Range(Func):
    """``int8range(a, b, bounds)``: a one-value range stands in for ``host_id =`` in a GiST exclusion
    constraint, which needs no btree_gist extension (the embedded PostgreSQL has no contrib)."""

    function, output_field = "INT8RANGE", models.BigIntegerField()


class TsTzRange(Func):
    function, output_field = "TSTZRANGE", models.DateTimeField()


class Alive(TsTzRange):
    """When a booking blocks its guest: ``[created_at, expires_at)`` for a hold, from ``created_at`` on once
    confirmed (an expiry before the creation, only ever written by hand, is an empty range)."""

    def __init__(self) -> None:
        expiry = Case(When(status="CONFIRMED", then=Value(None)), default=F("expires_at"))
        super().__init__(Least(F("created_at"), F("expires_at")), expiry, Value("[)"))


class Slot(models.Model):
    """A time slot a host publishes; guests book seats in it up to ``capacity``.

    ``booked`` is the number of seats claimed by PENDING and CONFIRMED bookings, kept by the services
    with ``F()`` updates under the slot's row lock, and held within ``0 … capacity`` by a check
    constraint. An overdue PENDING hold stays counted until it is flipped to EXPIRED (by the next claim
    on the slot or by the expiry job); reads treat it as free already (see selectors).
    """

    class Status(models.TextChoices):
        AVAILABLE = "AVAILABLE", "Available"
        CANCELLED = "CANCELLED", "Cancelled"

    class Kind(models.TextChoices):
        PUBLISHED = "PUBLISHED", "Published"  # a host's offer, booked by seats (seeds/002, 004)
        # The time one interval booking takes (seeds/003): its appointment, with the host's buffer around it
        # (``blocked_from``, ``blocked_until``). It exists for its one booking, and is CANCELLED with it: the
        # host's time is free again.
        APPOINTMENT = "APPOINTMENT", "Appointment"

    host = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="slots")
    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="+")
    kind = models.CharField(max_length=11, choices=Kind.choices, default=Kind.PUBLISHED)
    title = models.CharField(max_length=200, blank=True)
    specialization = models.CharField(max_length=100, blank=True, help_text='Free text, e.g. "cardiology"')
    start = models.DateTimeField()
    end = models.DateTimeField()
    # An appointment's time with the host's buffer before and after it, as it was booked: the host takes
    # nothing else from ``blocked_from`` to ``blocked_until``. None on a published slot (it takes its time).
    blocked_from = models.DateTimeField(null=True, blank=True)
    blocked_until = models.DateTimeField(null=True, blank=True)
    capacity = models.PositiveIntegerField(default=1)
    booked = models.PositiveIntegerField(default=0, help_text="Seats claimed by PENDING and CONFIRMED bookings")
    status = models.CharField(max_length=9, choices=Status.choices, default=Status.AVAILABLE)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    # Annotated by the booking's lock (slots.services.bookings.SlotBookings.lock_target), not columns.
    guest_active: int
    guest_with_host: int
    guest_clash: dict | None  # the guest's first active booking overlapping the slot: {id, start, end}
    overdue_seats: int

    class Meta:
        ordering = ["start", "id"]
        constraints = [
            models.CheckConstraint(condition=Q(end__gt=F("start")), name="slot_ends_after_start"),
            models.CheckConstraint(condition=Q(capacity__gte=1), name="slot_capacity_positive"),
            models.CheckConstraint(
                condition=Q(booked__gte=0, booked__lte=F("capacity")), name="slot_booked_within_capacity"
            ),
            models.CheckConstraint(condition=Q(status__in=["AVAILABLE", "CANCELLED"]), name="slot_status_valid"),
            models.CheckConstraint(
                condition=Q(kind="PUBLISHED") | Q(kind="APPOINTMENT", capacity=1), name="slot_kind_valid"
            ),
            models.CheckConstraint(
                condition=Q(kind="PUBLISHED", blocked_from__isnull=True, blocked_until__isnull=True)
                | Q(
                    kind="APPOINTMENT",
                    blocked_from__isnull=False,
                    blocked_until__isnull=False,
                    blocked_from__lte=F("start"),
                    blocked_until__gte=F("end"),
                ),
                name="slot_blocked_around_appointment",
            ),
            # One host's time is never taken twice (ADR 0014). Each of the two constraints compares one range per
            # slot: a published slot's own time in both; an appointment's time with the buffer after it here, and
            # with the buffer before it in the next one. Together they keep an appointment's buffer free on both
            # sides of a published slot, and two appointments at least the larger of their buffers apart; a
            # single range with both buffers would ask twice the buffer between two appointments.
            ExclusionConstraint(
                name="slot_no_overlap_per_host",
                index_type="GIST",
                expressions=[
                    (Int8Range(F("host_id"), F("host_id"), Value("[]")), RangeOperators.OVERLAPS),
                    (
                        TsTzRange(F("start"), Coalesce(F("blocked_until"), F("end")), Value("[)")),
                        RangeOperators.OVERLAPS,
                    ),
                ],
                condition=Q(status="AVAILABLE"),
            ),
            ExclusionConstraint(
                name="slot_buffer_before_per_host",
                index_type="GIST",
                expressions=[
                    (Int8Range(F("host_id"), F("host_id"), Value("[]")), RangeOperators.OVERLAPS),
                    (
                        TsTzRange(Coalesce(F("blocked_from"), F("start")), F("end"), Value("[)")),
                        RangeOperators.OVERLAPS,
                    ),
                ],
                condition=Q(status="AVAILABLE"),
            ),
        ]
        indexes = [
            models.Index(fields=["start"], condition=Q(status="AVAILABLE"), name="slot_available_start_idx"),
            models.Index(fields=["host", "start"], name="slot_host_start_idx"),
        ]

    def __str__(self) -> str:
        return f"Slot #{self.pk} {self.title or self.specialization or ''} {self.start:%Y-%m-%d %H:%M}".strip()


class SlotBooking(Claim, models.Model):
    class Status(models.TextChoices):
        PENDING = "PENDING", "Pending"
        CONFIRMED = "CONFIRMED", "Confirmed"
        CANCELLED = "CANCELLED", "Cancelled"
        EXPIRED = "EXPIRED", "Expired"

    STATE_FIELD, HELD, CONFIRMED = "status", Status.PENDING, Status.CONFIRMED
    BLOCKING_STATES = [Status.PENDING, Status.CONFIRMED]
    TRANSITIONS = {
        Status.PENDING: {Status.CONFIRMED, Status.CANCELLED, Status.EXPIRED},
        Status.CONFIRMED: {Status.CANCELLED},
    }

    slot = models.ForeignKey(Slot, on_delete=models.PROTECT, related_name="bookings")
    guest = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="slot_bookings")
    # The booking's own time: its slot's (which never changes, docs/contract.md §6), kept on the row so that
    # ``slotbooking_guest_no_overlap`` can state the guest's rule without a join.
    start = models.DateTimeField()
    end = models.DateTimeField()
    seats = models.PositiveIntegerField(default=1)
    status = models.CharField(max_length=9, choices=Status.choices, default=Status.CONFIRMED)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="When a PENDING hold lapses")
    reason = models.CharField(max_length=500, blank=True, help_text="Why it was cancelled")
    metadata = models.JSONField(default=dict, blank=True)
    rescheduled_from = models.OneToOneField(
        "self", on_delete=models.PROTECT, null=True, blank=True, related_name="rescheduled_as"
    )
    idempotency_key = models.CharField(max_length=255, blank=True, help_text="Idempotency key of the request")
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    reminded_at = models.DateTimeField(null=True, blank=True, help_text="When its reminder was sent")

    objects = ClaimQuerySet.as_manager()
    with_host: int  # annotated by a reschedule's lock (slots.services), not a column

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["PENDING", "CONFIRMED", "CANCELLED", "EXPIRED"]),
                name="slotbooking_status_valid",
            ),
            models.CheckConstraint(condition=Q(seats__gte=1), name="slotbooking_seats_positive"),
            models.CheckConstraint(
                condition=~Q(status="PENDING") | Q(expires_at__isnull=False), name="slotbooking_pending_expires"
            ),
            models.CheckConstraint(condition=Q(end__gt=F("start")), name="slotbooking_ends_after_start"),
            # A guest is never in two places at once (docs/contract.md §2.1, ADR 0014). Two held or confirmed
            # bookings of one guest clash when their times overlap *and* they are alive at the same time:
            # a hold lives from its creation to its expiry, a confirmed booking from its creation on. So an
            # overdue hold, free for everyone before any job flips it (§2.2), never blocks a booking created
            # after its expiry, and the constraint needs no clock.
            ExclusionConstraint(
                name="slotbooking_guest_no_overlap",
                index_type="GIST",
                expressions=[
                    (Int8Range(F("guest_id"), F("guest_id"), Value("[]")), RangeOperators.OVERLAPS),
                    (TsTzRange(F("start"), F("end"), Value("[)")), RangeOperators.OVERLAPS),
                    (Alive(), RangeOperators.OVERLAPS),
                ],
                condition=Q(status__in=["PENDING", "CONFIRMED"]),
            ),
        ]
        indexes = [
            models.Index(fields=["expires_at"], condition=Q(status="PENDING"), name="slotbooking_pending_expiry_idx"),
            models.Index(fields=["guest", "status"], name="slotbooking_guest_status_idx"),
            models.Index(fields=["slot", "status"], name="slotbooking_slot_status_idx"),
            models.Index(fields=["created_at"], name="slotbooking_created_idx"),
            # The reminder job's range: the confirmed bookings not reminded yet, by start (core.reminders).
            models.Index(
                fields=["start"],
                condition=Q(status="CONFIRMED", reminded_at__isnull=True),
                name="slotbooking_unreminded_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"Booking #{self.pk} ({self.status})"


class Availability(models.Model):
    """When a host can be booked (docs/contract.md §6): weekly hours and date overrides, wall-clock times in
    ``time_zone``. Written only by ``slots.services.slots.availability_set``, with what ``slots.availability``
    checked (the shapes below); the free-time search (``slots.selectors.free_times``) reads it.

    ``weekly``: ``[{"weekday": 0-6 (Monday 0), "start": "HH:MM", "end": "HH:MM"}, …]``, several windows a
    day, never overlapping; ``overrides``: ``[{"date": "YYYY-MM-DD", "windows": [{"start", "end"}, …]}, …]``
    replacing that date's weekly hours (no windows: a day off); ``durations``: the appointment lengths
    offered, in minutes. An end of ``24:00`` is the end of the day.
    """

    host = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, primary_key=True, related_name="availability"
    )
    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="+")
    time_zone = models.CharField(max_length=64, help_text="An IANA zone, e.g. Europe/Berlin")
    weekly = models.JSONField(default=list, blank=True)
    overrides = models.JSONField(default=list, blank=True)
    durations = models.JSONField(default=list, help_text="Appointment lengths offered, in minutes")
    minimum_notice_minutes = models.PositiveIntegerField(default=0)
    buffer_minutes = models.PositiveIntegerField(default=0, help_text="Kept free around every appointment")
    updated_at = models.DateTimeField()
    # Annotated by an appointment's read after its locks (slots.services.appointments._hours_and_rules), not columns.
    guest_active: int
    guest_with_host: int
    guest_clash: dict | None  # the guest's first active booking overlapping the interval: {id, start, end}
    host_time: list[list]  # what takes the host's time near it: [slot id, start, end, blocked from, until]
    overdue_appointments: list[list]  # [booking id, slot id, start, end, blocked from, until]

    class Meta:
        verbose_name_plural = "availabilities"
        constraints = [
            models.CheckConstraint(
                condition=Q(buffer_minutes__lte=24 * 60, minimum_notice_minutes__lte=366 * 24 * 60),
                name="availability_minutes_bounded",
            ),
        ]

    def __str__(self) -> str:
        return f"Availability of host #{self.host_id} ({self.time_zone})"
