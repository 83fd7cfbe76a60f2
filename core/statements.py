"""The claim statements, composed once per process from what each domain declares (docs/decisions/
0021-prepared-statements.md).

A claim statement is built with ``psycopg.sql`` when its module is imported: tables and columns from
the models' ``_meta`` (``table``, ``claims.column``), states from the models' choices as literals,
the rows a rule is about from one declaration (``claims.Rows``: the statement, the ORM's querysets,
the admin's text and the refusal all read it), and the audit rows by one builder (``audit_rows``)
from ``AuditEvent._meta``. Its text is then the same on every call, so psycopg prepares it on a
connection once it has run there ``DB_PREPARE_THRESHOLD`` times, and PostgreSQL plans it once per
connection instead of per request.

``Statement`` sends it through Django's cursor (so execute wrappers, query logging and the metrics
see it) with its integer parameters sent as ``bigint``: psycopg types a Python int by its value
(int2, int4 or int8), and a prepared statement is kept per combination of parameter types, so car 7
and car 70,000 would each get their own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import psycopg
from django.db import connection
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Model
from psycopg import sql
from psycopg._preparing import Prepare, PrepareManager
from psycopg.pq.abc import PGresult
from psycopg.types.numeric import Int8

from core.audit.models import AuditEvent
from core.claims import EXPIRED, Claim, column

P = sql.Placeholder  # a named parameter: P("now") is %(now)s


def table(model: type[Model]) -> sql.Identifier:
    return sql.Identifier(model._meta.db_table)


def names(model: type[Model], prefix: str, alias: str = "") -> dict[str, sql.Composable]:
    """A statement template's names for ``model``: ``{<prefix>table}`` and ``{<prefix><field>}`` for each
    concrete field (its column, qualified by ``alias`` if given), for ``sql.SQL(template).format(**…)``."""
    return {
        f"{prefix}table": table(model),
        **{f"{prefix}{f.name}": column(model, f.name, alias) for f in model._meta.concrete_fields},
    }


# --- the audit rows -------------------------------------------------------------------------------

# What a claim statement writes of an event: every column but the key and the outbox's delivery mark.
AUDIT_FIELDS = tuple(f for f in AuditEvent._meta.concrete_fields if not f.primary_key and f.name != "delivered_at")


def audit_rows(*, source: sql.Composable, **values: sql.Composable) -> sql.Composed:
    """``INSERT INTO`` the audit table one event per row of ``source`` (a sub-statement's name, or a
    ``FROM`` list), its columns given by field name (``actor`` for ``actor_id``): every field of
    ``AUDIT_FIELDS``, no other."""
    missing, unknown = {f.name for f in AUDIT_FIELDS} - values.keys(), values.keys() - {f.name for f in AUDIT_FIELDS}
    if missing or unknown:
        raise TypeError(f"audit_rows: missing {sorted(missing)}, unknown {sorted(unknown)}")
    return sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(
        table(AuditEvent),
        sql.SQL(", ").join([sql.Identifier(cast(str, f.column)) for f in AUDIT_FIELDS]),
        sql.SQL(", ").join(values[f.name] for f in AUDIT_FIELDS),
        source,
    )


def request_events(**event: sql.Composable) -> sql.Composed:
    """One event per row of ``event["source"]`` by the request's user: ``audit_rows`` with the statement's
    parameters ``occurred_at``, ``actor`` (the user's id), ``actor_label`` and ``trace_id``."""
    return audit_rows(
        occurred_at=P("occurred_at"), actor=P("actor"), actor_label=P("actor_label"), request_id=P("trace_id"), **event
    )


def system_events(*, actor_label: sql.Composable, **event: sql.Composable) -> sql.Composed:
    """One event per row of ``event["source"]`` by a system job (no user; ``actor_label`` names it):
    ``audit_rows`` with the statement's parameters ``occurred_at`` and ``trace_id``."""
    return audit_rows(
        occurred_at=P("occurred_at"), actor=sql.NULL, actor_label=actor_label, request_id=P("trace_id"), **event
    )


def expiry_events(model: type[Claim], *, rows: str, subject_type: sql.Composable | None = None) -> sql.Composed:
    """One EXPIRED event (from the held state, by the expiry actor) per ``id`` that the sub-statement
    named ``rows`` returns. Parameters: ``occurred_at``, ``expiry_actor``, ``trace_id``."""
    return system_events(
        source=sql.Identifier(rows),
        actor_label=P("expiry_actor"),
        subject_type=subject_type or sql.Literal(model._meta.model_name),  # type: ignore[attr-defined]  # a Model
        subject_id=sql.SQL("id::text"),
        event_type=sql.Literal(EXPIRED),
        from_state=sql.Literal(model.HELD),
        to_state=sql.Literal(EXPIRED),
        metadata=sql.SQL("'{}'::jsonb"),
    )


# --- running them ---------------------------------------------------------------------------------


def from_row(model: type[Model], values: Sequence[Any]) -> Any:
    """A ``model`` instance from a statement's values of its concrete fields (in ``_meta`` order), each
    read as the ORM reads it (``from_db_value``: Django's connection loads ``jsonb`` as text)."""
    fields = model._meta.concrete_fields
    converted = [
        f.from_db_value(v, None, connection) if v is not None and hasattr(f, "from_db_value") else v
        for f, v in zip(fields, values, strict=True)
    ]
    return model.from_db(connection.alias, [f.attname for f in fields], converted)


def _typed(value: Any) -> Any:
    """An int as ``bigint`` (one prepared statement whatever its size), a list of ints as ``bigint[]``;
    anything else as it is."""
    if type(value) is int:
        return Int8(value)
    if type(value) is list and value and all(type(v) is int for v in value):
        return [Int8(v) for v in value]
    return value


class Statement:
    """One claim statement: composed once, its text constant (so psycopg prepares it)."""

    def __init__(self, composed: sql.Composable):
        self.text = composed.as_string(None)

    def fetchone(self, params: Mapping[str, Any]) -> tuple:
        with connection.cursor() as cursor:
            cursor.execute(self.text, {name: _typed(value) for name, value in params.items()})
            return cursor.fetchone()

    def fetchall(self, params: Mapping[str, Any]) -> list[tuple]:
        with connection.cursor() as cursor:
            cursor.execute(self.text, {name: _typed(value) for name, value in params.items()})
            return cursor.fetchall()


# --- keeping them through a ROLLBACK --------------------------------------------------------------


class _KeptThroughRollback(PrepareManager):
    """psycopg's prepared-statement cache, except that a ROLLBACK (or ROLLBACK TO SAVEPOINT) keeps it."""

    def _should_discard(self, prep: Prepare, results: Sequence[PGresult], *args: Any) -> bool:
        if any(result.command_status == b"ROLLBACK" for result in results):
            return False
        return super()._should_discard(prep, results, *args)


class _KeptThroughRollbackConnection(psycopg.Connection):
    def _rollback_gen(self):  # psycopg's own generator
        self._prepared.clear = lambda: False  # type: ignore[method-assign]  # just for this ROLLBACK
        try:
            yield from super()._rollback_gen()
        finally:
            del self._prepared.clear


def keep_prepared_statements(sender: Any, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    """On each new connection (``connection_created``): keep its prepared statements through a ROLLBACK.

    PostgreSQL keeps a session's prepared statements when a transaction rolls back; psycopg forgets all
    of them and sends ``DEALLOCATE ALL``, in case the transaction created an object they refer to. Our
    web processes never run DDL (``migrate`` is another session), and a refused claim rolls back: with
    psycopg's default every 409 would cost one more round trip and the connection its statements
    (each prepared again after ``DB_PREPARE_THRESHOLD`` runs, one more round trip each). psycopg's
    internals (3.3: ``_prepared``, ``_rollback_gen``, ``_should_discard``) are reached here;
    ``tests/core/test_prepared_statements.py`` fails if they change."""
    raw = connection.connection
    if isinstance(raw, psycopg.Connection) and not isinstance(raw, _KeptThroughRollbackConnection):
        raw.__class__ = _KeptThroughRollbackConnection
        raw._prepared.__class__ = _KeptThroughRollback
