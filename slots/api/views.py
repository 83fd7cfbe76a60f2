from datetime import datetime, tzinfo
from typing import cast

from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework.fields import DateTimeField
from rest_framework.generics import ListAPIView
from rest_framework.response import Response
from rest_framework.views import APIView

from core import errors as core_errors
from core.errors import (
    Forbidden,
    HoldExpired,
    InvalidStateTransition,
    NotFound,
    NotOwner,
    ValidationFailed,
)
from core.expiry import expire_all
from core.organisations import access
from core.policy import SEE
from slots import calendar, selectors
from slots.api.filters import BookingFilter, SlotFilter
from slots.api.serializers import (
    AvailabilityIn,
    AvailabilityOut,
    BookingAnalyticsOut,
    BookingAnalyticsQuery,
    ExpirePendingOut,
    FreeTimesOut,
    FreeTimesQuery,
    SlotBookingCancelIn,
    SlotBookingConfirmIn,
    SlotBookingIn,
    SlotBookingOut,
    SlotBookingRescheduleIn,
    SlotIn,
    SlotListedOut,
    SlotOut,
)
from slots.availability import AvailabilityFields, document_of
from slots.models import Slot, SlotBooking
from slots.services import appointments, reschedule, rules, slots
from slots.services import bookings as slots_bookings
from web.accounts.models import User
from web.accounts.services import acting_user, request_user
from web.api import AsOfPagePagination, Operators, Superusers
from web.audit_trail import AuditTrailView
from web.ical import CALENDAR_RESPONSE, BookingNotConfirmed, CalendarView, calendar_response
from web.idempotency import idempotent
from web.recent import RecentReads
from web.schema import errors
from web.throttling import HOLDS


def _slot_out(slot_id: int) -> dict:
    return SlotOut(selectors.slots_with_remaining(now=timezone.now()).get(pk=slot_id)).data


# What guests browse, one page per query string, kept per process for at most a second
# (web.recent): the page's count alone is a COUNT(*) over every future slot.
recent_pages: RecentReads[dict] = RecentReads(size=256)


class SlotList(ListAPIView):
    """Future AVAILABLE slots with ``remainingCapacity``, soonest first, as of ``asOf`` (at most a second
    ago; the page and its count from the same moment). Hosts publish a slot here."""

    serializer_class = SlotListedOut
    filterset_class = SlotFilter
    pagination_class = AsOfPagePagination

    def get_queryset(self):
        return selectors.slots_listed(now=getattr(self, "now", None) or timezone.now())

    def list(self, request, *args, **kwargs):
        # Everyone sees the same page for the same query (no per-user fields, no per-request time zone or
        # language), so the query string is the whole key; a bad filter raises inside the read: never kept.
        key = tuple(sorted((name, tuple(values)) for name, values in request.query_params.lists()))
        body, _ = recent_pages.get(key, now=timezone.now(), read=lambda now: self._read_page(request, now))
        return Response(body)

    def _read_page(self, request, now) -> dict:
        self.now = now
        body = super().list(request).data
        return {**body, "asOf": DateTimeField().to_representation(now)}

    @extend_schema(
        request=SlotIn,
        responses={
            201: SlotOut,
            **errors(rules.SlotOverlap, rules.SlotInPast, rules.NotAHost, NotFound, access.RoleRequired),
        },
    )
    @idempotent
    def post(self, request):
        data = SlotIn.validated(request)
        host_id = data.get("hostId")
        if host_id is None or host_id == request.user.pk:
            host = request.user
            if not host.is_host:
                raise rules.NotAHost()
        else:
            host = acting_user(caller=request.user, user_id=host_id)
            if not host.is_host:
                raise ValidationFailed.for_field("hostId", f"User {host_id} is not a host.")
        slot = slots.slot_create(
            host=host,
            organisation_id=data.get("organisationId"),
            start=data["startTime"],
            end=data["endTime"],
            capacity=data["capacity"],
            title=data["title"],
            specialization=data["specialization"],
            actor=request.user,
            now=timezone.now(),
        )
        return Response(_slot_out(slot.pk), status=201)


@extend_schema_view(get=extend_schema(responses={200: SlotOut, **errors(rules.NotAHost)}))
class HostSlotList(ListAPIView):
    """The caller's own slots (any status, past ones included), in time order. Hosts only."""

    serializer_class = SlotOut

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Slot.objects.none()
        if not request_user(self.request).is_host:
            raise rules.NotAHost("Only hosts have slots.")
        return selectors.slots_of_host(request_user(self.request), now=timezone.now())


class SlotDetail(APIView):
    @extend_schema(responses={200: SlotOut})
    def get(self, request, slot_id: int):
        slot = selectors.slots_with_remaining(now=timezone.now()).filter(pk=slot_id).first()
        if slot is None:
            raise NotFound(f"Slot {slot_id} does not exist.")
        return Response(SlotOut(slot).data)

    @extend_schema(
        responses={200: SlotOut, **errors(InvalidStateTransition, rules.SlotBooked, NotOwner, access.RoleRequired)}
    )
    @idempotent
    def delete(self, request, slot_id: int):
        """Withdraw a slot nobody holds a seat in (its host or an operator); it becomes CANCELLED."""
        slot = slots.slot_cancel(slot_id=slot_id, user=request.user, now=timezone.now())
        return Response(_slot_out(slot.pk))


# What a booking refuses, wherever it is made: a new one (POST /api/bookings) or a move (reschedule).
BOOKING_REFUSALS = (
    rules.SlotFull,
    rules.SlotOverlap,
    core_errors.LimitReached,
    rules.GuestOverlap,
    rules.SlotUnavailable,
    rules.OwnSlot,
    rules.SlotInPast,
    rules.OutsideAvailability,
)


class BookingList(ListAPIView):
    throttle_scope = HOLDS  # the bookings' POST (docs/contract.md §3.6)
    """The caller's bookings (operators: everyone's), newest first. Booking a slot is a POST here."""

    serializer_class = SlotBookingOut
    filterset_class = BookingFilter

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return SlotBooking.objects.none()
        bookings = selectors.slot_bookings_with_effective_state(now=timezone.now())
        return slots_bookings.SLOT_BOOKINGS.policy.visible(bookings, request_user(self.request)).order_by("-id")

    @extend_schema(
        request=SlotBookingIn,
        responses={
            201: SlotBookingOut,
            **errors(*BOOKING_REFUSALS, NotFound, Forbidden),
        },
    )
    @idempotent
    def post(self, request):
        data = SlotBookingIn.validated(request)
        guest = acting_user(caller=request.user, user_id=data.get("userId"))
        claim = {"hold": data["hold"], "metadata": data["metadata"], "idempotency_key": request.idempotency_key or ""}
        if "slotId" in data:
            booking = slots_bookings.slot_booking_create(
                slot_id=data["slotId"],
                guest=guest,
                seats=data["seats"],
                actor=request.user,
                now=timezone.now(),
                **claim,
            )
        else:
            booking = appointments.appointment_book(
                host_id=data["hostId"],
                guest=guest,
                start=data["startTime"],
                end=data["endTime"],
                actor=request.user,
                now=timezone.now(),
                **claim,
            )
        return Response(SlotBookingOut(booking).data, status=201)


def _visible_booking(request, booking_id: int):
    """The guest, the slot's host and operators see a booking."""
    booking = selectors.slot_bookings_with_effective_state(now=timezone.now()).filter(pk=booking_id).first()
    if booking is None:
        raise NotFound(f"Booking {booking_id} does not exist.")
    slots_bookings.SLOT_BOOKINGS.policy.require(request_user(request), SEE, booking, what=f"Booking {booking_id}")
    return booking


def _cancel(request, booking_id: int) -> Response:
    data = SlotBookingCancelIn.validated(request)
    booking = slots_bookings.slot_booking_cancel(
        booking_id=booking_id, user=request.user, now=timezone.now(), reason=data["reason"]
    )
    return Response(SlotBookingOut(booking).data)


class BookingDetail(APIView):
    @extend_schema(responses={200: SlotBookingOut, **errors(NotOwner)})
    def get(self, request, booking_id: int):
        return Response(SlotBookingOut(_visible_booking(request, booking_id)).data)

    @extend_schema(
        request=SlotBookingCancelIn,
        responses={
            200: SlotBookingOut,
            **errors(InvalidStateTransition, rules.CancellationWindowClosed, NotOwner),
        },
    )
    @idempotent
    def delete(self, request, booking_id: int):
        """Cancel the booking (the same as ``POST …/cancel``)."""
        return _cancel(request, booking_id)


class BookingCancel(APIView):
    @extend_schema(
        request=SlotBookingCancelIn,
        responses={
            200: SlotBookingOut,
            **errors(InvalidStateTransition, rules.CancellationWindowClosed, NotOwner),
        },
    )
    @idempotent
    def post(self, request, booking_id: int):
        return _cancel(request, booking_id)


class BookingConfirm(APIView):
    @extend_schema(
        request=SlotBookingConfirmIn,
        responses={200: SlotBookingOut, **errors(rules.BookingNotPending, HoldExpired, NotOwner)},
    )
    @idempotent
    def post(self, request, booking_id: int):
        """PENDING → CONFIRMED; 409 ``booking_not_pending`` for any other state, 410 for a lapsed hold."""
        SlotBookingConfirmIn.validated(request)
        booking = slots_bookings.slot_booking_confirm(booking_id=booking_id, user=request.user, now=timezone.now())
        return Response(SlotBookingOut(booking).data)


class BookingReschedule(APIView):
    @extend_schema(
        request=SlotBookingRescheduleIn,
        responses={
            200: SlotBookingOut,
            **errors(InvalidStateTransition, HoldExpired, rules.CancellationWindowClosed, *BOOKING_REFUSALS, NotOwner),
        },
    )
    @idempotent
    def post(self, request, booking_id: int):
        """Move the booking to another slot (``slotId``) or to another interval of its host's hours (``startTime``,
        ``endTime``) in one transaction; answers with the new booking."""
        data = SlotBookingRescheduleIn.validated(request)
        if "slotId" in data:
            booking = reschedule.slot_booking_reschedule(
                booking_id=booking_id, slot_id=data["slotId"], user=request.user, now=timezone.now()
            )
        else:
            booking = reschedule.appointment_reschedule(
                booking_id=booking_id,
                start=data["startTime"],
                end=data["endTime"],
                user=request.user,
                now=timezone.now(),
            )
        return Response(SlotBookingOut(booking).data)


class BookingEvents(AuditTrailView):
    """The booking's audit trail, oldest first (its guest, the slot's host and operators)."""

    def get_subject(self):
        return _visible_booking(self.request, self.kwargs["booking_id"])


class BookingCalendar(CalendarView):
    """The booking as a calendar file (RFC 5545, one VEVENT): for its guest, the slot's host and operators,
    once it is confirmed (a cancelled one reads STATUS:CANCELLED)."""

    @extend_schema(responses={**CALENDAR_RESPONSE, **errors(NotOwner, BookingNotConfirmed)})
    def get(self, request, booking_id: int):
        body = calendar.booking_calendar(booking_id=booking_id, user=request_user(request), now=timezone.now())
        return calendar_response(body, filename=f"booking-{booking_id}.ics")


class AdminAnalytics(APIView):
    """Booking statistics over a date range (days in the operator's time zone). Operators only."""

    permission_classes = [Operators]

    @extend_schema(
        parameters=[
            OpenApiParameter("start_date", OpenApiTypes.DATE, required=True, description="YYYY-MM-DD, inclusive"),
            OpenApiParameter("end_date", OpenApiTypes.DATE, required=True, description="YYYY-MM-DD, inclusive"),
            OpenApiParameter(
                "organisation", OpenApiTypes.INT, description="One of your organisations (default: all of them)"
            ),
        ],
        responses={200: BookingAnalyticsOut},
    )
    def get(self, request):
        query = BookingAnalyticsQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        analytics = selectors.booking_analytics(
            start_date=query.validated_data["start_date"],
            end_date=query.validated_data["end_date"],
            organisations=access.scope(request_user(request), query.validated_data.get("organisation")),
        )
        return Response(BookingAnalyticsOut(analytics).data)


class AdminExpirePending(APIView):
    """Run every domain's hold expiry now (what the beat job does every few seconds), in every organisation:
    the platform's operators (superusers) only."""

    permission_classes = [Superusers]

    @extend_schema(request=None, responses={200: ExpirePendingOut})
    @idempotent
    def post(self, request):
        expired = expire_all(now=timezone.now())
        return Response({"expired": sum(expired.values())})


# --- availability and free times (docs/contract.md §6) ------------------------------------------------


def _availability_out(host: User) -> dict:
    availability = selectors.availability_of(host.pk)
    if availability is None:  # never set: no hours, so nothing to book
        document: dict = {"timeZone": "UTC", "weekly": [], "overrides": [], "durations": [], "updatedAt": None}
        document |= {"minimumNoticeMinutes": 0, "bufferMinutes": 0}
    else:
        document = {**document_of(availability), "updatedAt": availability.updated_at}
    return AvailabilityOut({"hostId": host.pk, **document}).data


def _host(host_id: int) -> User:
    host = User.objects.filter(pk=host_id).first()
    if host is None or not host.is_host:
        raise NotFound(f"Host {host_id} does not exist.")
    return host


class MyAvailability(APIView):
    """The caller's own hours (hosts only): time zone, weekly windows, date overrides, durations, notice, buffer."""

    @extend_schema(responses={200: AvailabilityOut, **errors(rules.NotAHost)})
    def get(self, request):
        host = request_user(request)
        rules.require_host(host)
        return Response(_availability_out(host))

    @extend_schema(request=AvailabilityIn, responses={200: AvailabilityOut, **errors(rules.NotAHost)})
    @idempotent
    def put(self, request):
        host = request_user(request)
        rules.require_host(host)  # a non-host is refused before what they sent is read
        fields = cast(AvailabilityFields, AvailabilityIn.validated(request))  # the document, checked whole
        slots.availability_set(host=host, fields=fields, actor=host, now=timezone.now())
        return Response(_availability_out(host))


class HostAvailability(APIView):
    """A host's hours, for anyone signed in."""

    @extend_schema(responses={200: AvailabilityOut})
    def get(self, request, host_id: int):
        return Response(_availability_out(_host(host_id)))


class HostFreeTimes(APIView):
    """seeds/003's "Get Available Slots": the appointments of ``slotDuration`` minutes the host (``userId``) can
    take between ``startDate`` and ``endDate`` (at most 62 days), in time order."""

    @extend_schema(parameters=[FreeTimesQuery], responses={200: FreeTimesOut})
    def get(self, request, user_id: int):
        query = FreeTimesQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        found = selectors.free_times(
            host_id=_host(user_id).pk,
            start=query.validated_data["startDate"],
            end=query.validated_data["endDate"],
            minutes=query.validated_data["slotDuration"],
            now=timezone.now(),
        )
        # FreeTimesOut's shape, written directly: a month is hundreds of datetimes, and DRF's DateTimeField
        # (a time zone lookup each) took more CPU than the search (ADR 0014).
        zone = timezone.get_current_timezone()
        return Response({"slots": [{"startTime": _iso(s, zone), "endTime": _iso(e, zone)} for s, e in found]})


def _iso(moment: datetime, zone: tzinfo) -> str:
    """As DRF's DateTimeField writes it: ISO 8601 in the current time zone, UTC as ``Z``."""
    text = moment.astimezone(zone).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text
