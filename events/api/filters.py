import django_filters as filters
from django.utils import timezone

from events.models import Event
from web.api import IdFilter, StrictBooleanFilter


class EventFilter(filters.FilterSet):
    organisation = IdFilter(field_name="organisation_id")
    upcoming = StrictBooleanFilter(method="filter_upcoming", help_text="true: not yet taken place")
    dateFrom = filters.DateFilter(field_name="event_date", lookup_expr="date__gte", help_text="YYYY-MM-DD")
    dateTo = filters.DateFilter(field_name="event_date", lookup_expr="date__lte", help_text="YYYY-MM-DD")

    class Meta:
        model = Event
        fields: list[str] = []

    def filter_upcoming(self, queryset, name, value):
        now = timezone.now()
        return queryset.filter(event_date__gt=now) if value else queryset.filter(event_date__lte=now)
