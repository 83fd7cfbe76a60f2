from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.utils import timezone


class AuditEvent(models.Model):
    """One state change of one subject (docs/contract.md §3.5), written in the transaction that made the change.

    Append-only: a database trigger (migration 0002) refuses any UPDATE that touches more than the
    delivery column, so the trail cannot be rewritten. Rows with ``delivered_at`` null are the outbox
    that webhook delivery drains.
    """

    occurred_at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    actor_label = models.CharField(max_length=64, help_text='"user:<id>" or "system:<job>"')
    subject_type = models.CharField(max_length=32)
    subject_id = models.CharField(max_length=64)
    event_type = models.CharField(max_length=32)
    from_state = models.CharField(max_length=16, blank=True)
    to_state = models.CharField(max_length=16, blank=True)
    metadata = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)
    request_id = models.CharField(max_length=128, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["subject_type", "subject_id", "id"], name="audit_subject_idx"),
            models.Index(fields=["id"], condition=models.Q(delivered_at__isnull=True), name="audit_undelivered_idx"),
        ]
        constraints = [
            # A booking is reminded once (core.reminders): the backstop under the reminder job's guard.
            models.UniqueConstraint(
                fields=["subject_type", "subject_id"],
                condition=models.Q(event_type="REMINDED"),
                name="audit_one_reminder_per_subject",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.subject_type} {self.subject_id} {self.event_type}"
