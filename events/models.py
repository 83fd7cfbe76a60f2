"""Events, their seats, and the claims on those seats (docs/contract.md §5).

A hold group is one user's all-or-nothing hold on several seats of one event; confirming it makes it a
booking (``booking_group_id``). Each seat it covers has a ``SeatClaim`` row that mirrors the group's
state, so one partial unique index (``seat_claim_one_active_per_seat``) can say "no seat in two active
claims" without a trigger.
"""

from __future__ import annotations

import re
import uuid

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import F, Q

from core.claims import Claim, ClaimQuerySet
from core.organisations.models import Organisation

CLAIM_STATES = ["HELD", "CONFIRMED", "RELEASED", "EXPIRED", "CANCELLED"]


class Event(models.Model):
    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="+")
    name = models.CharField(max_length=255)
    event_date = models.DateTimeField()
    location = models.CharField(max_length=255)
    total_seats = models.PositiveIntegerField(help_text="How many seats were generated; fixed after creation")
    sales_open = models.BooleanField(default=True)
    hold_minutes = models.PositiveSmallIntegerField(default=5, help_text="How long a seat hold lasts (1-60)")
    # The admission queue of an on-sale (docs/decisions/0017-admission-queue.md): while it is on, a seat
    # hold needs the X-Queue-Token of an admitted entry; the beat job admits this many a minute, in order.
    queue_enabled = models.BooleanField(default=False, help_text="Holds need an admission from the queue")
    admitted_per_minute = models.PositiveIntegerField(
        default=60,
        validators=[MinValueValidator(1), MaxValueValidator(10_000)],
        help_text="How many people in the queue are admitted per minute (1-10000)",
    )
    admission_window_minutes = models.PositiveSmallIntegerField(
        default=10,
        validators=[MinValueValidator(1), MaxValueValidator(120)],
        help_text="How long an admitted person may hold seats (1-120 minutes)",
    )
    # A counter, kept by the services in the transaction of each confirm / cancel, so that reading the
    # counts never has to count the booked seats: it costs the same at 0 % and at 100 % sold.
    confirmed_seats = models.PositiveIntegerField(default=0, editable=False)
    # The waiting list (docs/decisions/0016-waiting-list.md): off, nobody may join; on by default.
    waitlist_enabled = models.BooleanField(default=True, help_text="Whether users may join the waiting list")
    # Another counter: the WAITING entries of the event, moved under the event's row lock by every join,
    # leave and offer. Every seat hold reads it in its lock statement (no extra round trip): while it is
    # above 0, seats go to the list, and public holds are refused.
    waiting_count = models.PositiveIntegerField(default=0, editable=False)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    held_seats: int  # annotated by selectors.events_with_counts, not a column
    admitted: bool  # read by the seat hold's lock statement (core.locking), not a column

    class Meta:
        ordering = ["event_date", "id"]
        constraints = [
            models.CheckConstraint(condition=Q(total_seats__gte=1), name="event_total_seats_positive"),
            models.CheckConstraint(
                condition=Q(hold_minutes__gte=1, hold_minutes__lte=60), name="event_hold_minutes_range"
            ),
            models.CheckConstraint(
                condition=Q(confirmed_seats__gte=0, confirmed_seats__lte=F("total_seats")),
                name="event_confirmed_within_total",
            ),
            models.CheckConstraint(condition=Q(waiting_count__gte=0), name="event_waiting_count_not_negative"),
            models.CheckConstraint(
                condition=Q(admitted_per_minute__gte=1, admitted_per_minute__lte=10_000),
                name="event_admitted_per_minute_range",
            ),
            models.CheckConstraint(
                condition=Q(admission_window_minutes__gte=1, admission_window_minutes__lte=120),
                name="event_admission_window_range",
            ),
        ]
        indexes = [models.Index(fields=["event_date"], name="event_date_idx")]

    def __str__(self) -> str:
        return f"#{self.pk} {self.name}"

    @property
    def available_seats(self) -> int:
        """Needs ``held_seats`` from ``selectors.events_with_counts`` (same statement, same snapshot)."""
        return self.total_seats - self.confirmed_seats - self.held_seats


class Seat(models.Model):
    """One seat. Plain layouts are one row: section "", row 1, codes S1…Sn."""

    # No index of its own: both unique indexes below lead with the event. A single-column one let the
    # planner pick it for a hold by seat code on a just-created event (before ANALYZE saw its seats)
    # and filter every seat of the event; without it the (event, code) index is the only choice.
    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="seats", db_index=False)
    code = models.CharField(max_length=50)
    section = models.CharField(max_length=20, blank=True)
    row = models.PositiveIntegerField()
    number = models.PositiveIntegerField()

    class Meta:
        ordering = ["event", "section", "row", "number"]
        constraints = [
            models.UniqueConstraint(fields=["event", "code"], name="seat_code_unique_per_event"),
            # Also the order "best available" walks in.
            models.UniqueConstraint(
                fields=["event", "section", "row", "number"], name="seat_position_unique_per_event"
            ),
            # The target of the composite foreign key from SeatClaim (migration 0002): a claim's seat is
            # a seat of the claim's event.
            models.UniqueConstraint(fields=["id", "event"], name="seat_id_event_unique"),
            models.CheckConstraint(condition=Q(row__gte=1, number__gte=1), name="seat_position_positive"),
        ]

    def __str__(self) -> str:
        return self.code


class SeatHoldGroup(Claim, models.Model):
    """Several seats held together by one user: HELD → CONFIRMED → CANCELLED, or HELD → RELEASED /
    EXPIRED. ``id`` is the API's ``holdGroupId``; ``booking_group_id`` is set on confirm."""

    class State(models.TextChoices):
        HELD = "HELD", "Held"
        CONFIRMED = "CONFIRMED", "Confirmed"
        RELEASED = "RELEASED", "Released"
        EXPIRED = "EXPIRED", "Expired"
        CANCELLED = "CANCELLED", "Cancelled"

    STATE_FIELD, HELD, CONFIRMED = "state", State.HELD, State.CONFIRMED
    BLOCKING_STATES = [State.HELD, State.CONFIRMED]
    TRANSITIONS = {
        State.HELD: {State.CONFIRMED, State.RELEASED, State.EXPIRED},
        State.CONFIRMED: {State.CANCELLED},
    }

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    booking_group_id = models.UUIDField(null=True, blank=True, unique=True)
    event = models.ForeignKey(Event, on_delete=models.PROTECT, related_name="hold_groups")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="seat_hold_groups")
    state = models.CharField(max_length=9, choices=State.choices, default=State.HELD)
    seat_count = models.PositiveSmallIntegerField()
    expires_at = models.DateTimeField()
    idempotency_key = models.CharField(max_length=255, blank=True, help_text="Idempotency key of the request")
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    confirmed_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    reminded_at = models.DateTimeField(null=True, blank=True, help_text="When the booking's reminder was sent")

    objects = ClaimQuerySet.as_manager()
    # Set by SeatHolds on a group it has just written, not columns: its seats, and their codes.
    seats: list[Seat]
    seat_codes: list[str]
    expires_in: int  # seconds left, set by the API view that renders a hold
    waiting_events: list[int]  # set by SeatHolds on a group it moved: the events to offer its freed seats of

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(state__in=CLAIM_STATES), name="seat_hold_group_state_valid"),
            models.CheckConstraint(
                condition=Q(seat_count__gte=1, seat_count__lte=50), name="seat_hold_group_seat_count_range"
            ),
            models.CheckConstraint(
                condition=Q(expires_at__gt=F("created_at")), name="seat_hold_group_expires_after_creation"
            ),
            # A booking id exactly when the group was confirmed (and maybe cancelled since).
            models.CheckConstraint(
                condition=Q(state__in=["CONFIRMED", "CANCELLED"], booking_group_id__isnull=False)
                | Q(state__in=["HELD", "RELEASED", "EXPIRED"], booking_group_id__isnull=True),
                name="seat_hold_group_booking_id_iff_confirmed",
            ),
        ]
        indexes = [
            models.Index(fields=["expires_at"], condition=Q(state="HELD"), name="hold_group_held_expiry_idx"),
            models.Index(fields=["user", "-created_at"], name="seat_hold_group_user_idx"),
            models.Index(fields=["event", "state"], name="seat_hold_group_event_idx"),
        ]

    def __str__(self) -> str:
        return f"Hold group {self.pk} ({self.state})"


class SeatClaim(Claim, models.Model):
    """One seat of a hold group; ``state`` and ``expires_at`` mirror the group's (and so its states and
    transitions: the rows of ``claims.Rows`` read the same on both)."""

    STATE_FIELD, HELD, CONFIRMED = "state", SeatHoldGroup.State.HELD, SeatHoldGroup.State.CONFIRMED
    TRANSITIONS = SeatHoldGroup.TRANSITIONS

    group = models.ForeignKey(SeatHoldGroup, on_delete=models.CASCADE, related_name="claims")
    event = models.ForeignKey(Event, on_delete=models.PROTECT, related_name="+")
    seat = models.ForeignKey(Seat, on_delete=models.PROTECT, related_name="claims")
    state = models.CharField(max_length=9, choices=SeatHoldGroup.State.choices, default=SeatHoldGroup.State.HELD)
    expires_at = models.DateTimeField()

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["seat"], condition=Q(state__in=["HELD", "CONFIRMED"]), name="seat_claim_one_active_per_seat"
            ),
            models.UniqueConstraint(fields=["group", "seat"], name="seat_claim_seat_once_per_group"),
            models.CheckConstraint(condition=Q(state__in=CLAIM_STATES), name="seat_claim_state_valid"),
        ]
        indexes = [
            # The counts: live holds of an event (bounded by recent activity, not by seats sold).
            models.Index(fields=["event", "expires_at"], condition=Q(state="HELD"), name="seat_claim_held_idx"),
            # The seat map and best-available: the active claims of an event.
            models.Index(
                fields=["event", "seat"], condition=Q(state__in=["HELD", "CONFIRMED"]), name="seat_claim_active_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"Claim on seat {self.seat_id} ({self.state})"


class WaitlistEntry(models.Model):
    """One user waiting for ``quantity`` seats of an event: WAITING → OFFERED (a hold group is made for
    them: ``hold_group``) → ACCEPTED (they confirmed it) or EXPIRED (it lapsed or they released it);
    WAITING → LEFT (they left, or an operator removed them). The join order is ``id`` (a sequence: the
    database decides it, not a clock)."""

    class State(models.TextChoices):
        WAITING = "WAITING", "Waiting"
        OFFERED = "OFFERED", "Offered"
        ACCEPTED = "ACCEPTED", "Accepted"
        EXPIRED = "EXPIRED", "Expired"
        LEFT = "LEFT", "Left"

    LIVE_STATES = [State.WAITING, State.OFFERED]

    id = models.BigAutoField(primary_key=True)
    event = models.ForeignKey(Event, on_delete=models.PROTECT, related_name="waitlist_entries")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="waitlist_entries")
    quantity = models.PositiveSmallIntegerField()
    state = models.CharField(max_length=8, choices=State.choices, default=State.WAITING)
    hold_group = models.OneToOneField(
        SeatHoldGroup, on_delete=models.PROTECT, null=True, blank=True, related_name="waitlist_entry"
    )
    offer_expires_at = models.DateTimeField(null=True, blank=True)
    idempotency_key = models.CharField(max_length=255, blank=True, help_text="Idempotency key of the request")
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        ordering = ["event", "id"]
        verbose_name_plural = "waitlist entries"
        constraints = [
            models.CheckConstraint(
                condition=Q(state__in=["WAITING", "OFFERED", "ACCEPTED", "EXPIRED", "LEFT"]),
                name="waitlist_entry_state_valid",
            ),
            models.CheckConstraint(
                condition=Q(quantity__gte=1, quantity__lte=50), name="waitlist_entry_quantity_range"
            ),
            models.UniqueConstraint(
                fields=["event", "user"],
                condition=Q(state__in=["WAITING", "OFFERED"]),
                name="waitlist_entry_one_live_per_user_per_event",
            ),
            # An offer is a hold group: it has one from the moment it is offered, and never before.
            models.CheckConstraint(
                condition=Q(state__in=["WAITING", "LEFT"], hold_group__isnull=True, offer_expires_at__isnull=True)
                | Q(
                    state__in=["OFFERED", "ACCEPTED", "EXPIRED"],
                    hold_group__isnull=False,
                    offer_expires_at__isnull=False,
                ),
                name="waitlist_entry_offered_iff_hold_group",
            ),
        ]
        indexes = [
            # The head of an event's list, and a position: the WAITING entries ahead of one, by id.
            models.Index(fields=["event", "id"], condition=Q(state="WAITING"), name="waitlist_entry_waiting_idx"),
            models.Index(fields=["user", "-created_at"], name="waitlist_entry_user_idx"),
        ]

    position: int | None  # set by the services on an entry they return (``waitlist_position``)

    def __str__(self) -> str:
        return f"Waitlist entry #{self.pk} ({self.state})"


class EventQueue(models.Model):
    """One event's admission queue: the numbers it has given out and how far it has admitted.

    ``joined`` is the queue's sequence: a join takes the next number by moving it, under this row's
    lock, so numbers are gapless and committed in the order they were given (a join holds the lock to
    its commit). Every entry numbered up to ``admitted_through`` has been admitted; those after it
    wait, so a waiting entry's position is ``number - admitted_through``: one row read, no count.
    ``credit_from``: admissions accrue from this moment at the event's rate (``events.queue.admissions_due``).
    """

    event = models.OneToOneField(Event, on_delete=models.CASCADE, primary_key=True, related_name="queue")
    joined = models.BigIntegerField(default=0, help_text="The last number given out")
    admitted_through = models.BigIntegerField(default=0, help_text="Every entry up to this number is admitted")
    credit_from = models.DateTimeField()

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(admitted_through__gte=0, admitted_through__lte=F("joined")),
                name="event_queue_admitted_within_joined",
            ),
        ]

    def __str__(self) -> str:
        return f"Queue of event {self.event_id}"


QUEUE_STATES = ["WAITING", "ADMITTED", "EXPIRED"]
QUEUE_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")  # what events.queue issues (URL-safe base64), and no more


class QueueEntry(models.Model):
    """One user's place in an event's admission queue: WAITING → ADMITTED (for the event's admission
    window) → EXPIRED once the window has passed. ``number`` is its place in join order, given by the
    queue's sequence (``EventQueue.joined``); ``token`` is what the client polls with and sends as
    ``X-Queue-Token`` on its seat holds."""

    class State(models.TextChoices):
        WAITING = "WAITING", "Waiting"
        ADMITTED = "ADMITTED", "Admitted"
        EXPIRED = "EXPIRED", "Expired"

    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="queue_entries")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="queue_entries")
    token = models.CharField(max_length=64, unique=True)
    number = models.BigIntegerField()
    state = models.CharField(max_length=8, choices=State.choices, default=State.WAITING)
    joined_at = models.DateTimeField()
    admitted_at = models.DateTimeField(null=True, blank=True)
    admitted_until = models.DateTimeField(null=True, blank=True)
    position: int  # set by events.queue from the queue's admitted_through, not a column
    through: int  # annotated by events.queue.queue_entry_read: the queue's admitted_through

    class Meta:
        ordering = ["event", "number"]
        verbose_name_plural = "queue entries"
        constraints = [
            models.UniqueConstraint(fields=["event", "user"], name="queue_entry_one_per_user_per_event"),
            # Also the index admission walks: the next numbers of one event.
            models.UniqueConstraint(fields=["event", "number"], name="queue_entry_number_unique_per_event"),
            models.CheckConstraint(condition=Q(number__gte=1), name="queue_entry_number_positive"),
            models.CheckConstraint(condition=Q(state__in=QUEUE_STATES), name="queue_entry_state_valid"),
            # Admitted (and maybe lapsed since) exactly when it has an admission window.
            models.CheckConstraint(
                condition=Q(state="WAITING", admitted_at__isnull=True, admitted_until__isnull=True)
                | Q(
                    state__in=["ADMITTED", "EXPIRED"],
                    admitted_at__isnull=False,
                    admitted_until__isnull=False,
                    admitted_until__gt=F("admitted_at"),
                ),
                name="queue_entry_window_iff_admitted",
            ),
        ]
        indexes = [
            # The admission job's lapsed admissions: bounded by who is admitted now, not by the queue.
            models.Index(
                fields=["event", "admitted_until"], condition=Q(state="ADMITTED"), name="queue_entry_admitted_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.number} in the queue of event {self.event_id} ({self.state})"

    def state_at(self, now) -> str:
        """The state as of ``now``: an admission whose window has passed reads as EXPIRED before the job
        has written it."""
        if self.state == self.State.ADMITTED and self.admitted_until is not None and self.admitted_until <= now:
            return self.State.EXPIRED
        return self.state
