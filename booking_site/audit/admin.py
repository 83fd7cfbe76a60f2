"""The audit trail in the admin: read-only everywhere, and a trail table for any claim's page."""

from django.contrib import admin
from django.template.loader import render_to_string
from django.utils.safestring import mark_safe

from booking_site.admin import ReadOnlyAdmin
from booking_site.audit.models import AuditEvent
from booking_site.audit.services import trail


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


class AuditTrailMixin:
    """Adds a read-only "Audit trail" table to a claim's change page: put "audit_trail" in
    ``readonly_fields`` (and a fieldset) of the ModelAdmin."""

    @admin.display(description="Audit trail")
    def audit_trail(self, obj):
        if obj is None or obj.pk is None:
            return "—"
        return mark_safe(render_to_string("admin/audit_trail.html", {"events": trail(obj)}))
