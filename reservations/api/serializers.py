from django.conf import settings
from rest_framework import serializers

from reservations.models import Car, Reservation
from web.api import ModelSerializer, StrictSerializer, organisation_id_in


class CarIn(StrictSerializer):
    organisationId = organisation_id_in()
    dealerId = serializers.IntegerField(min_value=1, max_value=2_147_483_647)
    # A declared field, not Field.label (the serializer's own label): DRF's metaclass moves it to _declared_fields.
    label = serializers.CharField(max_length=200)  # type: ignore[assignment]  # drf-stubs: see above
    make = serializers.CharField(max_length=64, required=False, default="", allow_blank=True)
    model = serializers.CharField(max_length=64, required=False, default="", allow_blank=True)
    status = serializers.ChoiceField(choices=Car.Status.choices, required=False, default=Car.Status.ACTIVE)


class CarOut(ModelSerializer):
    organisationId = serializers.IntegerField(source="organisation_id")
    dealerId = serializers.IntegerField(source="dealer_id")
    available = serializers.BooleanField(help_text="ACTIVE and no active reservation now")
    createdAt = serializers.DateTimeField(source="created_at")
    updatedAt = serializers.DateTimeField(source="updated_at")

    class Meta:
        model = Car
        fields = [
            "id",
            "organisationId",
            "dealerId",
            "make",
            "model",
            "label",
            "status",
            "available",
            "createdAt",
            "updatedAt",
        ]


class ReservationCreateIn(StrictSerializer):
    carId = serializers.IntegerField(min_value=1, max_value=2**63 - 1)
    buyerId = serializers.IntegerField(min_value=1, max_value=2**63 - 1, required=False)
    holdDurationMinutes = serializers.IntegerField(
        min_value=1, max_value=60, required=False, default=lambda: settings.RESERVATION_HOLD_MINUTES_DEFAULT
    )


class ReservationConfirmIn(StrictSerializer):
    pass


class ReservationCancelIn(StrictSerializer):
    reason = serializers.CharField(max_length=500, required=False, default="", allow_blank=True)


class ReservationOut(ModelSerializer):
    carId = serializers.IntegerField(source="car_id")
    buyerId = serializers.IntegerField(source="buyer_id")
    state = serializers.SerializerMethodField(help_text="An overdue HELD reads as EXPIRED")
    expiresAt = serializers.DateTimeField(source="expires_at")
    requestId = serializers.SerializerMethodField()
    createdAt = serializers.DateTimeField(source="created_at")
    updatedAt = serializers.DateTimeField(source="updated_at")

    class Meta:
        model = Reservation
        fields = ["id", "carId", "buyerId", "state", "expiresAt", "requestId", "createdAt", "updatedAt"]

    def get_state(self, reservation) -> str:
        return getattr(reservation, "effective_state", reservation.state)

    def get_requestId(self, reservation) -> str | None:
        return reservation.idempotency_key or None
