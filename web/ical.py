"""Calendar files (RFC 5545) of bookings and the private feed (docs/contract.md §3.8,
docs/decisions/0019-calendar-and-exports.md).

A domain describes each of its bookings as an ``Entry`` and registers, in its AppConfig.ready(), the
entries of one user's feed (``register``); this module writes them with ``icalendar`` (folding, escaping,
UTC times: never hand-written lines), counts their revisions from the audit trail, and gives the API
views their renderer. It imports no domain.

SEQUENCE is read from the audit trail, not kept in a version column: every change of a claim already
records one append-only audit event in its own transaction (a trigger refuses rewrites), so the count
of a booking's events — plus the UPDATED events of its event or slot that changed what the file shows —
only ever grows, and grows with each change, whichever write path made it (but for a reminder,
``core.reminders``: an event of the booking that changes nothing the file shows). A version
column would be one more thing every lean write statement of the claim engine must remember to move.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import reduce
from operator import or_

import icalendar
from django.conf import settings
from django.db.models import Count, Max, Q
from drf_spectacular.types import OpenApiTypes
from rest_framework import renderers
from rest_framework.response import Response
from rest_framework.views import APIView

from core.audit.models import AuditEvent
from core.errors import Conflict
from core.reminders import REMINDED
from web.accounts.models import User
from web.renderers import JSONRenderer
from web.schema import ApiSchema

PRODID = "-//booking_site//bookings//EN"
UID_DOMAIN = "booking-site"  # the right-hand side of every UID: the same for every download, forever
FEED_AHEAD = timedelta(days=365)  # the feed lists bookings at most a year ahead (docs/contract.md §3.8)
CONFIRMED, CANCELLED = "CONFIRMED", "CANCELLED"


class BookingNotConfirmed(Conflict):
    """A hold (HELD, PENDING) is not in anyone's calendar yet, and one that lapsed never was."""

    code = "booking_not_confirmed"

    def __init__(self, *, what: str, state: str):
        super().__init__(
            f"{what} is {state}: only a confirmed or cancelled booking has a calendar file.", details={"status": state}
        )


@dataclass(frozen=True)
class Entry:
    """One booking as a calendar shows it: one VEVENT."""

    uid: str
    start: datetime
    end: datetime
    summary: str
    location: str
    description: str
    cancelled: bool
    sequence: int  # RFC 5545 §3.8.7.4: grows with each change, so a calendar updates the entry
    stamp: datetime  # the last change: DTSTAMP and LAST-MODIFIED, so an unchanged booking gives the same bytes


def uid(kind: str, ident: object) -> str:
    """A booking's UID: the same for every download of it (RFC 5545 §3.8.4.7)."""
    return f"{kind}-{ident}@{UID_DOMAIN}"


def event_end(start: datetime) -> datetime:
    """The end of something that has only a start (an event): ``CALENDAR_EVENT_DURATION_MINUTES`` later."""
    return start + timedelta(minutes=settings.CALENDAR_EVENT_DURATION_MINUTES)


def document(entries: Iterable[Entry], *, name: str | None = None) -> bytes:
    """The calendar of ``entries`` (a feed names itself with ``name``), UTF-8 bytes."""
    calendar = icalendar.Calendar()
    calendar.add("prodid", PRODID)
    calendar.add("version", "2.0")
    calendar.add("calscale", "GREGORIAN")
    if name is not None:
        calendar.add("x-wr-calname", name)
    for entry in entries:
        event = icalendar.Event()
        event.add("uid", entry.uid)
        event.add("dtstamp", entry.stamp.astimezone(UTC))
        event.add("last-modified", entry.stamp.astimezone(UTC))
        event.add("dtstart", entry.start.astimezone(UTC))
        event.add("dtend", entry.end.astimezone(UTC))
        event.add("summary", entry.summary)
        if entry.location:
            event.add("location", entry.location)
        event.add("description", entry.description)
        event.add("status", CANCELLED if entry.cancelled else CONFIRMED)
        event.add("sequence", entry.sequence)
        calendar.add_component(event)
    return calendar.to_ical()


def etag(body: bytes) -> str:
    """A strong validator of a feed's bytes (the same bookings, unchanged, give the same bytes)."""
    return f'"{hashlib.sha256(body).hexdigest()[:32]}"'


# --- revisions: SEQUENCE and DTSTAMP from the audit trail -------------------------------------------


@dataclass(frozen=True)
class Revision:
    changes: int  # audit events counted
    last: datetime | None  # when the last of them happened


def revisions(
    *, claims: dict[str, Collection[str]], places: dict[str, Collection[str]], place_fields: Collection[str]
) -> dict[tuple[str, str], Revision]:
    """The audit events of many subjects in one statement, by ``(subject_type, subject_id)``: every event
    of each claim (subject type → ids) but its reminder, and each place's (an event's, a slot's) UPDATED events that
    changed one of ``place_fields`` (what the calendar shows of it)."""
    wanted = [
        Q(subject_type=kind, subject_id__in=list(ids)) & ~Q(event_type=REMINDED) for kind, ids in claims.items() if ids
    ]
    shown = reduce(or_, (Q(metadata__fields__contains=[name]) for name in place_fields))
    wanted += [
        Q(subject_type=kind, subject_id__in=list(ids), event_type="UPDATED") & shown
        for kind, ids in places.items()
        if ids
    ]
    if not wanted:
        return {}
    rows = (
        AuditEvent.objects.filter(reduce(or_, wanted))
        .order_by()
        .values_list("subject_type", "subject_id")
        .annotate(changes=Count("id"), last=Max("occurred_at"))
    )
    return {(kind, ident): Revision(changes, last) for kind, ident, changes, last in rows}


def revised(*found: Revision | None, since: datetime) -> tuple[int, datetime]:
    """SEQUENCE and DTSTAMP of an entry from the revisions of its subjects: the changes after the first
    (the creation is revision 0), and the last change (``since`` when none is recorded)."""
    present = [revision for revision in found if revision is not None]
    changes = sum(revision.changes for revision in present)
    last = max((revision.last for revision in present if revision.last is not None), default=since)
    return max(0, changes - 1), max(last, since)


# --- the feed: each domain's entries of one user -----------------------------------------------------


@dataclass(frozen=True)
class Window:
    """What a feed lists: bookings starting from ``since`` to ``until``; cancelled ones only when they
    were cancelled from ``cancelled_since`` on."""

    since: datetime
    until: datetime
    cancelled_since: datetime

    @classmethod
    def at(cls, now: datetime) -> Window:
        back = now - timedelta(days=settings.CALENDAR_FEED_PAST_DAYS)
        return cls(since=back, until=now + FEED_AHEAD, cancelled_since=back)


FeedEntries = Callable[[User, Window], list[Entry]]

_sources: dict[str, FeedEntries] = {}


def register(domain: str, entries: FeedEntries) -> None:
    """A domain's part of every user's feed: its bookings of ``user`` in the window."""
    _sources[domain] = entries


def feed_entries(user: User, *, now: datetime) -> list[Entry]:
    """Every domain's entries of ``user``, soonest first (the same order for the same bookings)."""
    window = Window.at(now)
    entries = [entry for _, source in sorted(_sources.items()) for entry in source(user, window)]
    return sorted(entries, key=lambda entry: (entry.start, entry.uid))


# --- the API's side ------------------------------------------------------------------------------------


class CalendarRenderer(renderers.BaseRenderer):
    """``text/calendar``: the bytes a calendar view made with ``document``."""

    media_type, format, charset = "text/calendar", "ics", "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return data


class CalendarSchema(ApiSchema):
    """A calendar view's schema: its 200 is ``text/calendar``, its refusals JSON, as they are sent."""

    def _get_response_for_code(self, serializer, status_code, media_types=None, direction="response"):
        if media_types is None and str(status_code).isdigit() and int(status_code) >= 400:
            media_types = [JSONRenderer.media_type]
        return super()._get_response_for_code(serializer, status_code, media_types, direction)


def calendar_response(body: bytes, *, filename: str) -> Response:
    """A calendar view's answer: ``body`` (from ``document``), as a file a browser saves as ``filename``."""
    return Response(body, headers={"Content-Disposition": f'attachment; filename="{filename}"'})


CALENDAR_RESPONSE = {(200, CalendarRenderer.media_type): OpenApiTypes.STR}


class CalendarView(APIView):
    """A view answering a calendar file: ``Accept: text/calendar`` (or anything) is served, and every
    refusal still answers in the JSON envelope (docs/contract.md §3.2), whatever was accepted."""

    renderer_classes = [CalendarRenderer, JSONRenderer]
    schema = CalendarSchema()

    def finalize_response(self, request, response, *args, **kwargs):
        if not isinstance(getattr(response, "data", None), bytes):
            request.accepted_renderer, request.accepted_media_type = JSONRenderer(), JSONRenderer.media_type
        return super().finalize_response(request, response, *args, **kwargs)
