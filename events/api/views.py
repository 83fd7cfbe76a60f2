import json

from django.http import HttpResponse
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.fields import DateTimeField
from rest_framework.generics import ListAPIView
from rest_framework.response import Response
from rest_framework.views import APIView

from core.errors import Forbidden, HoldExpired, LimitReached, NotFound, NotOwner
from core.organisations import access
from core.organisations.access import RoleRequired
from core.organisations.roles import Role
from core.policy import SEE
from events import calendar, queue, selectors
from events.api.filters import EventFilter
from events.api.serializers import (
    BookingCancelIn,
    BookingCancelOut,
    BookingSeatOut,
    ConfirmOut,
    EventChangeIn,
    EventCountsOut,
    EventCreatedOut,
    EventCreateIn,
    EventOut,
    HoldActionIn,
    QueueEntryOut,
    QueueJoinIn,
    ReleaseOut,
    SeatHoldIn,
    SeatHoldOut,
    SeatMapOut,
    WaitlistEntryOut,
    WaitlistJoinIn,
)
from events.models import SeatHoldGroup, WaitlistEntry
from events.services import events, holds, rules, seat_holds, waitlist
from web.accounts.services import acting_user, request_user
from web.api import OperatorWrites
from web.audit_trail import AuditTrailView
from web.ical import CALENDAR_RESPONSE, CalendarView, calendar_response
from web.idempotency import idempotent
from web.recent import RecentReads
from web.schema import errors
from web.throttling import HOLDS

# The fields of PATCH /api/events/{id}, by the service's name for them.
_CHANGES = {
    "name": "name",
    "date": "event_date",
    "location": "location",
    "holdMinutes": "hold_minutes",
    "queueEnabled": "queue_enabled",
    "admittedPerMinute": "admitted_per_minute",
    "admissionWindowMinutes": "admission_window_minutes",
}


def _event(event_id: int, *, now=None):
    event = selectors.event_with_counts(event_id=event_id, now=now or timezone.now())
    if event is None:
        raise NotFound(f"Event {event_id} does not exist.")
    return event


# The two reads everyone polls when sales open, kept per process for at most a second (web.recent):
# an event's counts (small: many events fit) and its seat map (20,000 seats are 1.4 MB: a few events).
recent_counts: RecentReads[dict] = RecentReads(size=1024)
recent_seat_maps: RecentReads[bytes] = RecentReads(size=16)


def _read_counts(event_id: int, now) -> dict:
    event = _event(event_id, now=now)
    event.as_of = now
    return dict(EventCountsOut(event).data)  # a plain dict: the kept value holds no serializer or model


def _read_seat_map(event_id: int, now) -> bytes:
    """The body of GET …/seats as JSON bytes: the seats come as JSON text from the database and are
    spliced in as they are (no serializer, no renderer per seat; docs/decisions/0008-reads.md)."""
    read = selectors.seat_map_json(event_id=event_id, now=now)
    if read is None:
        raise NotFound(f"Event {event_id} does not exist.")
    head = (
        f'{{"eventId":{read.event_id},"totalSeats":{read.total},"confirmedSeats":{read.booked},'
        f'"heldSeats":{read.held},"availableSeats":{read.available},"seats":['
    )
    return "".join([head, read.seats, f'],"asOf":"{DateTimeField().to_representation(now)}"}}']).encode()


class EventList(ListAPIView):
    """Events with their live counts, soonest first. Operators create events here."""

    serializer_class = EventOut
    filterset_class = EventFilter
    permission_classes = [OperatorWrites]

    def get_queryset(self):
        return selectors.events_with_counts(now=timezone.now()).order_by("event_date", "id")

    @extend_schema(request=EventCreateIn, responses={201: EventCreatedOut, **errors(RoleRequired)})
    @idempotent
    def post(self, request):
        data = EventCreateIn.validated(request)
        layout = data.get("layout")
        user = request_user(request)
        event = events.event_create(
            organisation_id=access.acting_organisation(user, data.get("organisationId"), Role.MANAGER),
            name=data["name"],
            event_date=data["date"],
            location=data["location"],
            total_seats=data.get("totalSeats"),
            layout=layout
            and events.SeatLayout(
                sections=tuple(layout["sections"]), rows=layout["rows"], seats_per_row=layout["seatsPerRow"]
            ),
            hold_minutes=data["holdMinutes"],
            sales_open=data["salesOpen"],
            actor=user,
            now=timezone.now(),
        )
        return Response(EventCreatedOut(_event(event.pk)).data, status=201)


class EventDetail(APIView):
    """The event and its counts as of ``asOf`` (at most a second ago). Operators change its details and
    its admission queue with PATCH."""

    permission_classes = [OperatorWrites]

    @extend_schema(responses={200: EventCountsOut})
    def get(self, request, event_id: int):
        body, _ = recent_counts.get(event_id, now=timezone.now(), read=lambda now: _read_counts(event_id, now))
        return Response(body)

    @extend_schema(request=EventChangeIn, responses={200: EventCountsOut, **errors(RoleRequired)})
    @idempotent
    def patch(self, request, event_id: int):
        data = EventChangeIn.validated(request)
        now = timezone.now()
        events.event_update_details(
            event_id=event_id, actor=request.user, now=now, **{_CHANGES[k]: v for k, v in data.items() if k in _CHANGES}
        )
        return Response(_read_counts(event_id, now))


class EventSeats(APIView):
    """The seat map as of ``asOf`` (at most a second ago): every seat in layout order with its status.
    An overdue hold reads as AVAILABLE."""

    @extend_schema(responses={200: SeatMapOut})
    def get(self, request, event_id: int):
        body, _ = recent_seat_maps.get(event_id, now=timezone.now(), read=lambda now: _read_seat_map(event_id, now))
        if request.accepted_renderer.format == "json":
            return HttpResponse(body, content_type="application/json")
        return Response(json.loads(body))  # the browsable API


def _hold_out(group: SeatHoldGroup, seat_codes: list[str]) -> dict:
    now = timezone.now()
    group.seat_codes = seat_codes
    group.expires_in = max(0, round((group.expires_at - now).total_seconds())) if group.state == "HELD" else 0
    group.state = group.state_at(now)
    return SeatHoldOut(group).data


QUEUE_TOKEN_HEADER = "X-Queue-Token"


class SeatsReserve(APIView):
    throttle_scope = HOLDS  # docs/contract.md §3.6

    @extend_schema(
        request=SeatHoldIn,
        parameters=[
            OpenApiParameter(
                QUEUE_TOKEN_HEADER,
                str,
                OpenApiParameter.HEADER,
                description="While the event's queue is on: the token of your admitted queue entry",
            )
        ],
        responses={
            201: SeatHoldOut,
            **errors(
                rules.SeatsUnavailable,
                rules.SalesClosed,
                rules.WaitlistActive,
                rules.NotAdmitted,
                LimitReached,
                Forbidden,
            ),
        },
    )
    @idempotent
    def post(self, request, event_id: int):
        data = SeatHoldIn.validated(request)
        group = seat_holds.seat_hold(
            event_id=event_id,
            user=acting_user(caller=request.user, user_id=data.get("userId")),
            seat_codes=data.get("seatCodes"),
            quantity=data.get("quantity"),
            now=timezone.now(),
            idempotency_key=request.idempotency_key or "",
            actor=request.user,
            queue_token=request.headers.get(QUEUE_TOKEN_HEADER),
        )
        return Response(_hold_out(group, [s.code for s in group.seats]), status=201)


class QueueJoin(APIView):
    """Join the event's admission queue (one entry per user: joining again answers 200 with it)."""

    @extend_schema(
        request=QueueJoinIn,
        responses={201: QueueEntryOut, 200: QueueEntryOut, **errors(queue.QueueDisabled, rules.SalesClosed)},
    )
    @idempotent
    def post(self, request, event_id: int):
        QueueJoinIn.validated(request)
        entry, created = queue.queue_join(event_id=event_id, user=request.user, now=timezone.now())
        return Response(QueueEntryOut(entry).data, status=201 if created else 200)


class QueueEntryDetail(APIView):
    """Poll a queue entry: its position while WAITING, then ADMITTED until ``admittedUntil``, then EXPIRED."""

    @extend_schema(responses={200: QueueEntryOut, **errors(NotOwner)})
    def get(self, request, event_id: int, token: str):
        entry = queue.queue_entry_read(event_id=event_id, token=token)
        if entry is None:
            raise NotFound(f"Event {event_id} has no queue entry with this token.")
        holds.SEAT_HOLDS.policy.require_owner(
            request_user(request), entry.user_id, lambda: holds.event_organisation(event_id), what="This queue entry"
        )
        entry.state = entry.state_at(timezone.now())
        return Response(QueueEntryOut(entry).data)


class SeatsConfirm(APIView):
    @extend_schema(
        request=HoldActionIn,
        responses={
            200: ConfirmOut,
            **errors(
                rules.EventMismatch,
                rules.HoldNotActive,
                rules.SeatCountConflict,
                HoldExpired,
                NotOwner,
                Forbidden,
            ),
        },
    )
    @idempotent
    def post(self, request, event_id: int):
        data = HoldActionIn.validated(request)
        group = seat_holds.seat_hold_confirm(
            event_id=event_id,
            hold_group_id=data["holdGroupId"],
            user=acting_user(
                caller=request.user, user_id=data.get("userId"), organisation=lambda: holds.event_organisation(event_id)
            ),
            now=timezone.now(),
        )
        body = {
            "success": True,
            "bookingGroupId": group.booking_group_id,
            "holdGroupId": group.pk,
            "eventId": group.event_id,
            "userId": group.user_id,
            "seatCodes": group.seat_codes,  # read by the confirm's own statement
        }
        return Response(ConfirmOut(body).data)


class SeatsRelease(APIView):
    @extend_schema(
        request=HoldActionIn,
        responses={200: ReleaseOut, **errors(rules.EventMismatch, rules.HoldNotActive, NotOwner, Forbidden)},
    )
    @idempotent
    def post(self, request, event_id: int):
        data = HoldActionIn.validated(request)
        group = seat_holds.seat_hold_release(
            event_id=event_id,
            hold_group_id=data["holdGroupId"],
            user=acting_user(
                caller=request.user, user_id=data.get("userId"), organisation=lambda: holds.event_organisation(event_id)
            ),
            now=timezone.now(),
        )
        return Response(ReleaseOut({"released": True, "holdGroupId": group.pk}).data)


def _visible_hold(request, hold_group_id) -> SeatHoldGroup:
    group = SeatHoldGroup.objects.filter(pk=hold_group_id).first()
    if group is None:
        raise NotFound(f"Hold {hold_group_id} does not exist.")
    holds.SEAT_HOLDS.policy.require(request_user(request), SEE, group, what=f"Hold {hold_group_id}")
    return group


def _visible_booking(request, booking_group_id) -> SeatHoldGroup:
    group = SeatHoldGroup.objects.select_related("event").filter(booking_group_id=booking_group_id).first()
    if group is None:
        raise NotFound(f"Booking {booking_group_id} does not exist.")
    holds.SEAT_HOLDS.policy.require(request_user(request), SEE, group, what=f"Booking {booking_group_id}")
    return group


class HoldDetail(APIView):
    @extend_schema(responses={200: SeatHoldOut, **errors(NotOwner)})
    def get(self, request, hold_group_id):
        group = _visible_hold(request, hold_group_id)
        return Response(_hold_out(group, selectors.group_seat_codes(group)))


class BookingDetail(APIView):
    """The seats of a booking group, one entry each (seeds/001)."""

    @extend_schema(responses={200: BookingSeatOut(many=True), **errors(NotOwner)})
    def get(self, request, booking_group_id):
        group = _visible_booking(request, booking_group_id)
        rows = [
            {
                "bookingGroupId": group.booking_group_id,
                "holdGroupId": group.pk,
                "status": group.state,
                "userId": group.user_id,
                "eventId": group.event_id,
                "name": group.event.name,
                "eventDate": group.event.event_date,
                "seatCode": code,
            }
            for code in selectors.group_seat_codes(group)
        ]
        return Response(BookingSeatOut(rows, many=True).data)


class BookingCancel(APIView):
    @extend_schema(
        request=BookingCancelIn,
        responses={200: BookingCancelOut, **errors(rules.BookingNotActive, rules.SeatCountConflict, NotOwner)},
    )
    @idempotent
    def post(self, request, booking_group_id):
        data = BookingCancelIn.validated(request)
        group = seat_holds.seat_booking_cancel(
            booking_group_id=booking_group_id,
            user=request.user,
            now=timezone.now(),
            reason=data["reason"],
            seat_codes=data.get("seatCodes"),
        )
        cancelled = group.state == rules.State.CANCELLED
        out = {"cancelled": cancelled, "bookingGroupId": group.booking_group_id}
        return Response(BookingCancelOut({**out, "seatCodes": [] if cancelled else group.seat_codes}).data)


class BookingCalendar(CalendarView):
    """The booking as a calendar file (RFC 5545, one VEVENT for its seats): for its owner and operators; a
    cancelled one reads STATUS:CANCELLED."""

    @extend_schema(responses={**CALENDAR_RESPONSE, **errors(NotOwner)})
    def get(self, request, booking_group_id):
        body = calendar.booking_calendar(
            booking_group_id=booking_group_id, user=request_user(request), now=timezone.now()
        )
        return calendar_response(body, filename=f"booking-{booking_group_id}.ics")


class HoldEvents(AuditTrailView):
    """A hold group's audit trail, oldest first (its owner and operators)."""

    def get_subject(self):
        return rules.hold_subject(_visible_hold(self.request, self.kwargs["hold_group_id"]))


class BookingEvents(AuditTrailView):
    """A booking's audit trail: the whole life of the hold group it came from."""

    def get_subject(self):
        return rules.hold_subject(_visible_booking(self.request, self.kwargs["booking_group_id"]))


def _entry_out(entry: WaitlistEntry) -> dict:
    """An entry as clients see it: an offer whose hold is overdue reads EXPIRED, as its hold does."""
    if entry.state == "OFFERED" and entry.offer_expires_at is not None and entry.offer_expires_at <= timezone.now():
        entry.state = "EXPIRED"
    if not hasattr(entry, "position"):
        entry.position = waitlist.waitlist_position(entry)
    return WaitlistEntryOut(entry).data


class Waitlist(APIView):
    """Join the event's waiting list: seats that free go to it first, in join order (docs/contract.md §5.8)."""

    @extend_schema(
        request=WaitlistJoinIn,
        responses={
            201: WaitlistEntryOut,
            **errors(
                rules.SeatsAvailable,
                rules.AlreadyWaiting,
                rules.WaitlistClosed,
                rules.SalesClosed,
                LimitReached,
            ),
        },
    )
    @idempotent
    def post(self, request, event_id: int):
        data = WaitlistJoinIn.validated(request)
        entry = waitlist.waitlist_join(
            event_id=event_id,
            user=request.user,
            quantity=data["quantity"],
            now=timezone.now(),
            idempotency_key=request.idempotency_key or "",
        )
        return Response(_entry_out(entry), status=201)


class WaitlistEntryDetail(APIView):
    """One entry of the waiting list (its user's, or any for an operator): GET reads it, DELETE leaves."""

    def _entry(self, request, event_id: int, entry_id: int) -> WaitlistEntry:
        entry = WaitlistEntry.objects.filter(pk=entry_id, event_id=event_id).first()
        if entry is None:
            raise NotFound(f"Waiting-list entry {entry_id} of event {event_id} does not exist.")
        holds.SEAT_HOLDS.policy.require_owner(
            request_user(request),
            entry.user_id,
            lambda: holds.event_organisation(event_id),
            what=f"Waiting-list entry {entry_id}",
        )
        return entry

    @extend_schema(responses={200: WaitlistEntryOut, **errors(NotOwner)})
    def get(self, request, event_id: int, entry_id: int):
        return Response(_entry_out(self._entry(request, event_id, entry_id)))

    @extend_schema(responses={200: WaitlistEntryOut, **errors(rules.EntryNotWaiting, NotOwner, RoleRequired)})
    @idempotent
    def delete(self, request, event_id: int, entry_id: int):
        entry = waitlist.waitlist_leave(event_id=event_id, entry_id=entry_id, user=request.user, now=timezone.now())
        return Response(_entry_out(entry))
