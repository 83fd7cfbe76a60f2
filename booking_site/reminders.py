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
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection, transaction
from django.db.models import F, Q, QuerySet, Value
from django.db.models.expressions import Combinable, RawSQL
from django.db.models.functions import JSONObject
from django.db.models.sql import UpdateQuery
from django.utils import timezone
from psycopg import sql

from booking_site import locking
from booking_site.audit import services as audit
from booking_site.audit.models import AuditEvent
from booking_site.invariants import Invariant, column, table
from booking_site.middleware import current_request_id

if TYPE_CHECKING:
    from booking_site.engine import ClaimEngine

logger = logging.getLogger(__name__)

REMINDED = "REMINDED"  # the audit event (and the webhooks' ``<subject>.reminded``)
REMINDER_ACTOR = "system:send_reminders"
BATCH_SIZE = 500  # bookings reminded per transaction

# ``due``: the batch, locked; ``reminded``: those its UPDATE moved; one event each.
_STATEMENT = sql.SQL(
    """WITH due ({pk}, reminder) AS ({due}), reminded AS ({update} RETURNING {pk})
    INSERT INTO {audit} ({columns})
    SELECT {occurred_at}, NULL, {actor}, {subject_type}, due.{pk}::text, {event}, {state}, {state}, due.reminder,
           {request_id}
    FROM reminded JOIN due USING ({pk})"""
)


def unreminded(model: Any) -> Q:
    """The guard, asked by the lock and again by the write: not reminded yet, and confirmed now."""
    return Q(reminded_at__isnull=True, **{model.STATE_FIELD: model.CONFIRMED})


@dataclass(frozen=True)
class Reminders:
    """One domain's reminders: its claims (``engine``: the model, the domain's name, the audit subject),
    where a booking's start is (``starts``: ``F("start")``, ``F("event__event_date")``), when it was made
    (``made``), and what else of it the event's metadata carries (beside ``startsAt`` and ``hoursBefore``)."""

    engine: ClaimEngine
    starts: Combinable
    made: Combinable
    metadata: dict[str, Combinable] = field(default_factory=dict)

    @property
    def domain(self) -> str:
        return self.engine.domain

    @property
    def subject_type(self) -> str:
        subject_type, _ = audit.subject_key(self.engine.audit_subject(self.engine.model(pk=0)))
        return subject_type

    def due(self, *, now: datetime, hours: int) -> QuerySet:
        """The bookings to remind at ``now``, soonest start first, each with its event's metadata as
        ``reminder``."""
        model, before = self.engine.model, timedelta(hours=hours)
        return (
            model.objects.annotate(starts_at=self.starts, made_at=self.made)
            .filter(unreminded(model), starts_at__gt=now, starts_at__lte=now + before)
            .filter(made_at__lte=F("starts_at") - before)
            .annotate(reminder=JSONObject(startsAt=F("starts_at"), hoursBefore=Value(hours), **self.metadata))
            .order_by("starts_at", "pk")
            .values_list("pk", "reminder")
        )

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
        REMINDED events. Returns how many it reminded."""
        model = self.engine.model
        pk = sql.Identifier(model._meta.pk.column)
        due_sql, due_params = locking.batch_lock(self.due(now=now, hours=hours), batch_size).query.sql_with_params()
        update = UpdateQuery(model)
        update.add_update_values({"reminded_at": now})
        update.add_q(Q(pk__in=RawSQL(sql.SQL("SELECT {} FROM due").format(pk).as_string(), ())) & unreminded(model))
        update_sql, update_params = update.get_compiler(using=DEFAULT_DB_ALIAS).as_sql()
        statement = _STATEMENT.format(
            due=sql.SQL(due_sql),
            update=sql.SQL(update_sql),
            pk=pk,
            audit=sql.Identifier(AuditEvent._meta.db_table),
            columns=sql.SQL(audit.SQL_COLUMNS),
            occurred_at=sql.Placeholder(),
            actor=sql.Placeholder(),
            subject_type=sql.Placeholder(),
            event=sql.Placeholder(),
            state=sql.Literal(model.CONFIRMED),
            request_id=sql.Placeholder(),
        )
        params = (
            *due_params,
            *update_params,
            timezone.now(),
            REMINDER_ACTOR,
            self.subject_type,
            REMINDED,
            current_request_id() or "",
        )
        with connection.cursor() as cursor:
            cursor.execute(statement.as_string(), params)
            return cursor.rowcount

    def invariant(self) -> Invariant:
        """``<domain>.reminded_once_while_confirmed``: every REMINDED event (of the window the audit checks
        read, ``INVARIANTS_AUDIT_WINDOW_HOURS``) is of a booking whose last state before it was CONFIRMED,
        that records it (``reminded_at``), and that has no other."""
        model = self.engine.model
        audit_table, pk_type = table(AuditEvent), model._meta.pk.db_type(connection)
        same_subject = "{0}.subject_type = r.subject_type AND {0}.subject_id = r.subject_id"
        return Invariant(
            name=f"{self.domain}.reminded_once_while_confirmed",
            holds=f"Every reminder of a {model._meta.verbose_name} was sent while it was confirmed, is recorded "
            "on it (reminded_at), and it has no other.",
            # The reminders since %(audited_since)s (a range of the occurred_at index), each booking by its
            # primary key; the state before each reminder and any other reminder by audit_subject_idx.
            sql=f"""SELECT DISTINCT c.id FROM {table(model)} c
                    JOIN {audit_table} r ON r.subject_type = '{self.subject_type}' AND r.subject_id = c.id::text
                                        AND r.event_type = '{REMINDED}'
                    LEFT JOIN LATERAL (
                        SELECT a.to_state FROM {audit_table} a
                        WHERE {same_subject.format("a")} AND a.id < r.id AND a.to_state <> ''
                        ORDER BY a.id DESC LIMIT 1) was ON TRUE
                    WHERE c.id IN (SELECT CAST(x.subject_id AS {pk_type}) FROM {audit_table} x
                                   WHERE x.subject_type = '{self.subject_type}' AND x.event_type = '{REMINDED}'
                                     AND x.occurred_at >= %(audited_since)s)
                      AND (c.{column(model, "reminded_at")} IS NULL
                           OR was.to_state IS DISTINCT FROM '{model.CONFIRMED}'
                           OR EXISTS (SELECT FROM {audit_table} d WHERE {same_subject.format("d")}
                                      AND d.event_type = '{REMINDED}' AND d.id <> r.id))""",
            model=model,
        )


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
