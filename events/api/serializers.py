from typing import Any

from django.utils import timezone
from rest_framework import serializers

from events.services.rules import (
    ADMISSION_WINDOW_RANGE,
    ADMITTED_PER_MINUTE_RANGE,
    HOLD_MINUTES_RANGE,
    MAX_SEATS_PER_EVENT,
    MAX_SEATS_PER_HOLD,
    event_date_problem,
)
from web.api import OutputSerializer, StrictSerializer, organisation_id_in

USER_ID: dict[str, Any] = {"min_value": 1, "max_value": 2**63 - 1}  # an IntegerField's bounds


class SeatLayoutIn(StrictSerializer):
    sections = serializers.ListField(
        child=serializers.RegexField(r"^[A-Za-z0-9]{1,20}$", max_length=20), min_length=1, max_length=100
    )
    rows = serializers.IntegerField(min_value=1, max_value=1000)
    seatsPerRow = serializers.IntegerField(min_value=1, max_value=1000)


class EventDateField(serializers.DateTimeField):
    """A date-time whose reading in the current time zone may leave datetime's range (a naive
    ``9999-12-31T23:00`` west of UTC, ``0001-01-01T00:00`` east of it): that is a 400, not a 500."""

    def enforce_timezone(self, value):
        try:
            return super().enforce_timezone(value)
        except OverflowError:
            self.fail("overflow")


class EventCreateIn(StrictSerializer):
    organisationId = organisation_id_in()
    name = serializers.CharField(max_length=255)
    date = EventDateField(help_text="In the future, at most ten years ahead")
    location = serializers.CharField(max_length=255)
    totalSeats = serializers.IntegerField(min_value=1, max_value=MAX_SEATS_PER_EVENT, required=False)
    layout = SeatLayoutIn(required=False, help_text="Sections x rows x seats per row; codes like A-3-12")
    holdMinutes = serializers.IntegerField(min_value=1, max_value=60, required=False, default=5)
    salesOpen = serializers.BooleanField(required=False, default=True)

    def validate_date(self, value):
        """In the future and at most ten years ahead (``services.event_date_problem``): far-future dates
        (year 9999) overflow when read naive west of UTC, or when rendered east of it."""
        problem = event_date_problem(value, now=timezone.now())
        if problem:
            raise serializers.ValidationError(problem)
        return value

    def validate(self, data):
        if "totalSeats" not in data and "layout" not in data:
            raise serializers.ValidationError({"totalSeats": ["Give totalSeats or a layout."]})
        return data


class EventChangeIn(StrictSerializer):
    """What an operator may change on an event (each optional; nothing given changes nothing)."""

    name = serializers.CharField(max_length=255, required=False)
    date = EventDateField(required=False, help_text="In the future, at most ten years ahead")
    location = serializers.CharField(max_length=255, required=False)
    holdMinutes = serializers.IntegerField(
        min_value=HOLD_MINUTES_RANGE[0], max_value=HOLD_MINUTES_RANGE[1], required=False
    )
    queueEnabled = serializers.BooleanField(
        required=False, help_text="On: seat holds need the X-Queue-Token of an admitted entry of the queue"
    )
    admittedPerMinute = serializers.IntegerField(
        min_value=ADMITTED_PER_MINUTE_RANGE[0], max_value=ADMITTED_PER_MINUTE_RANGE[1], required=False
    )
    admissionWindowMinutes = serializers.IntegerField(
        min_value=ADMISSION_WINDOW_RANGE[0],
        max_value=ADMISSION_WINDOW_RANGE[1],
        required=False,
        help_text="How long an admitted entry may hold seats",
    )


class EventOut(OutputSerializer):
    id = serializers.IntegerField()
    organisationId = serializers.IntegerField(source="organisation_id")
    name = serializers.CharField()
    eventDate = serializers.DateTimeField(source="event_date")
    location = serializers.CharField()
    totalSeats = serializers.IntegerField(source="total_seats")
    confirmedSeats = serializers.IntegerField(source="confirmed_seats")
    heldSeats = serializers.IntegerField(source="held_seats", help_text="Live holds; an overdue hold is available")
    availableSeats = serializers.IntegerField(source="available_seats")
    salesOpen = serializers.BooleanField(source="sales_open")
    holdMinutes = serializers.IntegerField(source="hold_minutes")
    waitlistEnabled = serializers.BooleanField(source="waitlist_enabled", help_text="Whether users may join")
    waitingCount = serializers.IntegerField(source="waiting_count", help_text="Users on the waiting list, WAITING")
    queueEnabled = serializers.BooleanField(source="queue_enabled")
    admittedPerMinute = serializers.IntegerField(source="admitted_per_minute")
    admissionWindowMinutes = serializers.IntegerField(source="admission_window_minutes")
    createdAt = serializers.DateTimeField(source="created_at")


AS_OF_HELP = "When the database was read (at most a second ago): the counts are exactly what it said then"


class EventCountsOut(EventOut):
    asOf = serializers.DateTimeField(source="as_of", help_text=AS_OF_HELP)


class EventCreatedOut(EventOut):
    eventId = serializers.IntegerField(source="id")


class SeatOut(OutputSerializer):
    code = serializers.CharField()
    section = serializers.CharField()
    row = serializers.IntegerField()
    number = serializers.IntegerField()
    status = serializers.ChoiceField(choices=["AVAILABLE", "HELD", "BOOKED"])


class SeatMapOut(OutputSerializer):
    eventId = serializers.IntegerField()
    totalSeats = serializers.IntegerField()
    confirmedSeats = serializers.IntegerField()
    heldSeats = serializers.IntegerField()
    availableSeats = serializers.IntegerField()
    seats = SeatOut(many=True)
    asOf = serializers.DateTimeField(help_text=AS_OF_HELP)


class SeatHoldIn(StrictSerializer):
    userId = serializers.IntegerField(required=False, **USER_ID)
    seatCodes = serializers.ListField(
        child=serializers.CharField(max_length=50), min_length=1, max_length=MAX_SEATS_PER_HOLD, required=False
    )
    quantity = serializers.IntegerField(min_value=1, max_value=MAX_SEATS_PER_HOLD, required=False)

    def validate(self, data):
        if ("seatCodes" in data) == ("quantity" in data):
            raise serializers.ValidationError({"seatCodes": ["Give either seatCodes or quantity."]})
        codes = data.get("seatCodes")
        if codes is not None and len(set(codes)) != len(codes):
            raise serializers.ValidationError({"seatCodes": ["A seat code is given twice."]})
        return data


class SeatHoldOut(OutputSerializer):
    holdGroupId = serializers.UUIDField(source="id")
    eventId = serializers.IntegerField(source="event_id")
    userId = serializers.IntegerField(source="user_id")
    state = serializers.CharField()
    seatCodes = serializers.ListField(child=serializers.CharField(), source="seat_codes")
    expiresIn = serializers.IntegerField(source="expires_in", help_text="Seconds until the hold expires")
    expiresAt = serializers.DateTimeField(source="expires_at")
    bookingGroupId = serializers.UUIDField(source="booking_group_id", allow_null=True)


class HoldActionIn(StrictSerializer):
    userId = serializers.IntegerField(required=False, **USER_ID)
    holdGroupId = serializers.UUIDField()


class ConfirmOut(OutputSerializer):
    success = serializers.BooleanField()
    bookingGroupId = serializers.UUIDField()
    holdGroupId = serializers.UUIDField()
    eventId = serializers.IntegerField()
    userId = serializers.IntegerField()
    seatCodes = serializers.ListField(child=serializers.CharField())


class ReleaseOut(OutputSerializer):
    released = serializers.BooleanField()
    holdGroupId = serializers.UUIDField()


class BookingSeatOut(OutputSerializer):
    bookingGroupId = serializers.UUIDField()
    holdGroupId = serializers.UUIDField()
    status = serializers.CharField()
    userId = serializers.IntegerField()
    eventId = serializers.IntegerField()
    name = serializers.CharField()
    eventDate = serializers.DateTimeField()
    seatCode = serializers.CharField()


class BookingCancelIn(StrictSerializer):
    reason = serializers.CharField(max_length=500, required=False, default="", allow_blank=True)
    seatCodes = serializers.ListField(
        child=serializers.CharField(max_length=50),
        max_length=MAX_SEATS_PER_HOLD,
        required=False,
        help_text="Cancel only these seats of the booking (each booked in it now); the rest stay booked, and "
        "cancelling its last seats cancels the booking. Left out: the whole booking.",
    )


class BookingCancelOut(OutputSerializer):
    cancelled = serializers.BooleanField(help_text="Whether the booking as a whole is now cancelled.")
    bookingGroupId = serializers.UUIDField()
    seatCodes = serializers.ListField(
        child=serializers.CharField(), help_text="The seats still booked in it (none once it is cancelled)."
    )


class WaitlistJoinIn(StrictSerializer):
    quantity = serializers.IntegerField(
        min_value=1,
        max_value=MAX_SEATS_PER_HOLD,
        help_text="Seats wanted, all together (at most the cap on held seats)",
    )


class WaitlistEntryOut(OutputSerializer):
    entryId = serializers.IntegerField(source="id")
    eventId = serializers.IntegerField(source="event_id")
    userId = serializers.IntegerField(source="user_id")
    state = serializers.ChoiceField(choices=["WAITING", "OFFERED", "ACCEPTED", "EXPIRED", "LEFT"])
    position = serializers.IntegerField(
        allow_null=True, help_text="1: offered the next seats that free; null unless WAITING"
    )
    quantity = serializers.IntegerField()
    holdGroupId = serializers.UUIDField(source="hold_group_id", allow_null=True, help_text="The offer: a seat hold")
    offerExpiresAt = serializers.DateTimeField(source="offer_expires_at", allow_null=True)
    createdAt = serializers.DateTimeField(source="created_at")


class QueueJoinIn(StrictSerializer):
    """Nothing to give: the caller joins, once."""


class QueueEntryOut(OutputSerializer):
    token = serializers.CharField(help_text="Poll with it; send it as X-Queue-Token on seat holds once ADMITTED")
    eventId = serializers.IntegerField(source="event_id")
    position = serializers.IntegerField(help_text="While WAITING: 1 is the next to be admitted; 0 once admitted")
    state = serializers.ChoiceField(choices=["WAITING", "ADMITTED", "EXPIRED"])
    joinedAt = serializers.DateTimeField(source="joined_at")
    admittedUntil = serializers.DateTimeField(
        source="admitted_until", allow_null=True, help_text="Seat holds are admitted until then"
    )
