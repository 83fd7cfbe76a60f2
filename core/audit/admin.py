"""The audit trail in the admin: read-only, searchable by subject and request id."""

from django.contrib import admin
from django.utils.html import format_html

from core.admin import PlatformAdmin, ReadOnlyAdmin, pretty_json, short_id
from core.audit.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin, PlatformAdmin):
    list_display = ["id", "occurred_at", "subject", "event_type", "change", "actor_label", "request", "delivered_at"]
    list_filter = ["subject_type", "event_type", ("delivered_at", admin.EmptyFieldListFilter), "occurred_at"]
    search_fields = ["=subject_id", "=request_id", "actor_label"]
    date_hierarchy = "occurred_at"
    list_select_related = ["actor"]
    fields = [
        "occurred_at",
        "subject_type",
        "subject_id",
        "event_type",
        "from_state",
        "to_state",
        "actor",
        "actor_label",
        "request_id",
        "details",
        "delivered_at",
    ]
    readonly_fields = ["details"]

    @admin.display(description="Subject", ordering="subject_type")
    def subject(self, event):
        return format_html("{} {}", event.subject_type, short_id(event.subject_id))

    @admin.display(description="Change")
    def change(self, event):
        return f"{event.from_state or '—'} → {event.to_state or '—'}"

    @admin.display(description="Request id", ordering="request_id")
    def request(self, event):
        return short_id(event.request_id)

    @admin.display(description="Details")
    def details(self, event):
        return pretty_json(event.metadata)
