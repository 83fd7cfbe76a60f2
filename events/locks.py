"""The events' row locks, each at its place in the one order of core/locking.py (2, 2b, 3, 5)."""

from __future__ import annotations

from datetime import datetime

from django.db import connection
from psycopg import sql

from core import locking
from core.claims import column
from core.statements import P, Statement, table
from events.models import Event, EventQueue, QueueEntry, Seat
from web.accounts.models import User


def share_event(event_id: int) -> Event | None:
    """The event of a seat hold, ``FOR KEY SHARE``: the hold reads ``sales_open`` after a close committed,
    and a close waits for the holds in flight (see the module docstring)."""
    locking.require_transaction("share_event")
    return next(iter(locking.lock_rows(Event, [event_id], locking.KEY_SHARE)), None)


def lock_event(event_id: int) -> Event | None:
    """The event row for an edit of its details, ``FOR NO KEY UPDATE`` (holds go on meanwhile)."""
    locking.require_transaction("lock_event")
    return next(iter(locking.lock_rows(Event, [event_id], locking.NO_KEY_UPDATE)), None)


def lock_event_sales(event_id: int) -> Event | None:
    """The event row for opening or closing sales, ``FOR UPDATE``: waits for the holds in flight."""
    locking.require_transaction("lock_event_sales")
    return next(iter(locking.lock_rows(Event, [event_id], locking.UPDATE)), None)


_TAKE_QUEUE_NUMBER = Statement(
    sql.SQL(
        "INSERT INTO {} AS q ({}, {}, {}, {}) VALUES ({}, 1, 0, {}) "
        "ON CONFLICT ({}) DO UPDATE SET {} = {} + 1 RETURNING {}, {}"
    ).format(
        table(EventQueue),
        column(EventQueue, "event"),
        column(EventQueue, "joined"),
        column(EventQueue, "admitted_through"),
        column(EventQueue, "credit_from"),
        P("event"),
        P("now"),
        column(EventQueue, "event"),
        column(EventQueue, "joined"),
        column(EventQueue, "joined", "q"),
        column(EventQueue, "joined", "q"),
        column(EventQueue, "admitted_through", "q"),
    )
)


def take_queue_number(event_id: int, *, now: datetime) -> tuple[int, int]:
    """The next number of the event's queue (its row is created by the first join), by moving the
    queue's counter, and the queue's ``admitted_through`` under that lock: the row stays locked ``FOR
    NO KEY UPDATE`` until the join commits, so the next join's number waits for this one's entry, and
    the entries commit in number order. One statement composed once."""
    locking.require_transaction("take_queue_number")
    number, admitted_through = _TAKE_QUEUE_NUMBER.fetchone({"event": event_id, "now": now})
    return number, admitted_through


_QUEUE_FIELDS, _EVENT_FIELDS = EventQueue._meta.concrete_fields, Event._meta.concrete_fields


# The queue row with its event's columns (read, not locked: ``OF q``).
_LOCK_EVENT_QUEUE = Statement(
    sql.SQL("SELECT {}, {} FROM {} q JOIN {} e ON {} = {} WHERE {} = {} FOR NO KEY UPDATE OF q").format(
        sql.SQL(", ").join(column(EventQueue, f.name, "q") for f in _QUEUE_FIELDS),
        sql.SQL(", ").join(column(Event, f.name, "e") for f in _EVENT_FIELDS),
        table(EventQueue),
        table(Event),
        column(Event, "id", "e"),
        column(EventQueue, "event", "q"),
        column(EventQueue, "event", "q"),
        P("event"),
    )
)


def lock_event_queue(event_id: int) -> EventQueue | None:
    """One event's queue row with its event (read, not locked), ``FOR NO KEY UPDATE``, for an admission
    run: it waits for the joins in flight, and two runs on one queue take turns. One statement composed
    once."""
    locking.require_transaction("lock_event_queue")
    row = _LOCK_EVENT_QUEUE.fetchone({"event": event_id})
    if row is None:
        return None
    queue = EventQueue.from_db(connection.alias, [f.attname for f in _QUEUE_FIELDS], row[: len(_QUEUE_FIELDS)])
    queue.event = Event.from_db(connection.alias, [f.attname for f in _EVENT_FIELDS], row[len(_QUEUE_FIELDS) :])
    return queue


def lock_seats(
    *, event_id: int, seat_ids: list[int] | None = None, codes: list[str] | None = None, **annotations
) -> list[Seat]:
    """The named seats of one event (by id or by code); returns the seats that exist. ``annotations``
    are read by the same statement, from its snapshot (as in ``lock_car``)."""
    locking.require_transaction("lock_seats")
    seats = Seat.objects.select_for_update(no_key=True, of=("self",)).filter(event_id=event_id)
    if seat_ids is not None:
        seats = seats.filter(pk__in=seat_ids)
    elif codes is not None:
        seats = seats.filter(code__in=codes)
    else:
        raise TypeError("lock_seats needs seat_ids or codes")
    return list(seats.annotate(**annotations).order_by("pk"))


_EVENT, _SEAT, _CLAIM = Event._meta.db_table, Seat._meta.db_table, "events_seatclaim"


# A seat is taken at %(at)s when an active claim is on it (an overdue hold is not: docs/contract.md §2.2).
_TAKEN = f"""EXISTS (
    SELECT FROM {_CLAIM} c
    WHERE c.event_id = s.event_id AND c.seat_id = s.id AND c.state IN ('HELD', 'CONFIRMED')
      AND (c.state = 'CONFIRMED' OR c.expires_at > %(at)s))"""  # on seat_claim_active_idx


# The event first, FOR KEY SHARE (MATERIALIZED, and read by the outer query before the seats, so its
# lock is taken first: an event that does not exist locks no seat). Its columns are those of the row
# locked: READ COMMITTED re-reads a row it waited for, so a close of sales that committed is seen.
_EVENT_COLUMNS = ("sales_open", "event_date", "hold_minutes", "waiting_count", "queue_enabled")  # what a hold judges


_SHARED_EVENT = f"""event AS MATERIALIZED (
    SELECT id, {", ".join(_EVENT_COLUMNS)} FROM {_EVENT} WHERE id = %(event)s {{lock_before}} FOR KEY SHARE)"""


# While the event's queue is on: whether the hold's X-Queue-Token is an entry of its user admitted at
# %(at)s (read, not locked: one probe of the token's unique index; nothing at all when the queue is off).
_ADMITTED = f"""e.queue_enabled AND EXISTS (
    SELECT FROM {QueueEntry._meta.db_table} q
    WHERE q.token = %(queue_token)s AND q.event_id = e.id AND q.user_id = %(queue_user)s
      AND q.state = 'ADMITTED' AND q.admitted_until > %(at)s)"""


# The holder's user row first (order 1: the cap on a user's held seats), as the event's condition: an
# uncorrelated sub-select, so it runs once, before the event's row is locked.
_HOLDER = f"""holder AS MATERIALIZED (
    SELECT id FROM {User._meta.db_table} WHERE id = %(holder)s FOR NO KEY UPDATE), """


def _shared_event(holder: int | None) -> str:
    """The event CTE, after the holder's lock when ``holder`` is given."""
    if holder is None:
        return _SHARED_EVENT.format(lock_before="")
    return _HOLDER + _SHARED_EVENT.format(lock_before="AND EXISTS (SELECT FROM holder)")


# The outer query: the event's row, then each seat locked (none: one row of NULLs) with ``taken``.
_EVENT_AND_SEATS = f"""
    SELECT e.id, {", ".join(f"e.{c}" for c in _EVENT_COLUMNS)}, {_ADMITTED}, %(free)s, s.id, s.code, {_TAKEN}
    FROM event e LEFT JOIN seats s ON true ORDER BY s.id"""


def _admission(admission: tuple[str, int] | None) -> dict:
    token, user = admission or (None, None)
    return {"queue_token": token, "queue_user": user}


def _event_and_seats(sql: str, params: dict) -> tuple[Event | None, list[Seat], tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    if not rows:
        return None, [], (0, False)
    # The first row: the event's id and columns, whether the hold is admitted, and the two free figures.
    n = len(_EVENT_COLUMNS)
    event_id, columns, admitted, free = rows[0][0], rows[0][1 : 1 + n], rows[0][1 + n], rows[0][2 + n : 4 + n]
    event = Event(pk=event_id, **dict(zip(_EVENT_COLUMNS, columns, strict=True)))
    event.admitted = bool(admitted)
    seats = []
    for *_, seat_id, code, taken in rows:
        if seat_id is not None:
            seat = Seat(pk=seat_id, event_id=event_id, code=code)
            seat.taken = taken
            seats.append(seat)
    return event, seats, tuple(free)


def share_event_lock_seats(
    event_id: int,
    *,
    codes: list[str],
    taken_at: datetime,
    holder: int | None = None,
    admission: tuple[str, int] | None = None,
) -> tuple[Event | None, list[Seat]]:
    """A seat hold by codes, in one statement: the ``holder``'s user row when given (as ``lock_user``),
    the event ``FOR KEY SHARE`` (as ``share_event``), then its seats named by ``codes`` ``FOR NO KEY
    UPDATE`` in id order (as ``lock_seats``). Each seat says whether it was ``taken`` at ``taken_at``,
    read from the statement's snapshot: from before any wait for the seat locks, so good enough to
    refuse, never to grant. (None, []) when the event is missing. ``admission`` (token, user id): the
    event says whether that is an admitted entry of its queue (``admitted``; false when none is given),
    when its queue is on."""
    locking.require_transaction("share_event_lock_seats")
    sql = f"""
        WITH {_shared_event(holder)}, seats AS MATERIALIZED (
            SELECT s.id, s.event_id, s.code FROM {_SEAT} s
            WHERE s.event_id = (SELECT id FROM event) AND s.code = ANY(%(codes)s::text[])
            ORDER BY s.id FOR NO KEY UPDATE
        ) {_EVENT_AND_SEATS.replace("%(free)s", "NULL, NULL")}"""
    params = {"event": event_id, "codes": list(codes), "at": taken_at, "holder": holder, **_admission(admission)}
    event, seats, _ = _event_and_seats(sql, params)
    return event, seats


def share_event_lock_free_seats(
    event_id: int,
    *,
    quantity: int,
    window: int,
    free_at: datetime,
    skip_locked: bool,
    holder: int | None = None,
    lock_seats: bool = True,
    admission: tuple[str, int] | None = None,
) -> tuple[Event | None, list[Seat], tuple[int, bool]]:
    """A best-available seat hold, in one statement: the ``holder``'s user row when given, the event
    ``FOR KEY SHARE``, then up to ``window``
    of its seats free at ``free_at`` by the statement's snapshot, those in a run of ``quantity``
    adjacent free seats of one row first, front sections and rows first, ``FOR NO KEY UPDATE``.
    ``skip_locked``: in that order, passing over the seats others hold locked (it never waits, so its
    order cannot close a circle); otherwise waiting for them, in id order. Returns the event, the seats
    locked (id order; ``taken`` read from the snapshot, as in ``share_event_lock_seats``) and what the
    snapshot says: how many seats are free, and whether a run of ``quantity`` adjacent ones is.
    ``lock_seats`` off: the seats are read, not locked (a waiting-list offer, made under the event's
    lock, ``freed_events_lock_sql``: its claims' insert is the arbiter with a hold in flight, and it waits
    for no seat, so it cannot wait in a circle; docs/decisions/0016-waiting-list.md)."""
    locking.require_transaction("share_event_lock_free_seats")
    free_and_adjacent = "(SELECT COUNT(*) FROM free), EXISTS (SELECT FROM free WHERE n >= %(quantity)s)"
    # ``free``: each free seat with the length of its run (free seats numbered one after the other in a
    # row); ``preferred``: the first of them in order of preference, a bounded sort, far more than
    # ``window`` so that skipping the seats others hold locked still leaves enough (else: pick again).
    if not lock_seats:
        locked = f"""
            SELECT s.id, s.event_id, s.code FROM {_SEAT} s JOIN preferred p ON p.id = s.id
            ORDER BY p.short, p.section, p.row, p.number LIMIT %(window)s"""
    elif skip_locked:
        locked = f"""
            SELECT s.id, s.event_id, s.code FROM {_SEAT} s JOIN preferred p ON p.id = s.id
            ORDER BY p.short, p.section, p.row, p.number LIMIT %(window)s FOR NO KEY UPDATE OF s SKIP LOCKED"""
    else:
        locked = f"""
            SELECT s.id, s.event_id, s.code FROM {_SEAT} s
            WHERE s.id IN (SELECT id FROM preferred ORDER BY short, section, row, number LIMIT %(window)s)
            ORDER BY s.id FOR NO KEY UPDATE"""
    sql = f"""
        WITH {_shared_event(holder)}, free AS MATERIALIZED (
            SELECT id, section, row, number, COUNT(*) OVER (PARTITION BY section, row, run) AS n FROM (
                SELECT s.id, s.section, s.row, s.number,
                       s.number - ROW_NUMBER() OVER (PARTITION BY s.section, s.row ORDER BY s.number) AS run
                FROM {_SEAT} s WHERE s.event_id = (SELECT id FROM event) AND NOT {_TAKEN}
            ) numbered
        ), preferred AS MATERIALIZED (
            SELECT id, n < %(quantity)s AS short, section, row, number FROM free
            ORDER BY n < %(quantity)s, section, row, number LIMIT %(reach)s
        ), seats AS MATERIALIZED ({locked}
        ) {_EVENT_AND_SEATS.replace("%(free)s", free_and_adjacent)}"""
    params = {
        "event": event_id,
        "quantity": quantity,
        "window": window,
        "reach": 8 * window,
        "at": free_at,
        "holder": holder,
        **_admission(admission),
    }
    return _event_and_seats(sql, params)


def freed_events_lock_sql(events: sql.Composable) -> sql.Composable:
    """The events of the hold groups a transition frees (a release, an expiry, a cancel), as a
    sub-statement of the transition's own statement (``events``: a sub-select of their ids): ``FOR NO KEY
    UPDATE`` in id order, returning each ``waiting_count`` as it is once the lock is held (READ COMMITTED
    re-reads a row it waited for). It serializes the seats freed with the waiting list: a join, a
    leave and every offer take the same lock, so a freed seat is offered to the head of the list that
    every join before it committed, and two releases offer one after the other, in list order
    (docs/decisions/0016-waiting-list.md). The seam a race control replaces (the transitions' statements
    are cached by this function)."""
    return sql.SQL("SELECT id, {} FROM {} WHERE id IN ({}) ORDER BY id FOR NO KEY UPDATE").format(
        column(Event, "waiting_count"), table(Event), events
    )
