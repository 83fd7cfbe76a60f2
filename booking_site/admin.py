"""Admin building blocks every domain shares, and the pages of the platform's own models."""

from collections.abc import Callable
from typing import TYPE_CHECKING

from django.contrib import admin, messages
from django.db.models import Model
from django.template.loader import render_to_string
from django.utils.safestring import mark_safe

from booking_site.audit.services import trail
from booking_site.engine import Cap
from booking_site.errors import DomainError
from booking_site.models import IdempotencyRecord


class ReadOnlyAdmin(admin.ModelAdmin):
    """An admin page for rows that only the services write: operators look, never edit."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class AuditTrailMixin:
    """Adds a read-only "Audit trail" table to a change page: put "audit_trail" in ``readonly_fields``.
    A page whose trail belongs to something other than the row itself overrides ``get_audit_subject``."""

    def get_audit_subject(self, obj):
        return obj

    @admin.display(description="Audit trail")
    def audit_trail(self, obj):
        if obj is None or obj.pk is None:
            return "—"
        events = trail(self.get_audit_subject(obj))
        return mark_safe(render_to_string("admin/audit_trail.html", {"events": events}))


class ServiceActionsMixin:
    """Admin actions that call a service per selected row and tell the operator what was refused, and why."""

    if TYPE_CHECKING:  # from the ModelAdmin it is mixed into
        model: type[Model]
        message_user: Callable[..., None]

    def run_service(self, request, objects, call, verb: str) -> None:
        """Call ``call(obj)`` (one service call) for each object."""
        done, refused = 0, []
        for obj in objects:
            try:
                call(obj)
                done += 1
            except DomainError as error:
                refused.append(f"#{obj.pk}: {error.message}")
        if done:
            noun = self.model._meta.verbose_name if done == 1 else self.model._meta.verbose_name_plural
            self.message_user(request, f"{done} {noun} {verb}.", messages.SUCCESS)
        if refused:
            self.message_user(request, "Not changed: " + "; ".join(refused), messages.WARNING)


class ClaimAdmin(AuditTrailMixin, ServiceActionsMixin, admin.ModelAdmin):
    """A claim's pages (a reservation, a seat hold, a slot booking): rows are read-only, operators act
    through the actions, which call the services, and read the audit trail on the page. The list states
    the domain's ``cap`` (the most one user holds at once: docs/contract.md §2.7) above its rows."""

    cap: Cap | None = None
    change_list_template = "admin/claim_change_list.html"

    def changelist_view(self, request, extra_context=None):
        cap_note = self.cap.describe() if self.cap is not None else None
        return super().changelist_view(request, extra_context={"cap_note": cap_note, **(extra_context or {})})

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return obj is None and super().has_change_permission(request)  # the list's actions, not the form

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(IdempotencyRecord)
class IdempotencyRecordAdmin(ReadOnlyAdmin):
    list_display = ["id", "user", "key", "method", "path", "response_status", "created_at", "completed_at"]
    list_filter = ["method", "response_status", "created_at"]
    search_fields = ["=key", "user__email", "path"]
    list_select_related = ["user"]
