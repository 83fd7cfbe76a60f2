"""Operator forms of the slots admin. Every write goes through ``slots.services``."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, cast

from django import forms
from django.contrib.admin.widgets import AdminDateWidget, AdminTimeWidget
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.template.loader import render_to_string
from django.utils import timezone

from core.admin import ServiceModelForm, organisation_choices
from core.errors import DomainError
from core.organisations import access
from core.organisations.models import Organisation
from core.organisations.roles import Role as OrganisationRole
from slots.api.serializers import EARLIEST_DAY, LATEST_DAY
from slots.availability import AvailabilityDocument, availability_clean
from slots.models import Availability, Slot
from slots.services import rules, slots
from web.accounts.models import Role, User
from web.accounts.services import request_user

WEEKDAYS = [(0, "Mon"), (1, "Tue"), (2, "Wed"), (3, "Thu"), (4, "Fri"), (5, "Sat"), (6, "Sun")]


def hosts(request: HttpRequest | None) -> QuerySet[User]:
    """The hosts (users with the HOST role) whose slots and hours the caller manages: the members of the
    organisations in which they are a manager, and the hosts whose hours are there (a superuser: every
    host; docs/contract.md §2.6). A host of no organisation yet is added to one first, as a member."""
    found = User.objects.filter(roles__contains=[Role.HOST]).order_by("name", "email")
    organisations = access.scope(request_user(request), None, OrganisationRole.MANAGER) if request else []
    if organisations is None:
        return found
    return found.filter(
        Q(memberships__organisation__in=organisations) | Q(availability__organisation__in=organisations)
    ).distinct()


class SlotAddForm(ServiceModelForm):
    """Adds one slot through ``slot_create``: its refusal (overlap, past, more than five years ahead)
    shows on the form."""

    # Declared, not derived from the model: the model's range validators never run (see _post_clean).
    capacity = forms.IntegerField(min_value=1, max_value=rules.MAX_CAPACITY, initial=1)

    class Meta:
        model = Slot
        fields = ["organisation", "host", "title", "specialization", "start", "end", "capacity"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        cast(forms.ModelChoiceField, self.fields["host"]).queryset = hosts(self.request)  # the model's foreign key

    def write(self, data: dict[str, Any], *, actor: User) -> Slot:
        return slots.slot_create(
            organisation_id=data["organisation"].pk,
            host=data["host"],
            start=data["start"],
            end=data["end"],
            capacity=data["capacity"],
            title=data["title"],
            specialization=data["specialization"],
            actor=actor,
            now=timezone.now(),
        )


class BulkSlotForm(forms.Form):
    """Slots like "every weekday 09:00 to 12:00 in 30-minute slots for the next 4 weeks": wall-clock times in the
    operator's time zone (TIME_ZONE), so 09:00 stays 09:00 local across a daylight-saving change.

    Every slot lasts exactly the slot length (its end is its start plus the length, in real time).
    Around a daylight-saving change (see ``_day_ranges``):

    * clocks going back: a repeated local time means its first occurrence (summer time), so the
      repeated hour is offered once;
    * clocks going forward: local times that do not exist that night (Berlin: 02:00 to 02:59 on the
      last Sunday of March) are skipped, and so is a slot that would then overlap the one before it or
      end after the day's end. ``skipped`` lists them; the admin shows the list after creating the
      others. Skipping rather than refusing the batch is what an operator wants: the missing times
      cannot be booked whatever they do, and a weekly pattern over many weeks should not have to be
      split around one night.
    """

    organisation = forms.ModelChoiceField(
        queryset=Organisation.objects.none(), help_text="Whose slots these are: one of the organisations you manage."
    )
    host = forms.ModelChoiceField(
        queryset=User.objects.none(),
        help_text="A user with the HOST role: a member of the organisation, or with their hours there.",
    )
    title = forms.CharField(max_length=200, required=False, help_text="Optional; shown to guests on every slot.")
    specialization = forms.CharField(
        max_length=100, required=False, help_text="Optional; what guests filter by (e.g. cardiology)."
    )
    capacity = forms.IntegerField(
        min_value=1,
        max_value=rules.MAX_CAPACITY,
        initial=1,
        help_text=f"Guests per slot (1 to {rules.MAX_CAPACITY:,}).",
    )
    first_day = forms.DateField(
        widget=AdminDateWidget, help_text="The first day that gets slots: today or later (YYYY-MM-DD)."
    )
    weeks = forms.IntegerField(
        min_value=1, max_value=52, initial=4, help_text="How many weeks, from the first day on (1 to 52)."
    )
    weekdays = forms.TypedMultipleChoiceField(
        choices=WEEKDAYS,
        coerce=int,
        initial=[0, 1, 2, 3, 4],
        widget=forms.CheckboxSelectMultiple,
        help_text="The days of the week that get slots.",
    )
    day_start = forms.TimeField(initial=time(9, 0), widget=AdminTimeWidget(format="%H:%M"))
    day_end = forms.TimeField(initial=time(12, 0), widget=AdminTimeWidget(format="%H:%M"))
    minutes = forms.IntegerField(
        min_value=5,
        max_value=24 * 60,
        initial=30,
        label="Slot length (minutes)",
        help_text="5 to 1,440. Slots follow each other from the day's start; the last one ends by the day's end.",
    )

    fieldsets = [
        ("Slots", {"fields": ["organisation", "host", "title", "specialization", "capacity"]}),
        ("When", {"fields": ["first_day", "weeks", "weekdays", "day_start", "day_end", "minutes"]}),
    ]

    MAX_SLOTS = 2000

    def __init__(self, *args, request: HttpRequest, **kwargs):
        super().__init__(*args, **kwargs)
        organisation_choices(
            request, OrganisationRole.MANAGER, cast(forms.ModelChoiceField, self.fields["organisation"])
        )
        cast(forms.ModelChoiceField, self.fields["host"]).queryset = hosts(request)  # declared as one above
        self.fields["first_day"].initial = timezone.localdate() + timedelta(days=1)
        zone = timezone.get_current_timezone_name()
        self.fields["day_start"].help_text = f"When the day's first slot starts: HH:MM on the clock in {zone}."
        self.fields["day_end"].help_text = f"When the day's last slot ends at the latest: HH:MM in {zone}."
        self.skipped: list[datetime] = []  # local wall-clock starts left out (see the class docstring)

    def clean_first_day(self):
        first_day = self.cleaned_data["first_day"]
        if first_day < timezone.localdate():
            raise forms.ValidationError("Must not be in the past.")
        latest = timezone.localdate() + rules.SLOT_HORIZON
        if first_day > latest:
            raise forms.ValidationError(f"Slots can be added at most {rules.SLOT_HORIZON_TEXT} ahead ({latest}).")
        return first_day

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        if self.errors:
            return data
        if data["day_end"] <= data["day_start"]:
            raise forms.ValidationError("The day must end after it starts.")
        count = len(self.ranges())
        if not count:
            raise forms.ValidationError(f"These settings give no slots.{self.skipped_note()}")
        if count > self.MAX_SLOTS:
            raise forms.ValidationError(f"These settings give {count} slots; at most {self.MAX_SLOTS} at once.")
        return data

    def ranges(self) -> list[tuple[datetime, datetime]]:
        """The slots as (start, end) in UTC; fills ``skipped`` with the local starts left out."""
        data = self.cleaned_data
        tz = timezone.get_current_timezone()
        length = timedelta(minutes=data["minutes"])
        days = (data["first_day"] + timedelta(days=n) for n in range(7 * data["weeks"]))
        result, self.skipped = [], []
        for day in days:
            if day.weekday() not in data["weekdays"]:
                continue
            ranges, skipped = _day_ranges(day, data["day_start"], data["day_end"], length, tz)
            result.extend(ranges)
            self.skipped.extend(skipped)
        return result

    def skipped_note(self) -> str:
        """For the operator: which local times were left out, and why."""
        if not self.skipped:
            return ""
        listed = ", ".join(f"{moment:%Y-%m-%d %H:%M}" for moment in self.skipped[:20])
        more = f" and {len(self.skipped) - 20} more" if len(self.skipped) > 20 else ""
        return (
            f" Skipped {len(self.skipped)} slot(s) the daylight-saving change (clocks going forward) leaves no"
            f" room for, local start times: {listed}{more}."
        )


def _exists(moment: datetime, tz) -> bool:
    """Whether a local wall-clock time happens at all in ``tz`` (not in a spring-forward gap)."""
    aware = moment.replace(tzinfo=tz)
    return aware.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == moment


def _day_ranges(
    day: date, start: time, end: time, length: timedelta, tz
) -> tuple[list[tuple[datetime, datetime]], list[datetime]]:
    """Consecutive slots of one day: starts on the wall clock from ``start``, each lasting ``length``
    in real time. Returns (ranges, skipped local starts).

    A repeated local time (clocks going back) is taken in its first occurrence (``fold=0``). A local
    start that does not exist (clocks going forward) is skipped, and so is a slot that would overlap
    the slot before it or end after ``end`` on the local clock: near the gap a slot can begin earlier,
    or end later, in real time than its wall-clock neighbours suggest.
    """
    moment, close = datetime.combine(day, start), datetime.combine(day, end)
    ranges: list[tuple[datetime, datetime]] = []
    skipped: list[datetime] = []
    while moment + length <= close:
        begin = moment.replace(tzinfo=tz).astimezone(UTC)
        finish = begin + length
        local_finish = finish.astimezone(tz).replace(tzinfo=None)
        if not _exists(moment, tz) or (ranges and begin < ranges[-1][1]) or local_finish > close:
            skipped.append(moment)
        else:
            ranges.append((begin, finish))
        moment += length
    return ranges, skipped


def _check_day(value: date) -> None:
    if not EARLIEST_DAY <= value <= LATEST_DAY:
        raise forms.ValidationError(f"Must be between {EARLIEST_DAY} and {LATEST_DAY}.")


class AnalyticsForm(forms.Form):
    start_date = forms.DateField(validators=[_check_day])
    end_date = forms.DateField(validators=[_check_day])

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        if not self.errors and data["end_date"] < data["start_date"]:
            raise forms.ValidationError("The end date must not be before the start date.")
        if not self.errors and (data["end_date"] - data["start_date"]).days >= 731:
            raise forms.ValidationError("At most 731 days at once.")
        return data


DAY_NAMES = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


class HoursWidget(forms.Widget):
    """Wall-clock windows as rows of start and end inputs (HH:MM; 24:00 ends a day): one row per weekday for
    the weekly hours, or, with ``dated``, one row per date (an override; a date with no window is a day off)
    and two empty rows to add one. Each row has room for one more window than the busiest row has. What it
    reads back is the API's JSON shape (``weekly`` or ``overrides`` of ``/api/hosts/me/availability``), with
    the times as typed: ``availability_clean`` checks them."""

    template_name = "admin/slots/availability/hours_widget.html"

    def __init__(self, *, dated: bool, attrs=None) -> None:
        super().__init__(attrs)
        self.dated = dated

    def rows(self, value: list[dict] | None) -> list[tuple[str, list[dict]]]:
        """(the row's key: a weekday's number or a date, its windows)"""
        value = value if isinstance(value, list) else []
        if self.dated:
            return [(str(o.get("date", "")), list(o.get("windows") or [])) for o in value] + [("", []), ("", [])]
        return [(str(day), [w for w in value if w.get("weekday") == day]) for day in range(7)]

    def get_context(self, name, value, attrs):
        context = super().get_context(name, value, attrs)
        rows = self.rows(value)
        room = max(2, *(len(windows) + 1 for _, windows in rows))
        context["widget"].update(
            dated=self.dated,
            rows=[
                {
                    "index": index,
                    "key": key,
                    "day": None if self.dated else DAY_NAMES[int(key)],
                    "windows": [*windows, *[{}] * (room - len(windows))],
                }
                for index, (key, windows) in enumerate(rows)
            ],
        )
        return context

    def render(self, name, value, attrs=None, renderer=None):
        # The project's template (templates/), which the form renderer's own engine does not search.
        return render_to_string(self.template_name, self.get_context(name, value, attrs))  # safe: a template's

    def value_from_datadict(self, data, files, name) -> list[dict]:
        value = []
        row = 0
        while f"{name}-{row}-0-start" in data:
            windows, column = [], 0
            while f"{name}-{row}-{column}-start" in data:
                start, end = (data.get(f"{name}-{row}-{column}-{key}", "").strip() for key in ("start", "end"))
                if start or end:  # an empty pair is room for another window, not a window
                    windows.append({"start": start, "end": end})
                column += 1
            if not self.dated:
                value += [{"weekday": row, **window} for window in windows]
            elif (day := data.get(f"{name}-{row}-date", "").strip()) or windows:
                value.append({"date": day, "windows": windows})
            row += 1
        return value


class HoursField(forms.Field):
    """The windows as the API takes them: the widget builds the shape, ``availability_clean`` checks it."""

    def __init__(self, *, dated: bool, **kwargs) -> None:
        super().__init__(widget=HoursWidget(dated=dated), required=False, **kwargs)

    def to_python(self, value):
        return value or []


def lengths_text(durations: list[int]) -> str:
    """Appointment lengths as an operator reads and types them: "30, 60"."""
    return ", ".join(str(minutes) for minutes in durations)


class DurationsField(forms.Field):
    """Appointment lengths as an operator types them, "30, 60": the API's list of minutes."""

    widget = forms.TextInput

    def prepare_value(self, value):
        return lengths_text(value) if isinstance(value, list) else value

    def to_python(self, value) -> list:
        words = str(value or "").replace(",", " ").split()
        return [int(word) if word.isdigit() else word for word in words]  # availability_clean refuses a word


class AvailabilityForm(ServiceModelForm):
    """A host's hours, checked by ``availability_clean`` (as the API's are) and written by ``availability_set``: its
    refusal shown at the field it is about (``Tuesday 12:00 to 09:00: Must be after start (12:00).``)."""

    weekly = HoursField(dated=False, label="Weekly hours", help_text="HH:MM to HH:MM; 24:00 ends a day.")
    overrides = HoursField(
        dated=True,
        label="Dates with other hours",
        help_text="Replace that date's weekly hours; a date with no window is a day off (YYYY-MM-DD).",
    )
    durations = DurationsField(
        label="Appointment lengths", required=False, help_text="In minutes, e.g. 30, 60 (5 to 1,440 each)."
    )  # none given: availability_clean says that at least one is needed

    class Meta:
        model = Availability
        fields = ["host", "time_zone", "weekly", "overrides", "durations", "minimum_notice_minutes", "buffer_minutes"]

    # The API's names of the document's fields, and the form's.
    FIELDS = {
        "timeZone": "time_zone",
        "minimumNoticeMinutes": "minimum_notice_minutes",
        "bufferMinutes": "buffer_minutes",
    }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "host" in self.fields:  # on the add page only: a host's availability stays theirs
            cast(forms.ModelChoiceField, self.fields["host"]).queryset = hosts(self.request)
            self.fields["time_zone"].initial = timezone.get_current_timezone_name()

    def write(self, data: dict[str, Any], *, actor: User) -> Availability:
        document: AvailabilityDocument = {
            "timeZone": data["time_zone"],
            "weekly": data["weekly"],
            "overrides": data["overrides"],
            "durations": data["durations"],
            "minimumNoticeMinutes": data["minimum_notice_minutes"],
            "bufferMinutes": data["buffer_minutes"],
        }
        host = data["host"] if "host" in self.fields else self.instance.host  # the add page chooses one
        fields = availability_clean(document)  # a refusal names its place in the document: refused() shows it
        return slots.availability_set(host=host, fields=fields, actor=actor, now=timezone.now())

    def refused(self, error: DomainError) -> None:
        """The validator names a place in the document (``weekly[3].end``); say it as the form shows it."""
        fields = error.details.get("fields")
        if not fields:
            raise forms.ValidationError(error.message)
        for path, problems in fields.items():
            place = PLACE.fullmatch(path)
            assert place is not None  # every path availability_clean names has this shape
            name, where = place.group(1), self._where(*place.groups())
            self.add_error(self.FIELDS.get(name, name), [f"{where}{problem}" for problem in problems])

    def _where(self, name: str, index: str | None, window: str | None) -> str:
        """Where the validator's place is, as the form shows it: "Tuesday 12:00 to 09:00: ", "2026-12-24 13:00
        to 12:00: ", "45x: "."""
        entries = self.cleaned_data.get(name)
        if index is None or not isinstance(entries, list) or int(index) >= len(entries):
            return ""
        entry = entries[int(index)]
        if name == "durations":
            return f"{entry}: "
        if name == "overrides":
            day, windows = entry["date"] or "A row with no date", entry["windows"]
            return f"{day} {_times(windows[int(window)])}: " if window is not None else f"{day}: "
        return f"{DAY_NAMES[entry['weekday']]} {_times(entry)}: "


PLACE = re.compile(r"(\w+)(?:\[(\d+)\])?(?:\.windows\[(\d+)\])?(?:\.\w+)?")


def _times(window: dict) -> str:
    return f"{window.get('start') or '?'} to {window.get('end') or '?'}"
