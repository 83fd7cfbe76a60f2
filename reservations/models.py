from django.conf import settings
from django.db import models
from django.db.models import Q

from core.claims import Claim, ClaimQuerySet
from core.organisations.models import Organisation


class Car(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "ACTIVE", "Active"
        INACTIVE = "INACTIVE", "Inactive"

    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="+")
    dealer_id = models.PositiveIntegerField(db_index=True)
    make = models.CharField(max_length=64, blank=True)
    model = models.CharField(max_length=64, blank=True)
    label = models.CharField(max_length=200)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.ACTIVE)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        constraints = [models.CheckConstraint(condition=Q(status__in=["ACTIVE", "INACTIVE"]), name="car_status_valid")]

    def __str__(self) -> str:
        return f"#{self.pk} {self.label}"


class Reservation(Claim, models.Model):
    class State(models.TextChoices):
        HELD = "HELD", "Held"
        CONFIRMED = "CONFIRMED", "Confirmed"
        CANCELLED = "CANCELLED", "Cancelled"
        EXPIRED = "EXPIRED", "Expired"

    STATE_FIELD, HELD, CONFIRMED = "state", State.HELD, State.CONFIRMED
    BLOCKING_STATES = [State.HELD, State.CONFIRMED]
    # HELD is the only state with a way out; the rest are terminal (docs/contract.md §4).
    TRANSITIONS = {State.HELD: {State.CONFIRMED, State.CANCELLED, State.EXPIRED}}

    car = models.ForeignKey(Car, on_delete=models.PROTECT, related_name="reservations")
    buyer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="reservations")
    state = models.CharField(max_length=9, choices=State.choices, default=State.HELD)
    expires_at = models.DateTimeField()
    idempotency_key = models.CharField(max_length=255, blank=True, help_text="Idempotency key of the request")
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    objects = ClaimQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["car"], condition=Q(state__in=["HELD", "CONFIRMED"]), name="reservation_one_active_per_car"
            ),
            models.CheckConstraint(
                condition=Q(state__in=["HELD", "CONFIRMED", "CANCELLED", "EXPIRED"]), name="reservation_state_valid"
            ),
            models.CheckConstraint(
                condition=Q(expires_at__gt=models.F("created_at")), name="reservation_expires_after_creation"
            ),
        ]
        indexes = [
            models.Index(fields=["expires_at"], condition=Q(state="HELD"), name="reservation_held_expiry_idx"),
            models.Index(fields=["buyer", "-id"], name="reservation_buyer_idx"),
        ]

    def __str__(self) -> str:
        return f"Reservation #{self.pk} ({self.state})"
