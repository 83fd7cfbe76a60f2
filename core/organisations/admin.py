"""Organisations and their members in the back office (docs/contract.md §2.6, docs/decisions/0025-organisations.md):
a member sees the organisations they belong to; an owner names theirs and manages its members; a superuser
makes organisations and sees every one. Every write goes through ``core.organisations.services``."""

from django import forms
from django.contrib import admin
from django.db.models import Count, OuterRef, Subquery
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from core.admin import OrganisationScoped
from core.errors import DomainError
from core.organisations import services
from core.organisations.models import Membership, Organisation
from core.organisations.roles import Role, allows, describe
from web.accounts.services import request_user


@admin.register(Organisation)
class OrganisationAdmin(OrganisationScoped):
    organisation_field = "pk"
    change_role = Role.OWNER  # its name is the owners'
    list_display = ["name", "slug", "your_role", "members", "created_at"]
    search_fields = ["name", "slug"]
    fields = ["name", "slug", "members", "created_at"]
    readonly_fields = ["members", "created_at"]

    def get_queryset(self, request):
        mine = Membership.objects.filter(organisation=OuterRef("pk"), user=request_user(request)).values("role")
        return super().get_queryset(request).annotate(member_count=Count("memberships"), role=Subquery(mine[:1]))

    def organisation_of(self, obj):
        return obj.pk

    def get_readonly_fields(self, request, obj=None):
        return [*self.readonly_fields, "slug"] if obj is not None else self.readonly_fields

    def has_add_permission(self, request):
        return request_user(request).is_superuser  # a new organisation is the platform's to make

    def has_delete_permission(self, request, obj=None):
        return False  # its cars, events and slots stay with it (on_delete=PROTECT)

    @admin.display(description="Your role", ordering="role")
    def your_role(self, organisation):
        return organisation.role

    @admin.display(description="Members", ordering="member_count")
    def members(self, organisation):
        if organisation.pk is None:
            return "—"
        count = f"{getattr(organisation, 'member_count', 0)} members"
        if organisation.role is not None and not allows(organisation.role, MembershipAdmin.view_role):
            return count  # their list is an owner's (a superuser, of none, sees every one)
        url = reverse("admin:organisations_membership_changelist") + f"?organisation__id__exact={organisation.pk}"
        return format_html('<a href="{}">{}</a>', url, count)

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        if change:
            saved = services.organisation_rename(organisation_id=obj.pk, name=data["name"], actor=request.user)
        else:
            saved = services.organisation_create(
                name=data["name"], slug=data["slug"], actor=request.user, now=timezone.now()
            )
        obj.pk, obj.created_at = saved.pk, saved.created_at


class MembershipForm(forms.ModelForm):
    """A member by their account's email (as the API takes them), and their role; the organisation of the
    ones the caller owns. The service refuses what the form cannot see (an unknown email, the last owner)."""

    email = forms.EmailField(help_text="The email of an existing account.")

    class Meta:
        model = Membership
        fields = ["organisation", "role"]

    request = None  # set by the admin's get_form

    def clean(self):
        data = super().clean() or {}
        if self.errors:
            return data
        try:
            if self.instance.pk is None:
                self.instance = services.member_add(
                    organisation_id=data["organisation"].pk,
                    email=data["email"],
                    role=data["role"],
                    actor=request_user(self.request),
                    now=timezone.now(),
                )
            elif "role" in self.changed_data:
                self.instance = services.member_add(
                    organisation_id=self.instance.organisation_id,
                    email=self.instance.user.email,
                    role=data["role"],
                    actor=request_user(self.request),
                    now=timezone.now(),
                )
        except DomainError as error:
            raise forms.ValidationError(error.message) from None
        return data

    def _post_clean(self):
        pass  # the service validates and writes


@admin.register(Membership)
class MembershipAdmin(OrganisationScoped):
    """Who belongs to an organisation, with which role (what each role may do: its help). Owners manage their
    organisations' members; removing one is the delete action, through the service."""

    view_role = change_role = Role.OWNER  # members are the owner's rung
    form = MembershipForm
    list_display = ["user_email", "user_name", "organisation", "role", "created_at"]
    list_filter = ["role", ("organisation", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["user__email", "user__name"]
    list_select_related = ["user", "organisation"]
    readonly_fields = ["user", "created_at"]

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
        obj.pk, obj._state.adding = form.instance.pk, False  # MembershipForm.clean() wrote it

    def delete_model(self, request, obj):
        services.member_remove(organisation_id=obj.organisation_id, user_id=obj.user_id, actor=request.user)

    def delete_queryset(self, request, queryset):
        for membership in queryset:
            self.delete_model(request, membership)
