from rest_framework import serializers

from web.api import ModelSerializer, OutputSerializer, StrictSerializer, organisation_id_in
from web.webhooks.catalogue import EVENT_TYPES
from web.webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint


def _event_types() -> serializers.ListField:
    return serializers.ListField(
        child=serializers.ChoiceField(choices=EVENT_TYPES),
        max_length=len(EVENT_TYPES),
        required=False,
        help_text="The event types sent to this endpoint; empty: all of them.",
    )


class WebhookIn(StrictSerializer):
    organisationId = organisation_id_in()
    url = serializers.CharField(max_length=2000, help_text="http(s); no private, loopback or link-local address")
    description = serializers.CharField(max_length=500, required=False, default="", allow_blank=True)
    eventTypes = _event_types()
    secret = serializers.CharField(
        max_length=100, required=False, help_text='"whsec_" + base64 of 24 to 64 bytes; generated when not given'
    )


class WebhookChangeIn(StrictSerializer):
    url = serializers.CharField(max_length=2000, required=False)
    description = serializers.CharField(max_length=500, required=False, allow_blank=True)
    eventTypes = _event_types()
    active = serializers.BooleanField(required=False, help_text="true turns a disabled endpoint back on")


class WebhookOut(ModelSerializer):
    organisationId = serializers.IntegerField(source="organisation_id")
    eventTypes = serializers.ListField(source="event_types", child=serializers.CharField())
    disabledReason = serializers.CharField(source="disabled_reason")
    lastSuccessAt = serializers.DateTimeField(source="last_success_at", allow_null=True)
    lastFailureAt = serializers.DateTimeField(source="last_failure_at", allow_null=True)
    createdAt = serializers.DateTimeField(source="created_at")

    class Meta:
        model = WebhookEndpoint
        fields = [
            "id",
            "organisationId",
            "url",
            "description",
            "eventTypes",
            "active",
            "disabledReason",
            "lastSuccessAt",
            "lastFailureAt",
            "createdAt",
        ]


class WebhookCreatedOut(WebhookOut):
    secret = serializers.CharField(help_text="Shown this once: keep it to verify signatures")

    class Meta(WebhookOut.Meta):
        fields = [*WebhookOut.Meta.fields, "secret"]


class WebhookSecretOut(OutputSerializer):
    secret = serializers.CharField(help_text="The new secret; the previous one also signs for 24 h")


class WebhookDeliveryOut(ModelSerializer):
    eventId = serializers.IntegerField(source="event_id", allow_null=True, help_text="null for a webhook.test")
    eventType = serializers.CharField(source="event_type")
    lastStatusCode = serializers.IntegerField(source="last_status_code", allow_null=True)
    lastError = serializers.CharField(source="last_error")
    nextAttemptAt = serializers.DateTimeField(source="next_attempt_at", allow_null=True)
    deliveredAt = serializers.DateTimeField(source="delivered_at", allow_null=True)
    webhookId = serializers.CharField(source="message_id", help_text="The webhook-id header of every attempt")

    class Meta:
        model = WebhookDelivery
        fields = [
            "id",
            "webhookId",
            "eventId",
            "eventType",
            "status",
            "attempts",
            "lastStatusCode",
            "lastError",
            "nextAttemptAt",
            "deliveredAt",
        ]


class WebhookActionIn(StrictSerializer):
    pass


class WebhookAttemptOut(ModelSerializer):
    deliveryId = serializers.IntegerField(source="delivery_id")
    ok = serializers.BooleanField(help_text="The endpoint answered 2xx within the timeout")
    statusCode = serializers.IntegerField(source="status_code", allow_null=True)
    durationMs = serializers.IntegerField(source="duration_ms")
    responseSnippet = serializers.CharField(source="response_snippet")
    attemptedAt = serializers.DateTimeField(source="attempted_at")

    class Meta:
        model = WebhookAttempt
        fields = ["deliveryId", "ok", "statusCode", "durationMs", "error", "responseSnippet", "attemptedAt"]
