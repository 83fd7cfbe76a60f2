"""Webhook endpoints, for operators only (docs/contract.md §3.7)."""

import django_filters as filters
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework.generics import ListAPIView
from rest_framework.permissions import IsAdminUser
from rest_framework.response import Response
from rest_framework.views import APIView

from core.errors import NotFound
from web.idempotency import idempotent
from web.webhooks import services
from web.webhooks.api.serializers import (
    WebhookActionIn,
    WebhookAttemptOut,
    WebhookChangeIn,
    WebhookCreatedOut,
    WebhookDeliveryOut,
    WebhookIn,
    WebhookOut,
    WebhookSecretOut,
)
from web.webhooks.models import WebhookDelivery, WebhookEndpoint

_FIELDS = {"url": "url", "description": "description", "eventTypes": "event_types", "active": "active"}


class WebhookList(ListAPIView):
    """The webhook endpoints (operators only). Registering one is a POST here; its secret is shown once."""

    serializer_class = WebhookOut
    permission_classes = [IsAdminUser]
    queryset = WebhookEndpoint.objects.order_by("id")

    @extend_schema(request=WebhookIn, responses={201: WebhookCreatedOut})
    @idempotent
    def post(self, request):
        data = WebhookIn.validated(request)
        endpoint = services.webhook_endpoint_create(
            url=data["url"],
            description=data["description"],
            event_types=data.get("eventTypes", []),
            secret=data.get("secret"),
            now=timezone.now(),
        )
        return Response(WebhookCreatedOut(endpoint).data, status=201)


def _endpoint(endpoint_id: int) -> WebhookEndpoint:
    endpoint = WebhookEndpoint.objects.filter(pk=endpoint_id).first()
    if endpoint is None:
        raise NotFound(f"Webhook {endpoint_id} does not exist.")
    return endpoint


class WebhookDetail(APIView):
    permission_classes = [IsAdminUser]

    @extend_schema(responses={200: WebhookOut})
    def get(self, request, endpoint_id: int):
        return Response(WebhookOut(_endpoint(endpoint_id)).data)

    @extend_schema(request=WebhookChangeIn, responses={200: WebhookOut})
    @idempotent
    def patch(self, request, endpoint_id: int):
        data = WebhookChangeIn.validated(request)
        endpoint = services.webhook_endpoint_update(
            endpoint_id=endpoint_id,
            changes={_FIELDS[k]: v for k, v in data.items() if k in _FIELDS},
            now=timezone.now(),
        )
        return Response(WebhookOut(endpoint).data)

    @extend_schema(request=None, responses={204: None})
    @idempotent
    def delete(self, request, endpoint_id: int):
        services.webhook_endpoint_delete(endpoint_id=endpoint_id)
        return Response(status=204)


class WebhookRotateSecret(APIView):
    permission_classes = [IsAdminUser]

    @extend_schema(request=WebhookActionIn, responses={200: WebhookSecretOut})
    @idempotent
    def post(self, request, endpoint_id: int):
        WebhookActionIn.validated(request)
        endpoint = services.webhook_endpoint_rotate_secret(endpoint_id=endpoint_id, now=timezone.now())
        return Response({"secret": endpoint.secret})


class WebhookTest(APIView):
    permission_classes = [IsAdminUser]

    @extend_schema(
        request=WebhookActionIn,
        responses={200: WebhookAttemptOut},
        description="Sends a `webhook.test` message to the endpoint now, once, and answers with the attempt.",
    )
    @idempotent
    def post(self, request, endpoint_id: int):
        WebhookActionIn.validated(request)
        _, attempt = services.webhook_endpoint_send_test(endpoint_id=endpoint_id, now=timezone.now())
        return Response(WebhookAttemptOut(attempt).data)


class DeliveryFilter(filters.FilterSet):
    status = filters.ChoiceFilter(choices=WebhookDelivery.Status.choices)

    class Meta:
        model = WebhookDelivery
        fields: list[str] = []


class WebhookDeliveries(ListAPIView):
    """The endpoint's deliveries, newest first."""

    serializer_class = WebhookDeliveryOut
    permission_classes = [IsAdminUser]
    filterset_class = DeliveryFilter

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return WebhookDelivery.objects.none()
        return _endpoint(self.kwargs["endpoint_id"]).deliveries.order_by("-id")
