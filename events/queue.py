"""The admission queue of an on-sale (docs/contract.md §5, docs/decisions/0017-admission-queue.md).

While an event's ``queue_enabled`` is on, a seat hold on it needs the ``X-Queue-Token`` of an entry of
its user admitted now (``events.services.holds.SeatHolds.check_target``; operators are exempt). This module
is the queue itself:

- ``queue_join``: the entry, WAITING, numbered by the event's queue (``locks.take_queue_number``:
  the queue row's counter, moved under its lock, so numbers are gapless and commit in the order given:
  join order is the database's, not a clock's). One entry per user and event; joining again returns it.
- ``queue_entry_read``: what a client polls, one indexed read: a waiting entry's position is its number
  minus the queue's ``admitted_through`` (every entry up to it is admitted), no count over the queue.
- ``queue_admit`` / ``queues_admit_due`` (the beat job, ``manage.py admit_queues``): per event, under
  the queue row's lock (``locks.lock_event_queue``: two runs take turns), expire the admissions whose
  window has passed and admit the next numbers, as many as the event's rate has accrued since the last
  run (at most ``ACCRUAL_CAP``'s worth, ten seconds), each for the event's admission window; one statement writes the
  entries, the queue row and one audit event per entry.
"""

from __future__ import annotations

import json
import logging
import secrets
from datetime import datetime, timedelta

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone
from psycopg import sql

from core.audit import services as audit
from core.claims import column
from core.errors import Conflict, NotFound
from core.expiry import locked_now
from core.metrics import CONSTRAINT_BACKSTOPS
from core.middleware import current_request_id
from core.statements import P, Statement, names, request_events, system_events
from events import locks
from events.models import QUEUE_TOKEN, Event, EventQueue, QueueEntry
from events.services.rules import SalesClosed
from web.accounts.models import User

State = QueueEntry.State
SUBJECT = "queue_entry"  # an entry's life (joined, admitted, expired) is one audit subject
ADMIT_ACTOR = "system:admit_queues"  # the actor of every admission and every lapsed admission
TOKEN_BYTES = 32  # 256 random bits: a token is never guessed (and is only good for its own user)
# An idle queue (sales not open yet, beat late) saves up at most this much time's admissions (or one,
# at a rate slower than that): admission comes in steps of about one job run (5 s), never in a flood.
ACCRUAL_CAP = timedelta(seconds=10)
logger = logging.getLogger(__name__)


class QueueDisabled(Conflict):
    code = "queue_disabled"


def queue_subject(entry_id: int) -> audit.Subject:
    return audit.Subject(type=SUBJECT, id=entry_id)


def with_position(entry: QueueEntry, admitted_through: int) -> QueueEntry:
    """Set ``position``: 1 for the next to be admitted; 0 once admitted (or lapsed)."""
    entry.position = entry.number - admitted_through if entry.state == State.WAITING else 0
    return entry


# --- joining --------------------------------------------------------------------------------------------

# The names the queue's templates use: ``{e_…}`` the event's table and columns (alias ``e``), ``{q_…}``
# the queue row's (``q``), ``{x_…}`` an entry's (``x``), and the entry's states.
_NAMES = {
    **names(Event, "e_", "e"),
    **names(EventQueue, "q_", "q"),
    **names(QueueEntry, "x_", "x"),
    **{state.lower(): sql.Literal(state) for state in State.values},
}
_ENTRY_FIELDS = [f.attname for f in QueueEntry._meta.concrete_fields]
_ENTRY_COLUMNS = sql.SQL(", ").join(column(QueueEntry, f.name, "x") for f in QueueEntry._meta.concrete_fields)


def _event(**parts: sql.Composable) -> sql.Composable:
    """An audit event's metadata: the entry's event and number, and ``parts``."""
    pairs = [sql.SQL("'eventId', {}::bigint").format(P("event")), sql.SQL("'number', number::bigint")]
    pairs += [sql.SQL("{}, {}").format(sql.Literal(key), value) for key, value in parts.items()]
    return sql.SQL("jsonb_build_object({})").format(sql.SQL(", ").join(pairs))


_JOIN_READ = Statement(
    sql.SQL("""
    SELECT {e_queue_enabled}, {e_event_date}, {q_admitted_through}, {entry}
    FROM {e_table} e
    LEFT JOIN {x_table} x ON {x_event} = {e_id} AND {x_user} = %(user)s
    LEFT JOIN {q_table} q ON {q_event} = {e_id}
    WHERE {e_id} = %(event)s""").format(entry=_ENTRY_COLUMNS, **_NAMES)
)
# The entry and its CREATED event, after its number was taken. A concurrent join of the same user that
# committed first makes the insert a no-op (no row): the caller rolls the number back with it.
_JOINED = ("event", "user", "token", "number", "state", "joined_at", "admitted_at", "admitted_until")
_JOIN_INSERT = Statement(
    sql.SQL("""
    WITH entry AS (
        INSERT INTO {x_table} ({columns})
        VALUES (%(event)s, %(user)s, %(token)s, %(number)s, {waiting}, %(now)s, NULL, NULL)
        ON CONFLICT ({event}, {user}) DO NOTHING
        RETURNING id, %(number)s AS number
    ), recorded AS ({recorded})
    SELECT id FROM entry""").format(
        columns=sql.SQL(", ").join(column(QueueEntry, name) for name in _JOINED),
        event=column(QueueEntry, "event"),
        user=column(QueueEntry, "user"),
        recorded=request_events(
            source=sql.Identifier("entry"),
            subject_type=sql.Literal(SUBJECT),
            subject_id=sql.SQL("id::text"),
            event_type=sql.Literal("CREATED"),
            from_state=sql.Literal(""),
            to_state=sql.Literal(State.WAITING),
            metadata=_event(),
        ),
        **_NAMES,
    )
)


class _JoinedMeanwhile(Exception):
    """The same user's other join committed first: roll back this one's number."""


def queue_join(*, event_id: int, user: User, now: datetime) -> tuple[QueueEntry, bool]:
    """Put ``user`` in the event's queue, WAITING, behind everyone who joined before; returns the entry
    (with ``position``) and whether it was created now. Joining again returns the same entry, whatever
    its state. Refused with 409 ``queue_disabled`` while the event's queue is off, and ``sales_closed``
    once the event has taken place.

    A new entry is BEGIN, its number (the queue row's lock, held to COMMIT), one statement for the
    entry and its audit event, COMMIT, after one read that finds an existing entry."""
    found = _join_read(event_id, user.pk)
    if found is None:
        raise NotFound(f"Event {event_id} does not exist.")
    queue_enabled, event_date, entry = found
    if not queue_enabled:
        raise QueueDisabled(f"Event {event_id} has no admission queue: hold seats directly.")
    if entry is not None:
        return entry, False
    if event_date <= now:
        raise SalesClosed(f"Event {event_id} has already taken place.")
    token = secrets.token_urlsafe(TOKEN_BYTES)
    try:
        with transaction.atomic():
            number, admitted_through = locks.take_queue_number(event_id, now=now)
            entry_id = _insert_entry(event_id=event_id, user=user, token=token, number=number, now=now)
    except _JoinedMeanwhile:
        found = _join_read(event_id, user.pk)
        assert found is not None and found[2] is not None  # it committed: that is why this insert did nothing
        return found[2], False
    entry = QueueEntry(
        pk=entry_id, event_id=event_id, user=user, token=token, number=number, state=State.WAITING, joined_at=now
    )
    return with_position(entry, admitted_through), True


def _join_read(event_id: int, user_id: int) -> tuple[bool, datetime, QueueEntry | None] | None:
    """The event's queue switch and date, and the user's entry (with its position) if any: one statement."""
    row = _JOIN_READ.fetchone({"event": event_id, "user": user_id})
    if row is None:
        return None
    queue_enabled, event_date, admitted_through, *columns = row
    if columns[0] is None:
        return queue_enabled, event_date, None
    entry = QueueEntry.from_db(connection.alias, _ENTRY_FIELDS, columns)
    return queue_enabled, event_date, with_position(entry, admitted_through)


def _insert_entry(*, event_id: int, user: User, token: str, number: int, now: datetime) -> int:
    row = _JOIN_INSERT.fetchone(
        {
            "event": event_id,
            "user": user.pk,
            "actor": user.pk,
            "token": token,
            "number": number,
            "now": now,
            "occurred_at": timezone.now(),
            "actor_label": f"user:{user.pk}",
            "trace_id": current_request_id() or "",
        }
    )
    if row is None:
        raise _JoinedMeanwhile
    return row[0]


# --- polling --------------------------------------------------------------------------------------------


# An entry by its token in the event's queue, with the queue's mark: the token's unique index, the queue row by its key.
_ENTRY_READ = Statement(
    sql.SQL("""
    SELECT {entry}, {q_admitted_through} FROM {x_table} x JOIN {q_table} q ON {q_event} = {x_event}
    WHERE {x_token} = %(token)s AND {x_event} = %(event)s""").format(entry=_ENTRY_COLUMNS, **_NAMES)
)


def queue_entry_read(*, event_id: int, token: str) -> QueueEntry | None:
    """The entry with this token in the event's queue, with ``position``, in one statement (the token's
    unique index, and the queue row by its key); None when there is none (a token of a shape never
    issued is not looked up)."""
    if not QUEUE_TOKEN.fullmatch(token):
        return None
    row = _ENTRY_READ.fetchone({"token": token, "event": event_id})
    if row is None:
        return None
    return with_position(QueueEntry.from_db(connection.alias, _ENTRY_FIELDS, row[:-1]), row[-1])


# --- admission ------------------------------------------------------------------------------------------

# One admission run on one queue, whose row the caller holds locked. ``lapsed``: the admissions whose
# window has passed; ``admitted``: the next %(count)s numbers after %(through)s, each WAITING by the
# queue's own bookkeeping (the predicate is the backstop: a run that fell short would mean the lock
# failed); ``moved``: the queue row; ``recorded``: one audit event per entry moved (``entries``), in
# number order (an UPDATE returns its rows in the heap's order, which is not the numbers' once the
# table's space is reused: the trail would show 67 admitted before 66).
_ADMIT = Statement(
    sql.SQL("""
    WITH lapsed AS (
        UPDATE {x_table} x SET {state} = {expired}
        WHERE {x_event} = %(event)s AND {x_state} = {admitted} AND {x_admitted_until} <= %(now)s
        RETURNING {x_id}, {x_number}
    ), admitted AS (
        UPDATE {x_table} x SET {state} = {admitted}, {admitted_at} = %(now)s, {admitted_until} = %(until)s
        WHERE {x_event} = %(event)s AND {x_number} > %(through)s AND {x_number} <= %(through)s + %(count)s
          AND {x_state} = {waiting}
        RETURNING {x_id}, {x_number}
    ), moved AS (
        UPDATE {q_table} q SET {admitted_through} = %(through)s + %(count)s, {credit_from} = %(credit_from)s
        WHERE {q_event} = %(event)s
    ), entries AS (
        SELECT id, number, {waiting} AS from_state, {admitted} AS to_state, {admitted_metadata} AS metadata
        FROM (SELECT * FROM admitted ORDER BY number) admitted
        UNION ALL
        SELECT id, number, {admitted}, {expired}, {lapsed_metadata} FROM (SELECT * FROM lapsed ORDER BY number) lapsed
    ), recorded AS ({recorded})
    SELECT (SELECT COUNT(*) FROM admitted), (SELECT COUNT(*) FROM lapsed)""").format(
        state=column(QueueEntry, "state"),
        admitted_at=column(QueueEntry, "admitted_at"),
        admitted_until=column(QueueEntry, "admitted_until"),
        admitted_through=column(EventQueue, "admitted_through"),
        credit_from=column(EventQueue, "credit_from"),
        admitted_metadata=_event(admittedUntil=sql.SQL("{}::jsonb").format(P("until_json"))),
        lapsed_metadata=_event(),
        recorded=system_events(
            source=sql.Identifier("entries"),
            actor_label=P("actor"),
            subject_type=sql.Literal(SUBJECT),
            subject_id=sql.SQL("id::text"),
            event_type=sql.SQL("to_state"),
            from_state=sql.SQL("from_state"),
            to_state=sql.SQL("to_state"),
            metadata=sql.SQL("metadata"),
        ),
        **_NAMES,
    )
)


def admissions_due(queue: EventQueue, *, now: datetime) -> tuple[int, datetime]:
    """How many of the queue to admit at ``now``, and the queue's ``credit_from`` after admitting them.

    Admissions accrue at the event's ``admitted_per_minute`` from ``credit_from``, over at most
    ``ACCRUAL_CAP`` (or one admission's share of a minute, when that is longer): a queue that waited for
    its sale to open, or for beat, admits no more than that at once. Each admission spends its share.
    Nothing accrues toward an event whose queue is off, whose sales are closed or that has taken place:
    those admit none."""
    event = queue.event
    rate = event.admitted_per_minute
    start = max(queue.credit_from, now - max(ACCRUAL_CAP, timedelta(minutes=1) / rate))
    if not (event.queue_enabled and event.sales_open and event.event_date > now):
        return 0, start
    elapsed_us = (now - start) // timedelta(microseconds=1)
    count = min(elapsed_us * rate // 60_000_000, queue.joined - queue.admitted_through)
    return count, start + timedelta(microseconds=count * 60_000_000 // rate)


def queue_admit(*, event_id: int, now: datetime) -> tuple[int, int]:
    """One admission run on one event's queue (see the module docstring); returns (admitted, expired).
    Waits for the queue row (the joins in flight, another run): the run after it sees what it wrote."""
    with transaction.atomic():
        queue = locks.lock_event_queue(event_id)
        if queue is None:
            return 0, 0
        now = locked_now(now)
        count, credit_from = admissions_due(queue, now=now)
        until = now + timedelta(minutes=queue.event.admission_window_minutes)
        admitted, expired = _ADMIT.fetchone(
            {
                "event": event_id,
                "now": now,
                "until": until,
                "until_json": json.dumps(until, cls=DjangoJSONEncoder),
                "through": queue.admitted_through,
                "count": count,
                "credit_from": credit_from,
                "occurred_at": timezone.now(),
                "actor": ADMIT_ACTOR,
                "trace_id": current_request_id() or "",
            }
        )
    if admitted < count:
        CONSTRAINT_BACKSTOPS.labels("queue_admission_waiting_only").inc()
        logger.error(
            "The queue of event %s admitted %d of %d: entries past its mark were not WAITING", event_id, admitted, count
        )
    return admitted, expired


def queues_admit_due(*, now: datetime) -> dict[str, int]:
    """The beat job: one admission run on every queue with something to do (someone to admit on an
    open sale, or an admission whose window has passed), each in its own transaction. Safe twice at
    once: the runs on one queue take turns, and the second finds nothing accrued."""
    lapsed = QueueEntry.objects.filter(event_id=OuterRef("pk"), state=State.ADMITTED, admitted_until__lte=now)
    queues = EventQueue.objects.filter(
        Q(
            event__queue_enabled=True,
            event__sales_open=True,
            event__event_date__gt=now,
            joined__gt=F("admitted_through"),
        )
        | Q(Exists(lapsed))
    )
    admitted = expired = 0
    for event_id in queues.order_by("pk").values_list("pk", flat=True):
        moved = queue_admit(event_id=event_id, now=now)
        admitted, expired = admitted + moved[0], expired + moved[1]
    return {"admitted": admitted, "expired": expired}
