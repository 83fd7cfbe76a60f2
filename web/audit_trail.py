"""The audit trail endpoint every claim type shares: ``GET /api/<claims>/{id}/events``."""

from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import serializers
from rest_framework.generics import ListAPIView

from core.audit.models import AuditEvent
from core.audit.services import trail
from core.errors import NotOwner
from web.api import ModelSerializer
from web.schema import errors


class AuditEventOut(ModelSerializer):
    occurredAt = serializers.DateTimeField(source="occurred_at")
    actorId = serializers.IntegerField(source="actor_id", allow_null=True)
    actor = serializers.CharField(source="actor_label")
    subjectType = serializers.CharField(source="subject_type")
    subjectId = serializers.CharField(source="subject_id")
    eventType = serializers.CharField(source="event_type")
    fromState = serializers.CharField(source="from_state")
    toState = serializers.CharField(source="to_state")
    requestId = serializers.CharField(source="request_id")

    class Meta:
        model = AuditEvent
        fields = [
            "id",
            "occurredAt",
            "actorId",
            "actor",
            "subjectType",
            "subjectId",
            "eventType",
            "fromState",
            "toState",
            "metadata",
            "requestId",
        ]


@extend_schema_view(get=extend_schema(responses={200: AuditEventOut, **errors(NotOwner)}))
class AuditTrailView(ListAPIView):
    """Lists one subject's events. Subclasses say which subject, after checking the caller may see it:
    ``get_subject()`` returns the model instance (or ``Subject``) whose trail to show."""

    serializer_class = AuditEventOut
    filter_backends: list = []

    def get_subject(self):
        raise NotImplementedError

    def get_queryset(self):
        return trail(self.get_subject())
