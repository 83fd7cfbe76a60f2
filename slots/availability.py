"""A host's hours, the document of ``/api/hosts/me/availability`` (docs/contract.md §6, ADR 0014): its time
zone, weekly windows, dated overrides, appointment lengths, notice and buffer, checked whole before anything
is written. The API's serializer and the admin's form check a document here; ``services.availability_set``
writes what they checked.
"""

from __future__ import annotations

import contextlib
import re
import zoneinfo
from datetime import date
from itertools import pairwise
from typing import TypedDict

from core.errors import ValidationFailed, bounded
from slots.models import Availability

MAX_DURATION_MINUTES = 24 * 60
MAX_BUFFER_MINUTES = 24 * 60
MAX_NOTICE_MINUTES = 366 * 24 * 60
_CLOCK = re.compile(r"([01]\d|2[0-3]):([0-5]\d)|24:00")


class AvailabilityDocument(TypedDict):
    """What a host says about their hours: the JSON of ``/api/hosts/me/availability``."""

    timeZone: str
    weekly: list[dict]
    overrides: list[dict]
    durations: list[int]
    minimumNoticeMinutes: int
    bufferMinutes: int


class AvailabilityFields(TypedDict):
    """The document checked, as the model's fields (``availability_clean``): what ``availability_set`` writes."""

    time_zone: str
    weekly: list[dict]
    overrides: list[dict]
    durations: list[int]
    minimum_notice_minutes: int
    buffer_minutes: int


def document_of(availability: Availability) -> AvailabilityDocument:
    """The stored hours as the API's document (its reads, the audit trail's CREATED event)."""
    return {
        "timeZone": availability.time_zone,
        "weekly": availability.weekly,
        "overrides": availability.overrides,
        "durations": availability.durations,
        "minimumNoticeMinutes": availability.minimum_notice_minutes,
        "bufferMinutes": availability.buffer_minutes,
    }


def availability_clean(document: AvailabilityDocument) -> AvailabilityFields:
    """The model's fields for ``document``, checked whole, windows in time order; else a 400 naming the first
    bad field (``weekly[2].end``). The API's ``AvailabilityIn`` and the admin's ``AvailabilityForm`` ask it."""
    zone = document.get("timeZone")
    if not isinstance(zone, str) or zone not in zoneinfo.available_timezones():
        raise ValidationFailed.for_field("timeZone", f"Unknown time zone {zone!r}; an IANA name, e.g. Europe/Berlin.")
    weekly = _list(document.get("weekly"), "weekly")
    for index, window in enumerate(weekly):
        weekday = window.get("weekday") if isinstance(window, dict) else None
        if not isinstance(weekday, int) or isinstance(weekday, bool) or not 0 <= weekday <= 6:
            raise ValidationFailed.for_field(f"weekly[{index}].weekday", "Must be 0 (Monday) to 6 (Sunday).")
    weekly_clean = []
    for weekday in range(7):
        of_day = [(i, w) for i, w in enumerate(weekly) if w["weekday"] == weekday]
        for window in _windows(of_day, "weekly"):
            weekly_clean.append({"weekday": weekday, **window})
    overrides, dates = [], set()
    for index, override in enumerate(_list(document.get("overrides"), "overrides")):
        field = f"overrides[{index}]"
        if not isinstance(override, dict):
            raise ValidationFailed.for_field(field, "Must be an object with date and windows.")
        day = _date(override.get("date"), f"{field}.date")
        if day in dates:
            raise ValidationFailed.for_field(f"{field}.date", f"{day} is overridden twice.")
        dates.add(day)
        windows = _list(override.get("windows"), f"{field}.windows")
        overrides.append({"date": day, "windows": _windows(list(enumerate(windows)), f"{field}.windows")})
    durations = _list(document.get("durations"), "durations")
    if not durations:
        raise ValidationFailed.for_field("durations", "Offer at least one appointment length.")
    for index, minutes in enumerate(durations):
        bounded(minutes, f"durations[{index}]", 5, MAX_DURATION_MINUTES)
    if len(set(durations)) != len(durations):
        raise ValidationFailed.for_field("durations", "Each length once.")
    return {
        "time_zone": zone,
        "weekly": weekly_clean,
        "overrides": sorted(overrides, key=lambda o: o["date"]),
        "durations": sorted(durations),
        "minimum_notice_minutes": bounded(
            document.get("minimumNoticeMinutes", 0), "minimumNoticeMinutes", 0, MAX_NOTICE_MINUTES
        ),
        "buffer_minutes": bounded(document.get("bufferMinutes", 0), "bufferMinutes", 0, MAX_BUFFER_MINUTES),
    }


def _list(value: object, field: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValidationFailed.for_field(field, "Must be a list.")
    if len(value) > 100:
        raise ValidationFailed.for_field(field, "At most 100 entries.")
    return value


def _date(value: object, field: str) -> str:
    if isinstance(value, str) and len(value) == 10:
        with contextlib.suppress(ValueError):
            return date.fromisoformat(value).isoformat()
    raise ValidationFailed.for_field(field, "Must be a date, YYYY-MM-DD.")


def _windows(windows: list[tuple[int, object]], field: str) -> list[dict]:
    """One day's windows (with their index in ``field``), checked and in time order: each ``HH:MM`` to a
    later ``HH:MM`` (``24:00``: the end of the day), none overlapping another (back to back is fine)."""
    clean = []
    for index, window in windows:
        name = f"{field}[{index}]"
        if not isinstance(window, dict):
            raise ValidationFailed.for_field(name, "Must be an object with start and end.")
        start, end = (_clock(window.get(key), f"{name}.{key}") for key in ("start", "end"))
        if start == "24:00":
            raise ValidationFailed.for_field(f"{name}.start", "24:00 ends a day; a window starts before it.")
        if end <= start:
            raise ValidationFailed.for_field(f"{name}.end", f"Must be after start ({start}).")
        clean.append((start, end, name))
    clean.sort()
    for (_, end, _), (start, _, name) in pairwise(clean):
        if start < end:
            raise ValidationFailed.for_field(name, f"Overlaps the window ending at {end}.")
    return [{"start": start, "end": end} for start, end, _ in clean]


def _clock(value: object, field: str) -> str:
    if not isinstance(value, str) or not _CLOCK.fullmatch(value):
        raise ValidationFailed.for_field(field, "Must be a wall-clock time, HH:MM (00:00 to 24:00).")
    return value
