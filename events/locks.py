"""The events' row locks, each at its place in the one order of core/locking.py (2, 2b, 3, 5)."""

from __future__ import annotations

from datetime import datetime

from django.db import connection
from psycopg import sql

from core import locking
from core.claims import column
from core.statements import P, Statement, table
from events.models import Event, EventQueue, Seat


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


# What a seat hold judges of its event: read from the statement's snapshot (``seen``) and again from the
# row its lock returns (READ COMMITTED returns a row's newest version once it is locked).
HOLD_EVENT_COLUMNS = ("sales_open", "event_date", "hold_minutes", "waiting_count", "queue_enabled")


def hold_event_sql(*, lock_before: sql.Composable | None = None) -> sql.Composable:
    """What a seat hold reads of its event (``%(event)s``): ``HOLD_EVENT_COLUMNS``, as a sub-select of the
    hold's one statement. Without ``lock_before``, read from the statement's snapshot; with it, ``FOR KEY
    SHARE``, a ``WITH`` sub-statement returning the row's newest version: a close of
    sales (``FOR UPDATE``) that committed is seen, one in flight is waited for; ``lock_before`` is a condition
    reading the lock before it in the order (the holder's), so that lock is held first. The seam a race
    control replaces (the statements are cached by this function)."""
    read = sql.SQL("SELECT {}, {} FROM {} WHERE {} = {}").format(
        column(Event, "id"),
        sql.SQL(", ").join(column(Event, name) for name in HOLD_EVENT_COLUMNS),
        table(Event),
        column(Event, "id"),
        P("event"),
    )
    return read if lock_before is None else sql.SQL("{} AND {} FOR KEY SHARE").format(read, lock_before)


# How a seat hold takes its seats' locks (``seat_locks_sql``).
WAIT, SKIP, READ = "wait", "skip", "read"


def seat_locks_sql(candidates: str, *, how: str, lock_before: sql.Composable) -> sql.Composable:
    """A seat hold's seats, as a ``WITH`` sub-statement of its one statement: the rows of the sub-statement
    ``candidates`` (their ``id``, ``seq``, the claim sequence its snapshot read, and the order of preference
    ``short, section, row, number``), up to ``%(window)s`` of them, returning ``id`` and ``claim_seq`` of
    each row's newest version once locked (``locking.fresh_sql`` compares it with ``seq``). ``how``:
    ``WAIT`` locks them ``FOR NO KEY UPDATE`` in id order (seats by code; every other best-available
    attempt), ``SKIP`` in order of preference, passing over the seats others hold locked (it never
    waits, so its order cannot close a circle), ``READ`` reads them unlocked (a waiting-list offer, made
    under the event's lock: it waits for no seat; its claims' insert is the arbiter). ``lock_before``: a
    condition reading the event's lock, so that lock is held first. The seam a race control replaces."""
    seat, seq, c = table(Seat), sql.Identifier(locking.CLAIM_SEQ), sql.Identifier(candidates)
    preference = sql.SQL("c.short, c.section, c.row, c.number")
    if how == READ:
        return sql.SQL("SELECT c.id, c.seq AS {} FROM {} c WHERE {} ORDER BY {} LIMIT %(window)s").format(
            seq, c, lock_before, preference
        )
    if how == SKIP:
        return sql.SQL(
            "SELECT s.id, s.{} FROM {} s JOIN {} c ON c.id = s.id WHERE {} "
            "ORDER BY {} LIMIT %(window)s FOR NO KEY UPDATE OF s SKIP LOCKED"
        ).format(seq, seat, c, lock_before, preference)
    return sql.SQL(
        "SELECT s.id, s.{} FROM {} s WHERE s.id IN (SELECT c.id FROM {} c ORDER BY {} LIMIT %(window)s) AND {} "
        "ORDER BY s.id FOR NO KEY UPDATE"
    ).format(seq, seat, c, preference, lock_before)


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
