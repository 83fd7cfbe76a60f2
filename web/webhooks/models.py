"""Webhook endpoints, and the delivery of audit events to them (docs/contract.md §3.7)."""

from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q
from django.utils import timezone

from core.audit.models import AuditEvent
from core.organisations.models import Organisation


class WebhookEndpoint(models.Model):
    """A subscriber of one organisation: where to POST, which of its event types (none listed: all), and the
    secret that signs. It receives only its organisation's events (docs/contract.md §3.7)."""

    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="webhook_endpoints")
    url = models.URLField(max_length=2000)
    description = models.CharField(max_length=500, blank=True)
    event_types = ArrayField(
        models.CharField(max_length=64), default=list, blank=True, help_text="Empty: every event type."
    )
    active = models.BooleanField(default=True)
    # Standard Webhooks form: "whsec_" + base64 of the key. Shown once, on creation or rotation.
    secret = models.CharField(max_length=100)
    # After a rotation the old secret signs too (a second signature) until previous_secret_expires_at.
    previous_secret = models.CharField(max_length=100, blank=True)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_failure_at = models.DateTimeField(null=True, blank=True)
    # The first failure since the last success: failing for WEBHOOK_DISABLE_AFTER_DAYS disables the endpoint.
    failing_since = models.DateTimeField(null=True, blank=True)
    disabled_reason = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.url

    def signing_secrets(self, now) -> list[str]:
        """The secrets that sign a message sent at ``now``: the current one, and the previous one
        during its grace period."""
        if self.previous_secret and self.previous_secret_expires_at and self.previous_secret_expires_at > now:
            return [self.secret, self.previous_secret]
        return [self.secret]


class WebhookDelivery(models.Model):
    """One audit event (or a test message) for one endpoint, until it is DELIVERED or FAILED.

    ``next_attempt_at`` is both the schedule and the lease: a job that takes a delivery moves it past
    the attempt's longest possible duration before sending, so a second job leaves it alone and a
    worker killed mid-attempt lets it come due again (at least once).
    """

    class Status(models.TextChoices):
        PENDING = "PENDING", "Pending"
        DELIVERED = "DELIVERED", "Delivered"
        FAILED = "FAILED", "Failed"

    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    event = models.ForeignKey(AuditEvent, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    event_type = models.CharField(max_length=64)
    # The subject, for the order per (endpoint, subject): copied from the event, "" for a test message.
    subject_type = models.CharField(max_length=32, blank=True)
    subject_id = models.CharField(max_length=64, blank=True)
    status = models.CharField(max_length=9, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "webhook deliveries"
        constraints = [
            models.UniqueConstraint(
                fields=["endpoint", "event"], condition=Q(event__isnull=False), name="webhook_delivery_one_per_event"
            ),
            models.CheckConstraint(
                condition=Q(status="PENDING", next_attempt_at__isnull=False) | ~Q(status="PENDING"),
                name="webhook_delivery_pending_is_scheduled",
            ),
        ]
        indexes = [
            models.Index(
                fields=["next_attempt_at", "id"], condition=Q(status="PENDING"), name="webhook_delivery_due_idx"
            ),
            models.Index(
                fields=["endpoint", "subject_type", "subject_id", "event"],
                condition=Q(status="PENDING"),
                name="webhook_delivery_order_idx",
            ),
            models.Index(fields=["endpoint", "id"], name="webhook_delivery_endpoint_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} → {self.endpoint_id}"

    @property
    def message_id(self) -> str:
        """``webhook-id``: the same on every attempt of this event to this endpoint."""
        return f"msg_{self.pk}"


class WebhookAttempt(models.Model):
    """One POST of a delivery: what came back, how long it took."""

    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_set")
    attempted_at = models.DateTimeField(default=timezone.now)
    status_code = models.PositiveIntegerField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(default=0)
    error = models.CharField(max_length=500, blank=True)
    response_snippet = models.TextField(blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["attempted_at"], name="webhook_attempt_time_idx")]

    def __str__(self) -> str:
        return f"attempt {self.pk} of delivery {self.delivery_id}"

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300
