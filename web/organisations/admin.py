"""Organisations and their members in the back office (docs/contract.md §2.6, docs/decisions/0025-organisations.md):
a member sees the organisations they belong to; an owner manages their organisation's members; a superuser
makes organisations and sees every one. Every write goes through ``web.organisations.services``."""

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, OuterRef, Subquery
from django.http import HttpResponseRedirect
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from core.admin import OrganisationScoped, ServiceActionsMixin, ServiceModelForm
from core.errors import DomainError
from core.organisations.models import Membership, Organisation
from core.organisations.roles import Role, allows, describe
from web.accounts.models import User
from web.accounts.services import request_user
from web.organisations import services


class OrganisationForm(ServiceModelForm):
    """A new organisation, made by ``organisation_create`` (a slug taken shows on the form)."""

    class Meta:
        model = Organisation
        fields = ["name", "slug"]

    def write(self, data: dict[str, Any], *, actor: User) -> Organisation:
        return services.organisation_create(name=data["name"], slug=data["slug"], now=timezone.now())


@admin.register(Organisation)
class OrganisationAdmin(OrganisationScoped):
    """The organisations the caller belongs to (a superuser: every one), with their role in each and a link
    to the members, for an owner. Superusers add organisations; nobody changes or deletes one here."""

    organisation_field = "pk"
    form = OrganisationForm
    list_display = ["name", "slug", "your_role", "members", "created_at"]
    search_fields = ["name", "slug"]
    ordering = ["name", "id"]  # the count's GROUP BY drops the model's ordering
    fields = ["name", "slug", "members", "created_at"]
    readonly_fields = ["members", "created_at"]

    def get_queryset(self, request):
        mine = Membership.objects.filter(organisation=OuterRef("pk"), user=request_user(request)).values("role")
        return super().get_queryset(request).annotate(member_count=Count("memberships"), role=Subquery(mine[:1]))

    def organisation_of(self, obj):
        return obj.pk

    def get_fields(self, request, obj=None):
        return ["name", "slug"] if obj is None else self.fields

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change, **kwargs)
        return type("OrganisationFormForRequest", (form,), {"request": request})

    def has_add_permission(self, request):
        return request_user(request).is_superuser  # a new organisation is the platform's to make

    def has_change_permission(self, request, obj=None):
        return False  # its page is to look at; its members are a page of their own

    def has_delete_permission(self, request, obj=None):
        return False  # its cars, events and slots stay with it (on_delete=PROTECT)

    def save_model(self, request, obj, form, change):
        form.adopt(obj)  # OrganisationForm.clean() made it

    @admin.display(description="Your role", ordering="role")
    def your_role(self, organisation):
        return organisation.role

    @admin.display(description="Members", ordering="member_count")
    def members(self, organisation):
        """How many; linked to their list for those who may open it (an owner; a superuser, of none, too)."""
        count = f"{getattr(organisation, 'member_count', 0)} members"
        if organisation.role is not None and not allows(organisation.role, MembershipAdmin.view_role):
            return count
        url = reverse("admin:organisations_membership_changelist") + f"?organisation__id__exact={organisation.pk}"
        return format_html('<a href="{}">{}</a>', url, count)


class MembershipForm(ServiceModelForm):
    """A member by their account's email (as the API takes them) and their role, in an organisation the
    caller owns; on a member's page, their role. Written by ``membership_set``, whose refusal (no such
    account) shows on the form."""

    email = forms.EmailField(help_text="The email of an existing account.")

    class Meta:
        model = Membership
        fields = ["organisation", "role"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None:
            del self.fields["email"]  # a member stays who they are: their page changes the role

    def write(self, data: dict[str, Any], *, actor: User) -> Membership:
        adding = self.instance.pk is None
        membership, _ = services.membership_set(
            organisation_id=data["organisation"].pk if adding else self.instance.organisation_id,
            email=data["email"] if adding else self.instance.user.email,
            role=data["role"],
            actor=actor,
            now=timezone.now(),
        )
        return membership


@admin.register(Membership)
class MembershipAdmin(ServiceActionsMixin, OrganisationScoped):
    """Who belongs to an organisation, with which role (what each may do: the role's help). Owners manage
    their organisations' members; a removal (a member's delete page, or the list's action instead of Django's
    bulk delete) goes through ``membership_remove``, whose refusal (its last owner) is a message, not a 500."""

    view_role = change_role = Role.OWNER  # members are the owner's rung
    form = MembershipForm
    list_display = ["user_email", "user_name", "organisation", "role", "created_at"]
    list_filter = ["role", ("organisation", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["user__email", "user__name"]
    list_select_related = ["user", "organisation"]
    readonly_fields = ["user", "created_at"]
    actions = ["remove_members"]

    def get_fields(self, request, obj=None):
        return ["organisation", "email", "role"] if obj is None else ["organisation", "user", "role", "created_at"]

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change, **kwargs)
        form.base_fields["role"].help_text = " ".join(f"{role.label}: {describe(role)}." for role in Role)
        return type("MembershipFormForRequest", (form,), {"request": request})

    @admin.display(description="Email", ordering="user__email")
    def user_email(self, membership):
        return membership.user.email

    @admin.display(description="Name", ordering="user__name")
    def user_name(self, membership):
        return membership.user.name

    def save_model(self, request, obj, form, change):
        form.adopt(obj)  # MembershipForm.clean() wrote it

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # it would report "deleted" for a refused removal: remove_members
        return actions

    def delete_model(self, request, obj):
        services.membership_remove(organisation_id=obj.organisation_id, user_id=obj.user_id, actor=request.user)

    def delete_view(self, request, object_id, extra_context=None):
        try:
            return super().delete_view(request, object_id, extra_context)
        except DomainError as error:  # raised by delete_model, inside the view's transaction: rolled back
            self.message_user(request, f"Not removed: {error.message}", messages.ERROR)
            return HttpResponseRedirect(reverse("admin:organisations_membership_change", args=[object_id]))

    @admin.action(description="Remove selected members from their organisation", permissions=["delete"])
    def remove_members(self, request, queryset):
        self.run_service(request, queryset, lambda membership: self.delete_model(request, membership), "removed")
