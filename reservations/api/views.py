from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework.generics import ListAPIView
from rest_framework.response import Response
from rest_framework.views import APIView

from core.audit.api import AuditTrailView
from core.errors import Forbidden, HoldExpired, InvalidStateTransition, LimitReached, NotFound, NotOwner
from core.policy import SEE
from reservations import selectors, services
from reservations.api.filters import CarFilter, ReservationFilter
from reservations.api.serializers import (
    CarIn,
    CarOut,
    ReservationCancelIn,
    ReservationConfirmIn,
    ReservationCreateIn,
    ReservationOut,
)
from reservations.models import Reservation
from web.accounts.services import acting_user, request_user
from web.api import StaffWrites
from web.idempotency import idempotent
from web.schema import errors
from web.throttling import HOLDS


class CarList(ListAPIView):
    """Cars, with ``available`` (ACTIVE and no active reservation now). Operators add cars here."""

    serializer_class = CarOut
    filterset_class = CarFilter
    permission_classes = [StaffWrites]

    def get_queryset(self):
        return selectors.cars_with_availability(now=timezone.now()).order_by("id")

    @extend_schema(request=CarIn, responses={201: CarOut})
    @idempotent
    def post(self, request):
        data = CarIn.validated(request)
        car = services.car_create(
            dealer_id=data["dealerId"],
            label=data["label"],
            make=data["make"],
            model=data["model"],
            status=data["status"],
            actor=request_user(request),
        )
        return Response(CarOut(selectors.cars_with_availability(now=timezone.now()).get(pk=car.pk)).data, status=201)


class CarDetail(APIView):
    @extend_schema(responses={200: CarOut})
    def get(self, request, car_id: int):
        car = selectors.cars_with_availability(now=timezone.now()).filter(pk=car_id).first()
        if car is None:
            raise NotFound(f"Car {car_id} does not exist.")
        return Response(CarOut(car).data)


class ReservationList(ListAPIView):
    """The caller's reservations (operators: everyone's), newest first. Holding a car is a POST here."""

    throttle_scope = HOLDS  # the holds' POST (docs/contract.md §3.6)

    serializer_class = ReservationOut
    filterset_class = ReservationFilter

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation has no user
            return Reservation.objects.none()
        return selectors.reservations_visible_to(request_user(self.request), now=timezone.now()).order_by("-id")

    @extend_schema(
        request=ReservationCreateIn,
        responses={201: ReservationOut, **errors(services.CarUnavailable, LimitReached, NotFound, Forbidden)},
    )
    @idempotent
    def post(self, request):
        data = ReservationCreateIn.validated(request)
        reservation = services.reservation_hold(
            car_id=data["carId"],
            buyer=acting_user(caller=request.user, user_id=data.get("buyerId")),
            hold_minutes=data["holdDurationMinutes"],
            now=timezone.now(),
            request_id=request.idempotency_key or "",
            actor=request.user,
        )
        return Response(ReservationOut(reservation).data, status=201)


def _visible_reservation(request, reservation_id: int):
    reservation = selectors.reservations_with_effective_state(now=timezone.now()).filter(pk=reservation_id).first()
    if reservation is None:
        raise NotFound(f"Reservation {reservation_id} does not exist.")
    services.RESERVATIONS.policy.require(request.user, SEE, reservation, what=f"Reservation {reservation_id}")
    return reservation


class ReservationDetail(APIView):
    @extend_schema(responses={200: ReservationOut, **errors(NotOwner)})
    def get(self, request, reservation_id: int):
        return Response(ReservationOut(_visible_reservation(request, reservation_id)).data)


class ReservationConfirm(APIView):
    @extend_schema(
        request=ReservationConfirmIn,
        responses={200: ReservationOut, **errors(InvalidStateTransition, HoldExpired, NotOwner)},
    )
    @idempotent
    def post(self, request, reservation_id: int):
        ReservationConfirmIn.validated(request)
        reservation = services.reservation_confirm(reservation_id=reservation_id, user=request.user, now=timezone.now())
        return Response(ReservationOut(reservation).data)


class ReservationCancel(APIView):
    @extend_schema(
        request=ReservationCancelIn,
        responses={200: ReservationOut, **errors(InvalidStateTransition, NotOwner)},
    )
    @idempotent
    def post(self, request, reservation_id: int):
        data = ReservationCancelIn.validated(request)
        reservation = services.reservation_cancel(
            reservation_id=reservation_id, user=request.user, now=timezone.now(), reason=data["reason"]
        )
        return Response(ReservationOut(reservation).data)


class CarCurrentReservation(APIView):
    @extend_schema(responses={200: ReservationOut, **errors(NotOwner)})
    def get(self, request, car_id: int):
        reservation = selectors.car_current_reservation(car_id=car_id, now=timezone.now())
        if reservation is None:
            raise NotFound(f"Car {car_id} has no active reservation.")
        services.RESERVATIONS.policy.require(request.user, SEE, reservation, what=f"The reservation of car {car_id}")
        return Response(ReservationOut(reservation).data)


class ReservationEvents(AuditTrailView):
    """The reservation's audit trail, oldest first (its buyer and operators)."""

    def get_subject(self):
        return _visible_reservation(self.request, self.kwargs["reservation_id"])
