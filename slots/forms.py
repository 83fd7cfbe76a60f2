"""Operator forms of the slots admin. Every write goes through ``slots.services``."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta

from django import forms
from django.utils import timezone

from booking_site.accounts.models import Role, User
from booking_site.errors import DomainError
from slots import services
from slots.models import Slot

WEEKDAYS = [(0, "Mon"), (1, "Tue"), (2, "Wed"), (3, "Thu"), (4, "Fri"), (5, "Sat"), (6, "Sun")]


def hosts():
    return User.objects.filter(roles__contains=[Role.HOST]).order_by("name", "email")


class SlotAddForm(forms.ModelForm):
    """Adds one slot through ``slot_create``: its refusal (overlap, past) shows on the form."""

    class Meta:
        model = Slot
        fields = ["host", "title", "specialization", "start", "end", "capacity"]

    request = None  # set by the ModelAdmin (SlotAdmin.get_form)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["host"].queryset = hosts()
        self.created: Slot | None = None

    def _post_clean(self):
        pass  # the service validates and writes; no model-level validation of an unsaved instance

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        try:
            self.created = services.slot_create(
                host=data["host"],
                start=data["start"],
                end=data["end"],
                capacity=data["capacity"],
                title=data["title"],
                specialization=data["specialization"],
                actor=self.request.user,
                now=timezone.now(),
            )
        except DomainError as error:
            raise forms.ValidationError(error.message) from None
        return data


class BulkSlotForm(forms.Form):
    """Slots like "every weekday 09:00 to 12:00 in 30-minute slots for the next 4 weeks": wall-clock times in the
    operator's time zone (TIME_ZONE), so 09:00 stays 09:00 local across a daylight-saving change."""

    host = forms.ModelChoiceField(queryset=User.objects.none())
    title = forms.CharField(max_length=200, required=False)
    specialization = forms.CharField(max_length=100, required=False)
    capacity = forms.IntegerField(min_value=1, max_value=10_000, initial=1)
    first_day = forms.DateField(help_text="YYYY-MM-DD")
    weeks = forms.IntegerField(min_value=1, max_value=52, initial=4)
    weekdays = forms.TypedMultipleChoiceField(
        choices=WEEKDAYS, coerce=int, initial=[0, 1, 2, 3, 4], widget=forms.CheckboxSelectMultiple
    )
    day_start = forms.TimeField(initial=time(9, 0), help_text="HH:MM, local time")
    day_end = forms.TimeField(initial=time(12, 0), help_text="HH:MM, local time")
    minutes = forms.IntegerField(min_value=5, max_value=24 * 60, initial=30, label="Slot length (minutes)")

    MAX_SLOTS = 2000

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["host"].queryset = hosts()
        self.fields["first_day"].initial = timezone.localdate() + timedelta(days=1)

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        if data["day_end"] <= data["day_start"]:
            raise forms.ValidationError("The day must end after it starts.")
        count = len(self.ranges())
        if not count:
            raise forms.ValidationError("These settings give no slots.")
        if count > self.MAX_SLOTS:
            raise forms.ValidationError(f"These settings give {count} slots; at most {self.MAX_SLOTS} at once.")
        return data

    def ranges(self) -> list[tuple[datetime, datetime]]:
        data = self.cleaned_data
        tz = timezone.get_current_timezone()
        length = timedelta(minutes=data["minutes"])
        days = (data["first_day"] + timedelta(days=n) for n in range(7 * data["weeks"]))
        result = []
        for day in days:
            if day.weekday() not in data["weekdays"]:
                continue
            result.extend(_day_ranges(day, data["day_start"], data["day_end"], length, tz))
        return result


def _day_ranges(day: date, start: time, end: time, length: timedelta, tz) -> list[tuple[datetime, datetime]]:
    """Consecutive slots of one day, computed on the wall clock and only then given the zone's offset."""
    moment, close = datetime.combine(day, start), datetime.combine(day, end)
    ranges = []
    while moment + length <= close:
        ranges.append((timezone.make_aware(moment, tz), timezone.make_aware(moment + length, tz)))
        moment += length
    return ranges


class AnalyticsForm(forms.Form):
    start_date = forms.DateField()
    end_date = forms.DateField()

    def clean(self):
        data = super().clean()
        if not self.errors and data["end_date"] < data["start_date"]:
            raise forms.ValidationError("The end date must not be before the start date.")
        if not self.errors and (data["end_date"] - data["start_date"]).days >= 731:
            raise forms.ValidationError("At most 731 days at once.")
        return data
