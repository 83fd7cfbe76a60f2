from datetime import date, datetime, time, timedelta

import django_filters as filters
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from drf_spectacular.utils import extend_schema_field

from core.errors import ValidationFailed
from slots.api.serializers import EARLIEST_DAY, LATEST_DAY
from slots.models import Slot, SlotBooking
from web.api import IdFilter, StrictBooleanFilter


def _check_day(name: str, day: date) -> None:
    if not EARLIEST_DAY <= day <= LATEST_DAY:
        raise ValidationFailed.for_field(name, f"Must be between {EARLIEST_DAY} and {LATEST_DAY}.")


def _parse_moment(name: str, raw: str) -> tuple[datetime, bool]:
    """An ISO date (a day in the operator's time zone) or datetime; returns (moment, is_whole_day).

    Only days from ``EARLIEST_DAY`` to ``LATEST_DAY``: near the ends of Python's calendar a day's end
    or a time-zone conversion would overflow."""
    try:
        day = parse_date(raw)
        moment = None if day else parse_datetime(raw)
    except ValueError:
        day = moment = None
    if day is not None:
        _check_day(name, day)
        return datetime.combine(day, time.min, tzinfo=timezone.get_current_timezone()), True
    if moment is None:
        raise ValidationFailed.for_field(name, "Expected an ISO 8601 date or date-time.")
    _check_day(name, moment.date())
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    return moment, False


@extend_schema_field({"type": "string", "anyOf": [{"format": "date"}, {"format": "date-time"}]})
class MomentFilter(filters.CharFilter):
    """An ISO date (the whole day, in the operator's time zone) or date-time (``_parse_moment``)."""


class SlotFilter(filters.FilterSet):
    organisation = IdFilter(field_name="organisation_id")
    hostId = IdFilter(field_name="host_id")
    specialization = filters.CharFilter(lookup_expr="iexact")
    startDate = MomentFilter(method="filter_start_date", help_text="Slots starting at or after (date or time)")
    endDate = MomentFilter(
        method="filter_end_date", help_text="Slots starting at or before (a date includes the whole day)"
    )
    available = StrictBooleanFilter(method="filter_available", help_text="true: at least one seat free now")

    class Meta:
        model = Slot
        fields: list[str] = []

    def filter_start_date(self, queryset, name, value):
        moment, _ = _parse_moment(name, value)
        return queryset.filter(start__gte=moment)

    def filter_end_date(self, queryset, name, value):
        moment, whole_day = _parse_moment(name, value)
        if whole_day:
            return queryset.filter(start__lt=moment + timedelta(days=1))
        return queryset.filter(start__lte=moment)

    def filter_available(self, queryset, name, value):
        return queryset.filter(remaining_capacity__gt=0) if value else queryset.filter(remaining_capacity__lte=0)


class BookingFilter(filters.FilterSet):
    status = filters.ChoiceFilter(
        choices=SlotBooking.Status.choices, field_name="effective_state", help_text="An overdue PENDING is EXPIRED"
    )
    slotId = IdFilter(field_name="slot_id")
    organisation = IdFilter(field_name="slot__organisation_id")

    class Meta:
        model = SlotBooking
        fields: list[str] = []
