"""Reads of events and seats that know about time: an overdue hold counts as available (docs/contract.md §2.2)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime

import orjson
from cachetools import LRUCache
from django.db.models import Count, IntegerField, OuterRef, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce
from psycopg import sql

from core import claims
from core.claims import column
from core.statements import P, Statement, table
from events.models import Event, Seat, SeatClaim, SeatHoldGroup

AVAILABLE, HELD, BOOKED = "AVAILABLE", "HELD", "BOOKED"


def live_seat_holds(*, now: datetime) -> QuerySet[SeatClaim]:
    """The seat claims held and not overdue at ``now``: the held seats of the counts (an overdue hold is
    free, docs/contract.md §2.2), on the partial index of live holds (``seat_claim_held_idx``)."""
    return SeatClaim.objects.filter(claims.LIVE_HOLDS.q(SeatClaim, now=now))


def events_with_counts(*, now: datetime) -> QuerySet[Event]:
    """Events annotated with ``held_seats`` (``available_seats`` follows from it).

    One statement, so the three counts come from one snapshot and always add up to ``total_seats``.
    Its cost does not grow as the event fills: booked seats are a counter on the event row, and the
    held ones are counted on the partial index of live holds (``seat_claim_held_idx``).
    """
    held = (
        live_seat_holds(now=now)
        .filter(event=OuterRef("pk"))
        .order_by()
        .values("event")
        .annotate(n=Count("*"))
        .values("n")
    )
    # ``Event.available_seats`` is derived from the same row, in Python: repeating the subquery in SQL
    # would run it twice.
    held_seats = Coalesce(Subquery(held, output_field=IntegerField()), Value(0))
    # Django refuses an annotation named like a field; Event.held_seats only declares this one, for its type.
    return Event.objects.annotate(held_seats=held_seats)  # type: ignore[no-redef]  # django-stubs: not a field


def event_with_counts(*, event_id: int, now: datetime) -> Event | None:
    return events_with_counts(now=now).filter(pk=event_id).order_by().first()


# The one rule of a seat's status, for the admin's seat map and the API's: BOOKED under a confirmed claim,
# HELD under a live hold (an overdue hold frees its seat: docs/contract.md §2.2), AVAILABLE under neither.
CLAIMED_STATUSES = ((BOOKED, claims.CONFIRMED), (HELD, claims.LIVE_HOLDS))

_CLAIMED_SEATS = Statement(
    sql.SQL(
        "SELECT {statuses} FROM {event_table} e LEFT JOIN {claim_table} c ON {claim_event} = {event_id} AND {active} "
        "WHERE {event_id} = {event} GROUP BY {event_id}"
    ).format(
        statuses=sql.SQL(", ").join(
            sql.SQL("COALESCE(array_agg({seat}) FILTER (WHERE {rows}), '{{}}')").format(
                seat=column(SeatClaim, "seat", "c"), rows=rows.sql(SeatClaim, "c")
            )
            for _, rows in CLAIMED_STATUSES
        ),
        event_table=table(Event),
        claim_table=table(SeatClaim),
        claim_event=column(SeatClaim, "event", "c"),
        event_id=column(Event, "id", "e"),
        active=claims.BLOCKING.sql(SeatClaim, "c"),
        event=P("event"),
    )
)


def claimed_seats(*, event_id: int, now: datetime) -> dict[str, list[int]] | None:
    """The ids of the event's seats in each status of ``CLAIMED_STATUSES`` at ``now``; None when the event does
    not exist. One statement, from the event's active claims (``seat_claim_active_idx``; at most one per seat,
    ``seat_claim_one_active_per_seat``)."""
    row = _CLAIMED_SEATS.fetchone({"event": event_id, "now": now})
    return None if row is None else {status: ids for (status, _), ids in zip(CLAIMED_STATUSES, row, strict=True)}


def _status_of(claimed: dict[str, list[int]]) -> dict[int, str]:
    """Each claimed seat's status; a seat not in it is AVAILABLE."""
    return {seat: status for status, seats in claimed.items() for seat in seats}


def seat_map(*, event: Event, now: datetime) -> list[dict]:
    """Every seat of the event in layout order, with its status (``CLAIMED_STATUSES``): the admin's seat map."""
    status = _status_of(claimed_seats(event_id=event.pk, now=now) or {})
    seats = Seat.objects.filter(event=event).order_by("section", "row", "number")
    return [
        {"id": pk, "code": code, "section": section, "row": row, "number": number, "status": status.get(pk, AVAILABLE)}
        for pk, code, section, row, number in seats.values_list("pk", "code", "section", "row", "number")
    ]


@dataclass(frozen=True)
class SeatMapJSON:
    """The seat map at ``now``: the counts of the statuses listed, and the seats as JSON text (the
    ``seats`` array of ``SeatMapOut`` without its brackets)."""

    event_id: int
    total: int
    booked: int
    held: int
    seats: str

    @property
    def available(self) -> int:
        return self.total - self.booked - self.held


@dataclass(frozen=True)
class SeatLayoutJSON:
    """Every seat of an event in layout order: its id, and its JSON up to the status
    (``{"code":"A-1-1","section":"A","row":1,"number":1,"status":"``)."""

    seat_ids: tuple[int, ...]
    fixed: tuple[str, ...]


# Seats never change once their event exists (they are created with it, in its transaction, and no
# service or admin page edits them), so each process reads an event's layout once.
_layouts: LRUCache[int, SeatLayoutJSON] = LRUCache(maxsize=16)  # 20,000 seats: about 2 MB each
_layouts_lock = threading.Lock()


def seat_layout_json(*, event_id: int) -> SeatLayoutJSON:
    """The event's layout, read once per process (``_layouts``); an event without seats is not kept."""
    with _layouts_lock:
        layout = _layouts.get(event_id)
    if layout is not None:
        return layout
    seats = Seat.objects.filter(event_id=event_id).order_by("section", "row", "number")
    ids, fixed = [], []
    for pk, code, section, row, number in seats.values_list("pk", "code", "section", "row", "number"):
        ids.append(pk)
        fixed.append(f'{{"code":{_json(code)},"section":{_json(section)},"row":{row},"number":{number},"status":"')
    layout = SeatLayoutJSON(tuple(ids), tuple(fixed))
    if ids:
        with _layouts_lock:
            _layouts[event_id] = layout
    return layout


def _json(text: str) -> str:
    return orjson.dumps(text).decode()  # the renderer's own escaping (web.renderers)


_STATUS_JSON = {BOOKED: 'BOOKED"}', HELD: 'HELD"}', AVAILABLE: 'AVAILABLE"}'}


def seat_map_json(*, event_id: int, now: datetime) -> SeatMapJSON | None:
    """What ``seat_map`` says, as the JSON text the API sends; None when the event does not exist.

    One statement per read (``claimed_seats``). The fixed part of each seat's JSON comes from
    ``seat_layout_json``, read once. The counts are those of the statuses listed, so they always add up.
    20,000 seats as dicts through a serializer cost a third of a second; building their JSON in PostgreSQL
    on every read 40 to 130 ms; this, 4 to 12 ms (docs/decisions/0008-reads.md).
    """
    claimed = claimed_seats(event_id=event_id, now=now)
    if claimed is None:
        return None
    status = _status_of(claimed)
    layout = seat_layout_json(event_id=event_id)  # after the event was seen: its seats committed with it
    seats = ",".join(
        fixed + _STATUS_JSON[status.get(pk, AVAILABLE)] for pk, fixed in zip(layout.seat_ids, layout.fixed, strict=True)
    )
    return SeatMapJSON(event_id, len(layout.seat_ids), len(claimed[BOOKED]), len(claimed[HELD]), seats)


def group_seat_codes(group: SeatHoldGroup) -> list[str]:
    """The seats of the group as it stands, in layout order: its claims in its own state (a booking's
    seats cancelled on their own are no longer its seats; a cancelled booking's are all it had)."""
    return list(
        Seat.objects.filter(claims__group=group, claims__state=group.state)
        .order_by("section", "row", "number")
        .values_list("code", flat=True)
    )
