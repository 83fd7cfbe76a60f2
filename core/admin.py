"""Admin building blocks every domain shares, and the pages of the platform's own models."""

import json
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from django.contrib import admin, messages
from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import Model
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from core.audit.services import trail
from core.claims import EXPIRED, Claim, ClaimQuerySet
from core.errors import DomainError
from core.models import IdempotencyRecord
from core.policy import Cap


def pretty_json(value: Any) -> SafeString:
    """A JSON value as JSON — indented, keys sorted, monospace — not as a Python dict."""
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, cls=DjangoJSONEncoder)
    return format_html('<pre class="json">{}</pre>', text)


def short_id(value: Any) -> SafeString | None:
    """A UUID (or any long id) in a list column: its first 8 characters, the whole id on hover; None
    (the admin's "-") when there is none."""
    if value is None or value == "":
        return None
    text = str(value)
    return format_html("{}", text) if len(text) <= 12 else format_html('<span title="{}">{}…</span>', text, text[:8])


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
        events = [
            (event, pretty_json(event.metadata) if event.metadata else "")
            for event in trail(self.get_audit_subject(obj))
        ]
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


class StateFilter(admin.SimpleListFilter):
    """A claim list's "By state", as the State column reads: an overdue hold is EXPIRED, not HELD
    (docs/contract.md §2.2)."""

    title, parameter_name = "state", "state"

    def lookups(self, request, model_admin):
        return model_admin.model._meta.get_field(model_admin.model.STATE_FIELD).choices

    def queryset(self, request, queryset):
        return queryset.filter(effective_state=self.value()) if self.value() else queryset


class ClaimAdmin(AuditTrailMixin, ServiceActionsMixin, admin.ModelAdmin):
    """A claim's pages (a reservation, a seat hold, a slot booking): rows are read-only, operators act
    through the actions, which call the services, and read the audit trail on the page. Put "state_now"
    in the list and the page (the one state column), "hold_expires" for the expiry, and StateFilter in the
    filters. The list states the domain's ``cap`` (the most one user holds at once: docs/contract.md §2.7)
    above its rows, in words; its setting and the API's refusal are the note's help."""

    cap: Cap | None = None
    change_list_template = "admin/claim_change_list.html"

    def changelist_view(self, request, extra_context=None):
        cap = {"cap_note": self.cap.describe(), "cap_help": self.cap.help_text()} if self.cap is not None else {}
        return super().changelist_view(request, extra_context={**cap, **(extra_context or {})})

    def get_queryset(self, request):
        claims = cast(ClaimQuerySet, super().get_queryset(request))  # every claim model's manager
        return claims.with_effective_state(now=timezone.now())

    @admin.display(description="State", ordering="effective_state")
    def state_now(self, claim: Claim) -> str:
        """The state as clients see it. An overdue hold reads EXPIRED, as in the API, and says that the
        expiry job has not flipped its row yet (the stored state is still the hold's)."""
        now = timezone.now()
        if not claim.is_overdue(now):
            return claim.current_state
        assert claim.expires_at is not None  # an overdue claim has an expiry
        late = timezone.localtime(claim.expires_at)
        return format_html(
            '<span title="Expired at {}; the expiry job has not flipped the row from {} yet. The seat, car or '
            'slot is free for everyone.">{} <small>(overdue, sweep pending)</small></span>',
            f"{late:%Y-%m-%d %H:%M:%S}",
            claim.current_state,
            EXPIRED,
        )

    @admin.display(description="Hold expires", ordering="expires_at")
    def hold_expires(self, claim: Claim) -> datetime | None:
        """When the hold ends, or ended; nothing once the claim was confirmed (its expiry no longer applies)."""
        return claim.expires_at if claim.current_state in (claim.HELD, EXPIRED) else None

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
