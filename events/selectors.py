"""Reads of events and seats that know about time: an overdue hold counts as available (SPEC 2.2)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db import connection
from django.db.models import Count, IntegerField, OuterRef, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce

from booking_site.accounts.models import User
from events.models import Event, Seat, SeatClaim, SeatHoldGroup

State = SeatHoldGroup.State

AVAILABLE, HELD, BOOKED = "AVAILABLE", "HELD", "BOOKED"


def events_with_counts(*, now: datetime) -> QuerySet[Event]:
    """Events annotated with ``held_seats`` (``available_seats`` follows from it).

    One statement, so the three counts come from one snapshot and always add up to ``total_seats``.
    Its cost does not grow as the event fills: booked seats are a counter on the event row, and the
    held ones are counted on the partial index of live holds (``seat_claim_held_idx``).
    """
    held = (
        SeatClaim.objects.filter(event=OuterRef("pk"), state=State.HELD, expires_at__gt=now)
        .order_by()
        .values("event")
        .annotate(n=Count("*"))
        .values("n")
    )
    # ``Event.available_seats`` is derived from the same row, in Python: repeating the subquery in SQL
    # would run it twice.
    return Event.objects.annotate(held_seats=Coalesce(Subquery(held, output_field=IntegerField()), Value(0)))


def event_with_counts(*, event_id: int, now: datetime) -> Event | None:
    return events_with_counts(now=now).filter(pk=event_id).order_by().first()


def seat_map(*, event: Event, now: datetime) -> list[dict]:
    """Every seat of the event in layout order, with its status: AVAILABLE, HELD or BOOKED."""
    claims = SeatClaim.objects.filter(event=event, state__in=SeatHoldGroup.BLOCKING_STATES).values_list(
        "seat_id", "state", "expires_at"
    )
    status = {
        seat_id: BOOKED if state == State.CONFIRMED else HELD
        for seat_id, state, expires_at in claims
        if state == State.CONFIRMED or expires_at > now
    }
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


def seat_map_json(*, event_id: int, now: datetime) -> SeatMapJSON | None:
    """What ``seat_map`` says, in one statement, with each seat already JSON text built by
    PostgreSQL in layout order. The counts are those of the listed statuses: they always add up.
    None when the event does not exist.

    20,000 seats as Python dicts through a serializer cost a third of a second; here each seat is one
    string the database concatenates (docs/decisions/0008-reads.md). The left join meets at most one
    active claim per seat (``seat_claim_one_active_per_seat``), found on ``seat_claim_active_idx``.
    """
    event, seat, claim = Event._meta.db_table, Seat._meta.db_table, SeatClaim._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT e.id, m.total, m.booked, m.held, m.seats
            FROM {event} e CROSS JOIN LATERAL (
                SELECT COUNT(*) AS total,
                       COUNT(*) FILTER (WHERE status = 'BOOKED') AS booked,
                       COUNT(*) FILTER (WHERE status = 'HELD') AS held,
                       COALESCE(string_agg(
                           '{{"code":' || to_json(code) || ',"section":' || to_json(section)
                           || ',"row":' || "row" || ',"number":' || number || ',"status":"' || status || '"}}',
                           ',' ORDER BY section, "row", number), '') AS seats
                FROM (
                    SELECT s.code, s.section, s."row", s.number,
                           CASE WHEN c.state = 'CONFIRMED' THEN 'BOOKED'
                                WHEN c.expires_at > %(now)s THEN 'HELD'
                                ELSE 'AVAILABLE' END AS status
                    FROM {seat} s
                    LEFT JOIN {claim} c
                      ON c.event_id = s.event_id AND c.seat_id = s.id AND c.state IN ('HELD', 'CONFIRMED')
                    WHERE s.event_id = e.id
                ) statuses
            ) m
            WHERE e.id = %(event)s
            """,
            {"event": event_id, "now": now},
        )
        row = cursor.fetchone()
    return None if row is None else SeatMapJSON(*row)


def best_available_seat_ids(*, event_id: int, quantity: int, now: datetime) -> list[int]:
    """``quantity`` free seats: the first run of that many adjacent seats in one row (front sections and
    rows first); when no row has such a run, the first free seats in layout order. Fewer when fewer are
    free. Reads without locking: the caller locks and checks what it got."""
    seat, claim = Seat._meta.db_table, SeatClaim._meta.db_table
    free = f"""
        SELECT s.id, s.section, s.row, s.number,
               s.number - ROW_NUMBER() OVER (PARTITION BY s.section, s.row ORDER BY s.number) AS run
        FROM {seat} s
        WHERE s.event_id = %(event)s AND NOT EXISTS (
            SELECT 1 FROM {claim} c
            WHERE c.seat_id = s.id AND c.state IN ('HELD', 'CONFIRMED')
              AND (c.state = 'CONFIRMED' OR c.expires_at > %(now)s))
    """
    params = {"event": event_id, "now": now, "quantity": quantity}
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH free AS ({free}),
            block AS (
                SELECT section, row, run FROM free GROUP BY section, row, run
                HAVING COUNT(*) >= %(quantity)s ORDER BY section, row, MIN(number) LIMIT 1)
            SELECT f.id FROM free f JOIN block b USING (section, row, run) ORDER BY f.number LIMIT %(quantity)s
            """,
            params,
        )
        ids = [row[0] for row in cursor.fetchall()]
        if len(ids) == quantity:
            return ids
        cursor.execute(f"{free} ORDER BY s.section, s.row, s.number LIMIT %(quantity)s", params)
        return [row[0] for row in cursor.fetchall()]


def hold_groups_visible_to(user: User) -> QuerySet[SeatHoldGroup]:
    groups = SeatHoldGroup.objects.select_related("event", "user")
    return groups if user.is_staff else groups.filter(user=user)


def group_seat_codes(group: SeatHoldGroup) -> list[str]:
    return list(
        Seat.objects.filter(claims__group=group).order_by("section", "row", "number").values_list("code", flat=True)
    )
