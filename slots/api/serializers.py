import contextlib
import json
from datetime import date, datetime

from django.utils import timezone
from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from slots.availability import MAX_BUFFER_MINUTES, MAX_DURATION_MINUTES, MAX_NOTICE_MINUTES, availability_clean
from slots.models import Slot, SlotBooking
from slots.services.rules import MAX_CAPACITY, SLOT_HORIZON, SLOT_HORIZON_TEXT
from web.api import JSONObjectField, ModelSerializer, OutputSerializer, StrictSerializer, organisation_id_in
from web.parsers import unstorable

BIGINT = 2**63 - 1

# The days a date query may name (analytics, list filters): far enough to cover any real booking,
# far enough from Python's year 9999 that a day's end, converted to any time zone, stays a datetime.
EARLIEST_DAY, LATEST_DAY = date(1900, 1, 1), date(9000, 12, 31)


def check_day(value: date) -> None:
    if not EARLIEST_DAY <= value <= LATEST_DAY:
        raise serializers.ValidationError(f"Must be between {EARLIEST_DAY} and {LATEST_DAY}.")


class SlotIn(StrictSerializer):
    startTime = serializers.DateTimeField(help_text="ISO 8601 with offset; stored as UTC")
    endTime = serializers.DateTimeField(help_text="After startTime; at most five years from now")
    capacity = serializers.IntegerField(min_value=1, max_value=MAX_CAPACITY, required=False, default=1)
    title = serializers.CharField(max_length=200, required=False, default="", allow_blank=True)
    specialization = serializers.CharField(max_length=100, required=False, default="", allow_blank=True)
    hostId = serializers.IntegerField(
        min_value=1, max_value=BIGINT, required=False, help_text="Operators only: the host the slot is for"
    )
    organisationId = organisation_id_in()

    def validate(self, data):
        if data["endTime"] <= data["startTime"]:
            raise serializers.ValidationError({"endTime": ["Must be after startTime."]})
        latest = timezone.now() + SLOT_HORIZON
        for name in ("startTime", "endTime"):
            if data[name] > latest:
                raise serializers.ValidationError({name: [f"Must be within {SLOT_HORIZON_TEXT} from now."]})
        return data


class SlotOut(ModelSerializer):
    organisationId = serializers.IntegerField(source="organisation_id")
    hostId = serializers.IntegerField(source="host_id")
    hostName = serializers.SerializerMethodField()
    startTime = serializers.DateTimeField(source="start")
    endTime = serializers.DateTimeField(source="end")
    remainingCapacity = serializers.IntegerField(
        source="remaining_capacity", help_text="Seats free now; overdue PENDING holds count as free"
    )
    createdAt = serializers.DateTimeField(source="created_at")
    updatedAt = serializers.DateTimeField(source="updated_at")

    class Meta:
        model = Slot
        fields = [
            "id",
            "organisationId",
            "hostId",
            "hostName",
            "title",
            "specialization",
            "startTime",
            "endTime",
            "capacity",
            "remainingCapacity",
            "status",
            "createdAt",
            "updatedAt",
        ]

    def get_hostName(self, slot) -> str:
        return slot.host.name or slot.host.email


class SlotListedOut(SlotOut):
    """A slot in the guests' listing: the same fields; its own name so that the listing's page, which
    says ``asOf``, is a component of its own in the schema (the host's listing has no ``asOf``)."""


class SlotBookingIn(StrictSerializer):
    """Seats of a published slot (``slotId``), or an interval of a host's hours (``hostId``, ``startTime``,
    ``endTime``: seeds/003)."""

    slotId = serializers.IntegerField(min_value=1, max_value=BIGINT, required=False)
    hostId = serializers.IntegerField(min_value=1, max_value=BIGINT, required=False)
    startTime = serializers.DateTimeField(required=False, help_text="With hostId: the appointment's start")
    endTime = serializers.DateTimeField(required=False, help_text="With hostId: its end (a duration the host offers)")
    seats = serializers.IntegerField(
        min_value=1, max_value=10_000, required=False, default=1, help_text="With slotId; an appointment is 1"
    )
    hold = serializers.BooleanField(
        required=False, default=False, help_text="true: a PENDING hold with an expiry, to confirm later"
    )
    metadata = JSONObjectField(
        required=False, default=dict, help_text="e.g. title and location; in a form, as JSON text"
    )
    userId = serializers.IntegerField(
        min_value=1, max_value=BIGINT, required=False, help_text="Must be the caller unless the caller is staff"
    )

    def validate(self, data):
        interval = [name for name in ("hostId", "startTime", "endTime") if name in data]
        if "slotId" in data and interval:
            raise serializers.ValidationError({interval[0]: ["Give slotId, or hostId with startTime and endTime."]})
        if "slotId" not in data:
            for name in ("hostId", "startTime", "endTime"):
                if name not in data:
                    raise serializers.ValidationError({name: ["Required without slotId."]})
            if data["endTime"] <= data["startTime"]:
                raise serializers.ValidationError({"endTime": ["Must be after startTime."]})
            if "seats" in self.initial_data and data["seats"] != 1:
                raise serializers.ValidationError({"seats": ["An appointment is one seat."]})
        return data

    def validate_metadata(self, value):
        problem = unstorable(value)
        if problem:
            raise serializers.ValidationError(problem)
        if len(json.dumps(value)) > 4096:
            raise serializers.ValidationError("At most 4096 characters of JSON.")
        return value


class SlotBookingConfirmIn(StrictSerializer):
    pass


class SlotBookingCancelIn(StrictSerializer):
    reason = serializers.CharField(max_length=500, required=False, default="", allow_blank=True)


class SlotBookingRescheduleIn(StrictSerializer):
    """Another slot (``slotId``), or another interval of the booking's host's hours (``startTime``, ``endTime``)."""

    slotId = serializers.IntegerField(min_value=1, max_value=BIGINT, required=False)
    startTime = serializers.DateTimeField(required=False)
    endTime = serializers.DateTimeField(required=False)

    def validate(self, data):
        interval = [name for name in ("startTime", "endTime") if name in data]
        if "slotId" in data and interval:
            raise serializers.ValidationError({interval[0]: ["Give slotId, or startTime and endTime."]})
        if "slotId" not in data:
            for name in ("startTime", "endTime"):
                if name not in data:
                    raise serializers.ValidationError({name: ["Required without slotId."]})
            if data["endTime"] <= data["startTime"]:
                raise serializers.ValidationError({"endTime": ["Must be after startTime."]})
        return data


class SlotBookingOut(ModelSerializer):
    slotId = serializers.IntegerField(source="slot_id")
    userId = serializers.IntegerField(source="guest_id")
    hostId = serializers.IntegerField(source="slot.host_id")
    status = serializers.SerializerMethodField(help_text="An overdue PENDING reads as EXPIRED")
    startTime = serializers.DateTimeField(source="start")
    endTime = serializers.DateTimeField(source="end")
    expiresAt = serializers.DateTimeField(source="expires_at", allow_null=True)
    rescheduledFromId = serializers.IntegerField(source="rescheduled_from_id", allow_null=True)
    requestId = serializers.SerializerMethodField()
    createdAt = serializers.DateTimeField(source="created_at")
    updatedAt = serializers.DateTimeField(source="updated_at")

    class Meta:
        model = SlotBooking
        fields = [
            "id",
            "slotId",
            "userId",
            "hostId",
            "seats",
            "status",
            "startTime",
            "endTime",
            "expiresAt",
            "reason",
            "metadata",
            "rescheduledFromId",
            "requestId",
            "createdAt",
            "updatedAt",
        ]

    def get_status(self, booking) -> str:
        return getattr(booking, "effective_state", booking.status)

    def get_requestId(self, booking) -> str | None:
        return booking.idempotency_key or None


class BookingAnalyticsQuery(serializers.Serializer):
    start_date = serializers.DateField(validators=[check_day])
    end_date = serializers.DateField(validators=[check_day])
    organisation = serializers.IntegerField(min_value=1, max_value=BIGINT, required=False)

    MAX_DAYS = 731

    def validate(self, data):
        if data["end_date"] < data["start_date"]:
            raise serializers.ValidationError({"end_date": ["Must not be before start_date."]})
        if (data["end_date"] - data["start_date"]).days >= self.MAX_DAYS:
            raise serializers.ValidationError({"end_date": [f"The range may span at most {self.MAX_DAYS} days."]})
        return data


class BookingAnalyticsOut(OutputSerializer):
    totalBookings = serializers.IntegerField(source="total_bookings")
    cancellationRate = serializers.FloatField(source="cancellation_rate", help_text="Percent, 0 to 100")
    bookingsPerDay = serializers.ListField(source="bookings_per_day", child=serializers.DictField())
    topHosts = serializers.ListField(source="top_hosts", child=serializers.DictField())


class ExpirePendingOut(OutputSerializer):
    expired = serializers.IntegerField()


# --- availability and free times (docs/contract.md §6) ------------------------------------------------


class WindowSchema(serializers.Serializer):
    start = serializers.CharField(max_length=5, help_text="HH:MM, wall-clock time in timeZone")
    end = serializers.CharField(max_length=5, help_text="HH:MM after start; 24:00 is the end of the day")


class WeeklyWindowSchema(WindowSchema):
    weekday = serializers.IntegerField(min_value=0, max_value=6, help_text="0 Monday … 6 Sunday")


class OverrideSchema(serializers.Serializer):
    date = serializers.CharField(max_length=10, help_text="YYYY-MM-DD in timeZone")
    windows = WindowSchema(many=True, help_text="That date's hours instead of its weekday's; empty: a day off")


class AvailabilityIn(StrictSerializer):
    """The whole availability (a PUT replaces it). Windows of one day never overlap; back to back is fine.
    Validated whole by ``slots.availability``: its data are the model's fields (``AvailabilityFields``)."""

    timeZone = serializers.CharField(max_length=64, help_text="IANA name, e.g. Europe/Berlin")
    weekly = WeeklyWindowSchema(many=True, required=False, default=list)
    overrides = OverrideSchema(many=True, required=False, default=list)
    durations = serializers.ListField(
        child=serializers.IntegerField(min_value=5, max_value=MAX_DURATION_MINUTES),
        allow_empty=False,
        max_length=100,
        help_text="Appointment lengths offered, in minutes",
    )
    minimumNoticeMinutes = serializers.IntegerField(min_value=0, max_value=MAX_NOTICE_MINUTES, default=0)
    bufferMinutes = serializers.IntegerField(min_value=0, max_value=MAX_BUFFER_MINUTES, default=0)

    def validate(self, attrs):
        return availability_clean(attrs)


class AvailabilityOut(OutputSerializer):
    hostId = serializers.IntegerField()
    timeZone = serializers.CharField()
    weekly = WeeklyWindowSchema(many=True)
    overrides = OverrideSchema(many=True)
    durations = serializers.ListField(child=serializers.IntegerField())
    minimumNoticeMinutes = serializers.IntegerField()
    bufferMinutes = serializers.IntegerField()
    updatedAt = serializers.DateTimeField(allow_null=True, help_text="null: never set (no hours: nothing bookable)")


@extend_schema_field(OpenApiTypes.STR)
class DateOrDateTimeField(serializers.Field):
    """``YYYY-MM-DD`` (a day in the host's time zone) or an ISO 8601 datetime with its offset."""

    default_error_messages = {"invalid": "A date (YYYY-MM-DD) or a datetime with its offset (2027-01-04T09:00+01:00)."}

    def to_internal_value(self, data):
        value: date | datetime | None = None
        if isinstance(data, str):
            with contextlib.suppress(ValueError):
                value = date.fromisoformat(data) if len(data) == 10 else parse_datetime(data)
        if value is None or (isinstance(value, datetime) and value.tzinfo is None):
            self.fail("invalid")
        check_day(value.date() if isinstance(value, datetime) else value)
        return value


class FreeTimesQuery(serializers.Serializer):
    startDate = DateOrDateTimeField(help_text="YYYY-MM-DD (from that day's start, in the host's zone) or a datetime")
    endDate = DateOrDateTimeField(help_text="YYYY-MM-DD (to that day's end, in the host's zone) or a datetime")
    slotDuration = serializers.IntegerField(min_value=1, max_value=MAX_DURATION_MINUTES, help_text="Minutes")


class FreeTimeSchema(serializers.Serializer):
    startTime = serializers.DateTimeField()
    endTime = serializers.DateTimeField()


class FreeTimesOut(OutputSerializer):
    slots = FreeTimeSchema(many=True)
