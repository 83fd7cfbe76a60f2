"""The one order of every row lock a write takes (ADR 0001), and the locks every domain shares: users,
claims, the jobs' batches. Each domain's own locks are in its ``locks.py`` (``events/locks.py``,
``slots/locks.py``, ``reservations/locks.py``), each citing its place in the order below. Nothing else calls
``select_for_update``.

The order. A transaction that takes more than one of these locks takes them in this order, and each
kind in primary-key order, so two requests never wait for each other in a circle:

0. First, the organisation row (``lock_organisation``, ``FOR NO KEY UPDATE``): a write to an organisation's
   members (adding one, changing a role, removing one: ``web.organisations.services``) takes it before
   anything else, so those writes take turns per organisation and the rule that reads its other members
   (an organisation keeps an owner) decides on what the one before committed. Then it takes only 6 (the
   acting owner's membership) and writes the one membership row. Inserting a row that names the
   organisation (a car, an event, a membership) takes ``FOR KEY SHARE`` on it, which this lock does not
   conflict with; nothing else locks it.
1. ``lock_user``: one user row (the guest's for a slot booking, a confirm or a reschedule; the host's
   for creating slots or setting their hours; the buyer's for a car hold and the holder's for a seat
   hold, unless an operator asks); ``lock_users``: the guest's and the host's for an interval booking
   (by id). It serializes the rules that count one user's rows (bookings per guest, one per host, a
   guest's bookings never overlapping in time, a host's slots never overlapping, the caps on held cars
   and seats: ``policy.Cap``).
2. the resource's parent, the event row: ``hold_event_sql`` in a seat hold (``FOR KEY SHARE``);
   ``lock_event`` for an edit of the event's details, the waiting-list switch, and a join or a leave
   of the waiting list; ``lock_event_sales`` for the sales switch. The event's lock stands for its
   WAITING waiting-list entries: they are read and written under it, never locked themselves (an
   OFFERED entry changes with its hold group, under the group's lock). An edit and the switches take
   no other lock; a join or a leave, and opening sales, may go on to offer seats (below, 5).
3. ``lock_car``, ``lock_slots``, ``seat_locks_sql``: the rows a claim is on. They serialize the claims on
   one car, the seats of one slot (its ``booked`` counter), each seat. A car hold takes the car's lock
   (after the buyer's, 1) in its one statement by ``claim_lock_sql`` (below); a slot booking the slot's
   (after the guest's, 1) by ``slots.locks.slot_claim_lock_sql``; a seat hold its seats by ``seat_locks_sql``
   (after the holder's and the event's) in its one statement.
4. claim rows (reservations, seat hold groups, slot bookings): the one claim a transition moves
   (``transition_lock_sql``, in its statement), the overdue holds an expiry moves (in its statement,
   ``declarations.expiry_statement``), a reschedule's or a partial cancel's claim (``lock_claim``).
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
   (``seat_locks_sql(how=READ)``). So what it can wait for after the event's
   lock is an uncommitted claim of a hold in flight on the seat index, and such a hold waits for
   nothing more once it has written its claims; the others holding or waiting for the event's lock
   (confirms, cancels, releases, the expiry job, joins, leaves, edits, the sales switch) wait for
   nothing after it either. It cannot close a circle (docs/decisions/0016-waiting-list.md).
6. Last, the acting member's membership row (``lock_member``, ``member_lock_sql``: ``FOR SHARE``,
   docs/decisions/0025-organisations.md): an operator's write in an organisation confirms under it that
   they are still a member with the role it needs. Removing a member or changing their role (a
   ``DELETE`` or ``UPDATE`` of that row, in a transaction whose only other lock is the organisation's,
   0) waits for the writes in flight, and a write after it finds the row gone: never half-applied.
   ``FOR SHARE``, not ``KEY SHARE``: a role change is a non-key update, and must wait too. Nothing
   waits for a lock after it.

The mode is ``FOR NO KEY UPDATE`` (``select_for_update(no_key=True)``): it excludes every other
writer of the row just as well, but not the ``FOR KEY SHARE`` that inserting a row referencing the
locked one takes (an audit event naming a user as its actor, a booking naming its slot, a hold group
naming its event). With ``FOR UPDATE`` on a user row, "a guest books" and "the same guest confirms"
deadlocked on the audit insert. Two exceptions, each for a reason:

- ``hold_event_sql`` takes ``FOR KEY SHARE``: it is what inserting a hold group takes on its event
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

A seat hold takes 1, 2 and 3 in one statement (the holder by ``claim_lock_sql`` when the cap on held seats
applies, the event by ``hold_event_sql``, the seats by ``seat_locks_sql``; ADR 0009, ADR 0022). Best
available locks with ``SKIP LOCKED``: it never waits for a seat, so the order it takes them in
(preference, not id) cannot close a circle.

The expiry job's batch (``declarations.expiry_statement``: the overdue rows, with the slots of slot bookings)
and ``batch_lock`` (the reminder job) are outside the order: ``SKIP LOCKED`` never waits, so they cannot
deadlock; a row a request holds is left to that request.

Every function refuses to run outside a transaction (a lock there would end with its statement); the
``…_sql`` seams are conditions or sub-statements of one statement that is the whole claim operation (a
car hold, a transition, in autocommit), its locks held to its end. The race tests' controls replace
these functions and seams (``user_lock_sql``, ``claim_lock_sql``, ``fresh_sql``, ``transition_lock_sql``,
``member_lock_sql``, ``lock_member``, ``lock_organisation``)
to show that their test notices a missing lock.

A hold that is one statement in autocommit (the car's, the slot booking's, the seats':
docs/decisions/0022-one-statement-holds.md)
takes its locks as ``WITH`` sub-statements, ``claim_lock_sql``, each one's condition reading the one
before it in the order, so that lock is held first. ``fresh_sql`` tells the statement whether what its
snapshot says under those locks is still the truth: whether a claim that moved the rows' claim
sequence (``claim_moved_sql``) committed after the snapshot.

The statements of ``lock_user``, ``lock_users``, ``lock_event``, ``lock_event_sales``,
``lock_car`` (``_rows_lock``) and ``lock_slots`` (``_slots_lock``) are composed once
with ``psycopg.sql`` from the models' ``_meta``, ids as a ``bigint`` array: their text is constant, so
they are prepared (docs/decisions/0021-prepared-statements.md) and cost no ORM compile per request.
So are ``take_queue_number``, ``lock_event_queue`` and ``lock_claim`` (``_claim_lock``), and the
transitions' and the expiry's (``core.engine``); ``batch_lock`` is a clause of the reminders'
statement, composed with it; the seat hold's locks are sub-statements of its statement, composed with it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Model
from psycopg import sql

from core.claims import column
from core.organisations.models import Membership, Organisation
from core.statements import P, Statement, from_row, table

if TYPE_CHECKING:  # the user model, settings.AUTH_USER_MODEL, as django-stubs resolves it: the core imports no app's
    from django.contrib.auth.models import _User as User

_M = TypeVar("_M", bound=Model)


def require_transaction(what: str) -> None:
    """Refuse a lock outside a transaction, where it would end with its statement: every lock function
    calls it first (``what``: the function, named in the error)."""
    if not connection.in_atomic_block:
        raise RuntimeError(f"{what} must be called inside a transaction: its lock would end with the statement")


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


def lock_rows(model: type[_M], ids: Iterable[int], mode: str) -> list[_M]:
    """The rows of ``model`` whose keys are among ``ids``, locked in ``mode`` (one of the modes above) in key
    order, by one prepared statement (``_rows_lock``): what a lock function of a kind in the order
    (``lock_user``, ``lock_car``, ``lock_event``, …) runs once it has called ``require_transaction``. A
    missing id is simply absent."""
    rows = _rows_lock(model, mode).fetchall({"ids": sorted(set(ids))})
    attnames = [f.attname for f in model._meta.concrete_fields]
    return [model.from_db(connection.alias, attnames, row) for row in rows]


def lock_user(user_id: int) -> User:
    """One user row, ``FOR NO KEY UPDATE``: serializes the rules that count this user's rows."""
    require_transaction("lock_user")
    user_model = get_user_model()
    users = lock_rows(user_model, [user_id], NO_KEY_UPDATE)
    if not users:
        raise user_model.DoesNotExist(f"User {user_id} does not exist.")
    return users[0]


def lock_users(user_ids: Iterable[int]) -> dict[int, User]:
    """Several user rows in primary-key order (a guest and a host), ``FOR NO KEY UPDATE``; a missing id
    is simply absent."""
    require_transaction("lock_users")
    return {user.pk: user for user in lock_rows(get_user_model(), user_ids, NO_KEY_UPDATE)}


def user_lock_sql(user: sql.Composable) -> sql.Composable:
    """One user row's lock as a condition of a statement composed once (``psycopg.sql``; ``user``: its
    parameter; true when the user exists): a sub-select runs below the statement's own row lock, so this
    lock is held before that one is asked for. The seam a
    race control replaces: a statement built with it is composed again for the replacement (``_car_lock``
    is cached by this function)."""
    user_model = get_user_model()
    return sql.SQL("EXISTS (SELECT FROM {} WHERE {} = {} FOR NO KEY UPDATE)").format(
        table(user_model), column(user_model, "id"), user
    )


# The column a claim moves (``claim_moved_sql``) and a claim lock reads, in the users' and the cars' tables:
# outside their models (migrations accounts 0003, reservations 0002), so that a save() of a row read
# earlier never writes it back stale.
CLAIM_SEQ = "claim_seq"


def claim_lock_sql(
    model: type[Model],
    key: sql.Composable,
    *,
    lock_before: sql.Composable | None = None,
    returning: tuple[str, ...] = (),
) -> sql.Composable:
    """The row of ``model`` whose key is ``key`` locked by a hold's one statement, as its ``WITH``
    sub-statement: ``SELECT claim_seq`` and the fields ``returning`` ``… FOR NO KEY UPDATE`` (the mode of
    ``lock_user`` and ``lock_car``, held to the commit), of the row's newest version (READ COMMITTED
    re-reads a row it waited for), which ``fresh_sql`` compares with the statement's snapshot
    (``seen_sql``). ``lock_before``: a condition reading the sub-statement of the lock the order puts before
    this one, so that lock is held before this one is asked for (a condition runs below the row's own lock).
    The seam a race control replaces (the statements are cached by this function)."""
    return sql.SQL("SELECT {} FROM {} WHERE {} = {}{} FOR NO KEY UPDATE").format(
        sql.SQL(", ").join([sql.Identifier(CLAIM_SEQ), *(column(model, name) for name in returning)]),
        table(model),
        column(model, model._meta.pk.name),
        key,
        sql.SQL(" AND {}").format(lock_before) if lock_before is not None else sql.SQL(""),
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


class Reads:
    """What a lock statement reads besides its rows' columns, from its snapshot, declared once by a
    domain: a name for each expression (over the locked row, aliased ``s``, and the statement's named
    parameters). Composed into the statement once (its statements are cached by this object). ``loads``:
    how a value is read, by name (``json.loads`` for JSON: Django's connection loads ``jsonb`` as text)."""

    def __init__(self, *, loads: Mapping[str, Callable[[Any], Any]] | None = None, **columns: sql.Composable) -> None:
        self.columns, self.loads = columns, loads or {}


NO_READS = Reads()


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
    require_transaction("lock_claim")
    row = _claim_lock(model, by, reads).fetchone({"key": key, **params})
    if row is None:
        return None
    n = len(model._meta.concrete_fields)
    claim = from_row(model, row[:n])
    for name, value in zip(reads.columns, row[n:], strict=True):
        setattr(claim, name, value)
    return claim


def transition_lock_sql() -> sql.Composable:
    """A transition's lock of its claim (aliased ``c``) in its one statement (``declarations.transition_statement``,
    in autocommit: the lock lasts the statement, which is the whole transition). READ COMMITTED returns the
    row's newest version once the lock is held, so the statement decides on it. The seam a race control
    replaces (the statements are cached by this function)."""
    return sql.SQL("FOR NO KEY UPDATE OF c")


def lock_organisation(organisation_id: int) -> bool:
    """The organisation row, ``FOR NO KEY UPDATE`` (0 in the order): a write to its members takes it first.
    False when there is no such organisation."""
    require_transaction("lock_organisation")
    return bool(lock_rows(Organisation, [organisation_id], NO_KEY_UPDATE))


# The membership lock's mode (6 above).
SHARE = "FOR SHARE"


@functools.cache
def _member_lock() -> Statement:
    return Statement(
        sql.SQL("SELECT {} FROM {} WHERE {} = %(user)s AND {} = %(organisation)s {}").format(
            column(Membership, "role"),
            table(Membership),
            column(Membership, "user"),
            column(Membership, "organisation"),
            sql.SQL(SHARE),
        )
    )


def lock_member(user_id: int, organisation_id: int) -> str | None:
    """The role of ``user_id`` in ``organisation_id``, their membership row locked ``FOR SHARE`` to the
    commit (6 in the order); None when they are not a member."""
    require_transaction("lock_member")
    row = _member_lock().fetchone({"user": user_id, "organisation": organisation_id})
    return row[0] if row else None


def member_lock_sql(organisation: sql.Composable) -> sql.Composable:
    """``lock_member`` as a condition of one statement (a transition's policy): true when the user
    ``%(user)s`` is still a member of ``organisation`` with a role among ``%(roles)s``, their row locked
    ``FOR SHARE`` to the statement's end. The seam a race control replaces (the transitions' statements
    are cached by it)."""
    return sql.SQL("EXISTS (SELECT FROM {} WHERE {} = %(user)s AND {} = {} AND {} = ANY(%(roles)s) {})").format(
        table(Membership),
        column(Membership, "user"),
        column(Membership, "organisation"),
        organisation,
        column(Membership, "role"),
        sql.SQL(SHARE),
    )


def batch_lock(alias: str) -> sql.Composable:
    """The locking clause of a sub-statement that selects up to a batch of rows (``alias``: their table's
    alias) for the statement writing them (``core.reminders``): only those rows (not the rows they
    join), skipping any row another transaction holds. Like the expiry's batch outside the order: it never
    waits. The statement runs inside a transaction (its caller checks). The seam a race control replaces."""
    return sql.SQL("FOR NO KEY UPDATE OF {} SKIP LOCKED").format(sql.Identifier(alias))
