"""Webhook endpoints, for operators only (docs/contract.md §3.7)."""

import django_filters as filters
from django.utils import timezone
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework.generics import ListAPIView
from rest_framework.response import Response
from rest_framework.views import APIView

from core.organisations import access
from core.organisations.access import RoleRequired
from core.organisations.roles import Role
from web.accounts.services import request_user
from web.api import IdFilter, Operators
from web.idempotency import idempotent
from web.schema import errors
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


class WebhookFilter(filters.FilterSet):
    organisation = IdFilter(field_name="organisation_id")

    class Meta:
        model = WebhookEndpoint
        fields: list[str] = []


_FIELDS = {"url": "url", "description": "description", "eventTypes": "event_types", "active": "active"}


class WebhookList(ListAPIView):
    """The webhook endpoints (operators only). Registering one is a POST here; its secret is shown once."""

    serializer_class = WebhookOut
    permission_classes = [Operators]
    filterset_class = WebhookFilter

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return WebhookEndpoint.objects.none()
        return services.webhook_endpoints_of(request_user(self.request))

    @extend_schema(request=WebhookIn, responses={201: WebhookCreatedOut, **errors(RoleRequired)})
    @idempotent
    def post(self, request):
        data = WebhookIn.validated(request)
        user = request_user(request)
        endpoint = services.webhook_endpoint_create(
            organisation_id=access.acting_organisation(user, data.get("organisationId"), Role.OWNER),
            actor=user,
            url=data["url"],
            description=data["description"],
            event_types=data.get("eventTypes", []),
            secret=data.get("secret"),
            now=timezone.now(),
        )
        return Response(WebhookCreatedOut(endpoint).data, status=201)


class WebhookDetail(APIView):
    permission_classes = [Operators]

    @extend_schema(responses={200: WebhookOut, **errors(RoleRequired)})
    def get(self, request, endpoint_id: int):
        return Response(WebhookOut(services.webhook_endpoint_of(endpoint_id, request_user(request))).data)

    @extend_schema(request=WebhookChangeIn, responses={200: WebhookOut, **errors(RoleRequired)})
    @idempotent
    def patch(self, request, endpoint_id: int):
        data = WebhookChangeIn.validated(request)
        endpoint = services.webhook_endpoint_update(
            endpoint_id=endpoint_id,
            changes={_FIELDS[k]: v for k, v in data.items() if k in _FIELDS},
            now=timezone.now(),
            actor=request_user(request),
        )
        return Response(WebhookOut(endpoint).data)

    @extend_schema(request=None, responses={204: None, **errors(RoleRequired)})
    @idempotent
    def delete(self, request, endpoint_id: int):
        services.webhook_endpoint_delete(endpoint_id=endpoint_id, actor=request_user(request))
        return Response(status=204)


class WebhookRotateSecret(APIView):
    permission_classes = [Operators]

    @extend_schema(request=WebhookActionIn, responses={200: WebhookSecretOut, **errors(RoleRequired)})
    @idempotent
    def post(self, request, endpoint_id: int):
        WebhookActionIn.validated(request)
        endpoint = services.webhook_endpoint_rotate_secret(
            endpoint_id=endpoint_id, now=timezone.now(), actor=request_user(request)
        )
        return Response({"secret": endpoint.secret})


class WebhookTest(APIView):
    permission_classes = [Operators]

    @extend_schema(
        request=WebhookActionIn,
        responses={200: WebhookAttemptOut, **errors(RoleRequired)},
        description="Sends a `webhook.test` message to the endpoint now, once, and answers with the attempt.",
    )
    @idempotent
    def post(self, request, endpoint_id: int):
        WebhookActionIn.validated(request)
        _, attempt = services.webhook_endpoint_send_test(
            endpoint_id=endpoint_id, now=timezone.now(), actor=request_user(request)
        )
        return Response(WebhookAttemptOut(attempt).data)


class DeliveryFilter(filters.FilterSet):
    status = filters.ChoiceFilter(choices=WebhookDelivery.Status.choices)

    class Meta:
        model = WebhookDelivery
        fields: list[str] = []


@extend_schema_view(get=extend_schema(responses={200: WebhookDeliveryOut, **errors(RoleRequired)}))
class WebhookDeliveries(ListAPIView):
    """The endpoint's deliveries, newest first."""

    serializer_class = WebhookDeliveryOut
    permission_classes = [Operators]
    filterset_class = DeliveryFilter

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return WebhookDelivery.objects.none()
        endpoint = services.webhook_endpoint_of(self.kwargs["endpoint_id"], request_user(self.request))
        return endpoint.deliveries.order_by("-id")
