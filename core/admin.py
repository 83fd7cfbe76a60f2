"""Admin building blocks every domain shares, and the pages of the platform's own models."""

import json
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import Model, QuerySet
from django.http import Http404, HttpRequest
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from core.audit.services import trail
from core.claims import EXPIRED, Claim, ClaimQuerySet
from core.errors import DomainError
from core.models import IdempotencyRecord
from core.organisations import access
from core.organisations.models import Organisation
from core.organisations.roles import Role
from core.policy import Cap

if TYPE_CHECKING:  # the user model, settings.AUTH_USER_MODEL, as django-stubs resolves it: the core imports no app's
    from django.contrib.auth.models import _User as User


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


def caller(request: HttpRequest) -> "User":
    """The user of an admin page: staff and signed in (``admin_view`` lets no one else in). The core's
    ``web.accounts.services.request_user``, which the core may not import (ADR 0024)."""
    return cast("User", request.user)


def organisation_choices(request, role: Role, field: forms.ModelChoiceField) -> forms.ModelChoiceField:
    """``field``, the organisation of a new row, offering the organisations in which the caller may do what
    needs ``role`` (a superuser: every one). When there is one, it is the row's, shown and not asked: the
    form takes it whatever a request sends (docs/contract.md §2.6: inferred when the caller has one)."""
    organisations = access.scope(caller(request), None, role)
    field.queryset = (
        Organisation.objects.all() if organisations is None else Organisation.objects.filter(pk__in=organisations)
    )
    only = list(field.queryset.values_list("pk", flat=True)[:2])
    if len(only) == 1:
        field.initial, field.disabled, field.empty_label = only[0], True, None
    return field


class ServiceModelForm(forms.ModelForm):
    """A model form the admin saves through a service: ``clean`` calls ``write`` (the service checks and writes,
    so its refusal shows on the form) and keeps the row it wrote as ``written``; the model's own validation of
    the unsaved instance is skipped, and the admin's ``save_model`` takes the row over (``adopt``)."""

    request: HttpRequest | None = None  # set by the ModelAdmin's get_form

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.written: Model | None = None

    def _post_clean(self):
        pass  # the service validates and writes; no model-level validation of an unsaved instance

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        if self.errors:
            return data
        assert self.request is not None  # the admin sets it before the form is used
        try:
            self.written = self.write(data, actor=caller(self.request))
        except DomainError as error:
            self.refused(error)
        return data

    def write(self, data: dict[str, Any], *, actor: "User") -> Model:
        raise NotImplementedError

    def refused(self, error: DomainError) -> None:
        """Show the service's refusal on the form (the whole form's error unless a subclass places it)."""
        raise forms.ValidationError(error.message) from None

    def adopt(self, obj: Model) -> None:
        """Make the admin's ``obj`` the row ``write`` wrote, so that the admin does not save it again."""
        assert self.written is not None  # clean() wrote it, or the admin would not save
        for field in type(self.written)._meta.concrete_fields:
            setattr(obj, field.attname, getattr(self.written, field.attname))
        obj._state.adding = False


class PlatformAdmin(admin.ModelAdmin):
    """A page of the platform's own rows (users, the audit trail, idempotency records), which belong to no
    one organisation: superusers only (docs/decisions/0025-organisations.md)."""

    def has_module_permission(self, request):
        return caller(request).is_superuser

    def has_view_permission(self, request, obj=None):
        return caller(request).is_superuser and super().has_view_permission(request, obj)

    def has_add_permission(self, request):
        return caller(request).is_superuser and super().has_add_permission(request)

    def has_change_permission(self, request, obj=None):
        return caller(request).is_superuser and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return caller(request).is_superuser and super().has_delete_permission(request, obj)


class OrganisationScoped(admin.ModelAdmin):
    """An admin page of one organisation's rows (docs/contract.md §2.6): a superuser sees and acts on every
    row; a member only on their organisations' rows, each as far as their role allows
    (``core.organisations.roles``): ``view_role`` to see the list and the pages, ``change_role`` to add,
    change and run the list's actions. Another organisation's row is absent from the list, its pages are
    404 (its existence is not revealed), its id in an action is ignored; the filters, the exports and the
    related lists read the same queryset. Declare ``organisation_field``, the lookup from the model to its
    organisation (``"organisation"``, ``"car__organisation"``). It replaces Django's model permissions, so it
    comes last before ``ModelAdmin`` among a page's bases: what a page forbids itself (``ReadOnlyAdmin``, a
    claim's form) it forbids before asking the role."""

    organisation_field = "organisation"
    view_role = Role.STAFF
    change_role = Role.MANAGER

    def scope(self, request, rows: QuerySet) -> QuerySet:
        """``rows`` narrowed to the organisations in which the caller may see them (``view_role``)."""
        organisations = access.scope(caller(request), None, self.view_role)
        return rows if organisations is None else rows.filter(**{f"{self.organisation_field}__in": organisations})

    def get_queryset(self, request):
        return self.scope(request, super().get_queryset(request))

    def get_readonly_fields(self, request, obj=None):
        """A row stays in its organisation: the field is chosen on the add page only."""
        readonly = list(super().get_readonly_fields(request, obj))
        return (
            [*readonly, "organisation"] if obj is not None and self.organisation_field == "organisation" else readonly
        )

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        field = super().formfield_for_foreignkey(db_field, request, **kwargs)
        if db_field.related_model is Organisation and field is not None:
            return organisation_choices(request, self.change_role, field)
        return field

    def get_object(self, request, object_id, from_field=None):
        """A row of the list, or 404: another organisation's row answers as one that does not exist."""
        obj = super().get_object(request, object_id, from_field)
        if obj is None:
            if not self.has_view_permission(request):  # a role that sees no such row anywhere: 403 whatever the id
                raise PermissionDenied
            raise Http404(f"No {self.opts.verbose_name} with the id {object_id}.")
        return obj

    def organisation_of(self, obj: Model) -> int:
        *path, last = self.organisation_field.split("__")
        for step in path:
            obj = getattr(obj, step)
        return getattr(obj, f"{last}_id")

    def may(self, request, role: Role, obj: Model | None = None) -> bool:
        """Whether the caller may do what needs ``role``: on ``obj``, in its organisation; on none, in any of
        theirs."""
        user = caller(request)
        if obj is None:
            return user.is_superuser or bool(access.organisation_ids(user, role))
        return access.may_act(user, self.organisation_of(obj), role)

    # Instead of Django's model permissions: a member holds none, their role says what they may do.
    def has_module_permission(self, request):
        return self.may(request, self.view_role)

    def has_view_permission(self, request, obj=None):
        return self.may(request, self.view_role, obj)

    def has_add_permission(self, request):
        return self.may(request, self.change_role)

    def has_change_permission(self, request, obj=None):
        return self.may(request, self.change_role, obj)

    def has_delete_permission(self, request, obj=None):
        return self.may(request, self.change_role, obj)


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


class ClaimAdmin(AuditTrailMixin, ServiceActionsMixin, OrganisationScoped):
    """A claim's pages (a reservation, a seat hold, a slot booking): rows are read-only, operators act
    through the actions, which call the services, and read the audit trail on the page. Put "state_now"
    in the list and the page (the one state column), "hold_expires" for the expiry, and StateFilter in the
    filters. The list states the domain's ``cap`` (the most one user holds at once: docs/contract.md §2.7)
    above its rows, in words; its setting and the API's refusal are the note's help."""

    cap: Cap | None = None
    change_role = Role.STAFF  # holds, bookings, cancellations, expiring: the staff's rung
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
class IdempotencyRecordAdmin(ReadOnlyAdmin, PlatformAdmin):
    list_display = ["id", "user", "key", "method", "path", "response_status", "created_at", "completed_at"]
    list_filter = ["method", "response_status", "created_at"]
    search_fields = ["=key", "user__email", "path"]
    list_select_related = ["user"]
