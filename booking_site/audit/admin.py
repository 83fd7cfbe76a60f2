"""The audit trail in the admin: read-only, searchable by subject and request id."""

from django.contrib import admin

from booking_site.admin import ReadOnlyAdmin
from booking_site.audit.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "occurred_at",
        "subject_type",
        "subject_id",
        "event_type",
        "from_state",
        "to_state",
        "actor_label",
        "request_id",
        "delivered_at",
    ]
    list_filter = ["subject_type", "event_type", ("delivered_at", admin.EmptyFieldListFilter), "occurred_at"]
    search_fields = ["=subject_id", "=request_id", "actor_label"]
    date_hierarchy = "occurred_at"
    list_select_related = ["actor"]
