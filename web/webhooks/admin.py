"""Webhooks in the back office: endpoints (add, change, send a test, rotate the secret) and deliveries
with their attempts ("retry now"). Every write goes through web.webhooks.services."""

from urllib.parse import urlsplit

from django import forms
from django.contrib import admin, messages
from django.utils import timezone
from django.utils.html import format_html

from core.admin import OrganisationScoped, ServiceActionsMixin, short_id
from core.errors import ValidationFailed
from core.organisations.roles import Role
from web.exports import CsvExportMixin
from web.webhooks import services
from web.webhooks.catalogue import EVENT_TYPES
from web.webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint


class WebhookEndpointForm(forms.ModelForm):
    # As wide as a real receiver's URL (the admin's default box shows some 25 characters of it).
    url = forms.URLField(
        label="URL", max_length=2000, assume_scheme="https", widget=forms.URLInput(attrs={"class": "vURLField wide"})
    )
    event_types = forms.MultipleChoiceField(
        choices=[(t, t) for t in EVENT_TYPES],
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: every event type.",
    )
    secret = forms.CharField(
        required=False, help_text='"whsec_" + base64; left empty, one is generated and shown once.'
    )

    class Meta:
        model = WebhookEndpoint
        fields = ["organisation", "url", "description", "event_types", "active", "secret"]

    def clean(self):
        data = super().clean() or {}
        try:
            services.webhook_endpoint_validate(
                url=data.get("url"), event_types=data.get("event_types"), secret=data.get("secret") or None
            )
        except ValidationFailed as refused:
            for field, problems in refused.details["fields"].items():
                self.add_error({"eventTypes": "event_types"}.get(field, field), problems)
        return data


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(ServiceActionsMixin, OrganisationScoped):
    view_role = change_role = Role.OWNER  # webhook endpoints are the owner's rung
    form = WebhookEndpointForm
    list_display = ["id", "url", "active", "types", "last_success_at", "last_failure_at", "disabled_reason"]
    list_filter = ["active"]
    search_fields = ["url", "description"]
    readonly_fields = ["created_at", "last_success_at", "last_failure_at", "failing_since", "disabled_reason"]
    actions = ["send_test_event", "rotate_secret"]

    @admin.display(description="Event types")
    def types(self, endpoint):
        return ", ".join(endpoint.event_types) or "every type"

    def get_fields(self, request, obj=None):
        editable = ["organisation", "url", "description", "event_types"] + (["secret"] if obj is None else ["active"])
        return editable + ([] if obj is None else self.readonly_fields)

    def save_model(self, request, obj, form, change):
        data, now = form.cleaned_data, timezone.now()
        if change:
            fields = [f for f in form.changed_data if f in ("url", "description", "event_types", "active")]
            services.webhook_endpoint_update(
                endpoint_id=obj.pk, changes={f: data[f] for f in fields}, actor=request.user, now=now
            )
            return
        endpoint = services.webhook_endpoint_create(
            organisation_id=data["organisation"].pk,
            url=data["url"],
            description=data["description"],
            event_types=data["event_types"],
            secret=data["secret"] or None,
            actor=request.user,
            now=now,
        )
        obj.pk, obj._state.adding = endpoint.pk, False
        self.message_user(
            request, f"The secret of {endpoint.url}, shown this once: {endpoint.secret}", messages.WARNING
        )

    def delete_model(self, request, obj):
        services.webhook_endpoint_delete(endpoint_id=obj.pk, actor=request.user)

    @admin.action(description="Send a test event")
    def send_test_event(self, request, queryset):
        def send(endpoint):
            _, attempt = services.webhook_endpoint_send_test(
                endpoint_id=endpoint.pk, actor=request.user, now=timezone.now()
            )
            result = f"HTTP {attempt.status_code}" if attempt.status_code else attempt.error
            level = messages.SUCCESS if attempt.ok else messages.WARNING
            # Not the URL first: the admin capitalises a message's first letter ("Http://…").
            self.message_user(request, f"Test event to {endpoint.url}: {result} in {attempt.duration_ms} ms.", level)

        self.run_service(request, queryset, send, "sent a test event")

    @admin.action(description="Rotate the secret (the old one signs for 24 h more)")
    def rotate_secret(self, request, queryset):
        def rotate(endpoint):
            rotated = services.webhook_endpoint_rotate_secret(
                endpoint_id=endpoint.pk, actor=request.user, now=timezone.now()
            )
            self.message_user(request, f"The new secret of {rotated.url}, shown this once: {rotated.secret}")

        self.run_service(request, queryset, rotate, "given a new secret")


class WebhookAttemptInline(admin.TabularInline):
    model = WebhookAttempt
    fields = readonly_fields = ("attempted_at", "status_code", "duration_ms", "error", "response_snippet")
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(CsvExportMixin, ServiceActionsMixin, OrganisationScoped):
    organisation_field = "endpoint__organisation"
    view_role = change_role = Role.OWNER
    list_display = [
        "id",
        "endpoint_short",
        "event_type",
        "subject",
        "status",
        "attempts",
        "last_status_code",
        "error",
        "next_attempt_at",
        "delivered_at",
    ]
    list_filter = ["status", ("endpoint", admin.RelatedOnlyFieldListFilter), "event_type"]
    search_fields = ["=event__id", "=subject_id"]
    export_columns = [
        ("delivery", "id"),
        ("endpoint", "endpoint__url"),
        ("event", "event_id"),
        ("event type", "event_type"),
        ("subject type", "subject_type"),
        ("subject", "subject_id"),
        ("status", "status"),
        ("attempts", "attempts"),
        ("last status code", "last_status_code"),
        ("last error", "last_error"),
        ("next attempt at", "next_attempt_at"),
        ("created at", "created_at"),
        ("delivered at", "delivered_at"),
    ]
    list_select_related = ["endpoint"]
    fields = readonly_fields = (
        "endpoint",
        "event",
        "event_type",
        "subject_type",
        "subject_id",
        "status",
        "attempts",
        "next_attempt_at",
        "last_status_code",
        "last_error",
        "created_at",
        "delivered_at",
    )
    inlines = [WebhookAttemptInline]
    actions = ["retry_now"]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return obj is None and super().has_change_permission(request)  # the list's actions, not the form

    @admin.display(description="Endpoint", ordering="endpoint")
    def endpoint_short(self, delivery):
        """Its number and host; the whole URL on hover (the list has no room for a receiver's path)."""
        url = delivery.endpoint.url
        return format_html('<span title="{}">#{} {}</span>', url, delivery.endpoint_id, urlsplit(url).netloc)

    @admin.display(description="Subject", ordering="subject_type")
    def subject(self, delivery):
        return format_html("{} {}", delivery.subject_type, short_id(delivery.subject_id) or "")

    @admin.display(description="Last error")
    def error(self, delivery):
        """Why the last attempt failed, so that an operator need not open each pending delivery."""
        if not delivery.last_error:
            return None
        text = delivery.last_error
        return format_html('<span title="{}">{}</span>', text, text if len(text) <= 60 else f"{text[:60]}…")

    @admin.action(description="Retry now")
    def retry_now(self, request, queryset):
        self.run_service(
            request,
            queryset,
            lambda d: services.webhook_delivery_retry_now(delivery_id=d.pk, actor=request.user, now=timezone.now()),
            "made due now",
        )
