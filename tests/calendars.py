"""Reading calendar files back, as two independent parsers do: ``icalendar`` (which wrote them) and
``vobject``. A test compares what both read, so a line only one of them gets right fails."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import icalendar
import vobject


@dataclass(frozen=True)
class Read:
    uid: str
    start: datetime
    end: datetime
    stamp: datetime
    summary: str
    location: str | None
    description: str
    status: str
    sequence: int


def read_both(body: bytes) -> list[Read]:
    """The VEVENTs of ``body`` as each parser reads them; asserts that the two agree."""
    first, second = _icalendar(body), _vobject(body)
    assert first == second
    return first


def read_one(body: bytes) -> Read:
    [event] = read_both(body)
    return event


def _icalendar(body: bytes) -> list[Read]:
    calendar = icalendar.Calendar.from_ical(body)
    return [
        Read(
            uid=str(event["UID"]),
            start=event.decoded("DTSTART"),
            end=event.decoded("DTEND"),
            stamp=event.decoded("DTSTAMP"),
            summary=str(event["SUMMARY"]),
            location=str(event["LOCATION"]) if "LOCATION" in event else None,
            description=str(event["DESCRIPTION"]),
            status=str(event["STATUS"]),
            sequence=int(event["SEQUENCE"]),
        )
        for event in calendar.walk("VEVENT")
    ]


def _vobject(body: bytes) -> list[Read]:
    calendar = vobject.readOne(body.decode("utf-8"))
    return [
        Read(
            uid=event.uid.value,
            start=_utc(event.dtstart.value),
            end=_utc(event.dtend.value),
            stamp=_utc(event.dtstamp.value),
            summary=event.summary.value,
            location=event.location.value if hasattr(event, "location") else None,
            description=event.description.value,
            status=event.status.value,
            sequence=int(event.sequence.value),
        )
        for event in getattr(calendar, "vevent_list", [])
    ]


def _utc(moment: datetime) -> datetime:
    assert moment.utcoffset() is not None and moment.utcoffset().total_seconds() == 0, moment  # UTC, "Z"
    return moment.astimezone(UTC)
