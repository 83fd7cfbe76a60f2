"""Every row lock a write takes, in one module (ADR 0001). Nothing else in the code calls
``select_for_update``.

The order. A transaction that takes more than one of these locks takes them in this order, and each
kind in primary-key order, so two requests never wait for each other in a circle:

1. ``lock_user``: one user row (the guest's for a slot booking, a confirm or a reschedule; the host's
   for creating slots or setting their hours; the buyer's for a car hold and the holder's for a seat
   hold, unless an operator asks); ``lock_users``: the guest's and the host's for an interval booking
   (by id). It serializes the rules that count one user's rows (bookings per guest, one per host, a
   guest's bookings never overlapping in time, a host's slots never overlapping, the caps on held cars
   and seats: ``engine.Cap``).
2. the resource's parent, the event row: ``share_event`` in a seat hold (``FOR KEY SHARE``);
   ``lock_event`` for an edit of the event's details, the waiting-list switch, and a join or a leave
   of the waiting list; ``lock_event_sales`` for the sales switch. The event's lock stands for its
   WAITING waiting-list entries: they are read and written under it, never locked themselves (an
   OFFERED entry changes with its hold group, under the group's lock). An edit and the switches take
   no other lock; a join or a leave, and opening sales, may go on to offer seats (below, 5).
3. ``lock_car``, ``lock_slots``, ``lock_seats``: the rows a claim is on. They serialize the claims on
   one car, the seats of one slot (its ``booked`` counter), each seat. A car hold takes the car's lock
   (after the buyer's, 1) in its one statement by ``claim_lock_sql`` (below).
4. claim rows (reservations, seat hold groups, slot bookings): the one claim a transition moves
   (``transition_lock_sql``, in its statement), the overdue holds an expiry moves (in its statement,
   ``engine._expiry_statement``), a reschedule's or a partial cancel's claim (``lock_claim``).
2b. the event's queue row (``EventQueue``, docs/decisions/0017-admission-queue.md):
   ``take_queue_number`` (a join moves its counter, ``FOR NO KEY UPDATE`` by the ``UPDATE``, held to
   the join's commit, so numbers commit in the order they are given) and ``lock_event_queue`` (one
   event's admission run: it waits for the joins in flight, and two runs take turns). Their
   transactions take no other row lock than the ``FOR KEY SHARE`` that inserting an entry takes on
   its event and user (which conflicts only with ``lock_event_sales``, a transaction that takes no
   other lock) and the entry rows an admission run moves (locked by nobody else), so the queue row
   cannot close a circle. A seat hold reads its entry in its lock statement without locking it.
5. The one exception: the event row after the claims. A confirm or a cancel of seats moves the
   event's ``confirmed_seats`` counter with a plain ``UPDATE`` in the transition's own statement, and a
   release or an expiry of seats (one, or the expiry job's batch: in id order) takes the same
   ``FOR NO KEY UPDATE`` there (``freed_events_lock_sql``): the seats it frees are serialized with the
   waiting list. That lock conflicts with no lock a hold takes on the event. After it, only a
   transaction that freed seats while people wait (or a join, a leave, opening sales) goes on: it
   offers them to the waiting list, as seat holds that lock no seat and expire no other hold
   (``share_event_lock_free_seats(..., lock_seats=False)``). So what it can wait for after the event's
   lock is an uncommitted claim of a hold in flight on the seat index, and such a hold waits for
   nothing more once it has written its claims; the others holding or waiting for the event's lock
   (confirms, cancels, releases, the expiry job, joins, leaves, edits, the sales switch) wait for
   nothing after it either. It cannot close a circle (docs/decisions/0016-waiting-list.md).

The mode is ``FOR NO KEY UPDATE`` (``select_for_update(no_key=True)``): it excludes every other
writer of the row just as well, but not the ``FOR KEY SHARE`` that inserting a row referencing the
locked one takes (an audit event naming a user as its actor, a booking naming its slot, a hold group
naming its event). With ``FOR UPDATE`` on a user row, "a guest books" and "the same guest confirms"
deadlocked on the audit insert. Two exceptions, each for a reason:

- ``share_event`` takes ``FOR KEY SHARE``: it is what inserting a hold group takes on its event
  anyway, so holds on one event never wait for each other, for an edit, or for a confirm moving the
  counter; and
- ``lock_event_sales`` takes ``FOR UPDATE``, the one mode that conflicts with ``FOR KEY SHARE``: a
  close waits for the holds in flight, and a hold that comes after it reads the event once the close
  has committed. So no hold judged "sales open" commits after a close commits. (PostgreSQL lets new
  ``FOR KEY SHARE`` lockers past a waiting ``FOR UPDATE``: under a stream of holds the close waits for
  a gap, at most ``DB_LOCK_TIMEOUT_MS``, then answers 503 ``busy``.)

One statement may take locks of several kinds: the earlier kinds as its conditions (``user_lock_sql``,
``slot_lock_sql``: ``EXISTS (SELECT … FOR NO KEY UPDATE)``, in a statement composed once, as ``lock_slots``'s
and a transition's), which run below the statement's own row lock,
so they are held before it is asked for (the plan's structure, not the order of a ``FOR UPDATE OF``
list). A check that depends on such a lock reads in a later statement, with a snapshot taken after it.

A seat hold takes 2 and 3 in one statement (``share_event_lock_seats``, ``share_event_lock_free_seats``:
the event, then the seats; ADR 0009), after 1 (the holder) when the cap on held seats applies. Best
available locks with ``SKIP LOCKED``: it never waits for a seat, so the order it takes them in
(preference, not id) cannot close a circle.

The expiry job's batch (``engine._expiry_statement``: the overdue rows, with the slots of slot bookings)
and ``batch_lock`` (the reminder job) are outside the order: ``SKIP LOCKED`` never waits, so they cannot
deadlock; a row a request holds is left to that request.

Every function refuses to run outside a transaction (a lock there would end with its statement); the
``…_sql`` seams are conditions or sub-statements of one statement that is the whole claim operation (a
car hold, a transition, in autocommit), its locks held to its end. The race tests' controls replace
these functions and seams (``user_lock_sql``, ``claim_lock_sql``, ``fresh_sql``, ``transition_lock_sql``)
to show that their test notices a missing lock.

A hold that is one statement in autocommit (the car's: docs/decisions/0022-one-statement-holds.md)
takes its locks as ``WITH`` sub-statements, ``claim_lock_sql``, each one's condition reading the one
before it in the order, so that lock is held first. ``fresh_sql`` tells the statement whether what its
snapshot says under those locks is still the truth: whether a claim that moved the rows' claim
sequence (``claim_moved_sql``) committed after the snapshot.

The statements of ``lock_user``, ``lock_users``, ``share_event``, ``lock_event``, ``lock_event_sales``,
``lock_car`` (``_rows_lock``) and ``lock_slots`` (``_slots_lock``) are composed once
with ``psycopg.sql`` from the models' ``_meta``, ids as a ``bigint`` array: their text is constant, so
they are prepared (docs/decisions/0021-prepared-statements.md) and cost no ORM compile per request.
So are ``take_queue_number``, ``lock_event_queue`` and ``lock_claim`` (``_claim_lock``), and the
transitions' and the expiry's (``booking_site.engine``); ``batch_lock`` is a clause of the reminders'
statement, composed with it. ``lock_seats`` is still an ORM queryset.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, TypeVar

from django.db import connection
from django.db.models import Model
from psycopg import sql

from booking_site.accounts.models import User
from booking_site.claims import column
from booking_site.statements import P, Statement, from_row, table
from events.models import Event, EventQueue, QueueEntry, Seat
from reservations.models import Car
from slots.models import Slot

_M = TypeVar("_M", bound=Model)


def _in_transaction(what: str) -> None:
    if not connection.in_atomic_block:
        raise RuntimeError(f"{what} must be called inside a transaction: its lock would end with the statement")


# 1. users


# The modes (see above); a lock statement's last words.
NO_KEY_UPDATE, UPDATE, KEY_SHARE = "FOR NO KEY UPDATE", "FOR UPDATE", "FOR KEY SHARE"


@functools.cache
def _rows_lock(model: type[Model], mode: str) -> Statement:
    """Rows of ``model`` by primary key (``%(ids)s``, a bigint array), in key order, locked in ``mode``:
    one statement per (model, mode), composed once."""
    key = column(model, model._meta.pk.name)
    return Statement(
        sql.SQL("SELECT {} FROM {} WHERE {} = ANY({}) ORDER BY {} {}").format(
            sql.SQL(", ").join(column(model, f.name) for f in model._meta.concrete_fields),
            table(model),
            key,
            P("ids"),
            key,
            sql.SQL(mode),  # one of the modes above
        )
    )


def _locked(model: type[_M], ids: Iterable[int], mode: str) -> list[_M]:
    rows = _rows_lock(model, mode).fetchall({"ids": sorted(set(ids))})
    attnames = [f.attname for f in model._meta.concrete_fields]
    return [model.from_db(connection.alias, attnames, row) for row in rows]


def lock_user(user_id: int) -> User:
    """One user row, ``FOR NO KEY UPDATE``: serializes the rules that count this user's rows."""
    _in_transaction("lock_user")
    users = _locked(User, [user_id], NO_KEY_UPDATE)
    if not users:
        raise User.DoesNotExist(f"User {user_id} does not exist.")
    return users[0]


def lock_users(user_ids: Iterable[int]) -> dict[int, User]:
    """Several user rows in primary-key order (a guest and a host), ``FOR NO KEY UPDATE``; a missing id
    is simply absent."""
    _in_transaction("lock_users")
    return {user.pk: user for user in _locked(User, user_ids, NO_KEY_UPDATE)}


def user_lock_sql(user: sql.Composable) -> sql.Composable:
    """One user row's lock as a condition of a statement composed once (``psycopg.sql``; ``user``: its
    parameter; true when the user exists): a sub-select runs below the statement's own row lock, so this
    lock is held before that one is asked for. The seam a
    race control replaces: a statement built with it is composed again for the replacement (``_car_lock``
    is cached by this function)."""
    return sql.SQL("EXISTS (SELECT FROM {} WHERE {} = {} FOR NO KEY UPDATE)").format(
        table(User), column(User, "id"), user
    )


# 1 and 3 in a hold's one statement: the claim locks (docs/decisions/0022-one-statement-holds.md)

# The column a claim moves (``claim_moved_sql``) and a claim lock reads, in the users' and the cars' tables:
# outside their models (migrations accounts 0003, reservations 0002), so that a save() of a row read
# earlier never writes it back stale.
CLAIM_SEQ = "claim_seq"


def claim_lock_sql(
    model: type[Model], key: sql.Composable, *, after: sql.Composable | None = None, returning: tuple[str, ...] = ()
) -> sql.Composable:
    """The row of ``model`` whose key is ``key`` locked by a hold's one statement, as its ``WITH``
    sub-statement: ``SELECT claim_seq`` and the fields ``returning`` ``… FOR NO KEY UPDATE`` (the mode of
    ``lock_user`` and ``lock_car``, held to the commit), of the row's newest version (READ COMMITTED
    re-reads a row it waited for), which ``fresh_sql`` compares with the statement's snapshot
    (``seen_sql``). ``after``: a condition reading the sub-statement of the lock before it in the order,
    so that lock is held before this one is asked for (a condition runs below the row's own lock).
    The seam a race control replaces (the statements are cached by this function)."""
    return sql.SQL("SELECT {} FROM {} WHERE {} = {}{} FOR NO KEY UPDATE").format(
        sql.SQL(", ").join([sql.Identifier(CLAIM_SEQ), *(column(model, name) for name in returning)]),
        table(model),
        column(model, model._meta.pk.name),
        key,
        sql.SQL(" AND {}").format(after) if after is not None else sql.SQL(""),
    )


def claim_moved_sql(model: type[Model], key: sql.Composable, *, when: sql.Composable) -> sql.Composable:
    """The claim sequence of ``model``'s row ``key`` moved on by one when ``when`` (a condition reading
    what the statement inserted), as a ``WITH`` sub-statement of the statement that took the row's lock
    by ``claim_lock_sql`` (so it waits for nobody). Every write that raises what a hold reads under that
    lock moves it, in the transaction of that write."""
    seq = sql.Identifier(CLAIM_SEQ)
    return sql.SQL("UPDATE {} SET {} = {} + 1 WHERE {} = {} AND {}").format(
        table(model), seq, seq, column(model, model._meta.pk.name), key, when
    )


def seen_sql(model: type[Model], key: sql.Composable) -> sql.Composable:
    """The claim sequence of ``model``'s row ``key`` as the statement's snapshot has it: read, not locked,
    so from before any wait for the row's lock (NULL when the row is missing or ``key`` is NULL)."""
    return sql.SQL("(SELECT {} FROM {} WHERE {} = {})").format(
        sql.Identifier(CLAIM_SEQ), table(model), column(model, model._meta.pk.name), key
    )


def fresh_sql(seen: sql.Composable, locked: sql.Composable) -> sql.Composable:
    """Whether what a statement read from its snapshot under a claim lock is still the truth once it holds
    it: no claim that moved the row's claim sequence (``claim_moved_sql``) committed between the snapshot
    and the lock (``locked``, the sequence of the row's newest version as ``claim_lock_sql`` returned it,
    is ``seen``, the snapshot's, ``seen_sql``). The seam a race control replaces to take the detection
    away."""
    return sql.SQL("({} = {})").format(locked, seen)


# 2. the event row


def share_event(event_id: int) -> Event | None:
    """The event of a seat hold, ``FOR KEY SHARE``: the hold reads ``sales_open`` after a close committed,
    and a close waits for the holds in flight (see the module docstring)."""
    _in_transaction("share_event")
    return next(iter(_locked(Event, [event_id], KEY_SHARE)), None)


def lock_event(event_id: int) -> Event | None:
    """The event row for an edit of its details, ``FOR NO KEY UPDATE`` (holds go on meanwhile)."""
    _in_transaction("lock_event")
    return next(iter(_locked(Event, [event_id], NO_KEY_UPDATE)), None)


def lock_event_sales(event_id: int) -> Event | None:
    """The event row for opening or closing sales, ``FOR UPDATE``: waits for the holds in flight."""
    _in_transaction("lock_event_sales")
    return next(iter(_locked(Event, [event_id], UPDATE)), None)


# 2b. the event's queue row


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
    _in_transaction("take_queue_number")
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
    _in_transaction("lock_event_queue")
    row = _LOCK_EVENT_QUEUE.fetchone({"event": event_id})
    if row is None:
        return None
    queue = EventQueue.from_db(connection.alias, [f.attname for f in _QUEUE_FIELDS], row[: len(_QUEUE_FIELDS)])
    queue.event = Event.from_db(connection.alias, [f.attname for f in _EVENT_FIELDS], row[len(_QUEUE_FIELDS) :])
    return queue


# 3. the resources


def lock_car(car_id: int) -> Car | None:
    """Serializes every write on one car (an edit of its details or status). A hold takes the same lock
    as its claim lock (``claim_lock_sql``), inside its one statement."""
    _in_transaction("lock_car")
    return next(iter(_locked(Car, [car_id], NO_KEY_UPDATE)), None)


class Reads:
    """What a lock statement reads besides its rows' columns, from its snapshot, declared once by a
    domain: a name for each expression (over the locked row, aliased ``s``, and the statement's named
    parameters). Composed into the statement once (its statements are cached by this object). ``loads``:
    how a value is read, by name (``json.loads`` for JSON: Django's connection loads ``jsonb`` as text)."""

    def __init__(self, *, loads: Mapping[str, Callable[[Any], Any]] | None = None, **columns: sql.Composable) -> None:
        self.columns, self.loads = columns, loads or {}


NO_READS = Reads()


@functools.cache
def _slots_lock(user_lock: Callable[[sql.Composable], sql.Composable], *, owner: bool, reads: Reads) -> Statement:
    """The slots' lock statement, composed once per (user lock, whether the owner's is taken first,
    reads): the slots whose ids are in ``%(slots)s``, in id order."""
    after = sql.SQL("AND {}").format(user_lock(P("owner"))) if owner else sql.SQL("")
    return Statement(
        sql.SQL("SELECT {} FROM {} s WHERE {} = ANY({}) {} ORDER BY {} FOR NO KEY UPDATE OF s").format(
            sql.SQL(", ").join(
                [column(Slot, f.name, "s") for f in Slot._meta.concrete_fields] + list(reads.columns.values())
            ),
            table(Slot),
            column(Slot, "id", "s"),
            P("slots"),
            after,
            column(Slot, "id", "s"),
        )
    )


_SLOT_ATTNAMES = [f.attname for f in Slot._meta.concrete_fields]


def lock_slots(
    slot_ids: Iterable[int], *, owner: int | None = None, reads: Reads = NO_READS, **params: object
) -> dict[int, Slot]:
    """Serializes the seats of each slot (its ``booked`` counter). A missing id is simply absent.
    ``owner``: the user whose row the same statement locks first (order 1: a guest's, as ``lock_car``);
    ``reads`` (with their ``params``) are read by the same statement, from its snapshot (see
    ``lock_car``), each an attribute of its slot. One statement composed once (``_slots_lock``)."""
    _in_transaction("lock_slots")
    statement = _slots_lock(user_lock_sql, owner=owner is not None, reads=reads)
    rows = statement.fetchall({"slots": sorted(set(slot_ids)), "owner": owner, **params})
    slots = {}
    for row in rows:
        slot = Slot.from_db(connection.alias, _SLOT_ATTNAMES, row[: len(_SLOT_ATTNAMES)])
        for name, value in zip(reads.columns, row[len(_SLOT_ATTNAMES) :], strict=True):
            setattr(slot, name, reads.loads[name](value) if name in reads.loads and value is not None else value)
        slots[slot.pk] = slot
    return slots


def slot_lock_sql(slot: sql.Composable, *, after: sql.Composable | None = None) -> sql.Composable:
    """One slot's lock as a condition of a bigger statement (``slot``: its id there), ``after`` another
    lock's condition (``user_lock_sql``): a sub-select runs below the statement's own row lock, so it is
    held before that one is asked for, and ``after``'s before it. The seam a race control replaces (the
    transitions' statements are cached by this function)."""
    return sql.SQL("EXISTS (SELECT FROM {} s WHERE {} = {} AND {} FOR NO KEY UPDATE)").format(
        table(Slot), column(Slot, "id", "s"), slot, after if after is not None else sql.SQL("true")
    )


def lock_seats(
    *, event_id: int, seat_ids: list[int] | None = None, codes: list[str] | None = None, **annotations
) -> list[Seat]:
    """The named seats of one event (by id or by code); returns the seats that exist. ``annotations``
    are read by the same statement, from its snapshot (as in ``lock_car``)."""
    _in_transaction("lock_seats")
    seats = Seat.objects.select_for_update(no_key=True, of=("self",)).filter(event_id=event_id)
    if seat_ids is not None:
        seats = seats.filter(pk__in=seat_ids)
    elif codes is not None:
        seats = seats.filter(code__in=codes)
    else:
        raise TypeError("lock_seats needs seat_ids or codes")
    return list(seats.annotate(**annotations).order_by("pk"))


# 2 and 3 in one statement: a seat hold's locks (the lean write path, docs/decisions/0009-lean-seats.md)

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
    SELECT id, {", ".join(_EVENT_COLUMNS)} FROM {_EVENT} WHERE id = %(event)s {{after}} FOR KEY SHARE)"""
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
        return _SHARED_EVENT.format(after="")
    return _HOLDER + _SHARED_EVENT.format(after="AND EXISTS (SELECT FROM holder)")


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
    _in_transaction("share_event_lock_seats")
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
    _in_transaction("share_event_lock_free_seats")
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


# 2 (again, after 4) and 5: the events of a transition that frees seats


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


# 4. claims


@functools.cache
def _claim_lock(model: type[Model], by: str, reads: Reads) -> Statement:
    """One claim of ``model`` by its field ``by`` (``%(key)s``), with ``reads`` over it (aliased ``c``),
    composed once per (model, field, reads)."""
    return Statement(
        sql.SQL("SELECT {} FROM {} c WHERE {} = {} FOR NO KEY UPDATE OF c").format(
            sql.SQL(", ").join(
                [column(model, f.name, "c") for f in model._meta.concrete_fields] + list(reads.columns.values())
            ),
            table(model),
            column(model, by, "c"),
            P("key"),
        )
    )


def lock_claim(model: type[_M], key: Any, *, by: str = "id", reads: Reads = NO_READS, **params: object) -> _M | None:
    """The claim of ``model`` whose ``by`` is ``key``, or None (a reschedule's, a partial cancel's: the
    transitions lock theirs in their own statement, ``transition_lock_sql``). ``reads`` (with their ``params``)
    are read by the same statement, each an attribute of the claim (see ``lock_slots``)."""
    _in_transaction("lock_claim")
    row = _claim_lock(model, by, reads).fetchone({"key": key, **params})
    if row is None:
        return None
    n = len(model._meta.concrete_fields)
    claim = from_row(model, row[:n])
    for name, value in zip(reads.columns, row[n:], strict=True):
        setattr(claim, name, value)
    return claim


def transition_lock_sql() -> sql.Composable:
    """A transition's lock of its claim (aliased ``c``) in its one statement (``engine._transition_statement``,
    in autocommit: the lock lasts the statement, which is the whole transition). READ COMMITTED returns the
    row's newest version once the lock is held, so the statement decides on it. The seam a race control
    replaces (the statements are cached by this function)."""
    return sql.SQL("FOR NO KEY UPDATE OF c")


# the reminder job


def batch_lock(alias: str) -> sql.Composable:
    """The locking clause of a sub-statement that selects up to a batch of rows (``alias``: their table's
    alias) for the statement writing them (``booking_site.reminders``): only those rows (not the rows they
    join), skipping any row another transaction holds. Like the expiry's batch outside the order: it never
    waits. The statement runs inside a transaction (its caller checks). The seam a race control replaces."""
    return sql.SQL("FOR NO KEY UPDATE OF {} SKIP LOCKED").format(sql.Identifier(alias))
