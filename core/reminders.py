"""Reminders (docs/contract.md §7): each confirmed booking — a slot booking, an appointment, a seat
booking — is reminded exactly once, ``REMINDER_HOURS_BEFORE`` hours before its start, by a ``REMINDED``
audit event, which webhook delivery sends on as ``slot_booking.reminded`` / ``seat_hold.reminded``.

A domain declares where its bookings' start is and when a booking was made (``Reminders``) and
registers it in its AppConfig.ready(); the beat job ``send_reminders`` (also ``manage.py
send_reminders``) sends what is due in every domain.

Due at ``now``: confirmed, not reminded yet, starting within ``(now, now + H]``, and made at least H
before its start. So a booking made later than that gets none; one cancelled before the moment is no
longer confirmed, and a rescheduled one is cancelled for a new booking, which is reminded by its own
start; a job that was down sends the missed ones when it comes back, as long as their start is ahead.
A booking reminded once is never reminded again, even if its event's date moves afterwards.

Exactly once, decided by the database: one statement per batch locks up to ``batch_size`` due rows
(``locking.batch_lock``: SKIP LOCKED, so jobs running at once share the rows and never wait), sets
their ``reminded_at`` by an ``UPDATE`` that asks the guard again (``unreminded``), and inserts one
REMINDED event for each row that ``UPDATE`` returned. Nothing else is locked (an event row a seat
booking joins is only read), and nothing of a hold or a transition changes: they never read
``reminded_at``. The partial unique index ``audit_one_reminder_per_subject`` is the backstop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from psycopg import sql

from core import claims, invariants, locking
from core.audit import services as audit
from core.audit.models import AuditEvent
from core.claims import column
from core.invariants import Invariant
from core.middleware import current_request_id
from core.statements import P, Statement, system_events, table

if TYPE_CHECKING:
    from core.engine import ClaimEngine

logger = logging.getLogger(__name__)

REMINDED = "REMINDED"  # the audit event (and the webhooks' ``<subject>.reminded``)
REMINDER_ACTOR = "system:send_reminders"
BATCH_SIZE = 500  # bookings reminded per transaction
BOOKING = "b"  # the alias of the booking row in a domain's declarations and in the statement


def unreminded(model: Any, alias: str) -> sql.Composable:
    """The guard, asked by the lock and again by the write: not reminded yet, and confirmed now. The seam
    a race control replaces (the statements are cached by it)."""
    return sql.SQL("{} IS NULL AND {}").format(column(model, "reminded_at", alias), claims.CONFIRMED.sql(model, alias))


@dataclass(frozen=True)
class Reminders:
    """One domain's reminders: its claims (``engine``: the model, the domain's name, the audit subject),
    where a booking's start is (``starts``) and when it was made (``made``), and what else of it the
    event's metadata carries (beside ``startsAt`` and ``hoursBefore``): each SQL over the booking's row,
    aliased ``BOOKING`` (with ``_meta``'s names: ``claims.column(model, "start", BOOKING)``), composed
    into the statement once."""

    engine: ClaimEngine
    starts: sql.Composable
    made: sql.Composable
    metadata: Mapping[str, sql.Composable] = field(default_factory=dict)

    @property
    def domain(self) -> str:
        return self.engine.domain

    @property
    def subject_type(self) -> str:
        subject_type, _ = audit.subject_key(self.engine.audit_subject(self.engine.model(pk=0)))
        return subject_type

    def send_due(self, *, now: datetime, hours: int, batch_size: int = BATCH_SIZE) -> int:
        """Remind every booking due at ``now``, a batch per transaction, until a batch comes back short
        (a row another transaction holds is left to the next run). Returns how many were reminded."""
        total = 0
        while True:
            with transaction.atomic():
                sent = self.send_batch(now=now, hours=hours, batch_size=batch_size)
            total += sent
            if sent < batch_size:
                return total

    def send_batch(self, *, now: datetime, hours: int, batch_size: int) -> int:
        """One statement: lock up to ``batch_size`` due bookings, set their ``reminded_at``, record their
        REMINDED events. Returns how many it reminded. Inside a transaction: the batch's locks are held
        to its COMMIT."""
        if not connection.in_atomic_block:
            raise RuntimeError("send_batch must be called inside a transaction: its locks would end with the statement")
        statement = _statement(self, locking.batch_lock, unreminded)
        [(sent,)] = statement.fetchall(
            {
                "now": now,
                "hours": hours,
                "before": timedelta(hours=hours),
                "batch": batch_size,
                "occurred_at": timezone.now(),
                "trace_id": current_request_id() or "",
            }
        )
        return sent

    def invariant(self) -> Invariant:
        """``<domain>.reminded_once_while_confirmed``: every REMINDED event (of the window the audit checks
        read, ``INVARIANTS_AUDIT_WINDOW_HOURS``) is of a booking whose last state before it was CONFIRMED,
        that records it (``reminded_at``), and that has no other."""
        model = self.engine.model
        audit_table, pk_type = invariants.table(AuditEvent), model._meta.pk.db_type(connection)
        same_subject = "{0}.subject_type = r.subject_type AND {0}.subject_id = r.subject_id"
        return Invariant(
            name=f"{self.domain}.reminded_once_while_confirmed",
            holds=f"Every reminder of a {model._meta.verbose_name} was sent while it was confirmed, is recorded "
            "on it (reminded_at), and it has no other.",
            # The reminders since %(audited_since)s (a range of the occurred_at index), each booking by its
            # primary key; the state before each reminder and any other reminder by audit_subject_idx.
            sql=f"""SELECT DISTINCT c.id FROM {invariants.table(model)} c
                    JOIN {audit_table} r ON r.subject_type = '{self.subject_type}' AND r.subject_id = c.id::text
                                        AND r.event_type = '{REMINDED}'
                    LEFT JOIN LATERAL (
                        SELECT a.to_state FROM {audit_table} a
                        WHERE {same_subject.format("a")} AND a.id < r.id AND a.to_state <> ''
                        ORDER BY a.id DESC LIMIT 1) was ON TRUE
                    WHERE c.id IN (SELECT CAST(x.subject_id AS {pk_type}) FROM {audit_table} x
                                   WHERE x.subject_type = '{self.subject_type}' AND x.event_type = '{REMINDED}'
                                     AND x.occurred_at >= %(audited_since)s)
                      AND (c.{invariants.column(model, "reminded_at")} IS NULL
                           OR was.to_state IS DISTINCT FROM '{model.CONFIRMED}'
                           OR EXISTS (SELECT FROM {audit_table} d WHERE {same_subject.format("d")}
                                      AND d.event_type = '{REMINDED}' AND d.id <> r.id))""",
            model=model,
        )


_statements: dict[tuple, Statement] = {}


def _statement(
    reminders: Reminders, lock: Callable[[str], sql.Composable], guard: Callable[..., sql.Composable]
) -> Statement:
    """A domain's reminder statement, composed once per (domain, lock, guard): ``due``, the batch, locked
    (``lock``: ``locking.batch_lock``); ``reminded``, those its UPDATE moved (asking ``guard`` again);
    one REMINDED event each. Parameters: ``now``, ``hours`` (and ``before``, as an interval), ``batch``,
    ``occurred_at``, ``trace_id``."""
    key = (reminders.domain, lock, guard)
    if key not in _statements:
        model, b = reminders.engine.model, BOOKING
        pk = column(model, model._meta.pk.name, b)
        reminder = sql.SQL(", ").join(
            sql.SQL("{}, {}").format(sql.Literal(name), value)
            for name, value in {
                "startsAt": sql.SQL("t.starts_at"),
                "hoursBefore": P("hours"),
                **reminders.metadata,
            }.items()
        )
        _statements[key] = Statement(
            sql.SQL("""
WITH due AS (
    SELECT {pk} AS id, jsonb_build_object({reminder}) AS reminder
    FROM {table} b CROSS JOIN LATERAL (SELECT {starts} AS starts_at, {made} AS made_at) t
    WHERE {guard} AND t.starts_at > %(now)s AND t.starts_at <= %(now)s + %(before)s
      AND t.made_at <= t.starts_at - %(before)s
    ORDER BY t.starts_at, {pk} LIMIT %(batch)s {lock}
), reminded AS (
    UPDATE {table} b SET {reminded_at} = %(now)s WHERE {pk} IN (SELECT id FROM due) AND {guard} RETURNING {pk} AS id
), recorded AS ({recorded} RETURNING 1)
SELECT COUNT(*) FROM recorded""").format(
                pk=pk,
                reminder=reminder,
                table=table(model),
                starts=reminders.starts,
                made=reminders.made,
                guard=guard(model, b),
                lock=lock(b),
                reminded_at=column(model, "reminded_at"),
                recorded=system_events(
                    source=sql.SQL("reminded JOIN due USING (id)"),
                    actor_label=sql.Literal(REMINDER_ACTOR),
                    subject_type=sql.Literal(reminders.subject_type),
                    subject_id=sql.SQL("id::text"),
                    event_type=sql.Literal(REMINDED),
                    from_state=sql.Literal(model.CONFIRMED),
                    to_state=sql.Literal(model.CONFIRMED),
                    metadata=sql.SQL("due.reminder"),
                ),
            )
        )
    return _statements[key]


_registry: dict[str, Reminders] = {}


def register(reminders: Reminders) -> None:
    _registry[reminders.domain] = reminders


def reminders_send(*, now: datetime, batch_size: int = BATCH_SIZE) -> dict[str, int]:
    """Send every reminder due at ``now`` in every domain; returns how many per domain (nothing when
    ``REMINDER_HOURS_BEFORE`` is none: reminders are off)."""
    hours = settings.REMINDER_HOURS_BEFORE
    if hours is None:
        return {}
    sent = {
        domain: reminders.send_due(now=now, hours=hours, batch_size=batch_size)
        for domain, reminders in sorted(_registry.items())
    }
    if any(sent.values()):
        logger.info("Reminders sent: %s", sent)
    return sent
