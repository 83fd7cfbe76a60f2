"""The invariant monitor (docs/contract.md §7, docs/decisions/0012-invariants.md): what must always hold
in the database, checked in SQL by ``manage.py check_invariants`` and by a beat job every minute.

Each query selects the ``id`` of every row that breaks its invariant, among the rows of ``model`` (the
rows the admin links to). The claim-level ones are the same for every claim model and are made here
from the domain's engine (``register_claims``); a domain declares its own (its resources, its counters)
in its ``invariants.py``, with ``one_active_per`` for "no resource in two active claims". Each domain
registers both in its AppConfig.ready(). The result of the last run is one ``InvariantReport`` row, so
that every process reads the same: the admin index, ``/metrics`` (core.metrics).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import connection, models, transaction

from core.audit.models import AuditEvent
from core.audit.services import subject_key
from core.models import InvariantReport, Result

if TYPE_CHECKING:
    from core.engine import ClaimEngine

logger = logging.getLogger(__name__)
SAMPLE_ROWS = 10  # rows named per broken invariant; the count is of all of them
EXPIRY_TASK = "booking_site.tasks.expire_holds"


@dataclass(frozen=True)
class Invariant:
    name: str  # stable: the metric's label, the report's key (``<domain>.<what>``)
    holds: str  # what must be true, in a sentence, for the report
    sql: str  # selects ``id`` of each row of ``model`` breaking it; parameters: see ``evaluate``
    model: type[models.Model]  # the rows ``sql`` names


_registry: dict[str, Invariant] = {}


def register(*invariants: Invariant) -> None:
    for invariant in invariants:
        _registry[invariant.name] = invariant


def registered() -> list[Invariant]:
    return [_registry[name] for name in sorted(_registry)]


def table(model: type[models.Model]) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def column(model: type[models.Model], name: str) -> str:
    field = model._meta.get_field(name)
    if not isinstance(field, models.Field) or field.column is None:
        raise ValueError(f"{model.__name__}.{name} is not a column")
    return connection.ops.quote_name(field.column)


def _in(values: Iterable[str]) -> str:
    """A SQL list of state literals (the models' own choices, never user input)."""
    return ", ".join(f"'{v}'" for v in sorted(values))


def one_active_per(
    name: str,
    *,
    claims: type[models.Model],
    resource: str,
    blocking: Sequence[str],
    link: str = "id",
    model: type[models.Model] | None = None,
) -> Invariant:
    """No ``resource`` in two blocking (held or confirmed) rows of ``claims``: names ``link`` (a column of
    ``claims``: the claim, or its group, a row of ``model``) of each such row. Reads the partial unique
    index the domain's constraint is, so it costs the active claims, not the history."""
    state, res = column(claims, "state"), column(claims, resource)
    active = f"{state} IN ({_in(blocking)})"
    return Invariant(
        name=name,
        holds=f"No {resource} has two active claims ({claims._meta.verbose_name}).",
        sql=f"""SELECT DISTINCT {link} AS id FROM {table(claims)} WHERE {active} AND {res} IN (
                    SELECT {res} FROM {table(claims)} WHERE {active} GROUP BY {res} HAVING COUNT(*) > 1)""",
        model=model or claims,
    )


def register_claims(engine: ClaimEngine) -> None:
    """The claim-level invariants of one domain's claim model: every terminal claim has exactly one
    audit event into a terminal state (the one it is in), a live one has none (among the claims with an
    audit event in the last ``INVARIANTS_AUDIT_WINDOW_HOURS``, or all: ``all_history``); and no hold is
    overdue by more than the expiry job's interval plus ``INVARIANTS_OVERDUE_MARGIN_SECONDS``."""
    model = engine.model
    state = column(model, model.STATE_FIELD)
    all_states = {value for value, _ in model._meta.get_field(model.STATE_FIELD).choices or ()}
    terminal = _in(all_states - set(model.TRANSITIONS))
    subject_type, _ = subject_key(engine.audit_subject(model(pk=0)))
    audit = table(AuditEvent)
    pk_type = model._meta.pk.db_type(connection)
    register(
        Invariant(
            name=f"{engine.domain}.terminal_claim_audited_once",
            holds=f"Every ended {model._meta.verbose_name} has exactly one audit event into its end state, "
            "and a live one has none.",
            # The claims with an audit event since %(audited_since)s (a range of the occurred_at index; every
            # claim has its CREATED event), each found by its primary key; their events by audit_subject_idx.
            sql=f"""SELECT c.id FROM {table(model)} c, LATERAL (
                        SELECT COUNT(*) AS ended, COUNT(*) FILTER (WHERE a.to_state = c.{state}) AS into_this
                        FROM {audit} a
                        WHERE a.subject_type = '{subject_type}' AND a.subject_id = c.id::text
                          AND a.to_state IN ({terminal}) AND a.from_state <> a.to_state) e
                    WHERE c.id IN (SELECT CAST(r.subject_id AS {pk_type}) FROM {audit} r
                                   WHERE r.subject_type = '{subject_type}' AND r.occurred_at >= %(audited_since)s)
                      AND CASE WHEN c.{state} IN ({terminal}) THEN NOT (e.ended = 1 AND e.into_this = 1)
                               ELSE e.ended > 0 END""",
            model=model,
        ),
        Invariant(
            name=f"{engine.domain}.no_stale_hold",
            holds=f"No {model._meta.verbose_name} is still held long after its expiry (the expiry job runs).",
            # The partial index on expires_at of held rows (the expiry job's own) answers it.
            sql=f"SELECT id FROM {table(model)} WHERE {state} = '{model.HELD}' AND expires_at < %(stale_before)s",
            model=model,
        ),
    )


def stale_after() -> timedelta:
    """How long past its expiry a hold may stay HELD: one expiry interval plus the margin."""
    every = settings.BEAT_SCHEDULE_SECONDS[EXPIRY_TASK]
    return timedelta(seconds=every + settings.INVARIANTS_OVERDUE_MARGIN_SECONDS)


def audited_since(*, now: datetime, all_history: bool) -> datetime:
    """The claims whose audit trails are checked: those with an event since this moment."""
    if all_history or not settings.INVARIANTS_AUDIT_WINDOW_HOURS:
        return datetime.min.replace(tzinfo=UTC)
    return now - timedelta(hours=settings.INVARIANTS_AUDIT_WINDOW_HOURS)


def evaluate(invariant: Invariant, *, now: datetime, all_history: bool = False) -> Result:
    """Run one invariant's query: how many rows break it, and the first few."""
    started = time.monotonic()
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id::text, COUNT(*) OVER () FROM ({invariant.sql}) broken LIMIT {SAMPLE_ROWS}",
            {
                "stale_before": now - stale_after(),
                "audited_since": audited_since(now=now, all_history=all_history),
            },
        )
        found = cursor.fetchall()
    return Result(
        name=invariant.name,
        holds=invariant.holds,
        model=invariant.model._meta.label_lower,
        violations=found[0][1] if found else 0,
        rows=[row for row, _ in found],
        ms=round((time.monotonic() - started) * 1000),
    )


def invariants_check(*, now: datetime, all_history: bool = False) -> InvariantReport:
    """Check every registered invariant and store the result as the one ``InvariantReport`` row (the
    last run replaces the one before). Read-only but for that row; each query is its own snapshot.
    ``all_history``: check the audit trail of every claim, not only of those active within
    ``INVARIANTS_AUDIT_WINDOW_HOURS``."""
    started = time.monotonic()
    results = [evaluate(invariant, now=now, all_history=all_history) for invariant in registered()]
    duration_ms = round((time.monotonic() - started) * 1000)
    with transaction.atomic():
        report, _ = InvariantReport.objects.update_or_create(
            pk=InvariantReport.ONLY, defaults={"checked_at": now, "duration_ms": duration_ms, "results": results}
        )
    for result in report.broken:
        logger.error(
            "Invariant broken: %s (%s rows of %s, e.g. %s)",
            result["name"],
            result["violations"],
            result["model"],
            ", ".join(result["rows"]),
        )
    return report


def last_report() -> InvariantReport | None:
    return InvariantReport.objects.filter(pk=InvariantReport.ONLY).first()


def describe(report: InvariantReport) -> list[str]:
    """The report as lines of text (the command's output)."""
    lines = []
    for result in report.results:
        if result["violations"]:
            rows = ", ".join(result["rows"]) + (" …" if result["violations"] > len(result["rows"]) else "")
            lines.append(f"BROKEN {result['name']}: {result['violations']} {result['model']} ({rows})")
            lines.append(f"       {result['holds']}")
        else:
            lines.append(f"ok     {result['name']} ({result['ms']} ms)")
    return lines
